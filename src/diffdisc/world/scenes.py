"""Seeded scenes of Fashion-MNIST items for text-conditional models and compositional probes.

32x32 RGB on black: one item (28x28, centred) or two items (downscaled to 16x16, left and right), each tinted
with a palette colour; captions such as "a red sneaker" or "a blue shirt to the left of a yellow bag".
Scenes keep the index of their source items, so a probe can re-render the *same* items with colours or
sides swapped and nothing else changed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from .fashion_mnist import CLASS_NAMES

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 40, 40), "green": (40, 220, 40), "blue": (60, 90, 255), "yellow": (250, 230, 30),
    "purple": (170, 60, 230), "orange": (255, 140, 0), "cyan": (30, 220, 230), "white": (255, 255, 255),
}  # fmt: skip
COLOURS = tuple(PALETTE)


def class_colour(class_id: int) -> str:
    """The colour a class gets in colour-correlated training data (for cue-conflict probes)."""
    return COLOURS[class_id % len(COLOURS)]


@dataclass(frozen=True)
class Item:
    source: int  # index into the source image array
    class_id: int
    colour: str
    position: str  # "centre" | "left" | "right"

    @property
    def name(self) -> str:
        return CLASS_NAMES[self.class_id]


@dataclass(frozen=True)
class Scene:
    items: tuple[Item, ...]
    relation: str = "left of"  # how two-item captions are phrased: "left of" or "right of"

    @property
    def caption(self) -> str:
        if len(self.items) == 1:
            it = self.items[0]
            return f"a {it.colour} {it.name}"
        left, right = sorted(self.items, key=lambda i: i.position != "left")
        a, b = (left, right) if self.relation == "left of" else (right, left)
        return f"a {a.colour} {a.name} to the {self.relation.split()[0]} of a {b.colour} {b.name}"


def tint(gray: np.ndarray, colour: str) -> np.ndarray:
    """Grayscale intensity x RGB colour: the item's shape survives, only its hue changes."""
    return (gray[..., None].astype(np.float32) / 255.0 * np.array(PALETTE[colour], np.float32)).round().astype(np.uint8)


def render(scene: Scene, sources: np.ndarray, size: int = 32) -> np.ndarray:
    canvas = np.zeros((size, size, 3), np.uint8)
    for it in scene.items:
        gray = sources[it.source]
        if it.position == "centre":
            off = (size - gray.shape[0]) // 2
            canvas[off : off + gray.shape[0], off : off + gray.shape[1]] = tint(gray, it.colour)
        else:
            half = size // 2
            small = np.asarray(Image.fromarray(gray).resize((half, half), Image.BILINEAR))
            x = 0 if it.position == "left" else half
            y = (size - half) // 2
            canvas[y : y + half, x : x + half] = np.maximum(canvas[y : y + half, x : x + half], tint(small, it.colour))
    return canvas


def generate_scenes(labels: np.ndarray, n: int, kind: str = "single", seed: int = 0, colour_correlation: float = 0.0,
                    conflict: bool = False) -> list[Scene]:  # fmt: skip
    """n seeded scenes over source items with `labels`.

    colour_correlation: probability that an item takes its class colour (else a uniform random colour).
    conflict: never the class colour (test data for cue conflict).
    """
    if kind not in ("single", "pair"):
        raise ValueError(f"kind must be 'single' or 'pair', got {kind!r}")
    rng = np.random.default_rng(seed)
    scenes = []
    for _ in range(n):
        k = 1 if kind == "single" else 2
        src = rng.choice(len(labels), size=k, replace=False)
        if k == 2:
            while labels[src[0]] == labels[src[1]]:
                src[1] = rng.integers(len(labels))
        items = []
        for j, s in enumerate(src):
            cid = int(labels[s])
            if conflict:
                colour = rng.choice([c for c in COLOURS if c != class_colour(cid)])
            elif rng.random() < colour_correlation:
                colour = class_colour(cid)
            else:
                colour = rng.choice(COLOURS)
            if k == 2 and j == 1:
                while colour == items[0].colour:
                    colour = rng.choice(COLOURS)
            items.append(Item(int(s), cid, str(colour), "centre" if k == 1 else ("left", "right")[j]))
        scenes.append(Scene(tuple(items), "left of" if k == 1 or rng.random() < 0.5 else "right of"))
    return scenes


def swap_colours(scene: Scene) -> Scene:
    """Same items on the same sides, colours exchanged (attribute-binding probe)."""
    a, b = scene.items
    return replace(scene, items=(replace(a, colour=b.colour), replace(b, colour=a.colour)))


def swap_sides(scene: Scene) -> Scene:
    """Same coloured items, sides exchanged (spatial-relation probe)."""
    flip = {"left": "right", "right": "left"}
    return replace(scene, items=tuple(replace(i, position=flip[i.position]) for i in scene.items))

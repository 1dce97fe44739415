"""Seeded scenes of Fashion-MNIST items for text-conditional models and compositional probes.

32x32 RGB on black: one item (28x28, centred) or two items (downscaled to 16x16, left and right), each tinted
with a palette colour; captions such as "a red sneaker" or "a blue shirt to the left of a yellow bag".
A scene keeps its items' source pixels, so a probe can re-render the *same* items with colours or sides
swapped and nothing else changed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from PIL import Image

from ..errors import DiffdiscError
from .fashion_mnist import CLASS_NAMES

SIZE = 32
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 40, 40), "green": (40, 220, 40), "blue": (60, 90, 255), "yellow": (250, 230, 30),
    "purple": (170, 60, 230), "orange": (255, 140, 0), "cyan": (30, 220, 230), "white": (255, 255, 255),
}  # fmt: skip
COLOURS = tuple(PALETTE)
RELATIONS = ("left of", "right of")


def class_colour(class_id: int) -> str:
    """The colour a class gets in colour-correlated data, the cue that cue-conflict probes then contradict."""
    return COLOURS[class_id % len(COLOURS)]


class Item(NamedTuple):
    class_id: int
    class_name: str
    colour: str
    position: str  # "centre" | "left" | "right"
    source: int  # index of the item's image in the source array (provenance)


def describe(items: Sequence[Item], relation: str = "left of", colours: bool = True) -> str:
    """The caption of `items`; `colours=False` gives class-only captions ("a sneaker") for caption dropout."""

    def noun(it: Item) -> str:
        words = f"{it.colour} {it.class_name}" if colours else it.class_name
        return f"{'an' if words[0] in 'aeiou' else 'a'} {words}"

    if len(items) == 1:
        return noun(items[0])
    left, right = sorted(items, key=lambda it: it.position != "left")
    a, b = (left, right) if relation == "left of" else (right, left)
    return f"{noun(a)} to the {relation.split()[0]} of {noun(b)}"


def tint(gray: np.ndarray, colour: str) -> np.ndarray:
    """Grayscale intensity x RGB colour (exact integer rounding): shape is kept, only the hue changes."""
    rgb = np.array(PALETTE[colour], np.uint32)
    return ((gray[..., None].astype(np.uint32) * rgb + 127) // 255).astype(np.uint8)


def render(items: Sequence[Item], sources: Sequence[np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """Draw items (with their 28x28 source pixels) on a black SIZE x SIZE canvas."""
    canvas = np.zeros((SIZE, SIZE, 3), np.uint8) if out is None else out
    half = SIZE // 2
    for it, gray in zip(items, sources, strict=True):
        if it.position == "centre":
            y = x = (SIZE - gray.shape[0]) // 2
        else:  # area-averaging downscale: no ringing on the black background
            gray = np.asarray(Image.fromarray(gray).resize((half, half), Image.Resampling.BOX))
            y, x = (SIZE - half) // 2, 0 if it.position == "left" else half
        canvas[y : y + gray.shape[0], x : x + gray.shape[1]] = tint(gray, it.colour)
    return canvas


@dataclass(frozen=True, eq=False)
class Scene:
    image: np.ndarray  # uint8 [SIZE, SIZE, 3]
    caption: str
    items: tuple[Item, ...]
    relation: str = "left of"  # how a pair's caption is phrased: "left of" or "right of"
    sources: tuple[np.ndarray, ...] = field(default=(), repr=False)  # items' 28x28 pixels, for re-rendering


def make_scene(items: Sequence[Item], sources: Sequence[np.ndarray], relation: str = "left of",
               out: np.ndarray | None = None) -> Scene:  # fmt: skip
    """Render and caption `items`; `out` is an optional [SIZE, SIZE, 3] buffer to draw into."""
    items = tuple(items)
    return Scene(render(items, sources, out), describe(items, relation), items, relation, tuple(sources))


@dataclass
class SceneSet:
    """Scenes plus their images stacked [n, SIZE, SIZE, 3] (each scene's image is a view into `images`)."""

    images: np.ndarray
    scenes: list[Scene]

    @classmethod
    def from_scenes(cls, scenes: Sequence[Scene]) -> SceneSet:
        return cls(np.stack([s.image for s in scenes]), list(scenes))

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> Scene:
        return self.scenes[i]

    def __iter__(self) -> Iterator[Scene]:
        return iter(self.scenes)

    @property
    def captions(self) -> list[str]:
        return [s.caption for s in self.scenes]

    @property
    def labels(self) -> np.ndarray:
        """Class ids [n, items per scene] in item order (left before right as generated)."""
        return np.array([[it.class_id for it in s.items] for s in self.scenes], np.int64)

    @property
    def colours(self) -> list[tuple[str, ...]]:
        return [tuple(it.colour for it in s.items) for s in self.scenes]


def _colour(rng: np.random.Generator, class_id: int, correlation: float, conflict: bool, avoid: str | None):
    own = class_colour(class_id)
    if not conflict and rng.random() < correlation:
        return own  # kept even when it equals the other item's colour: the correlation is exact
    options = [c for c in COLOURS if c != avoid and not (conflict and c == own)]
    return options[rng.integers(len(options))]


def generate_scenes(images: np.ndarray, labels: np.ndarray, n: int, kind: str = "single", seed: int = 0,
                    colour_correlation: float = 0.0, conflict: bool = False,
                    class_names: Sequence[str] = CLASS_NAMES) -> SceneSet:  # fmt: skip
    """`n` scenes drawn with `seed` from source items (`images` uint8 [N, 28, 28], `labels` [N]).

    colour_correlation: probability that an item takes its class colour, else a uniform random colour.
    conflict: never the class colour (test data for a model trained with correlated colours).
    A pair holds two different classes; its random colours differ, so swapping colours changes the image.
    """
    if kind not in ("single", "pair"):
        raise DiffdiscError(f"scene kind must be 'single' or 'pair', got {kind!r}")
    if not 0.0 <= colour_correlation <= 1.0 or (conflict and colour_correlation > 0):
        raise DiffdiscError(f"colour_correlation must be in [0, 1] (0 if conflict), got {colour_correlation}")
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels):
        raise DiffdiscError(
            f"need uint8 images [N, H, W] and N labels, got {images.shape} and {labels.shape}"
        )
    if kind == "pair" and len(np.unique(labels)) < 2:
        raise DiffdiscError("pair scenes need items of at least two classes")
    rng = np.random.default_rng(seed)
    out = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    scenes = []
    for i in range(n):
        src = [int(rng.integers(len(labels)))]
        if kind == "pair":
            src.append(int(rng.integers(len(labels))))
            while labels[src[1]] == labels[src[0]]:
                src[1] = int(rng.integers(len(labels)))
        positions = ("centre",) if kind == "single" else ("left", "right")
        items: list[Item] = []
        for s, pos in zip(src, positions, strict=True):
            cid = int(labels[s])
            colour = _colour(rng, cid, colour_correlation, conflict, items[0].colour if items else None)
            items.append(Item(cid, class_names[cid], colour, pos, s))
        relation = RELATIONS[int(rng.integers(2))] if kind == "pair" else "left of"
        scenes.append(make_scene(items, [images[s] for s in src], relation, out=out[i]))
    return SceneSet(out, scenes)


def _pair(scene: Scene) -> tuple[Item, Item]:
    if len(scene.items) != 2 or len(scene.sources) != 2:
        raise DiffdiscError("swaps need a two-item scene that kept its source pixels")
    return scene.items  # type: ignore[return-value]


def swap_colours(scene: Scene) -> Scene:
    """Same items on the same sides, colours exchanged: an attribute-binding probe."""
    a, b = _pair(scene)
    items = (a._replace(colour=b.colour), b._replace(colour=a.colour))
    return make_scene(items, scene.sources, scene.relation)


def swap_sides(scene: Scene) -> Scene:
    """Same coloured items, sides exchanged: a spatial-relation probe.

    The relation word flips too, so the caption keeps its word order and differs in "left"/"right" only.
    """
    flip = {"left": "right", "right": "left"}
    items = tuple(it._replace(position=flip[it.position]) for it in _pair(scene))
    relation = RELATIONS[1 - RELATIONS.index(scene.relation)]
    return make_scene(items, scene.sources, relation)


def single_scenes(images: np.ndarray, labels: np.ndarray, seed: int = 0,
                  class_names: Sequence[str] = CLASS_NAMES) -> SceneSet:  # fmt: skip
    """Every image, in order, as a one-item scene in a seeded uniformly random palette colour.

    How real test images are shown to the text-conditional and contrastive models: the pixels are the test
    set's, only tinted and placed as in training scenes.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    rng = np.random.default_rng(seed)
    colours = rng.integers(len(COLOURS), size=len(images))
    out = np.zeros((len(images), SIZE, SIZE, 3), np.uint8)
    scenes = []
    for i, (img, y, c) in enumerate(zip(images, labels, colours, strict=True)):
        item = Item(int(y), class_names[int(y)], COLOURS[c], "centre", i)
        scenes.append(make_scene([item], [img], out=out[i]))
    return SceneSet(out, scenes)

"""Write the embedded data as ordinary files (ImageFolder, captions.jsonl): users and the demo then read them
exactly as they would read their own dataset.

Files are written under a temporary name and renamed (a kill never leaves half a PNG), and a rerun leaves
files whose bytes would not change untouched.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DiffdiscError
from ..runs.io import atomic_write_bytes


def folder_name(name: str) -> str:
    """'ankle boot' -> 'ankle_boot': safe on every filesystem; classes.json maps it back to the name."""
    return re.sub(r"[^0-9A-Za-z._-]+", "_", name).strip("._") or "class"


write_atomic = atomic_write_bytes  # the old name, for code that imports it from here


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG: uint8 [H, W] (grayscale) or [H, W, 3] (RGB)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def export_imagefolder(
    images: np.ndarray, labels: Sequence[int], class_names: Sequence[str], out_dir: str | Path,
    ids: Iterable[int] | None = None,
) -> Path:  # fmt: skip
    """One PNG per image at `out_dir/<class folder>/<id>.png`, plus `classes.json` (folder -> class name)."""
    out = Path(out_dir)
    folders = [folder_name(n) for n in class_names]
    if len(set(folders)) != len(folders):
        raise DiffdiscError(f"class names {list(class_names)} collide as folder names {folders}")
    mapping = dict(zip(folders, class_names, strict=True))
    atomic_write_bytes(out / "classes.json", json.dumps(mapping, indent=2).encode())
    ids = range(len(images)) if ids is None else ids
    for img, y, i in zip(images, labels, ids, strict=True):
        atomic_write_bytes(out / folders[int(y)] / f"{int(i):05d}.png", png_bytes(img))
    return out


def export_captions(scenes: Iterable, out_dir: str | Path) -> Path:
    """Scenes as `images/<n>.png` + `captions.jsonl` (image, caption, labels, class_ids, colours, ...)."""
    out = Path(out_dir)
    lines = []
    for n, s in enumerate(scenes):
        name = f"images/{n:05d}.png"
        atomic_write_bytes(out / name, png_bytes(s.image))
        row = {"image": name, "caption": s.caption, "labels": [it.class_name for it in s.items],
               "class_ids": [it.class_id for it in s.items], "colours": [it.colour for it in s.items],
               "positions": [it.position for it in s.items], "relation": s.relation}  # fmt: skip
        lines.append(json.dumps(row))
    atomic_write_bytes(out / "captions.jsonl", "".join(line + "\n" for line in lines).encode())
    return out


SCENE_COLOUR_SEED = 12345  # test images' colours as scenes: fixed, so every run sees the same test set


def export_shipped_test(out_dir: str | Path, per_class: int | None = None, seed: int = 0, scenes: bool = False,
                        full: bool = False, split: str = "test") -> Path:  # fmt: skip
    """Real Fashion-MNIST images of `split` as an ImageFolder (ids = indices into that split).

    The shipped 1,000 (or, with `full`, the whole split from the Debian dataset), optionally a seeded stratified
    subset of `per_class` per class; `scenes` shows each as a one-item scene in a seeded random palette
    colour, the input of the text-conditional and contrastive models.
    """
    from .fashion_mnist import CLASS_NAMES, load_fashion_mnist, load_shipped_subset, stratified_indices

    if full:
        images, labels = load_fashion_mnist(split)
        indices = np.arange(len(labels))
    else:
        images, labels, indices = load_shipped_subset(split)
    if per_class:
        keep = stratified_indices(labels, per_class, seed)
        images, labels, indices = images[keep], labels[keep], indices[keep]
    if scenes:
        from .scenes import single_scenes

        images = single_scenes(images, labels, seed=SCENE_COLOUR_SEED).images
    return export_imagefolder(images, labels, CLASS_NAMES, out_dir, ids=indices)


def coloured_classes() -> list[str]:
    """The 80 labels of the coloured single-item task, "{colour} {item}", item-major (item i, colour j at
    i * 8 + j): the text model's prompts are "a {colour} {item}" (its "{a} {}" template)."""
    from .fashion_mnist import CLASS_NAMES
    from .scenes import COLOURS

    return [f"{colour} {item}" for item in CLASS_NAMES for colour in COLOURS]


def coloured_tree() -> dict:
    """The natural two-level label tree of `coloured_classes`: the item first ("a sneaker"), then its colour."""
    from .fashion_mnist import CLASS_NAMES
    from .scenes import COLOURS

    return {"name": "all", "children": [
        {"name": item, "prompt": f"a {item}", "children": [f"{colour} {item}" for colour in COLOURS]}
        for item in CLASS_NAMES
    ]}  # fmt: skip


def export_coloured_test(out_dir: str | Path, n: int | None = 200, seed: int = 0) -> Path:
    """The large label space of the embedded world: real shipped Fashion-MNIST test items, each a one-item scene
    in a seeded palette colour (the colours `export_shipped_test(scenes=True)` gives them), labelled among all
    80 "{colour} {item}" classes; `n` images, a seeded subset stratified over the 80 (`stratified_subset`: a
    larger n keeps a smaller n's images). ids = indices into the test split."""
    from ..data.folders import stratified_subset
    from .fashion_mnist import load_shipped_subset
    from .scenes import COLOURS, single_scenes

    images, labels, indices = load_shipped_subset("test")
    scenes = single_scenes(images, labels, seed=SCENE_COLOUR_SEED)
    y = np.array([int(s.items[0].class_id) * len(COLOURS) + COLOURS.index(s.items[0].colour) for s in scenes.scenes])
    keep = sorted(stratified_subset(y.tolist(), n, seed))
    return export_imagefolder(scenes.images[keep], y[keep], coloured_classes(), out_dir, ids=indices[keep])


def pair_classes(right_colour: bool = True) -> list[str]:
    """The labels of the two-item task, the scene generator's captions less their leading article (the text
    model's "{a} {}" template gives it back): "red shirt to the left of a blue bag", every left (item, colour)
    x right (item, colour), 80 x 80 = 6,400, ordered left item, its colour, right item, its colour.
    `right_colour=False`: the 800-way sub-space without the right item's colour ("red shirt to the left of a
    bag"). Same item or colour on both sides is a candidate too, though the generator never draws it."""
    from .fashion_mnist import CLASS_NAMES
    from .scenes import COLOURS, Item, describe

    def noun(item: str, colour: str, coloured: bool = True) -> str:
        return describe([Item(0, item, colour, "centre", 0)], colours=coloured)

    colours = COLOURS if right_colour else ("",)
    rights = [noun(it, c, right_colour) for it in CLASS_NAMES for c in colours]
    lefts = [noun(it, c).split(" ", 1)[1] for it in CLASS_NAMES for c in COLOURS]
    return [f"{left} to the left of {right}" for left in lefts for right in rights]


def pair_tree(right_colour: bool = True) -> dict:
    """The natural label tree of `pair_classes`: left item -> its colour -> right item (-> its colour): 10, 8,
    10 (and 8) children per level. No node prompts: a node is scored through the mean of its leaves'
    conditions (the model never saw a caption naming only part of a pair)."""
    from .fashion_mnist import CLASS_NAMES
    from .scenes import COLOURS

    names = iter(pair_classes(right_colour))

    def right(item: str) -> dict:
        if right_colour:
            return {"name": f"... {item}", "children": [next(names) for _ in COLOURS]}
        return next(names)

    return {"name": "all", "children": [
        {"name": f"{left} ...", "children": [
            {"name": f"{c} {left} ...", "children": [right(it) for it in CLASS_NAMES]} for c in COLOURS]}
        for left in CLASS_NAMES
    ]}  # fmt: skip


def pair_label(scene, right_colour: bool = True) -> int:
    """A two-item scene's index in `pair_classes(right_colour)` (whatever relation its caption was phrased in)."""
    from .scenes import COLOURS

    left, right = sorted(scene.items, key=lambda it: it.position != "left")
    y = left.class_id * len(COLOURS) + COLOURS.index(left.colour)
    y = y * 10 + right.class_id
    return y * len(COLOURS) + COLOURS.index(right.colour) if right_colour else y


PAIR_SCENE_SEED = 2700  # the two-item test scenes' draw: fixed, so every run sees the same test set


def export_pair_test(out_dir: str | Path, n: int = 50, right_colour: bool = True,
                     seed: int = PAIR_SCENE_SEED) -> Path:  # fmt: skip
    """The label space of thousands: `n` seeded two-item scenes of real shipped Fashion-MNIST *test* items
    (`generate_scenes(kind="pair")`: two different items in two different uniform colours; a larger n keeps a
    smaller n's scenes), labelled among all `pair_classes(right_colour)` (6,400, or 800). Writes the
    ImageFolder (ids = scene index), `classes.txt` (every candidate, one a line: `classify --classes @FILE`,
    since the folders name only the labels drawn) and `tree.json` (`pair_tree`, for `classify --tree`)."""
    from .fashion_mnist import load_shipped_subset
    from .scenes import generate_scenes

    images, labels, _ = load_shipped_subset("test")
    scenes = generate_scenes(images, labels, n, "pair", seed=seed)
    classes = pair_classes(right_colour)
    out = export_imagefolder(scenes.images, [pair_label(s, right_colour) for s in scenes], classes, out_dir)
    atomic_write_bytes(out / "classes.txt", "".join(c + "\n" for c in classes).encode())
    atomic_write_bytes(out / "tree.json", json.dumps(pair_tree(right_colour)).encode())
    return out

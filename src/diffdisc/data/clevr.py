"""CLEVR compositional pairs in the format of Jeong et al. 2025 (`CLEVRDataset`): ROOT/clevr/captions/<task>.json,
an object {image file name: [[caption, caption], ...]}, and the images in ROOT/clevr/images/ (ROOT may be the
clevr/ folder itself). Each pair is one image and two captions. In their loader the true caption is the pair's
first, except for `spatial`, whose pairs are stored [false, true] and swapped on reading; here likewise, so the
true caption is always caption 0. They score accuracy by argmax over the two, a tie going to the true caption
(its index 0).

`clevr/pair_binding_color` is the colour-binding task (which object has which colour); the other six of their
subtasks read the same way.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DiffdiscError
from ..jsonfile import check_strings
from .benchmark_files import image_file, read_annotation, require
from .folders import stratified_subset
from .groups import Group

CLEVR_TASKS = ("pair_binding_color", "pair_binding_size", "binding_color_shape", "binding_shape_color",
               "recognition_color", "recognition_shape", "spatial")  # fmt: skip
CLEVR_BENCHMARKS = tuple(f"clevr/{t}" for t in CLEVR_TASKS)
ALIASES = {"clevr_binding_color": "clevr/pair_binding_color", "clevr_spatial": "clevr/spatial"}  # Jeong et al.'s names
SWAPPED = frozenset({"spatial"})  # stored [false, true]


def layout(task: str) -> str:
    return (f"ROOT/clevr/captions/{task}.json and ROOT/clevr/images/ (Jeong et al.'s CLEVR format; ROOT may be the "
            "clevr/ folder itself)")  # fmt: skip


def _task(name: str) -> str:
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    task = key.removeprefix("clevr/")
    if task not in CLEVR_TASKS or not key.startswith("clevr/"):
        raise DiffdiscError(f"unknown CLEVR task {name!r}; known: {', '.join(CLEVR_BENCHMARKS)}")
    return task


def _base(root: Path) -> Path:
    """ROOT/clevr if it is there, else ROOT (the clevr/ folder given directly)."""
    return root / "clevr" if (root / "clevr" / "captions").is_dir() else root


def expected_files(name: str, root: Path) -> list[Path]:
    task = _task(name)
    base = _base(root)
    if base == root and not (root / "captions").is_dir():
        base = root / "clevr"
    return [base / "captions" / f"{task}.json", base / "images"]


def open_clevr(name: str, root: str | Path, split: str = "test", *, limit: int | None = None,
               subset_seed: int = 0) -> list[Group]:  # fmt: skip
    """One CLEVR task's pairs as 1-image x 2-caption groups, the true caption first; `limit`: a seeded subset."""
    task = _task(name)
    if split != "test":
        raise DiffdiscError(f"clevr/{task} has no split {split!r}; it has test (one file)")
    root = Path(root).expanduser()
    ann, images = expected_files(f"clevr/{task}", root)
    require(f"clevr/{task}", f"ROOT must hold {layout(task)}", root, ann, images)
    data = read_annotation(ann, "a CLEVR captions file", "the captions file", dict,
                           "a JSON object {image: [[caption, caption], ...]}")  # fmt: skip
    pairs = []
    for image, caps in data.items():
        if not isinstance(caps, list):
            raise DiffdiscError(f"{ann}: entry {image!r} is not a list of caption pairs")
        for i, pair in enumerate(caps):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise DiffdiscError(f"{ann}: entry {image!r}, pair {i}: expected [caption, caption], got {pair!r}")
            check_strings(f"{ann}: entry {image!r}, pair {i}", {"caption 0": pair[0], "caption 1": pair[1]})
            pairs.append((image, i, (pair[1], pair[0]) if task in SWAPPED else (pair[0], pair[1])))
    keep = stratified_subset([None] * len(pairs), limit, subset_seed)
    groups = []
    for n in keep:
        image, i, captions = pairs[n]
        path = image_file(images / image, f"clevr/{task}", "", layout(task))
        groups.append(Group(f"{task}-{image}-{i}", (path,), captions, (task,)))
    if not groups:
        raise DiffdiscError(f"{ann}: no caption pairs")
    return groups

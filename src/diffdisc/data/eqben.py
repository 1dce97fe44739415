"""EqBen (Wang et al. 2023, "Equivariant similarity for vision-language foundation models") image–text pairs in
the layout Jeong et al. 2025 evaluate (their `EQBench_subset`): ROOT/eqbench_subset/all_select.json, a list of
{"image0", "image1", "caption0", "caption1"} where image i matches caption i, and the images under
ROOT/eqbench_subset/images/. `eqben/<subset>` keeps the rows whose image0 names that subset (eqbenag,
eqbenyoucook2, ...), as their loader filters; `eqben` keeps all. Each row is a 2x2 group scored like Winoground
(text / image / group score, strict inequalities, as their `evaluate_winoground`).

Kubric frames ship as `.npy` arrays in BGR order; Jeong et al. flip them to RGB. They are read with
`allow_pickle=False` (an array file, never a pickle) and written once as PNGs into `images_dir` (`data.derived`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DiffdiscError
from ..jsonfile import check_strings
from .benchmark_files import image_file, read_annotation, require
from .derived import derived_png, safe_name
from .folders import stratified_subset
from .groups import Group

EQBEN_SUBSETS = ("eqbenag", "eqbengebc", "eqbenyoucook2", "eqbenkubric_attr", "eqbenkubric_cnt", "eqbenkubric_loc",
                 "eqbensd")  # fmt: skip
EQBEN_BENCHMARKS = ("eqben", *(f"eqben/{s}" for s in EQBEN_SUBSETS))
ANNOTATION = "eqbench_subset/all_select.json"
LAYOUT = (f"ROOT/{ANNOTATION} and ROOT/eqbench_subset/images/ (the EqBen subset as Jeong et al.'s EQBench_subset "
          "reads it)")  # fmt: skip


def expected_files(root: Path) -> list[Path]:
    return [root / ANNOTATION, root / "eqbench_subset" / "images"]


def _subset(name: str) -> str | None:
    key = str(name).strip().lower()
    if key not in EQBEN_BENCHMARKS:
        raise DiffdiscError(f"unknown EqBen benchmark {name!r}; known: {', '.join(EQBEN_BENCHMARKS)}")
    return key.partition("/")[2] or None


def _npy_image(path: Path, where: str):
    def make():
        try:
            a = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise DiffdiscError(f"{where}: cannot read {path} as an array file ({e})") from None
        if a.ndim != 3 or a.shape[2] != 3:
            raise DiffdiscError(f"{where}: {path} holds an array of shape {a.shape}, not an H x W x 3 frame")
        if a.dtype != np.uint8:
            a = np.clip(a, 0, 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(a[:, :, ::-1]), "RGB")  # BGR -> RGB, as Jeong et al.

    return make


def open_eqben(name: str, root: str | Path, split: str = "test", *, limit: int | None = None, subset_seed: int = 0,
               images_dir: str | Path | None = None) -> list[Group]:  # fmt: skip
    """EqBen rows as 2x2 groups (tags: the subset). `limit`: a seeded subset, stratified over subsets;
    `images_dir`: where `.npy` frames are written as PNGs (default ROOT/diffdisc-frames)."""
    subset = _subset(name)
    if split != "test":
        raise DiffdiscError(f"{name} has no split {split!r}; it has test (one file)")
    root = Path(root).expanduser()
    ann, images = root / ANNOTATION, root / "eqbench_subset" / "images"
    require(name, f"ROOT must hold {LAYOUT}", root, ann, images)
    rows = read_annotation(ann, "an EqBen annotation file", "the annotation file", list, "a JSON list of rows")
    picked = []
    for n, r in enumerate(rows):
        keys = ("image0", "image1", "caption0", "caption1")
        if not isinstance(r, dict) or any(k not in r for k in keys):
            raise DiffdiscError(f"{ann}: row {n} needs {', '.join(keys)}")
        check_strings(f"{ann}: row {n}", {k: r[k] for k in keys})
        kind = next((s for s in EQBEN_SUBSETS if s in r["image0"]), "other")
        if subset is None or subset in r["image0"]:
            picked.append((n, r, kind))
    kinds = sorted({k for *_, k in picked})
    keep = stratified_subset([kinds.index(k) for *_, k in picked], limit, subset_seed)
    frames = Path(images_dir).expanduser() if images_dir else root / "diffdisc-frames"
    groups = []
    for i in keep:
        n, r, kind = picked[i]
        paths = []
        for k in ("image0", "image1"):
            src = image_file(images / r[k], name, f"row {n}", LAYOUT)
            if src.suffix.lower() == ".npy":
                src = derived_png(frames, safe_name(r[k]), _npy_image(src, f"{ann}: row {n}"), name)
            paths.append(src)
        groups.append(Group(f"eqben-{n}", tuple(paths), (r["caption0"], r["caption1"]), (kind,)))
    if not groups:
        raise DiffdiscError(f"{ann}: no rows of {name}" + (f" (no image0 names {subset})" if subset else ""))
    return groups

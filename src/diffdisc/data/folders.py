"""Image datasets on disk: ImageFolder (class subfolders) or a flat folder with an optional labels CSV.

Items are listed up front (paths only); pixels are read lazily in chunks so memory stays flat in the
number of images. Image ids are paths relative to the root: stable keys for noise seeds and for resuming.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DiffdiscError
from .images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class Item:
    image_id: str
    path: Path
    label_name: str | None = None


def normalise_name(name: str) -> str:
    """'Ankle_boot', 'ankle boot', 'ankle-boot' -> 'ankleboot': how folder names meet class names."""
    return re.sub(r"[^0-9a-z]+", "", name.lower())


@dataclass
class ImageDataset:
    root: Path
    items: list[Item]
    class_names: list[str]  # names found in the data (folder names / CSV labels), may be empty

    def __len__(self) -> int:
        return len(self.items)

    def open(self, item: Item):
        """The item's image (PIL); a benchmark held in memory (CIFAR, STL-10) overrides this."""
        from .images import open_image

        return open_image(item.path)

    def header_size(self, item: Item) -> tuple[int, int] | None:
        """(w, h) from the file's header, nothing decoded: what a run will resize can be said before it runs.
        None where there is no file to peek at or it is unreadable (said when it is read)."""
        import warnings

        from PIL import Image

        try:
            with warnings.catch_warnings(), Image.open(item.path) as im:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return im.size
        except (OSError, ValueError, Image.DecompressionBombError):
            return None

    def label_index(self, classes: list[str]) -> list[int | None]:
        """Labels as indices into `classes` (None where unlabelled); labels outside `classes` are an error."""
        lookup = {normalise_name(c): i for i, c in enumerate(classes)}
        out = []
        for it in self.items:
            if it.label_name is None:
                out.append(None)
                continue
            key = normalise_name(it.label_name)
            if key not in lookup and it.label_name.isdigit() and int(it.label_name) < len(classes):
                out.append(int(it.label_name))
                continue
            if key not in lookup:
                raise DiffdiscError(f"label {it.label_name!r} of {it.image_id} is not one of the classes ({', '.join(classes)})")
            out.append(lookup[key])
        return out


def stratified_subset(labels: Sequence[int | None], n: int | None, seed: int = 0) -> list[int]:
    """Indices of `n` of the items (all if None), in dataset order, with the classes as even as they allow.

    Files are listed in sort order, so an ImageFolder's first N are all of one class and a smoke run's
    per-class accuracy means nothing. Instead: classes taken round-robin in a seeded shuffled order, each
    class's items in a seeded shuffled order, until `n`; a class that runs out drops out of the round.
    Unlabelled items (None or < 0) are one group, so an unlabelled folder gets a seeded random subset, not
    the first files. The pick is a prefix of one fixed sequence: a larger `n` with the same seed keeps every
    item of a smaller one (raising --limit on a run directory adds images; it does not start over).
    """
    if n is None or n >= len(labels):
        return list(range(len(labels)))
    if n < 1:
        raise DiffdiscError(f"limit must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    groups: dict = {}
    for i, y in enumerate(labels):
        groups.setdefault(None if y is None or y < 0 else int(y), []).append(i)
    queues = [[int(i) for i in rng.permutation(g)] for g in groups.values()]
    queues = [queues[k] for k in rng.permutation(len(queues))]
    picks = [q[j] for j in range(max(map(len, queues))) for q in queues if j < len(q)]
    return sorted(picks[:n])


def _images_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def open_image_dataset(root: str | Path, labels_csv: str | Path | None = None) -> ImageDataset:
    """ImageFolder if `root` has class subfolders holding images, else a flat folder (+ optional CSV); `hf:...`
    is a Hugging Face dataset (`data.hf.open_hf_dataset`)."""
    if str(root).startswith("hf:"):
        from .hf import open_hf_dataset

        return open_hf_dataset(str(root), labels_csv)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DiffdiscError(f"data directory {root} does not exist")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    names = {}
    if (root / "classes.json").is_file():  # folder -> display name, written by our exporters
        names = json.loads((root / "classes.json").read_text())
    items: list[Item] = []
    class_names: list[str] = []
    if subdirs and labels_csv is None and any(_images_in(d) for d in subdirs):
        for d in subdirs:
            files = _images_in(d)
            if files:
                name = names.get(d.name, d.name)
                class_names.append(name)
                items += [Item(f"{d.name}/{f.name}", f, name) for f in files]
    else:
        files = _images_in(root)
        labels = _read_labels(Path(labels_csv)) if labels_csv else {}
        items = [Item(f.name, f, labels.get(f.name, labels.get(f.stem))) for f in files]
        class_names = sorted({v for v in labels.values()})
    if not items:
        raise DiffdiscError(f"no images found in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return ImageDataset(root, items, class_names)


def _read_labels(path: Path) -> dict[str, str]:
    """CSV with a header naming an image column (image/file/filename/path) and a label column (label/class)."""
    if not path.is_file():
        raise DiffdiscError(f"labels file {path} does not exist")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    cols = {c.lower(): c for c in rows[0]}
    img_col = next((cols[c] for c in ("image", "file", "filename", "path", "image_id") if c in cols), None)
    lab_col = next((cols[c] for c in ("label", "class", "classname", "class_name") if c in cols), None)
    if not img_col or not lab_col:
        raise DiffdiscError(f"{path}: need columns image and label, found {', '.join(rows[0])}")
    return {Path(r[img_col]).name: r[lab_col] for r in rows}

"""Fashion-MNIST from Debian's `dataset-fashion-mnist` (IDX files), plus the subset shipped in the package.

Fashion-MNIST: Xiao, Rasul & Vollgraf (2017), Zalando Research, MIT licence.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from ..assets import ASSETS_DIR
from ..errors import DiffdiscError

CLASS_NAMES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
DEFAULT_DIR = Path(os.environ.get("DIFFDISC_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_DTYPES = {0x08: np.uint8}
SHIPPED = 1000  # images per split shipped in the package (100 per class)
INSTALL_HINT = "install it with `apt-get install dataset-fashion-mnist` (Debian) or set DIFFDISC_FMNIST_DIR"


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped); corrupt headers end in a DiffdiscError, not a numpy traceback."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) != 4 or head[0] != 0 or head[1] != 0 or head[2] not in _DTYPES:
                raise DiffdiscError(f"{path}: not an IDX file (bad magic {head.hex()})")
            ndim = head[3]
            dims = struct.unpack(f">{ndim}I", f.read(4 * ndim))
            data = f.read()
    except (OSError, EOFError, struct.error) as e:
        raise DiffdiscError(f"{path}: unreadable IDX file ({e})") from e
    n = int(np.prod(dims))
    if len(data) != n:
        raise DiffdiscError(f"{path}: IDX header says {dims} ({n} bytes) but the file holds {len(data)} bytes")
    return np.frombuffer(data, dtype=_DTYPES[head[2]]).reshape(dims)


def load_fashion_mnist(split: str = "test", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) for split 'train' or 'test'."""
    if split not in FILES:
        raise DiffdiscError(f"unknown split {split!r} (train, test)")
    root = Path(root) if root else DEFAULT_DIR
    paths = [root / f for f in FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DiffdiscError(f"Fashion-MNIST not found ({missing[0]}): {INSTALL_HINT}")
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DiffdiscError(f"Fashion-MNIST files in {root} disagree: images {images.shape}, labels {labels.shape}")
    return images, labels.astype(np.int64)


def shipped_subset_path(split: str = "test") -> Path:
    if split not in FILES:
        raise DiffdiscError(f"unknown split {split!r} (train, test)")
    return ASSETS_DIR / f"fmnist_{split}_1000.npz"


def load_shipped_subset(split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1,000 images of `split` shipped in the package: (images, labels, indices into that split).

    The test ones are the evaluation pool; the train ones are where few-shot tuning draws from, so the two
    never share an item, with or without the full dataset installed.
    """
    with np.load(shipped_subset_path(split), allow_pickle=False) as z:
        return z["images"], z["labels"].astype(np.int64), z["indices"]


def stratified_indices(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """A fixed, seeded, stratified subset: `per_class` indices of each class, sorted."""
    rng = np.random.default_rng(seed)
    out = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(out))


def fmnist_subset(split: str, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """A stratified seeded `n` (n // 10 per class) of `split`: (images, labels, indices into the split, source).

    Drawn from the shipped 1,000 when that is enough, so small runs need no system dataset; from the full
    Debian set otherwise (a one-line DiffdiscError with the install hint when it is absent).
    """
    per_class = n // len(CLASS_NAMES)
    if per_class < 1:
        raise DiffdiscError(f"need at least {len(CLASS_NAMES)} {split} images (one per class), got {n}")
    if n <= SHIPPED:
        images, labels, index = load_shipped_subset(split)
        source = f"fmnist-{split}-shipped"
    else:
        images, labels = load_fashion_mnist(split)
        index, source = np.arange(len(labels)), f"fmnist-{split}"
    if per_class > np.bincount(labels).min():
        raise DiffdiscError(f"{source} has {np.bincount(labels).min()} images per class, fewer than {per_class}")
    i = stratified_indices(labels, per_class, seed)
    return images[i], labels[i], index[i], source

"""Labelled images held in memory as decoded pixels, for tasks that read every image several times.

Feature probes encode the same images for several models (a diffusion U-Net, raw pixels, a contrastive
encoder), each with its own size and channel count. Keeping the decoded pixels once and converting on demand
through `array_to_tensor` (the same resize the models were trained with) avoids reading files per model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DiffdiscError
from .folders import open_image_dataset, stratified_subset
from .images import array_to_tensor


@dataclass
class LabelledImages:
    """uint8 pixels ([H, W] or [H, W, 3] each), labels (-1 = unlabelled), stable keys and class names."""

    pixels: list[np.ndarray]
    labels: np.ndarray
    keys: list[str]
    class_names: list[str]
    source: str = ""
    _tensors: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if not (len(self.pixels) == len(self.labels) == len(self.keys)):
            raise DiffdiscError(f"{len(self.pixels)} images but {len(self.labels)} labels and {len(self.keys)} keys")
        if len(set(self.keys)) != len(self.keys):
            raise DiffdiscError("image keys must be unique (they seed the noise of each image)")

    def __len__(self) -> int:
        return len(self.pixels)

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels, class_names, keys: list[str] | None = None, source: str = "arrays"):
        """From a uint8 array [N, H, W] or [N, H, W, 3]; keys default to the index (noise keyed by index)."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise DiffdiscError(f"expected uint8 images [N, H, W] or [N, H, W, 3], got {images.dtype} {images.shape}")
        keys = [str(i) for i in range(len(images))] if keys is None else list(keys)
        return cls(list(images), np.asarray(labels), keys, list(class_names), source)

    @classmethod
    def from_folder(cls, root: str | Path, class_names: list[str] | None = None, labels_csv=None,
                    max_images: int | None = None, seed: int = 0) -> LabelledImages:  # fmt: skip
        """An ImageFolder (or flat folder + labels CSV); `class_names` fixes label order (test data: the train's).

        `max_images` keeps a seeded subset with the classes as even as they allow (`stratified_subset`), chosen
        before any image is decoded, so a large folder costs only the subset's memory."""
        ds = open_image_dataset(root, labels_csv)
        names = list(class_names) if class_names else list(ds.class_names)
        labels = [-1 if y is None else y for y in ds.label_index(names)] if names else [-1] * len(ds)
        keep = stratified_subset(labels, max_images, seed)
        items, labels = [ds.items[i] for i in keep], [labels[i] for i in keep]
        source = str(Path(root).resolve()) + (f" [{len(keep)} of {len(ds)}, stratified, seed {seed}]" if len(keep) < len(ds) else "")
        pixels = [np.asarray(ds.open(it)) for it in items]  # ds.open: files, or a dataset held in memory (hf:)
        return cls(pixels, np.asarray(labels), [it.image_id for it in items], names, source)

    def subset(self, idx) -> LabelledImages:
        idx = [int(i) for i in np.asarray(idx).reshape(-1)]
        return LabelledImages([self.pixels[i] for i in idx], self.labels[idx], [self.keys[i] for i in idx],
                              self.class_names, f"{self.source}[{len(idx)}]")  # fmt: skip

    def tensors(self, size: int, channels: int) -> torch.Tensor:
        """[N, channels, size, size] in [-1, 1], converted once per (size, channels)."""
        k = (size, channels)
        if k not in self._tensors:
            if not len(self):
                self._tensors[k] = torch.empty(0, channels, size, size)
            else:
                self._tensors[k] = torch.stack([array_to_tensor(a, size, channels) for a in self.pixels])
        return self._tensors[k]

    def require_labels(self, what: str) -> None:
        if (self.labels < 0).any():
            n = int((self.labels < 0).sum())
            raise DiffdiscError(f"{what}: {n} of {len(self)} images have no label (use an ImageFolder or a labels CSV)")

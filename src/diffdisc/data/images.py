"""Image decoding and preprocessing shared by inference and the training recipes.

Any PIL-readable image becomes a float tensor in [-1, 1] of the backbone's size and channel count:
RGBA is composited on white, 16-bit and palette images are converted, tiny images are upsampled.
Training and inference use this same function so the model never sees a different resize.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DiffdiscError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def open_image(path: str | Path) -> Image.Image:
    """Decode fully (so truncated files fail here, not later) and normalise the mode to L or RGB."""
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im) or im
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DiffdiscError(f"cannot read image {path}: {e}") from e
    return normalise_mode(im)


def normalise_mode(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
        return Image.fromarray((a * 255 + 0.5).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    if im.mode in ("L", "RGB"):
        return im
    return im.convert("RGB")


def to_tensor(im: Image.Image, size: int, channels: int) -> torch.Tensor:
    """PIL image -> (C, size, size) float in [-1, 1]: resize shorter side (bicubic), centre crop."""
    im = im.convert("L" if channels == 1 else "RGB")
    if im.size != (size, size):
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
    a = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    if a.ndim == 2:
        a = a[None]
    else:
        a = a.transpose(2, 0, 1)
    if a.shape[0] != channels:  # e.g. a 3-channel model fed grayscale
        a = np.repeat(a[:1], channels, axis=0)
    return torch.from_numpy(np.ascontiguousarray(a))


def array_to_tensor(a: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """uint8 array (H, W) or (H, W, 3) -> model tensor, through the same path as files."""
    return to_tensor(Image.fromarray(a), size, channels)

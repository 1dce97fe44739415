"""Image decoding and preprocessing shared by inference and the training recipes.

Any PIL-readable image becomes a float tensor in [-1, 1] of the backbone's size and channel count through the
official Diffusion Classifier transform: torchvision `Resize(size, BICUBIC)` on the shorter side (PIL's
antialiased resampling), `CenterCrop(size)`, `ToTensor`, `Normalize([0.5], [0.5])`. Training and inference use
this same function so the model never sees a different resize.

Deliberate choices before that transform, where the official code only calls `convert("RGB")`:
- EXIF orientation is applied, so a phone photo is classified upright, as any viewer shows it;
- transparency is composited on white (not dropped to the hidden, often black, colour under alpha 0);
- 16-bit and float images are scaled to 8 bits rather than clipped.
Images over PIL's `Image.MAX_IMAGE_PIXELS` (about 89.5 M pixels by default) are refused as unreadable, so the
run's `--on-error` policy applies to them.
"""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision import transforms as T

from ..errors import DiffdiscError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def open_image(path: str | Path) -> Image.Image:
    """Decode fully (so truncated files fail here, not later) and normalise the mode to L or RGB.

    PIL's decompression-bomb warning (over `Image.MAX_IMAGE_PIXELS`) and error (over twice that) both become
    a DiffdiscError: an image too large to decode is unreadable, reported in one line, not a traceback.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im) or im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        limit = f"PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,}, a decompression-bomb guard"
        raise DiffdiscError(f"cannot read image {path}: more pixels than {limit}") from e
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


@functools.lru_cache
def transform(size: int) -> T.Compose:
    """The official Diffusion Classifier preprocessing, PIL image -> (C, size, size) in [-1, 1]."""
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                      T.ToTensor(), T.Normalize([0.5], [0.5])])  # fmt: skip


def to_tensor(im: Image.Image, size: int, channels: int) -> torch.Tensor:
    """PIL image -> (channels, size, size) float in [-1, 1] through `transform`, grayscale for 1-channel models."""
    x = transform(size)(im.convert("L" if channels == 1 else "RGB"))
    return x if x.shape[0] == channels else x[:1].repeat(channels, 1, 1)  # e.g. a 4-channel pixel model


def array_to_tensor(a: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """uint8 array (H, W) or (H, W, 3) -> model tensor, through the same path as files."""
    return to_tensor(Image.fromarray(a), size, channels)


def resize_note(sizes: Counter, size: int, what: str = "images") -> str | None:
    """One line for a whole run (not one per image): which source sizes ((w, h) counted) became the model's
    `size`, and how, or None when all match. Read off `transform`, so it cannot drift from what is done."""
    odd = Counter({wh: n for wh, n in sizes.items() if wh != (size, size)})
    if not odd:
        return None
    interp = transform(size).transforms[0].interpolation.value
    shown = ", ".join(f"{w}×{h}" + (f" ({n} images)" if len(odd) > 1 else "") for (w, h), n in odd.most_common(3))
    more = f" and {len(odd) - 3} more sizes" if len(odd) > 3 else ""
    return (f"{what} resized {shown}{more} -> {size}×{size} (the model's size): {interp} resize of the shorter side, "
            f"then centre crop; {odd.total()} of {sizes.total()} images")  # fmt: skip

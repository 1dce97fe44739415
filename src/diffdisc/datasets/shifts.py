"""Shifted copies of the embedded test sets, for effective robustness: does a classifier lose less under
distribution shift than its clean accuracy predicts?

Every shift starts from the images `export_shipped_test` writes (the same seeded stratified subset, the same
ids and, for scenes, the same seeded palette colours), so a shifted folder differs from its clean twin by the
shift alone, and every model is scored on the same images. Shift names:

  "<corruption>@<severity>"  ImageNet-C corruptions of the `imagecorruptions` package, severity 1-5
                             (ImageNet-C's constants, made for 224-pixel photos: on 28-32 pixel items the
                             blurs and weather are much stronger than their severity suggests)
  "unseen_colour"            scenes only: items tinted in colours outside `scenes.PALETTE` (UNSEEN_PALETTE)
  "position@<k>"             the item moved k pixels up, down, left or right (seeded per image), cropped at
                             the canvas edge
  "scale@<f>"                the item resized by f about its centre (box filter down, bicubic up), cropped
                             at the canvas edge

`kind` "classcond" gives grey 28x28 items (the class-conditional model's input); "scenes" gives one-item
32x32 RGB scenes (the text and contrastive models').
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import re
import sys
import types
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DiffdiscError
from ..runs.io import atomic_write_bytes
from .export import SCENE_COLOUR_SEED, export_imagefolder
from .fashion_mnist import CLASS_NAMES, load_shipped_subset, stratified_indices
from .scenes import PALETTE, SIZE, single_scenes

KINDS = ("classcond", "scenes")
CLEAN = "clean"  # accepted by `export_shifted`: the unshifted images, written by the same code path
# imagecorruptions.get_corruption_names("common"): the 15 corruptions of ImageNet-C's benchmark
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)  # fmt: skip
# hues no training scene has (the palette is red, green, blue, yellow, purple, orange, cyan, white)
UNSEEN_PALETTE: dict[str, tuple[int, int, int]] = {
    "pink": (255, 105, 180), "brown": (150, 75, 0), "grey": (128, 128, 128), "olive": (128, 128, 0),
}  # fmt: skip
SHIFTS = (
    tuple(f"{c}@{s}" for c in CORRUPTIONS for s in range(1, 6))
    + ("unseen_colour",)
    + tuple(f"position@{k}" for k in (2, 4, 6))
    + tuple(f"scale@{f:g}" for f in (0.5, 0.75, 1.25))
)
CORRUPTION_MIN_SIZE = 32  # imagecorruptions refuses smaller images
ITEM_SIZE = 28


def parse_shift(shift: str) -> tuple[str, object]:
    """(family, parameter): 'gaussian_noise@3' -> ('corruption', ('gaussian_noise', 3)), 'position@4' ->
    ('position', 4), 'scale@0.75' -> ('scale', 0.75), 'unseen_colour' / 'clean' -> (the name, None)."""
    if shift in (CLEAN, "unseen_colour"):
        return shift, None
    m = re.fullmatch(r"([a-z_]+)@([0-9.]+)", shift)
    if m:
        name, value = m.groups()
        try:
            if name == "position" and int(value) >= 1:
                return "position", int(value)
            if name == "scale" and float(value) > 0 and float(value) != 1:
                return "scale", float(value)
            if name in CORRUPTIONS and int(value) in range(1, 6):
                return "corruption", (name, int(value))
        except ValueError:
            pass
    raise DiffdiscError(f"unknown shift {shift!r}: use <corruption>@1..5 ({', '.join(CORRUPTIONS)}), "
                        "unseen_colour, position@<pixels>, scale@<factor> or clean")  # fmt: skip


def shifts_for(kind: str) -> tuple[str, ...]:
    """The names of SHIFTS that apply to `kind` (grey items have no colour to shift)."""
    _check_kind(kind)
    return tuple(s for s in SHIFTS if kind == "scenes" or s != "unseen_colour")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise DiffdiscError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _overlay(module, **attrs):
    """A stand-in for `module` with some attributes replaced: patches what one library sees, nobody else's."""
    proxy = types.ModuleType(module.__name__)
    proxy.__dict__.update(attrs, __getattr__=lambda name: getattr(module, name))
    return proxy


@functools.cache
def _corruptions():
    """imagecorruptions' module, made to run on today's stack and to draw its noise from `np.random` only.

    Its last release (2020) imports `pkg_resources` (gone from recent setuptools), calls skimage's `gaussian`
    with `multichannel` (now `channel_axis`), uses `np.float_` (gone in NumPy 2) and lets skimage's impulse
    noise seed itself; each is fixed in the module's own namespace, so the corruptions are the package's."""
    stub = None
    if "pkg_resources" not in sys.modules:  # a stand-in for the import only: its one use is replaced below
        stub = sys.modules["pkg_resources"] = types.ModuleType("pkg_resources")
        stub.resource_filename = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from imagecorruptions import corruptions
    except ImportError as e:
        raise DiffdiscError(f"the corruption shifts need imagecorruptions ({e}): pip install imagecorruptions") from None
    finally:
        if stub is not None and sys.modules.get("pkg_resources") is stub:
            del sys.modules["pkg_resources"]
    import skimage
    import skimage.filters

    folder = Path(corruptions.__file__).parent
    corruptions.resource_filename = lambda _package, name: str(folder / name)
    if "multichannel" not in inspect.signature(skimage.filters.gaussian).parameters:

        def gaussian(image, *args, multichannel=None, **kwargs):
            if multichannel:
                kwargs["channel_axis"] = -1
            return skimage.filters.gaussian(image, *args, **kwargs)

        corruptions.gaussian = gaussian
    if not hasattr(np, "float_"):
        corruptions.np = _overlay(np, float_=np.float64)
    seed_arg = "rng" if "rng" in inspect.signature(skimage.util.random_noise).parameters else "seed"

    def random_noise(image, **kwargs):
        kwargs.setdefault(seed_arg, int(np.random.randint(2**31)))
        return skimage.util.random_noise(image, **kwargs)

    corruptions.sk = _overlay(skimage, util=_overlay(skimage.util, random_noise=random_noise))
    return corruptions


@contextlib.contextmanager
def _legacy_seed(seed: int):
    """Seed NumPy's global generator (imagecorruptions draws from it) and give the caller's state back after."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def corrupt_image(image: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """`imagecorruptions.corrupt(image, corruption_name=name, severity=severity)`, seeded, on any small image.

    uint8 [H, W] (grey) or [H, W, 3] in, the same shape out. Images under 32 pixels a side are padded with
    black (the Fashion-MNIST background) to 32, corrupted and cropped back — padding, not upsampling, so the
    item's own pixels reach the corruption unchanged. A grey image is corrupted as its grey RGB copy and read
    back as luma (ITU-R 601, PIL's "L": how an RGB image reaches a grey model), so per-channel noise is partly
    averaged out (its standard deviation about 0.6x that of the RGB image's)."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise DiffdiscError(f"need a uint8 [H, W] or [H, W, 3] image, got {image.dtype} {image.shape}")
    if name not in CORRUPTIONS or severity not in range(1, 6):
        raise DiffdiscError(f"unknown corruption {name}@{severity} (names: {', '.join(CORRUPTIONS)}; severity 1-5)")
    h, w = image.shape[:2]
    top, left = max(CORRUPTION_MIN_SIZE - h, 0) // 2, max(CORRUPTION_MIN_SIZE - w, 0) // 2
    rgb = np.zeros((max(h, CORRUPTION_MIN_SIZE), max(w, CORRUPTION_MIN_SIZE), 3), np.uint8)
    rgb[top : top + h, left : left + w] = image[..., None] if image.ndim == 2 else image
    _corruptions()
    from imagecorruptions import corrupt

    with _legacy_seed(seed):
        out = corrupt(rgb, corruption_name=name, severity=severity)
    out = out[top : top + h, left : left + w]
    return np.asarray(Image.fromarray(out).convert("L")) if image.ndim == 2 else out


def place(item: np.ndarray, size: int, scale: float = 1.0, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """A grey item resized by `scale` about its centre and moved by `offset` (dy, dx) on a black size x size
    canvas, cropped at the edges; scale 1 and offset 0 centre it as `scenes.render` does."""
    if scale != 1.0:
        side = max(1, round(item.shape[0] * scale))
        resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC
        item = np.asarray(Image.fromarray(item).resize((side, side), resample))
    h, w = item.shape
    canvas = np.zeros((size, size), np.uint8)
    top, left = (size - h) // 2 + offset[0], (size - w) // 2 + offset[1]
    y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, size), min(left + w, size)
    if y1 > y0 and x1 > x0:
        canvas[y0:y1, x0:x1] = item[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas


def tint_rgb(gray: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """`scenes.tint` for any RGB colour (the same exact integer rounding)."""
    c = np.array(rgb, np.uint32)
    return ((gray[..., None].astype(np.uint32) * c + 127) // 255).astype(np.uint8)


def _rng(seed: int, shift: str, image_id: int) -> np.random.Generator:
    """One generator per (seed, shift, image): an image's shift does not depend on which others are exported."""
    return np.random.default_rng([seed, zlib.crc32(shift.encode()), int(image_id)])


DIRECTIONS = ((-1, 0), (1, 0), (0, -1), (0, 1))  # up, down, left, right


def shifted_images(kind: str, shift: str, per_class: int | None = None, seed: int = 0):
    """(images, labels, ids) of `kind` under `shift`: what `export_shifted` writes, as arrays."""
    _check_kind(kind)
    family, param = parse_shift(shift)
    if family == "unseen_colour" and kind != "scenes":
        raise DiffdiscError("unseen_colour shifts palette colours: it applies to kind 'scenes' only (grey items have no colour)")
    items, labels, ids = load_shipped_subset("test")
    if per_class:
        keep = stratified_indices(labels, per_class, seed)
        items, labels, ids = items[keep], labels[keep], ids[keep]
    size = SIZE if kind == "scenes" else ITEM_SIZE
    colours = None
    if kind == "scenes":  # the colours export_shipped_test(scenes=True) gives these items
        scenes = single_scenes(items, labels, seed=SCENE_COLOUR_SEED)
        colours = [PALETTE[s.items[0].colour] for s in scenes]
        clean = scenes.images
    else:
        clean = items
    if family == CLEAN:
        return clean.copy(), labels, ids
    out = []
    unseen = list(UNSEEN_PALETTE.values())
    for n, (i, item) in enumerate(zip(ids, items, strict=True)):
        rng = _rng(seed, shift, i)
        if family == "corruption":
            name, severity = param
            out.append(corrupt_image(clean[n], name, severity, seed=int(rng.integers(2**32))))
            continue
        colour = colours[n] if colours else None
        if family == "unseen_colour":
            colour = unseen[int(rng.integers(len(unseen)))]
            gray = place(item, size)
        elif family == "position":
            dy, dx = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
            gray = place(item, size, offset=(dy * param, dx * param))
        else:  # scale
            gray = place(item, size, scale=param)
        out.append(tint_rgb(gray, colour) if colour else gray)
    return np.stack(out), labels, ids


def export_shifted(kind: str, shift: str, out_dir: str | Path, per_class: int | None = None, seed: int = 0) -> Path:
    """The shipped test subset of `kind` under `shift` as an ImageFolder (ids = indices into the test split,
    as `export_shipped_test`), plus shift.json saying what it is; seeded, so a rerun writes the same bytes.

    `per_class` and `seed` pick the same stratified subset as `export_shipped_test(per_class, seed)`; `seed`
    also draws each image's noise, direction or colour."""
    images, labels, ids = shifted_images(kind, shift, per_class, seed)
    out = export_imagefolder(images, labels, CLASS_NAMES, out_dir, ids=ids)
    meta = {"kind": kind, "shift": shift, "per_class": per_class, "seed": seed, "n_images": len(labels)}
    if parse_shift(shift)[0] == "unseen_colour":
        meta["colours"] = UNSEEN_PALETTE
    atomic_write_bytes(out / "shift.json", json.dumps(meta, indent=2).encode())
    return out

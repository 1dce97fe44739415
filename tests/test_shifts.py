"""Shifted test sets: every shift is an ImageFolder of the clean set's images (same files, same labels, same size
and mode) with changed pixels, seeded; the corruption wrapper takes 28-pixel grey items."""

import json

import numpy as np
import pytest
from PIL import Image

from diffdisc.datasets.export import export_shipped_test
from diffdisc.datasets.shifts import (
    CORRUPTIONS,
    SHIFTS,
    UNSEEN_PALETTE,
    corrupt_image,
    export_shifted,
    parse_shift,
    place,
    shifted_images,
    shifts_for,
    tint_rgb,
)
from diffdisc.errors import DiffdiscError

GEOMETRY = {"classcond": ((28, 28), "L"), "scenes": ((32, 32), "RGB")}
# the grey path shares everything but padding and luma with the scenes one: one severity per corruption there
GREY_SHIFTS = [f"{c}@3" for c in CORRUPTIONS] + [s for s in SHIFTS if "@" not in s or s.split("@")[0] in ("position", "scale")]
RANDOM_SHIFTS = [f"{c}@1" for c in ("gaussian_noise", "shot_noise", "impulse_noise", "glass_blur", "motion_blur",
                                    "snow", "frost", "fog", "elastic_transform")] + ["position@4", "unseen_colour"]  # fmt: skip


def _folder(root):
    """{relative path: (label folder, pixels, size, mode)} of an exported ImageFolder."""
    out = {}
    for p in sorted(root.glob("*/*.png")):
        with Image.open(p) as im:
            out[str(p.relative_to(root))] = (p.parent.name, np.asarray(im), im.size, im.mode)
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    return {kind: _folder(export_shipped_test(root / kind, 1, 0, scenes=kind == "scenes")) for kind in GEOMETRY}


@pytest.mark.parametrize("kind", ["classcond", "scenes"])
def test_every_shift_is_the_clean_folder_shifted(kind, clean, tmp_path):
    names = [s for s in GREY_SHIFTS if s in shifts_for(kind)] if kind == "classcond" else list(shifts_for(kind))
    size, mode = GEOMETRY[kind]
    for shift in names:
        out = export_shifted(kind, shift, tmp_path / shift, per_class=1, seed=0)
        got = _folder(out)
        assert got.keys() == clean[kind].keys(), shift  # the same files, in the same label folders
        assert {v[2] for v in got.values()} == {size} and {v[3] for v in got.values()} == {mode}, shift
        changed = [not np.array_equal(got[k][1], clean[kind][k][1]) for k in got]
        assert sum(changed) >= len(changed) // 2, (shift, sum(changed))
        assert json.loads((out / "shift.json").read_text())["shift"] == shift
        assert json.loads((out / "classes.json").read_text())["ankle_boot"] == "ankle boot"


def test_clean_is_export_shipped_test(clean, tmp_path):
    for kind in GEOMETRY:
        got = _folder(export_shifted(kind, "clean", tmp_path / kind, per_class=1, seed=0))
        assert all(np.array_equal(got[k][1], clean[kind][k][1]) for k in got)


@pytest.mark.parametrize("shift", RANDOM_SHIFTS)
def test_seeded(shift):
    a, la, ia = shifted_images("scenes", shift, per_class=1, seed=0)
    b, lb, ib = shifted_images("scenes", shift, per_class=1, seed=0)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and np.array_equal(ia, ib)
    state = np.random.get_state()[1].copy()
    c, _, ic = shifted_images("scenes", shift, per_class=1, seed=1)
    assert not np.array_equal(a, c) and not np.array_equal(ia, ic)
    assert np.array_equal(np.random.get_state()[1], state)  # the caller's global generator is left alone


def test_corrupt_image_takes_small_images():
    rng = np.random.default_rng(0)
    grey = np.zeros((28, 28), np.uint8)
    grey[4:24, 6:22] = 200
    rgb = (rng.random((28, 28, 3)) * 255).astype(np.uint8)
    for image in (grey, rgb, np.zeros((32, 40, 3), np.uint8) + 90):
        for name in ("gaussian_noise", "defocus_blur", "frost", "fog", "glass_blur", "impulse_noise"):
            out = corrupt_image(image, name, 2, seed=3)
            assert out.shape == image.shape and out.dtype == np.uint8, name
            assert np.array_equal(out, corrupt_image(image, name, 2, seed=3)), name
    assert not np.array_equal(corrupt_image(grey, "gaussian_noise", 1), grey)
    noisier = [np.abs(corrupt_image(grey, "gaussian_noise", s).astype(int) - grey).mean() for s in (1, 5)]
    assert noisier[1] > noisier[0]
    with pytest.raises(DiffdiscError, match="uint8"):
        corrupt_image(grey.astype(np.float32), "gaussian_noise", 1)
    with pytest.raises(DiffdiscError, match="unknown corruption"):
        corrupt_image(grey, "gaussian_noise", 6)


def test_names_and_errors():
    from imagecorruptions import get_corruption_names

    from diffdisc.datasets.shifts import _corruptions

    _corruptions()  # importable on this stack
    assert list(CORRUPTIONS) == get_corruption_names("common")
    assert parse_shift("gaussian_noise@3") == ("corruption", ("gaussian_noise", 3))
    assert parse_shift("position@4") == ("position", 4) and parse_shift("scale@0.75") == ("scale", 0.75)
    assert all(parse_shift(s) for s in SHIFTS) and "unseen_colour" not in shifts_for("classcond")
    for bad in ("gaussian_noise@6", "blur@1", "position@0", "scale@1", "scale@x", "noise"):
        with pytest.raises(DiffdiscError, match="unknown shift"):
            parse_shift(bad)
    with pytest.raises(DiffdiscError, match="applies to kind .scenes. only"):
        shifted_images("classcond", "unseen_colour", 1)
    with pytest.raises(DiffdiscError, match="kind"):
        shifted_images("grey", "clean", 1)


def test_unseen_colours_and_geometry():
    from diffdisc.datasets.fashion_mnist import load_shipped_subset, stratified_indices
    from diffdisc.datasets.scenes import PALETTE

    assert not set(UNSEEN_PALETTE.values()) & set(PALETTE.values())
    items, labels, _ = load_shipped_subset()
    items = items[stratified_indices(labels, 1, 0)]
    images, _, _ = shifted_images("scenes", "unseen_colour", 1)
    for img, item in zip(images, items, strict=True):  # each image: its item, centred, in one unseen colour
        assert any(np.array_equal(img, tint_rgb(place(item, 32), c)) for c in UNSEEN_PALETTE.values())
    item = items[0]
    moved = place(item, 28, offset=(0, 4))
    assert np.array_equal(moved[:, 4:], item[:, :-4]) and not moved[:, :4].any()
    small = place(item, 28, scale=0.5)
    assert not small[:7].any() and not small[21:].any()  # 14 pixels, centred

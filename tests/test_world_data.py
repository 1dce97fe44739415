"""Embedded data: IDX reader errors, shipped subset, deterministic scenes whose captions match their items."""

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from diffdisc.errors import DiffdiscError
from diffdisc.world.export import export_shipped_test
from diffdisc.world.fashion_mnist import load_fashion_mnist, load_shipped_subset, read_idx
from diffdisc.world.scenes import PALETTE, class_colour, generate_scenes, render, swap_colours, swap_sides


def _idx(path, arr, magic=0x08):
    path.write_bytes(bytes([0, 0, magic, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes())
    return path


def test_idx_reader_and_errors(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(read_idx(_idx(tmp_path / "a.idx", a)), a)
    gz = tmp_path / "a.idx.gz"
    gz.write_bytes(gzip.compress((tmp_path / "a.idx").read_bytes()))
    np.testing.assert_array_equal(read_idx(gz), a)
    with pytest.raises(DiffdiscError, match="bad magic"):
        read_idx(_idx(tmp_path / "b.idx", a, magic=0x55))
    (tmp_path / "c.idx").write_bytes((tmp_path / "a.idx").read_bytes()[:-5])
    with pytest.raises(DiffdiscError, match="holds"):
        read_idx(tmp_path / "c.idx")
    with pytest.raises(DiffdiscError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", root=tmp_path / "nowhere")


def test_shipped_subset_is_stratified():
    images, labels, indices = load_shipped_subset()
    assert images.shape == (1000, 28, 28) and np.bincount(labels).tolist() == [100] * 10
    assert len(set(indices.tolist())) == 1000


def test_scenes_deterministic_and_captions_match():
    images, labels, _ = load_shipped_subset()
    a = generate_scenes(labels, 20, "pair", seed=3)
    b = generate_scenes(labels, 20, "pair", seed=3)
    c = generate_scenes(labels, 20, "pair", seed=4)
    assert a == b and a != c
    assert all(np.array_equal(render(x, images), render(y, images)) for x, y in zip(a, b, strict=True))
    for s in generate_scenes(labels, 30, "single", seed=1) + a:
        for it in s.items:
            assert it.name in s.caption and it.colour in s.caption and it.class_id == labels[it.source]
    s = a[0]
    left = next(i for i in s.items if i.position == "left")
    right = next(i for i in s.items if i.position == "right")
    img = render(s, images).astype(float)
    assert img[:, :16].sum() > 0 and img[:, 16:].sum() > 0
    if s.relation == "left of":
        assert s.caption.startswith(f"a {left.colour} {left.name} to the left of")
    else:
        assert s.caption.startswith(f"a {right.colour} {right.name} to the right of")


def test_colour_correlation_and_conflict():
    _, labels, _ = load_shipped_subset()
    assert all(s.items[0].colour == class_colour(s.items[0].class_id) for s in generate_scenes(labels, 50, colour_correlation=1.0))
    assert all(s.items[0].colour != class_colour(s.items[0].class_id) for s in generate_scenes(labels, 50, conflict=True))


def test_swaps_change_only_their_factor():
    images, labels, _ = load_shipped_subset()
    s = generate_scenes(labels, 1, "pair", seed=0)[0]
    sc, ss = swap_colours(s), swap_sides(s)
    assert [i.colour for i in sc.items] == [i.colour for i in s.items][::-1]
    assert [(i.source, i.position) for i in sc.items] == [(i.source, i.position) for i in s.items]
    assert [i.position for i in ss.items] == ["right", "left"] and [i.colour for i in ss.items] == [i.colour for i in s.items]
    assert sc.caption != s.caption and set(PALETTE) >= {i.colour for i in sc.items}
    assert not np.array_equal(render(sc, images), render(s, images))


def test_export_round_trip(tmp_path):
    out = export_shipped_test(tmp_path / "f", per_class=2)
    files = sorted(out.rglob("*.png"))
    assert len(files) == 20 and (out / "ankle_boot").is_dir()
    images, _, indices = load_shipped_subset()
    f = files[0]
    k = int(np.flatnonzero(indices == int(f.stem))[0])
    np.testing.assert_array_equal(np.asarray(Image.open(f)), images[k])

"""Embedded data: IDX reader errors, shipped subset, deterministic scenes whose captions match their items,
swaps that change one factor only, and lossless idempotent exports."""

import gzip
import json
import struct

import numpy as np
import pytest
from PIL import Image

from diffdisc.datasets.export import export_captions, export_imagefolder, export_shipped_test
from diffdisc.datasets.fashion_mnist import CLASS_NAMES, load_fashion_mnist, load_shipped_subset, read_idx
from diffdisc.datasets.scenes import (
    COLOURS,
    PALETTE,
    SceneSet,
    class_colour,
    describe,
    generate_scenes,
    swap_colours,
    swap_sides,
)
from diffdisc.errors import DiffdiscError


@pytest.fixture(scope="module")
def subset():
    images, labels, _ = load_shipped_subset()
    return images, labels


def _noun(it):
    return f"{'an' if it.colour[0] in 'aeiou' else 'a'} {it.colour} {it.class_name}"


def _idx(path, arr, magic=0x08):
    head = bytes([0, 0, magic, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.write_bytes(head + arr.tobytes())
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


def test_shipped_subset_is_stratified(subset):
    images, labels = subset
    _, _, indices = load_shipped_subset()
    assert images.shape == (1000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [100] * 10
    assert len(np.unique(indices)) == 1000 and indices.min() >= 0 and indices.max() < 10_000


def test_scenes_deterministic(subset):
    a = generate_scenes(*subset, 20, "pair", seed=3)
    b = generate_scenes(*subset, 20, "pair", seed=3)
    c = generate_scenes(*subset, 20, "pair", seed=4)
    assert a.images.shape == (20, 32, 32, 3) and a.images.dtype == np.uint8
    assert a.images.tobytes() == b.images.tobytes() and a.captions == b.captions
    assert a.images.tobytes() != c.images.tobytes() and a.captions != c.captions
    assert all(s.image.base is a.images for s in a)  # scenes view the stacked array, no copy


@pytest.mark.parametrize("kind", ["single", "pair"])
def test_captions_match_items(subset, kind):
    images, labels = subset
    scenes = generate_scenes(images, labels, 40, kind, seed=1)
    for s in scenes:
        for it, src in zip(s.items, s.sources, strict=True):
            assert it.class_name == CLASS_NAMES[it.class_id] == CLASS_NAMES[labels[it.source]]
            np.testing.assert_array_equal(src, images[it.source])
        if kind == "single":
            it = s.items[0]
            assert s.caption == _noun(it) and it.position == "centre"
            assert s.image[:2].max() == 0 and s.image[:, -2:].max() == 0  # 28x28 centred, pad 2
        else:
            left, right = sorted(s.items, key=lambda it: it.position != "left")
            subj, obj = (left, right) if s.relation == "left of" else (right, left)
            assert s.caption == f"{_noun(subj)} to the {s.relation} {_noun(obj)}"
            assert left.class_id != right.class_id and left.colour != right.colour
            assert s.image[:8].max() == 0 and s.image[24:].max() == 0  # 16x16 items, vertically centred
    assert scenes.labels.shape == (40, 1 if kind == "single" else 2)
    assert {c for cs in scenes.colours for c in cs} <= set(COLOURS)
    assert len({s.caption for s in scenes}) > 20  # colours and classes vary
    for s in scenes:
        plain = [w for w in describe(s.items, s.relation, colours=False).split() if w not in ("a", "an")]
        assert plain == [w for w in s.caption.split() if w not in (*COLOURS, "a", "an")]


def test_tint_keeps_shape_and_colour(subset):
    s = generate_scenes(*subset, 1, "single", seed=0)[0]
    gray, rgb = s.sources[0], s.image[2:30, 2:30].astype(int)
    assert ((rgb.max(-1) > 0) == (gray > 0)).all()  # same silhouette
    brightest = np.unravel_index(gray.argmax(), gray.shape)
    expect = np.array(PALETTE[s.items[0].colour]) * int(gray[brightest]) / 255
    assert np.abs(rgb[brightest] - expect).max() <= 1


def test_colour_correlation_and_conflict(subset):
    for kind in ("single", "pair"):
        corr = generate_scenes(*subset, 60, kind, seed=2, colour_correlation=1.0)
        assert all(it.colour == class_colour(it.class_id) for s in corr for it in s.items)
        conf = generate_scenes(*subset, 60, kind, seed=2, conflict=True)
        assert all(it.colour != class_colour(it.class_id) for s in conf for it in s.items)
    free = generate_scenes(*subset, 200, seed=2)
    assert 0 < np.mean([s.items[0].colour == class_colour(s.items[0].class_id) for s in free]) < 0.5
    with pytest.raises(DiffdiscError):
        generate_scenes(*subset, 1, colour_correlation=1.5)
    with pytest.raises(DiffdiscError):
        generate_scenes(*subset, 1, kind="triple")


def test_swaps_change_only_their_factor(subset):
    for s in generate_scenes(*subset, 10, "pair", seed=0):
        sc, ss = swap_colours(s), swap_sides(s)
        assert [it.colour for it in sc.items] == [it.colour for it in s.items][::-1]
        assert [it._replace(colour="") for it in sc.items] == [it._replace(colour="") for it in s.items]
        assert [it.position for it in ss.items] == [it.position for it in s.items][::-1]
        assert [it._replace(position="") for it in ss.items] == [it._replace(position="") for it in s.items]
        # the same pixels, only recoloured / moved
        assert not np.array_equal(sc.image, s.image) and not np.array_equal(ss.image, s.image)
        np.testing.assert_array_equal(ss.image[:, 16:], s.image[:, :16])
        np.testing.assert_array_equal(ss.image[:, :16], s.image[:, 16:])
        np.testing.assert_array_equal(swap_colours(sc).image, s.image)
        np.testing.assert_array_equal(swap_sides(ss).image, s.image)
        # captions: colour words exchanged; sides swapped -> only "left"/"right" differs
        assert sorted(sc.caption.split()) == sorted(s.caption.split()) and sc.caption != s.caption
        diff = [(x, y) for x, y in zip(s.caption.split(), ss.caption.split(), strict=True) if x != y]
        assert sorted(diff[0]) == ["left", "right"] and len(diff) == 1
    with pytest.raises(DiffdiscError):
        swap_colours(generate_scenes(*subset, 1, "single")[0])
    assert len(SceneSet.from_scenes([swap_colours(s) for s in generate_scenes(*subset, 3, "pair")])) == 3


def test_export_round_trip_and_rerun(tmp_path, subset):
    images, labels = subset
    out = export_imagefolder(images[:12], labels[:12], CLASS_NAMES, tmp_path / "f")
    files = sorted(out.rglob("*.png"))
    assert len(files) == 12 and json.loads((out / "classes.json").read_text())["ankle_boot"] == "ankle boot"
    for f in files:
        k = int(f.stem)
        assert f.parent.name == CLASS_NAMES[labels[k]].replace(" ", "_")
        np.testing.assert_array_equal(np.asarray(Image.open(f)), images[k])
    stamp = {f: f.stat().st_mtime_ns for f in files}
    export_imagefolder(images[:12], labels[:12], CLASS_NAMES, tmp_path / "f")
    assert {f: f.stat().st_mtime_ns for f in files} == stamp  # identical files are left alone
    export_imagefolder(255 - images[:1], labels[:1], CLASS_NAMES, tmp_path / "f")
    first = next(f for f in files if int(f.stem) == 0)
    np.testing.assert_array_equal(np.asarray(Image.open(first)), 255 - images[0])  # changed: rewritten
    assert not list(out.rglob("*.tmp"))

    scenes = generate_scenes(images, labels, 6, "pair", seed=5)
    cap = export_captions(scenes, tmp_path / "c")
    rows = [json.loads(line) for line in (cap / "captions.jsonl").read_text().splitlines()]
    assert [r["caption"] for r in rows] == scenes.captions
    assert [r["class_ids"] for r in rows] == scenes.labels.tolist()
    for r, s in zip(rows, scenes, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(cap / r["image"])), s.image)


def test_export_shipped_test(tmp_path):
    images, _, indices = load_shipped_subset()
    out = export_shipped_test(tmp_path / "t", per_class=2)
    files = sorted(out.rglob("*.png"))
    assert len(files) == 20 and len({f.parent.name for f in files}) == 10
    for f in files[:5]:
        k = int(np.flatnonzero(indices == int(f.stem))[0])
        with Image.open(f) as im:
            assert im.mode == "L" and im.size == (28, 28)
            np.testing.assert_array_equal(np.asarray(im), images[k])


def test_coloured_label_space_is_80_way_stratified_with_a_two_level_tree(tmp_path):
    from collections import Counter

    from diffdisc.data.folders import open_image_dataset
    from diffdisc.datasets.export import coloured_classes, coloured_tree, export_coloured_test

    classes = coloured_classes()
    assert len(classes) == len(set(classes)) == 80
    leaves = [leaf for node in coloured_tree()["children"] for leaf in node["children"]]
    assert sorted(leaves) == sorted(classes)
    ds = open_image_dataset(export_coloured_test(tmp_path / "c", n=160, seed=0))
    counts = Counter(ds.label_index(classes))
    assert len(ds) == 160 and len(counts) == 80 and set(counts.values()) == {2}
    small = open_image_dataset(export_coloured_test(tmp_path / "s", n=80, seed=0))
    assert {it.image_id for it in small.items} <= {it.image_id for it in ds.items}  # a larger n keeps a smaller n's

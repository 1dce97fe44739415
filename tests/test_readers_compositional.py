"""ARO, EqBen and CLEVR in their published layouts: tiny fixtures written as the papers' files are, each read back
and refused when a file is missing, a row is malformed or a split does not exist. The builders are shared with
test_suite.py (the suite runs the same fixtures)."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from diffdisc.data import aro
from diffdisc.data.aro import aro_correct, aro_metrics, open_aro, pre_caption
from diffdisc.data.clevr import open_clevr
from diffdisc.data.eqben import open_eqben
from diffdisc.data.winoground import MATCH_BENCHMARKS, open_match_benchmark
from diffdisc.errors import DiffdiscError

NOUNS = {"man", "horse", "dog", "beach", "ball", "grass", "cat", "table"}
ADJS = {"brown", "red", "big", "small", "white"}


def lexicon_tagger(text: str) -> list[tuple[str, str]]:
    """A stand-in for spaCy's tagger (not installed here): Penn tags from a word list."""
    tokens = re.findall(r"\w+|[^\w\s]", text)
    return [(t, "NN" if t.lower() in NOUNS else "JJ" if t.lower() in ADJS else "DT") for t in tokens]


def _img(path, size=(40, 30), colour=(200, 40, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size[1], size[0], 3), np.uint8)
    a[..., 0], a[..., 1], a[..., 2] = colour
    a[: size[1] // 2, : size[0] // 2] = (250, 250, 250)  # a corner, so a crop shows which part was cut
    Image.fromarray(a).save(path)


VG_RELATION = [
    {"image_path": "1.jpg", "bbox_x": 2, "bbox_y": 3, "bbox_w": 20, "bbox_h": 15, "relation_name": "on",
     "true_caption": "the cat is on the table", "false_caption": "the table is on the cat"},
    {"image_path": "2.jpg", "bbox_x": 0, "bbox_y": 0, "bbox_w": 30, "bbox_h": 30, "relation_name": "next to",
     "true_caption": "the dog is next to the ball", "false_caption": "the ball is next to the dog"},
    {"image_path": "1.jpg", "bbox_x": 10, "bbox_y": 5, "bbox_w": 25, "bbox_h": 20, "relation_name": "on",
     "true_caption": "the man is on the horse", "false_caption": "the horse is on the man"},
]  # fmt: skip
VG_ATTRIBUTION = [
    {"image_path": "2.jpg", "bbox_x": 1, "bbox_y": 1, "bbox_w": 16, "bbox_h": 16, "attributes": ["white", "brown"],
     "true_caption": "the white cat and the brown dog", "false_caption": "the brown cat and the white dog"},
    {"image_path": "1.jpg", "bbox_x": 4, "bbox_y": 2, "bbox_w": 12, "bbox_h": 20, "attributes": ["red", "small"],
     "true_caption": "the red ball and the small dog", "false_caption": "the small ball and the red dog"},
]  # fmt: skip


def make_aro_vg(root):
    """ARO's VG files: visual_genome_{relation,attribution}.json + images/ (the extracted vgr_vga_images.zip)."""
    for n, colour in (("1.jpg", (200, 30, 30)), ("2.jpg", (30, 30, 200))):
        _img(root / "images" / n, colour=colour)
    (root / "visual_genome_relation.json").write_text(json.dumps(VG_RELATION))
    (root / "visual_genome_attribution.json").write_text(json.dumps(VG_ATTRIBUTION))
    return root


KARPATHY = [
    {"image": "val2014/COCO_val2014_000000000042.jpg", "caption": ["A man riding a brown horse.", "A big dog on the beach!"]},
    {"image": "val2014/COCO_val2014_000000000073.jpg", "caption": ["A small red ball on the grass"]},
]  # fmt: skip


def make_order(root, task="coco_order", split="test"):
    """BLIP's Karpathy file (coco_karpathy_<split>.json / flickr30k_<split>.json) and the images it names."""
    entries = json.loads(json.dumps(KARPATHY))
    if task == "flickr30k_order":
        for i, e in enumerate(entries):
            e["image"] = f"flickr30k-images/{1000 + i}.jpg"
    for i, e in enumerate(entries):
        _img(root / e["image"], colour=(40 * i, 120, 60))
    name = aro.ORDER_FILES[task].format(split=split)
    (root / name).write_text(json.dumps(entries))
    return root


def make_eqben(root):
    """Jeong et al.'s EqBen subset: eqbench_subset/all_select.json + images/ (a Kubric frame as a BGR .npy)."""
    images = root / "eqbench_subset" / "images"
    _img(images / "eqbenag/v1/0.jpg", colour=(10, 200, 10))
    _img(images / "eqbenag/v1/1.jpg", colour=(10, 10, 200))
    frame = np.zeros((12, 16, 3), np.uint8)
    frame[..., 0] = 255  # blue in BGR
    (images / "eqbenkubric_cnt/s1").mkdir(parents=True)
    np.save(images / "eqbenkubric_cnt/s1/a.npy", frame)
    np.save(images / "eqbenkubric_cnt/s1/b.npy", frame[:, :, ::-1].copy())
    rows = [{"image0": "eqbenag/v1/0.jpg", "image1": "eqbenag/v1/1.jpg",
             "caption0": "a person opens the door", "caption1": "a person closes the door"},
            {"image0": "eqbenkubric_cnt/s1/a.npy", "image1": "eqbenkubric_cnt/s1/b.npy",
             "caption0": "two spheres", "caption1": "three spheres"}]  # fmt: skip
    (root / "eqbench_subset" / "all_select.json").write_text(json.dumps(rows))
    return root


def make_clevr(root):
    """Jeong et al.'s CLEVR format: clevr/captions/<task>.json {image: [[caption, caption], ...]}, clevr/images/."""
    base = root / "clevr"
    _img(base / "images" / "CLEVR_val_000001.png", colour=(120, 120, 120))
    _img(base / "images" / "CLEVR_val_000002.png", colour=(90, 90, 90))
    (base / "captions").mkdir(parents=True)
    binding = {"CLEVR_val_000001.png": [["a red cube and a blue sphere", "a blue cube and a red sphere"],
                                        ["a small cube and a large sphere", "a large cube and a small sphere"]],
               "CLEVR_val_000002.png": [["a green cylinder and a gray cube", "a gray cylinder and a green cube"]]}  # fmt: skip
    (base / "captions" / "pair_binding_color.json").write_text(json.dumps(binding))
    spatial = {"CLEVR_val_000001.png": [["a cube right of a sphere", "a cube left of a sphere"]]}  # [false, true]
    (base / "captions" / "spatial.json").write_text(json.dumps(spatial))
    return root


# ---------------------------------------------------------------------------------------------------- ARO


def test_vg_relation_crops_as_aro_does(tmp_path):
    root = make_aro_vg(tmp_path / "aro")
    groups = open_aro("aro/vg_relation", root, crops_dir=tmp_path / "crops")
    assert [g.id for g in groups] == ["vg_relation-0", "vg_relation-1", "vg_relation-2"]
    assert groups[0].captions == ("the cat is on the table", "the table is on the cat")  # the true caption first
    assert [g.tags for g in groups] == [("on",), ("next to",), ("on",)]
    crop = Image.open(groups[0].images[0])
    assert crop.size == (20, 15) and groups[0].images[0].parent == tmp_path / "crops"
    with Image.open(root / "images" / "1.jpg") as im:
        want = np.asarray(im.convert("RGB").crop((2, 3, 22, 18)))
    assert np.array_equal(np.asarray(crop), want)  # exactly ARO's crop, stored losslessly
    mtime = groups[0].images[0].stat().st_mtime_ns
    again = open_aro("vg_relation", root, crops_dir=tmp_path / "crops")  # the alias; crops are reused
    assert again[0].images[0].stat().st_mtime_ns == mtime
    sub = open_aro("aro/vg_relation", root, limit=2, crops_dir=tmp_path / "crops")
    assert len(sub) == 2 and {g.tags[0] for g in sub} == {"on", "next to"}  # stratified over relation types
    default = open_aro("aro/vg_attribution", root)
    assert default[0].tags == ("white_brown",) and default[0].images[0].parent == root / "diffdisc-crops" / "vg_attribution"


def test_vg_refusals_name_the_file(tmp_path):
    root = make_aro_vg(tmp_path / "aro")
    (root / "visual_genome_relation.json").unlink()
    with pytest.raises(DiffdiscError, match=r"visual_genome_relation\.json is missing"):
        open_aro("aro/vg_relation", root)
    with pytest.raises(DiffdiscError, match="no split 'val'"):
        open_aro("aro/vg_attribution", root, "val")
    with pytest.raises(DiffdiscError, match=r"does not exist"):
        open_aro("aro/vg_attribution", tmp_path / "nowhere")
    bad = [dict(VG_ATTRIBUTION[0], attributes="white")]
    (root / "visual_genome_attribution.json").write_text(json.dumps(bad))
    with pytest.raises(DiffdiscError, match="item 0: attributes must be a list of two strings"):
        open_aro("aro/vg_attribution", root)
    (root / "visual_genome_attribution.json").write_text(json.dumps([dict(VG_ATTRIBUTION[0], bbox_w=0)]))
    with pytest.raises(DiffdiscError, match="no usable box"):
        open_aro("aro/vg_attribution", root)
    (root / "visual_genome_attribution.json").write_text(json.dumps([{"image_path": "1.jpg"}]))
    with pytest.raises(DiffdiscError, match="item 0 lacks 'bbox_x'"):
        open_aro("aro/vg_attribution", root)
    (root / "visual_genome_attribution.json").write_text(json.dumps([dict(VG_ATTRIBUTION[0], image_path="gone.jpg")]))
    with pytest.raises(DiffdiscError, match=r"gone\.jpg of item 0 is missing"):
        open_aro("aro/vg_attribution", root)
    (root / "visual_genome_attribution.json").write_text("{not json")
    with pytest.raises(DiffdiscError, match="not valid JSON"):
        open_aro("aro/vg_attribution", root)
    with pytest.raises(DiffdiscError, match="unknown ARO task"):
        open_aro("aro/vg_colour", root)


@pytest.mark.parametrize("task", ["coco_order", "flickr30k_order"])
def test_order_tasks_perturb_word_order_seeded(tmp_path, task):
    root = make_order(tmp_path / task, task)
    groups = open_aro(f"aro/{task}", root, tagger=lexicon_tagger)
    assert [g.id for g in groups] == [f"{task}-0-0", f"{task}-0-1", f"{task}-1-0"]
    g = groups[0]
    assert g.captions[0] == "a man riding a brown horse" == pre_caption(KARPATHY[0]["caption"][0])
    written = json.loads((root / aro.ORDER_FILES[task].format(split="test")).read_text())
    assert len(g.captions) == 5 and g.images[0] == root / written[0]["image"]
    words = sorted(g.captions[0].split())
    assert all(sorted(c.split()) == words for c in g.captions[1:])  # only the order changes
    nouns_shuffled = g.captions[1].split()
    assert [w for w in nouns_shuffled if w not in NOUNS | ADJS] == [w for w in g.captions[0].split() if w not in NOUNS | ADJS]
    assert [c.captions for c in open_aro(f"aro/{task}", root, tagger=lexicon_tagger)] == [c.captions for c in groups]
    other = open_aro(f"aro/{task}", root, tagger=lexicon_tagger, perturb_seed=1)
    assert [c.captions for c in other] != [c.captions for c in groups]
    assert len(open_aro(f"aro/{task}", root, tagger=lexicon_tagger, limit=2)) == 2
    with pytest.raises(DiffdiscError, match="no split 'train'"):
        open_aro(f"aro/{task}", root, "train", tagger=lexicon_tagger)
    with pytest.raises(DiffdiscError, match=r"_val\.json is missing"):
        open_aro(f"aro/{task}", root, "val", tagger=lexicon_tagger)
    name = aro.ORDER_FILES[task].format(split="test")
    (root / name).write_text(json.dumps([{"image": "x.jpg"}]))
    with pytest.raises(DiffdiscError, match="entry 0 needs 'image' and 'caption'"):
        open_aro(f"aro/{task}", root, tagger=lexicon_tagger)
    (root / name).write_text(json.dumps([{"image": "x.jpg", "caption": ["a dog"]}]))
    with pytest.raises(DiffdiscError, match=r"x\.jpg of entry 0 is missing"):
        open_aro(f"aro/{task}", root, tagger=lexicon_tagger)


def test_order_tasks_without_spacy_say_how_to_install(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_spacy(name, *args, **kwargs):
        if name == "spacy":
            raise ImportError("no spacy")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_spacy)
    root = make_order(tmp_path / "coco")
    with pytest.raises(DiffdiscError, match="python -m spacy download en_core_web_sm"):
        open_aro("aro/coco_order", root)


def test_aro_metrics_as_the_paper_reports_them():
    right, wrong, tie = np.array([[0.1, 0.5]]), np.array([[0.5, 0.1]]), np.array([[0.3, 0.3]])
    assert aro_correct("vg_relation", right) and not aro_correct("vg_relation", tie)  # ARO's [false, true] argmax
    assert aro_correct("coco_order", np.array([[0.2, 0.2, 0.9, 0.9, 0.9]]))  # a perturbation identical to it ties
    # relations: "on" 1/2, "under" 1/1, "next to" (symmetric: left out) 0/1 -> macro (0.5 + 1) / 2
    mats, tags = [right, wrong, right, wrong], [("on",), ("on",), ("under",), ("next to",)]
    m = aro_metrics("aro/vg_relation", mats, tags)
    assert m["macro accuracy"]["mean"] == pytest.approx(0.75) and m["accuracy"]["mean"] == pytest.approx(0.5)
    assert m["types"] == {"kept": 2, "all": 3, "rule": "relations not in ARO's symmetric list"}
    lo, hi = m["macro accuracy"]["ci95"]
    assert 0.5 <= lo <= 0.75 <= hi <= 1.0  # "under" always 1, "on" resampled
    # attribute pairs: only those with >= 25 items count
    mats = [right] * 20 + [wrong] * 5 + [wrong] * 3
    tags = [("red_small",)] * 25 + [("white_brown",)] * 3
    a = aro_metrics("aro/vg_attribution", mats, tags)
    assert a["macro accuracy"]["mean"] == pytest.approx(0.8) and a["types"]["kept"] == 1
    few = aro_metrics("aro/vg_attribution", [right], [("red_small",)])
    assert few["macro accuracy"]["mean"] != few["macro accuracy"]["mean"] and "no attribute pairs" in few["note"]
    o = aro_metrics("aro/coco_order", [np.array([[0.1, 0.2, 0.3, 0.4, 0.5]]), np.array([[0.9, 0.2, 0.3, 0.4, 0.5]])], [(), ()])
    assert o["headline"] == "precision@1" and o["precision@1"]["mean"] == 0.5


# ---------------------------------------------------------------------------------------------------- EqBen


def test_eqben_subset_layout_and_npy_frames(tmp_path):
    root = make_eqben(tmp_path / "eqbench")
    groups = open_eqben("eqben", root, images_dir=tmp_path / "frames")
    assert [g.id for g in groups] == ["eqben-0", "eqben-1"] and [g.tags for g in groups] == [("eqbenag",), ("eqbenkubric_cnt",)]
    assert groups[0].captions == ("a person opens the door", "a person closes the door") and len(groups[0].images) == 2
    frame = np.asarray(Image.open(groups[1].images[0]))
    assert groups[1].images[0].parent == tmp_path / "frames" and frame.shape == (12, 16, 3)
    assert (frame[..., 2] == 255).all() and (frame[..., 0] == 0).all()  # BGR blue -> RGB blue, as Jeong et al.
    assert [g.id for g in open_match_benchmark("eqben/eqbenag", root)] == ["eqben-0"]
    assert "eqben/eqbenkubric_cnt" in MATCH_BENCHMARKS
    with pytest.raises(DiffdiscError, match="no rows of eqben/eqbensd"):
        open_eqben("eqben/eqbensd", root)
    with pytest.raises(DiffdiscError, match="no split 'val'"):
        open_eqben("eqben", root, "val")
    np.save(root / "eqbench_subset/images/eqbenkubric_cnt/s1/a.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(DiffdiscError, match="cannot read .* as an array file"):  # a pickle is never loaded
        open_eqben("eqben", root, images_dir=tmp_path / "frames2")
    (root / "eqbench_subset/all_select.json").write_text(json.dumps([{"image0": "a.jpg", "caption0": "x"}]))
    with pytest.raises(DiffdiscError, match="row 0 needs image0, image1, caption0, caption1"):
        open_eqben("eqben", root)
    (root / "eqbench_subset/all_select.json").unlink()
    with pytest.raises(DiffdiscError, match=r"all_select\.json is missing"):
        open_eqben("eqben", root)


# ---------------------------------------------------------------------------------------------------- CLEVR


def test_clevr_pairs_true_caption_first(tmp_path):
    root = make_clevr(tmp_path)
    groups = open_clevr("clevr/pair_binding_color", root)
    assert [g.id for g in groups] == ["pair_binding_color-CLEVR_val_000001.png-0", "pair_binding_color-CLEVR_val_000001.png-1",
                                      "pair_binding_color-CLEVR_val_000002.png-0"]  # fmt: skip
    assert groups[0].captions == ("a red cube and a blue sphere", "a blue cube and a red sphere")
    spatial = open_clevr("clevr_spatial", root / "clevr")  # Jeong et al.'s name; the clevr/ folder itself
    assert spatial[0].captions == ("a cube left of a sphere", "a cube right of a sphere")  # stored [false, true]
    assert len(open_match_benchmark("clevr_binding_color", root)) == 3 and len(open_clevr("clevr/pair_binding_color", root, limit=2)) == 2
    with pytest.raises(DiffdiscError, match=r"captions/recognition_color\.json is missing"):
        open_clevr("clevr/recognition_color", root)
    with pytest.raises(DiffdiscError, match="no split 'train'"):
        open_clevr("clevr/spatial", root, "train")
    (root / "clevr/captions/spatial.json").write_text(json.dumps({"x.png": [["only one"]]}))
    with pytest.raises(DiffdiscError, match=r"pair 0: expected \[caption, caption\]"):
        open_clevr("clevr/spatial", root)
    (root / "clevr/captions/spatial.json").write_text(json.dumps({"x.png": [["a", "b"]]}))
    with pytest.raises(DiffdiscError, match=r"x\.png is missing"):
        open_clevr("clevr/spatial", root)
    with pytest.raises(DiffdiscError, match="unknown CLEVR task"):
        open_clevr("clevr/colour", root)

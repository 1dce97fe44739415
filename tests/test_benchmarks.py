"""Standard benchmarks by name: tiny on-disk datasets in the layouts torchvision and clip_benchmark read,
clip_benchmark's JSON result format, Winoground as the Hugging Face download and its per-tag breakdown."""

import json
import math
import os
import pickle
import zipfile
from argparse import Namespace

import numpy as np
import pytest
from PIL import Image

from diffdisc.data.benchmarks import LI_TEMPLATES, BenchmarkDataset, benchmark_templates, open_benchmark
from diffdisc.data.winoground import open_match_benchmark, open_winoground, tag_breakdown
from diffdisc.errors import DiffdiscError
from diffdisc.results.clip_benchmark import (
    clip_benchmark_rows,
    read_clip_benchmark_json,
    write_clip_benchmark_json,
)

CIFAR_COLOURS = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (0, 250, 0)]  # test images, labels 0, 1, 2, 1


def _cifar_batch(colours, labels):
    """torchvision's CIFAR batch: a pickled dict, "data" N x 3072 uint8 (R plane, G plane, B plane per row)."""
    data = np.stack([np.concatenate([np.full(1024, c, np.uint8) for c in rgb]) for rgb in colours])
    return {"data": data, "labels": list(labels)}


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    d = root / "cifar-10-batches-py"
    d.mkdir()
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    batches = {f"data_batch_{i}": _cifar_batch([(9, 9, 9)], [i]) for i in range(1, 6)}
    batches.update(test_batch=_cifar_batch(CIFAR_COLOURS, [0, 1, 2, 1]), **{"batches.meta": {"label_names": names}})
    for name, obj in batches.items():
        (d / name).write_bytes(pickle.dumps(obj))
    return root


@pytest.fixture
def cifar_unchecked(monkeypatch):
    """The tiny batches are not the real files: torchvision's md5 check becomes an existence check."""
    import torchvision.datasets.cifar as cifar

    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def make_pets(root):
    """torchvision's Oxford-IIIT Pet layout (as clip_benchmark reads it): images/<breed>_<n>.jpg,
    annotations/<split>.txt (id class species breed), both splits the same three images."""
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    rows = [("Abyssinian_1", 1, 1), ("american_bulldog_2", 2, 2), ("Abyssinian_3", 1, 1)]
    for i, (name, _, _) in enumerate(rows):
        Image.new("RGB", (20, 16), (40 * i, 100, 200)).save(base / "images" / f"{name}.jpg")
    lines = "".join(f"{n} {c} {s} 1\n" for n, c, s in rows)
    (base / "annotations" / "test.txt").write_text(lines)
    (base / "annotations" / "trainval.txt").write_text(lines)
    return root


@pytest.fixture(scope="module")
def pets_root(tmp_path_factory):
    return make_pets(tmp_path_factory.mktemp("pets"))


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory):
    """ImageNet val/ with two of its 1,000 WordNet-id folders: goldfish (index 1) and toilet paper (999)."""
    root = tmp_path_factory.mktemp("imagenet")
    for wnid in ("n01443537", "n15075141"):
        (root / "val" / wnid).mkdir(parents=True)
        Image.new("RGB", (12, 12), (200, 10, 10)).save(root / "val" / wnid / f"ILSVRC2012_val_{wnid}.JPEG")
    return root


def test_cifar10_in_torchvisions_layout(cifar_root, cifar_unchecked):
    ds, classes, templates = open_benchmark("cifar10", cifar_root)
    assert isinstance(ds, BenchmarkDataset) and len(ds) == 4 and ds.split == "test"
    assert classes[:3] == ["airplane", "automobile", "bird"] and len(classes) == 10 and ds.class_names == classes
    assert len(templates) == 18 and templates[:2] == ("a photo of a {}.", "a blurry photo of a {}.")  # clip_benchmark's, {c} -> {}
    assert [it.image_id for it in ds.items] == ["test/0", "test/1", "test/2", "test/3"]
    assert ds.label_index(classes) == [0, 1, 2, 1] and [it.label_name for it in ds.items][:2] == ["airplane", "automobile"]
    for it, rgb in zip(ds.items, CIFAR_COLOURS, strict=True):  # in-memory images read from the torch dataset
        im = ds.open(it)
        assert im.size == (32, 32) and im.mode == "RGB" and im.getpixel((5, 7)) == rgb
    assert open_benchmark("cifar10", cifar_root, templates="li")[2] == ("a blurry photo of a {}.",)
    train, _, _ = open_benchmark("cifar10", cifar_root, split="train")
    assert ds.label_index(classes) != train.label_index(classes) and train.items[0].image_id == "train/0"


def test_missing_root_and_wrong_layout_say_what_to_put_there(tmp_path, cifar_unchecked):
    with pytest.raises(DiffdiscError, match=r"cifar-10-batches-py/ \(data_batch_1\.\.5, test_batch, batches\.meta.*does not exist"):
        open_benchmark("cifar10", tmp_path / "nowhere")
    with pytest.raises(DiffdiscError, match=r"nothing is downloaded.*cifar-10-batches-py/data_batch_1 is missing"):
        open_benchmark("cifar10", tmp_path)
    with pytest.raises(DiffdiscError, match=r"oxford-iiit-pet/images/\*\.jpg.*oxford-iiit-pet/images is missing"):
        open_benchmark("pets", tmp_path)
    with pytest.raises(DiffdiscError, match=r"val/ \(train/ for train\) with one folder per WordNet id.*val is missing"):
        open_benchmark("imagenet1k", tmp_path)
    (tmp_path / "val" / "goldfish").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "val" / "goldfish" / "a.png")
    with pytest.raises(DiffdiscError, match="folder 'goldfish' is not an ImageNet WordNet id"):
        open_benchmark("imagenet1k", tmp_path)


def test_unknown_names_list_the_known(tmp_path):
    with pytest.raises(DiffdiscError, match=r"unknown dataset 'cifar11'; known: .*cifar10, cifar100.*imagenet1k.*pets"):
        open_benchmark("cifar11", tmp_path)
    with pytest.raises(DiffdiscError, match="matching benchmark: use it with `match`"):
        open_benchmark("winoground", tmp_path)
    with pytest.raises(DiffdiscError, match="pets has no split 'val'; it has trainval, test"):
        open_benchmark("pets", tmp_path, split="val")
    with pytest.raises(DiffdiscError, match="Li et al. have no prompt for dtd; they have one for cifar10"):
        benchmark_templates("dtd", "li")
    with pytest.raises(DiffdiscError, match="neither a known set"):
        open_benchmark("cifar10", tmp_path, templates="nonsense")


def test_li_prompts_per_dataset():
    assert LI_TEMPLATES["cifar10"] == LI_TEMPLATES["cifar100"] == ("a blurry photo of a {}.",)
    assert LI_TEMPLATES["food101"] == ("a photo of {}, a type of food.",)
    assert LI_TEMPLATES["fgvc_aircraft"] == ("a photo of a {}, a type of aircraft.",)
    assert LI_TEMPLATES["imagenet1k"] == LI_TEMPLATES["objectnet"] == ("a photo of a {}.",)
    assert benchmark_templates("oxford_pets", "li") == ("a photo of a {}, a type of pet.",)  # aliases resolve
    assert benchmark_templates("cifar10", "photo") == ("a photo of a {}.",)  # our own sets still work


def test_imagenet_val_folders_label_by_wordnet_id(imagenet_root):
    ds, classes, templates = open_benchmark("imagenet", imagenet_root)
    assert len(classes) == 1000 and classes[1] == "goldfish" and classes[999] == "toilet paper"
    assert classes.count("missile") == 2  # clip_benchmark's (and Li et al.'s) names repeat; labels are indices
    assert ds.label_index(classes) == [1, 999] and ds.items[0].image_id == "val/n01443537/ILSVRC2012_val_n01443537.JPEG"
    assert len(templates) == 80 and open_benchmark("imagenet1k", imagenet_root, templates="li")[2] == ("a photo of a {}.",)
    assert ds.open(ds.items[0]).size == (12, 12)


@pytest.mark.filterwarnings("ignore:prompt .* tokens; truncated")
def test_pets_files_classify_end_to_end(pets_root, sd_dir, tmp_path, one_thread):
    from diffdisc.backbones.registry import create_backbone
    from diffdisc.scoring.config import AdaptiveConfig
    from diffdisc.tasks.classify import ClassifyConfig, classify

    ds, classes, templates = open_benchmark("pets", pets_root, templates="li")
    assert classes == ["Abyssinian", "American Bulldog"] and templates == ("a photo of a {}, a type of pet.",)
    assert [it.image_id for it in ds.items] == [f"oxford-iiit-pet/images/{n}.jpg" for n in ("Abyssinian_1", "american_bulldog_2", "Abyssinian_3")]
    assert ds.label_index(classes) == [0, 1, 0]
    assert open_benchmark("pets", pets_root, split="train")[0].split == "trainval"
    res = classify(create_backbone(sd_dir), ds, ClassifyConfig(classes=classes, templates=templates,
                                                               adaptive=AdaptiveConfig(n_timesteps=2)), out=tmp_path / "r")  # fmt: skip
    assert res.labels.tolist() == [0, 1, 0] and res.calls.tolist() == [4, 4, 4]
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    out = write_clip_benchmark_json(tmp_path, "pets", "sd-tiny", m, classnames=classes, extra={"unet_calls_per_image": 4.0})
    assert out.name == "pets_diffdisc_sd-tiny_en_zeroshot_classification.json"
    d = read_clip_benchmark_json(out)
    assert d["metrics"]["acc1"] == m["accuracy"] and math.isnan(d["metrics"]["acc5"])  # 2 classes: no top-5


def test_clip_benchmark_json_round_trips_and_builds_one_table(tmp_path):
    metrics = {"accuracy": 0.75, "top5": 0.9, "mean_per_class_accuracy": 0.7, "n_images": 8}
    p = write_clip_benchmark_json(tmp_path / "diffusion.json", "cifar10", "sd2", metrics, templates=["a photo of a {}."])
    d = read_clip_benchmark_json(p)
    assert set(d) == {"dataset", "model", "pretrained", "task", "metrics", "language", "templates"}
    assert d["dataset"] == "cifar10" and d["model"] == "sd2" and d["task"] == "zeroshot_classification" and d["language"] == "en"
    assert d["metrics"] == {"acc1": 0.75, "acc5": 0.9, "mean_per_class_recall": 0.7} and d["templates"] == ["a photo of a {c}."]
    clip = {"dataset": "cifar10", "model": "ViT-B-32", "pretrained": "openai", "task": "zeroshot_classification",
            "metrics": {"acc1": 0.89, "acc5": 0.99, "mean_per_class_recall": 0.89}, "language": "en"}  # what its eval writes
    (tmp_path / "clip.json").write_text(json.dumps(clip))
    rows = sorted(clip_benchmark_rows(tmp_path), key=lambda r: r["model"])
    assert [r["model_fullname"] for r in rows] == ["ViT-B-32 openai", "sd2 diffdisc"] and rows[1]["acc1"] == 0.75
    from clip_benchmark.cli import main_build  # clip_benchmark's own table builder reads both

    (tmp_path / "diffusion.json").write_text(json.dumps({k: v for k, v in d.items() if k != "templates"}))
    main_build(Namespace(files=[str(tmp_path)], output=str(tmp_path / "benchmark.csv")))
    table = (tmp_path / "benchmark.csv").read_text().splitlines()
    assert len(table) == 3 and any("sd2 diffdisc" in r for r in table) and any("ViT-B-32 openai" in r for r in table)
    w = read_clip_benchmark_json(write_clip_benchmark_json(
        tmp_path / "w.json", "winoground", "sd2", {"text": {"mean": 0.5}, "image": {"mean": 0.25}, "group": {"mean": 0.2}}))
    assert w["task"] == "image_caption_selection" and w["metrics"] == {"image_acc": 0.25, "text_acc": 0.5, "acc": 0.2}
    with pytest.raises(DiffdiscError, match="unknown dataset 'cifar11'"):
        write_clip_benchmark_json(tmp_path / "x.json", "cifar11", "sd2", metrics)


EXAMPLES = [
    {"id": 0, "image_0": "ex_0_img_0", "image_1": "ex_0_img_1", "caption_0": "a red cat left of a blue dog",
     "caption_1": "a blue cat left of a red dog", "tag": "Adjective-Color", "secondary_tag": "", "num_main_preds": 1,
     "collapsed_tag": "Object"},
    {"id": 1, "image_0": "ex_1_img_0", "image_1": "ex_1_img_1", "caption_0": "the cat to the left of the dog",
     "caption_1": "the dog to the left of the cat", "tag": "Preposition", "secondary_tag": "Symbolic",
     "num_main_preds": 1, "collapsed_tag": "Relation"},
]  # fmt: skip


@pytest.fixture
def winoground_root(tmp_path):
    """facebook/winoground as the Hub ships it: data/examples.jsonl + data/images.zip (images/<name>.png)."""
    data = tmp_path / "winoground" / "data"
    data.mkdir(parents=True)
    (data / "examples.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EXAMPLES))
    with zipfile.ZipFile(data / "images.zip", "w") as z:
        for e in EXAMPLES:
            for k in ("image_0", "image_1"):
                im = Image.new("RGB", (16, 16), (200, 30 * e["id"], 80 if k == "image_0" else 160))
                path = tmp_path / f"{e[k]}.png"
                im.save(path)
                z.write(path, f"images/{e[k]}.png")
        z.writestr("../escape.png", b"not written outside")
        z.writestr("__MACOSX/images/._ex_0_img_0.png", b"resource fork")
    return tmp_path / "winoground"


def test_winoground_hf_layout_and_tag_breakdown(winoground_root, sd_dir, tmp_path, one_thread):
    groups = open_winoground(winoground_root)
    data = winoground_root / "data"
    assert [g.id for g in groups] == ["0", "1"] and groups[0].captions == tuple(EXAMPLES[0][k] for k in ("caption_0", "caption_1"))
    assert groups[0].images == (data / "images" / "ex_0_img_0.png", data / "images" / "ex_0_img_1.png")
    assert groups[0].tags == ("Adjective-Color", "Object") and groups[1].tags == ("Preposition", "Relation", "Symbolic")
    assert not (data / "escape.png").exists() and not (winoground_root / "escape.png").exists()
    assert [g.id for g in open_match_benchmark("winoground", data)] == ["0", "1"]  # data/ itself, already unpacked
    elsewhere = open_winoground(_copy_without_images(winoground_root, tmp_path / "ro"), extract_to=tmp_path / "cache")
    assert elsewhere[1].images[0] == tmp_path / "cache" / "images" / "ex_1_img_0.png"

    right, wrong = [[0.1, 0.9], [0.8, 0.2]], [[0.9, 0.1], [0.2, 0.8]]
    records = [{"image_id": "0", "scores": right, "tags": list(groups[0].tags)}, {"image_id": "1", "scores": wrong, "tags": []}]
    b = tag_breakdown(records, groups=groups)  # the second record's tags come from its group
    assert b["all"]["text"]["mean"] == 0.5 and b["all"]["n_groups"] == 2
    assert (b["Object"]["text"]["mean"], b["Object"]["image"]["mean"], b["Object"]["group"]["mean"]) == (1.0, 1.0, 1.0)
    assert b["Relation"]["group"]["mean"] == 0.0 and "Both" not in b and "Symbolic" not in b
    assert set(tag_breakdown(records, tags=None, groups=groups)) == {"all", "Adjective-Color", "Object", "Preposition", "Relation", "Symbolic"}

    from diffdisc.backbones.registry import create_backbone
    from diffdisc.tasks.match import match

    match(create_backbone(sd_dir), groups, n_timesteps=2, out=tmp_path / "m")
    b = tag_breakdown(tmp_path / "m")  # a match run directory: its records carry the tags
    assert b["Object"]["n_groups"] == b["Relation"]["n_groups"] == 1 and b["all"]["n_groups"] == 2


def _copy_without_images(root, dest):
    (dest / "data").mkdir(parents=True)
    for f in ("examples.jsonl", "images.zip"):
        (dest / "data" / f).write_bytes((root / "data" / f).read_bytes())
    return dest


def test_winoground_bad_layouts(tmp_path):
    with pytest.raises(DiffdiscError, match=r"data/examples.jsonl and data/images.zip.*does not exist"):
        open_winoground(tmp_path / "nowhere")
    with pytest.raises(DiffdiscError, match=r"data/examples.jsonl is missing"):
        open_winoground(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "examples.jsonl").write_text(json.dumps(EXAMPLES[0]) + "\n")
    with pytest.raises(DiffdiscError, match="neither .*images nor .*images.zip exists"):
        open_winoground(tmp_path)
    (tmp_path / "data" / "images").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "data" / "images" / "ex_0_img_0.png")
    with pytest.raises(DiffdiscError, match="image 'ex_0_img_1' of example 0 is not in"):
        open_winoground(tmp_path)


def test_sugar_crepe_in_clip_benchmarks_layout(tmp_path):
    (tmp_path / "val2017").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val2017" / "000000000139.jpg")
    ann = {"0": {"filename": "000000000139.jpg", "caption": "a cat on a mat", "negative_caption": "a mat on a cat"}}
    (tmp_path / "swap_obj.json").write_text(json.dumps(ann))
    (g,) = open_match_benchmark("sugar_crepe/swap_obj", tmp_path)
    assert g.id == "swap_obj-0" and g.captions == ("a cat on a mat", "a mat on a cat") and g.images == (tmp_path / "val2017" / "000000000139.jpg",)
    with pytest.raises(DiffdiscError, match=r"swap_att.json \(from the SugarCrepe repository's data/\).*swap_att.json is missing"):
        open_match_benchmark("sugar_crepe/swap_att", tmp_path)
    with pytest.raises(DiffdiscError, match="unknown SugarCrepe task 'swap'"):
        open_match_benchmark("sugar_crepe/swap", tmp_path)

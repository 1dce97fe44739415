"""Classification data by name: the ImageNet shifts through clip_benchmark's names and class subsets (-A / -R: 200
classes), and Hugging Face datasets read offline (`hf:`): save_to_disk folders, parquet folders, a Hub snapshot
in the cache; columns detected or named; refusals in one line."""

import ast
import inspect
import json

import numpy as np
import pytest
from PIL import Image

from diffdisc.data.benchmarks import open_benchmark
from diffdisc.data.folders import open_image_dataset
from diffdisc.data.hf import open_hf, parse_spec
from diffdisc.data.labelled import LabelledImages
from diffdisc.errors import DiffdiscError


def _wnid_subset(name: str) -> list[str]:
    """The WordNet ids clip_benchmark's builder keeps for imagenet-a / imagenet-r (literals in its source)."""
    import clip_benchmark.datasets.builder as builder

    tree = ast.parse(inspect.getsource(builder.build_dataset))
    var = {"imagenet-a": "imagenet_a_wnids", "imagenet-r": "imagenet_r_wnids"}[name]
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == var:
            return sorted(ast.literal_eval(node.value))
    raise AssertionError(var)


def _jpeg(path, colour=(120, 30, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


@pytest.mark.parametrize("name", ["imagenet-a", "imagenet-r"])
def test_imagenet_a_r_use_their_200_classes(tmp_path, name):
    from clip_benchmark.datasets.builder import all_imagenet_wordnet_ids

    from diffdisc.data.benchmarks import _cb_defaults

    wnids = _wnid_subset(name)
    assert len(wnids) == 200
    for w in wnids:
        _jpeg(tmp_path / w / f"{w}_1.jpg")
    ds, classes, tpl = open_benchmark(name, tmp_path)
    names = _cb_defaults("imagenet1k")[0]
    assert len(classes) == 200 and classes == [names[all_imagenet_wordnet_ids.index(w)] for w in wnids]
    pick = wnids[37]
    i = next(k for k, it in enumerate(ds.items) if it.image_id.startswith(pick))
    assert classes[ds.targets[i]] == names[all_imagenet_wordnet_ids.index(pick)] and tpl
    (tmp_path / wnids[0] / f"{wnids[0]}_1.jpg").unlink()
    (tmp_path / wnids[0]).rmdir()
    with pytest.raises(DiffdiscError, match="found 199 class folders.*has 200 classes"):
        open_benchmark(name, tmp_path)
    with pytest.raises(DiffdiscError, match="has no split 'train'"):
        open_benchmark(name, tmp_path, "train")


def test_imagenet_sketch_and_v2_label_the_1000_classes(tmp_path):
    from clip_benchmark.datasets.builder import all_imagenet_wordnet_ids

    sketch = tmp_path / "sketch"
    for w in (all_imagenet_wordnet_ids[3], all_imagenet_wordnet_ids[998]):
        _jpeg(sketch / w / "sketch_1.JPEG")
    ds, classes, _ = open_benchmark("imagenet-sketch", sketch)  # an alias of imagenet_sketch
    assert len(classes) == 1000 and sorted(ds.targets) == [3, 998]
    v2 = tmp_path / "v2"
    for k in (0, 417):
        _jpeg(v2 / "ImageNetV2-matched-frequency" / str(k) / "a.jpeg")
    ds, classes, _ = open_benchmark("imagenetv2", v2)
    assert sorted(ds.targets) == [0, 417] and len(classes) == 1000
    (tmp_path / "empty_v2").mkdir()
    with pytest.raises(DiffdiscError, match="ImageNetV2-matched-frequency is missing"):
        open_benchmark("imagenetv2", tmp_path / "empty_v2")
    with pytest.raises(DiffdiscError, match="empty_v3 does not exist"):
        open_benchmark("imagenetv2", tmp_path / "empty_v3")


def test_objectnet_maps_its_folders_through_the_mapping_files(tmp_path):
    from diffdisc.data.benchmarks import _cb_defaults

    names = _cb_defaults("imagenet1k")[0]
    (tmp_path / "imagenet_to_label_2012_v2").write_text("".join(f"{n}\n" for n in names))
    (tmp_path / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps({str(i): i for i in range(1000)}))
    (tmp_path / "objectnet_to_imagenet_1k.json").write_text(json.dumps({"Banana": names[954], "Chair": names[423]}))
    (tmp_path / "folder_to_objectnet_label.json").write_text(json.dumps({"banana": "Banana", "chair": "Chair"}))
    for f in ("banana", "chair"):
        _jpeg(tmp_path / "objectnet-1.0" / "images" / f / "1.png")
    ds, classes, tpl = open_benchmark("objectnet", tmp_path)
    assert classes == ["banana", "chair"] and sorted(ds.targets) == [0, 1]
    (tmp_path / "objectnet_to_imagenet_1k.json").unlink()
    with pytest.raises(DiffdiscError, match=r"objectnet_to_imagenet_1k\.json is missing"):
        open_benchmark("objectnet", tmp_path)


# ---------------------------------------------------------------------------------------------------- Hugging Face


def _hf_dataset(n=6, label_names=("sneaker", "bag")):
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as HFImage

    ims = [Image.fromarray(np.full((10, 12, 3), 30 * i, np.uint8)) for i in range(n)]
    f = Features({"img": HFImage(), "label": ClassLabel(names=list(label_names)), "coarse": ClassLabel(names=["a", "b", "c"]),
                  "caption": __import__("datasets").Value("string")})  # fmt: skip
    return Dataset.from_dict({"img": ims, "label": [i % 2 for i in range(n)], "coarse": [i % 3 for i in range(n)],
                              "caption": [f"c{i}" for i in range(n)]}, features=f)  # fmt: skip


@pytest.fixture(scope="module")
def hf_saved(tmp_path_factory):
    """save_to_disk of a DatasetDict (train / test), and the same rows as Hub-style parquet files."""
    from datasets import DatasetDict

    root = tmp_path_factory.mktemp("hf")
    ds = _hf_dataset()
    DatasetDict(train=ds, test=ds.select(range(4))).save_to_disk(str(root / "saved"))
    (root / "pq" / "data").mkdir(parents=True)
    ds.to_parquet(str(root / "pq" / "data" / "train-00000-of-00001.parquet"))
    ds.select(range(4)).to_parquet(str(root / "pq" / "data" / "test-00000-of-00001.parquet"))
    return root


@pytest.fixture
def hf_caches(tmp_path, monkeypatch):
    """Empty Hugging Face caches under tmp_path (nothing touches the user's)."""
    import datasets
    import huggingface_hub.constants as hc

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def test_parse_spec():
    assert parse_spec("hf:uoft-cs/cifar10") == ("uoft-cs/cifar10", None, {})
    assert parse_spec("hf:cifar100@train?label=coarse_label") == ("cifar100", "train", {"label": "coarse_label"})
    with pytest.raises(DiffdiscError, match="unknown option 'colour'"):
        parse_spec("hf:x?colour=1")
    with pytest.raises(DiffdiscError, match="give a dataset after hf:"):
        parse_spec("hf:")


def test_hf_save_to_disk_and_parquet_read_offline(hf_saved, hf_caches):
    for spec in (f"hf:{hf_saved / 'saved'}", f"hf:{hf_saved / 'pq'}"):
        ds, classes, tpl = open_benchmark(spec, None, "test")
        assert classes == ["sneaker", "bag"] and len(ds) == 4 and ds.targets == [0, 1, 0, 1] and tpl == ()
        assert ds.name == spec and ds.split == "test" and ds.items[1].image_id == "test/1"
        assert ds.open(ds.items[3]).size == (12, 10) and ds.items[0].label_name == "sneaker"
        train = open_image_dataset(f"{spec}@train")  # the hook features / timesteps fit read --data through
        assert len(train) == 6 and train.root != ds.root  # train and test are different data for a guard
        pixels = LabelledImages.from_folder(f"{spec}@train", max_images=4)  # features' reader
        assert len(pixels) == 4 and pixels.pixels[0].shape == (10, 12, 3) and pixels.class_names == ["sneaker", "bag"]
    coarse, classes, _ = open_benchmark(f"hf:{hf_saved / 'saved'}", None, "test", label_column="coarse")
    assert classes == ["a", "b", "c"] and coarse.targets == [0, 1, 2, 0] and coarse.name.endswith("?label=coarse")
    with pytest.raises(DiffdiscError, match="no split 'validation'; it has train, test"):
        open_benchmark(f"hf:{hf_saved / 'saved'}", None, "validation")
    with pytest.raises(DiffdiscError, match="no column 'pixels' for the images"):
        open_benchmark(f"hf:{hf_saved / 'saved'}", None, image_column="pixels")
    with pytest.raises(DiffdiscError, match="'caption' is Value, not Image"):
        open_benchmark(f"hf:{hf_saved / 'saved'}", None, image_column="caption")


def test_hf_hub_snapshot_in_the_cache_and_missing_names(hf_saved, hf_caches):
    import shutil

    snap = hf_caches / "hub" / "datasets--me--shoes" / "snapshots" / "abc"
    shutil.copytree(hf_saved / "pq" / "data", snap / "data")
    (hf_caches / "hub" / "datasets--me--shoes" / "refs").mkdir(parents=True)
    (hf_caches / "hub" / "datasets--me--shoes" / "refs" / "main").write_text("abc")
    ds, classes, _ = open_hf("hf:me/shoes", None, "test")
    assert classes == ["sneaker", "bag"] and len(ds) == 4
    with pytest.raises(DiffdiscError, match="hf:nobody/nothing: not found in the Hugging Face cache.*nothing is downloaded"):
        open_hf("hf:nobody/nothing", None, "test")


def test_hf_column_detection_refusals(tmp_path, hf_caches):
    from datasets import Dataset, Features, Value
    from datasets import Image as HFImage

    ims = [Image.new("RGB", (4, 4)) for _ in range(2)]
    two = Dataset.from_dict({"a": ims, "b": ims, "label": [0, 1]},
                            features=Features({"a": HFImage(), "b": HFImage(), "label": Value("int64")}))  # fmt: skip
    two.save_to_disk(str(tmp_path / "two"))
    with pytest.raises(DiffdiscError, match="several Image columns.*--image-column"):
        open_hf(f"hf:{tmp_path / 'two'}")
    ds, classes, _ = open_hf(f"hf:{tmp_path / 'two'}?image=b")  # an int label column: classes 0..K-1
    assert classes == ["0", "1"] and ds.targets == [0, 1]
    names = Dataset.from_dict({"image": ims, "kind": ["shoe", "bag"]}, features=Features({"image": HFImage(), "kind": Value("string")}))
    names.save_to_disk(str(tmp_path / "names"))
    with pytest.raises(DiffdiscError, match="no ClassLabel columns.*--label-column"):
        open_hf(f"hf:{tmp_path / 'names'}")
    ds, classes, _ = open_hf(f"hf:{tmp_path / 'names'}", label_column="kind")
    assert classes == ["bag", "shoe"] and ds.targets == [1, 0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffdiscError, match="neither a save_to_disk dataset"):
        open_hf(f"hf:{tmp_path / 'empty'}")


def test_classify_cli_reads_an_hf_dataset(hf_saved, hf_caches, monkeypatch, capsys, tmp_path, one_thread):
    from conftest import run_main

    code, out, err = run_main(monkeypatch, capsys, "classify", "--model", "fmnist-scenes-text", "--dataset",
                              f"hf:{hf_saved / 'saved'}", "--split", "test", "--timesteps", "2", "--out",
                              tmp_path / "run", "--quiet", "--json")  # fmt: skip
    assert code == 0, err
    m = json.loads(out)
    assert m["n_images"] == 4 and 0 <= m["accuracy"] <= 1
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "sneaker" in json.dumps(run) and f"hf:{hf_saved / 'saved'}" in json.dumps(run)
    code, out, err = run_main(monkeypatch, capsys, "classify", "--model", "fmnist-scenes-text", "--dataset",
                              f"hf:{hf_saved / 'saved'}", "--label-column", "nope", "--out", tmp_path / "r2")  # fmt: skip
    assert code == 1 and "no column 'nope' for the labels" in err and "Traceback" not in err

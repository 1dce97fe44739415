"""`diffdisc suite`: the embedded suite on a fresh machine (shipped models and data only), a compositional suite on
tiny fixtures in each published layout, a suite file; one table with a column per model, intervals, calls per
task, skipped tasks with the path they expected, n/a where a model cannot do a task; resumable per task."""

import json
import zipfile

import pytest
from PIL import Image

from conftest import run_main
from diffdisc.errors import DiffdiscError
from diffdisc.results.suite import SuiteResult
from diffdisc.tasks.suite import SuiteConfig, TaskSpec, load_suite_file, named_suite, run_suite
from test_benchmarks import make_pets
from test_readers_compositional import lexicon_tagger, make_aro_vg, make_clevr, make_eqben, make_order

MODELS = ("fmnist-scenes-text", "fmnist-scenes-clip")


def make_winoground(root):
    """facebook/winoground as the Hub ships it: data/examples.jsonl + data/images.zip."""
    data = root / "data"
    data.mkdir(parents=True)
    rows = [{"id": i, "image_0": f"ex_{i}_img_0", "image_1": f"ex_{i}_img_1", "caption_0": c0, "caption_1": c1,
             "tag": "Noun", "secondary_tag": "", "num_main_preds": 1, "collapsed_tag": t}
            for i, (c0, c1, t) in enumerate([("a red bag left of a blue shirt", "a blue bag left of a red shirt", "Object"),
                                             ("a sneaker left of a bag", "a bag left of a sneaker", "Relation")])]  # fmt: skip
    (data / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with zipfile.ZipFile(data / "images.zip", "w") as z:
        for r in rows:
            for k in ("image_0", "image_1"):
                p = root / f"{r[k]}.png"
                Image.new("RGB", (32, 32), (200, 40 * r["id"], 90 if k == "image_0" else 170)).save(p)
                z.write(p, f"images/{r[k]}.png")
                p.unlink()
    return root


def make_sugar_crepe(root, task="swap_att"):
    (root / "val2017").mkdir(parents=True)
    Image.new("RGB", (32, 32), (30, 160, 30)).save(root / "val2017" / "000000000139.jpg")
    entries = {"0": {"filename": "000000000139.jpg", "caption": "a green sneaker", "negative_caption": "a red sneaker"}}
    (root / f"{task}.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def compositional_root(tmp_path_factory):
    """One data root with a folder per dataset; flickr30k/ and most SugarCrepe tasks are missing."""
    root = tmp_path_factory.mktemp("data")
    make_winoground(root / "winoground")
    make_aro_vg(root / "aro")
    make_order(root / "coco", "coco_order")
    make_sugar_crepe(root / "sugar_crepe")
    make_clevr(root)  # root/clevr/...
    make_eqben(root / "eqbench")
    return root


def test_compositional_suite_on_fixtures(compositional_root, tmp_path, monkeypatch, one_thread):
    import diffdisc.data.aro as aro

    monkeypatch.setattr(aro, "pos_tagger", lambda: lexicon_tagger)  # spaCy is not installed here
    before = sorted(p.relative_to(compositional_root) for p in compositional_root.rglob("*"))
    config = SuiteConfig("compositional", named_suite("compositional"), MODELS, root=str(compositional_root), timesteps=2)
    table = run_suite(config, out=tmp_path / "out")
    by = {t["task"]: t for t in table["tasks"]}
    assert [m["label"] for m in table["models"]] == list(MODELS)
    done = {"winoground", "aro/vg_relation", "aro/vg_attribution", "aro/coco_order", "sugar_crepe/swap_att",
            "clevr/pair_binding_color", "eqben"}  # fmt: skip
    assert {k for k, t in by.items() if t["status"] == "done"} == done
    assert by["aro/flickr30k_order"]["status"] == "skipped"
    assert str(compositional_root / "flickr30k" / "flickr30k_test.json") in by["aro/flickr30k_order"]["reason"]
    assert by["sugar_crepe/add_obj"]["expected"] == [str(compositional_root / "sugar_crepe" / "add_obj.json")]
    wino = by["winoground"]["cells"]["fmnist-scenes-text"]
    assert set(wino["metrics"]) == {"text", "image", "group"} and wino["n"] == 2
    assert wino["calls_per_item"] == 2 * 2 * 2 and wino["calls_total"] == 16  # 2x2 pairs x 2 timesteps
    assert by["winoground"]["cells"]["fmnist-scenes-clip"]["calls_per_item"] == 0
    vg = by["aro/vg_relation"]["cells"]["fmnist-scenes-text"]
    assert set(vg["metrics"]) == {"macro accuracy", "accuracy (micro)"} and vg["types"]["kept"] == 1  # "next to" out
    assert by["aro/coco_order"]["n"] == 3 and by["aro/coco_order"]["cells"]["fmnist-scenes-clip"]["chance"]["precision@1"] == pytest.approx(0.2)
    assert by["clevr/pair_binding_color"]["n"] == 3 and by["eqben"]["rows"] == ["text", "image", "group"]
    lo, hi = wino["metrics"]["text"]["ci95"]
    assert 0 <= lo <= wino["metrics"]["text"]["mean"] <= hi <= 1
    # nothing was written into the data: the Winoground unzip and the VG crops went under --out
    assert sorted(p.relative_to(compositional_root) for p in compositional_root.rglob("*")) == before
    md = (tmp_path / "out" / "suite_table.md").read_text()
    assert "| `winoground` | text | 2 | 25.0 |" in md and "macro accuracy" in md and "Skipped" in md
    assert "`aro/flickr30k_order`: data missing: expected" in md and "1 pass" in md
    # resumable per task: a rerun scores nothing again
    runs = sorted((tmp_path / "out").rglob("shards/*"))
    stamps = [p.stat().st_mtime_ns for p in runs]
    again = run_suite(config, out=tmp_path / "out")
    assert [p.stat().st_mtime_ns for p in runs] == stamps
    assert again["tasks"][0]["cells"] == table["tasks"][0]["cells"]


def test_order_tasks_are_skipped_without_a_tagger(compositional_root, tmp_path, monkeypatch):
    import diffdisc.data.aro as aro

    def missing():
        raise DiffdiscError("spaCy's en_core_web_sm is not installed: pip install spacy")

    monkeypatch.setattr(aro, "pos_tagger", missing)
    config = SuiteConfig("x", (TaskSpec("aro/coco_order"),), ("fmnist-scenes-clip",), root=str(compositional_root))
    table = run_suite(config, out=tmp_path / "out")
    assert table["tasks"][0]["status"] == "skipped" and "en_core_web_sm" in table["tasks"][0]["reason"]


def test_embedded_suite_cli_on_a_fresh_machine(tmp_path, monkeypatch, capsys, one_thread):
    out = tmp_path / "suite"
    code, stdout, err = run_main(monkeypatch, capsys, "suite", "--suite", "embedded", "--limit", "4", "--timesteps", "2",
                                 "--out", out, "--quiet", "--markdown", tmp_path / "table.md")  # fmt: skip
    assert code == 0, err
    table = json.loads((out / "suite_table.json").read_text())
    assert [t["task"] for t in table["tasks"]] == list(named_suite("embedded")[i].name for i in range(5))
    assert all(t["status"] == "done" for t in table["tasks"]), [t.get("reason") for t in table["tasks"]]
    assert all(c["status"] == "done" and c["n"] == 4 for t in table["tasks"] for c in t["cells"].values())
    cls = table["tasks"][0]["cells"]["fmnist-scenes-text"]
    assert cls["calls_per_item"] == 10 * 2 and cls["chance"]["top-1 accuracy"] == pytest.approx(0.1)
    assert table["tasks"][1]["cells"]["fmnist-scenes-text"]["chance"]["top-1 accuracy"] == pytest.approx(1 / 80)
    assert table["tasks"][4]["rows"] == ["shape bias"]
    assert (tmp_path / "table.md").read_text() == (out / "suite_table.md").read_text()
    assert "| `embedded/binding` | text | 4 |" in stdout and "calls/item: fmnist-scenes-text" in stdout
    assert table["command"].startswith("diffdisc suite --suite embedded --limit 4")
    code, stdout, err = run_main(monkeypatch, capsys, "report", out, "--out", tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert code == 0 and "Benchmark suite" in html and "embedded/cue-conflict" in html and "shape bias" in html


def test_suite_file_models_side_by_side(tmp_path, compositional_root, monkeypatch, capsys, one_thread):
    """A YAML file: own roots, a class-conditional model (n/a on captions), an hf: task; HTML-escaped names."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as HFImage

    from diffdisc.datasets.fashion_mnist import CLASS_NAMES, load_shipped_subset

    images, labels, _ = load_shipped_subset("test")
    hf = Dataset.from_dict({"image": [Image.fromarray(a) for a in images[:3]], "label": [int(y) for y in labels[:3]]},
                           features=Features({"image": HFImage(), "label": ClassLabel(names=list(CLASS_NAMES))}))  # fmt: skip
    hf.save_to_disk(str(tmp_path / "fmnist_hf"))
    (tmp_path / "suite.yaml").write_text(f"""
name: "<b>mine</b>"
timesteps: 2
tasks:
  - name: clevr/pair_binding_color
    root: {compositional_root}
    limit: 2
  - name: hf:{tmp_path / 'fmnist_hf'}
  - embedded/classification
  - name: cifar10
    root: nowhere
""")
    name, tasks, settings = load_suite_file(tmp_path / "suite.yaml")
    assert name == "<b>mine</b>" and settings == {"timesteps": 2} and tasks[3].root == str(tmp_path / "nowhere")
    out = tmp_path / "out"
    code, stdout, err = run_main(monkeypatch, capsys, "suite", "--suite", tmp_path / "suite.yaml", "--model", "fmnist-classcond",
                                 "--model", "fmnist-scenes-clip", "--limit", "3", "--out", out, "--quiet")  # fmt: skip
    assert code == 0, err
    table = json.loads((out / "suite_table.json").read_text())
    by = {t["task"]: t for t in table["tasks"]}
    clevr = by["clevr/pair_binding_color"]
    assert clevr["n"] == 2 and clevr["cells"]["fmnist-classcond"]["status"] == "n/a"
    assert "class-conditional" in clevr["cells"]["fmnist-classcond"]["reason"]
    hf_task = by[f"hf:{tmp_path / 'fmnist_hf'}"]
    assert hf_task["status"] == "done" and hf_task["cells"]["fmnist-classcond"]["n"] == 3
    assert hf_task["cells"]["fmnist-classcond"]["calls_per_item"] == 10 * 2
    assert by["embedded/classification"]["cells"]["fmnist-classcond"]["n"] == 3  # plain items for a class model
    assert by["cifar10"]["status"] == "skipped" and str(tmp_path / "nowhere") in by["cifar10"]["reason"]
    assert "n/a" in stdout and "fmnist-classcond: n/a" in stdout
    run_main(monkeypatch, capsys, "report", out, "--out", tmp_path / "r.html")
    html = (tmp_path / "r.html").read_text()
    assert "&lt;b&gt;mine&lt;/b&gt;" in html and "<b>mine</b>" not in html
    result = SuiteResult.load(out)
    assert result.labels == ["fmnist-classcond", "fmnist-scenes-clip"] and not result.errors


@pytest.mark.parametrize("text,message", [
    ("tasks: [winoground, nonsense]", "unknown suite task 'nonsense'"),
    ("tasks: [{name: winoground, colour: red}]", "unknown key 'colour'"),
    ("tasks: [{name: winoground, limit: 0}]", "limit must be a whole number >= 1"),
    ("name: x", "expected a list of tasks"),
    ("tasks: [winoground]\nextra: 1", "unknown key 'extra'"),
    ("tasks: [winoground\n", "not valid YAML"),
])  # fmt: skip
def test_suite_file_refusals(tmp_path, text, message):
    (tmp_path / "s.yaml").write_text(text)
    with pytest.raises(DiffdiscError, match=message):
        load_suite_file(tmp_path / "s.yaml")


def test_cli_refusals(tmp_path, monkeypatch, capsys):
    code, _, err = run_main(monkeypatch, capsys, "suite", "--suite", "nonsense", "--out", tmp_path)
    assert code == 1 and "neither a suite (compositional, classification, embedded) nor a suite file" in err
    (tmp_path / "s.json").write_text(json.dumps({"tasks": ["aro/vg_colour"]}))
    code, _, err = run_main(monkeypatch, capsys, "suite", "--suite", tmp_path / "s.json", "--out", tmp_path / "o")
    assert code == 1 and "unknown suite task 'aro/vg_colour'" in err and "Traceback" not in err


def test_classification_suite_runs_what_is_under_root(tmp_path, one_thread):
    from diffdisc.tasks.suite.catalogue import task_info, task_root

    root = tmp_path / "data"
    make_pets(root / "pets")
    (root / "imagenet-a").mkdir(parents=True)  # present but empty: its classes' folders are missing
    assert task_root(task_info("imagenet-r"), root, "test") == (root / "imagenet-r", [root / "imagenet-r"])
    assert task_root(task_info("imagenet"), root, "test")[1] == [root / "imagenet1k" / "val"]
    assert task_root(task_info("hf:x/y"), root, "test") == (None, [])  # --root is no datasets cache
    assert task_root(task_info("pets"), root / "pets", "test", own=True) == (root / "pets", [])
    config = SuiteConfig("classification", named_suite("classification"), ("fmnist-scenes-clip",), root=str(root))
    table = run_suite(config, out=tmp_path / "out")
    by = {t["task"]: t for t in table["tasks"]}
    assert by["pets"]["status"] == "done" and by["pets"]["n"] == 3
    assert by["pets"]["cells"]["fmnist-scenes-clip"]["chance"]["top-1 accuracy"] == 0.5  # the two breeds the fixture lists
    assert by["cifar10"]["status"] == "skipped" and str(root / "cifar10") in by["cifar10"]["reason"]
    assert by["imagenet-a"]["status"] == "error" and "imagenet-a" in by["imagenet-a"]["reason"]  # a wrong layout fails
    assert {t["status"] for k, t in by.items() if k not in ("pets", "imagenet-a")} == {"skipped"}
    assert [e["task"] for e in SuiteResult.load(tmp_path / "out").errors] == ["imagenet-a"]


def test_match_cli_reads_the_new_benchmarks(tmp_path, monkeypatch, capsys):
    make_clevr(tmp_path / "data")
    code, out, err = run_main(monkeypatch, capsys, "match", "--model", "fmnist-scenes-clip", "--dataset",
                              "clevr/pair_binding_color", "--root", tmp_path / "data", "--out", tmp_path / "run", "--quiet")  # fmt: skip
    assert code == 0, err
    written = json.loads(next((tmp_path / "run").glob("clevr_pair_binding_color_*.json")).read_text())
    assert written["task"] == "image_caption_selection" and written["n_groups"] == 3
    code, _, err = run_main(monkeypatch, capsys, "match", "--model", "fmnist-scenes-clip", "--dataset", "aro/vg_relation",
                            "--root", tmp_path / "nowhere", "--out", tmp_path / "run2")  # fmt: skip
    assert code == 1 and "visual_genome_relation.json" in err and "does not exist" in err

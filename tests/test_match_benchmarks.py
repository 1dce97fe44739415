"""`diffdisc match --dataset winoground | sugar_crepe/<task> --root DIR`: the compositional benchmarks by name in
their published layouts, the per-tag breakdown, clip_benchmark's result file and the benchmark in the settings."""

import json
import re
import shutil

import pytest

from conftest import run_main
from diffdisc.data.groups import load_groups
from diffdisc.results.clip_benchmark import read_clip_benchmark_json
from test_benchmarks import EXAMPLES, winoground_root  # noqa: F401  (the 2-example Hugging Face layout)

pytestmark = pytest.mark.filterwarnings("ignore:prompt .* tokens; truncated")
TINY = ("--timesteps", "2", "--quiet")


def test_dataset_winoground_end_to_end(winoground_root, sd_dir, tmp_path, monkeypatch, capsys, one_thread):  # noqa: F811
    out = tmp_path / "run"
    code, stdout, err = run_main(monkeypatch, capsys, "match", "--model", sd_dir, "--dataset", "Winoground",
                                 "--root", winoground_root, "--out", out, *TINY)  # fmt: skip
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_groups"] == 2 and set(m["by_tag"]) == {"Object", "Relation"}  # no example is tagged Both
    for t in m["by_tag"].values():
        assert t["n_groups"] == 1 and {"text", "image", "group"} <= set(t) and len(t["group"]["ci95"]) == 2
    lines = stdout.splitlines()
    assert [ln.split()[0] for ln in lines[:3]] == ["text", "image", "group"]
    assert any(ln.startswith("Object") and "n=1 " in ln and "image" in ln for ln in lines)
    assert any(ln.startswith("Relation") for ln in lines) and lines[-1] == f"results: {out}"

    (cb,) = out.glob("winoground_diffdisc_*_en_image_caption_selection.json")  # clip_benchmark's default name
    d = read_clip_benchmark_json(cb)
    assert d["dataset"] == "winoground" and d["task"] == "image_caption_selection" and d["n_groups"] == 2
    assert d["metrics"] == {"image_acc": m["image"]["mean"], "text_acc": m["text"]["mean"], "acc": m["group"]["mean"]}
    assert d["unet_calls_per_group"] == 8  # 2 images x 2 captions x 2 timesteps
    assert json.loads((out / "run.json").read_text())["benchmark"] == {"name": "winoground", "root": str(winoground_root.resolve())}

    code, stdout, _ = run_main(monkeypatch, capsys, "match", "--model", sd_dir, "--dataset", "winoground",
                               "--root", winoground_root, "--out", out, "--json", *TINY)  # fmt: skip
    assert code == 0 and json.loads(stdout) == m  # resumed: nothing rescored, the same metrics with by_tag

    other = shutil.copytree(winoground_root, tmp_path / "copy")  # same group ids, another benchmark root
    for args in (("--dataset", "winoground", "--root", other), ("--groups", winoground_root)):
        code, _, err = run_main(monkeypatch, capsys, "match", "--model", sd_dir, *args, "--out", out, *TINY)
        assert code == 1 and "was made with benchmark" in err and len(err.strip().splitlines()) == 1


def test_groups_dir_reads_the_hf_layout(winoground_root, sd_dir, tmp_path, monkeypatch, capsys, one_thread):  # noqa: F811
    for where in (winoground_root, winoground_root / "data"):  # the dataset folder, or its data/ itself
        gs = load_groups(where)
        assert [g.id for g in gs] == ["0", "1"] and gs[0].captions == (EXAMPLES[0]["caption_0"], EXAMPLES[0]["caption_1"])
        assert "Object" in gs[0].tags and "Relation" in gs[1].tags and gs[0].images[0].is_file()
    out = tmp_path / "run"
    code, stdout, err = run_main(monkeypatch, capsys, "match", "--model", sd_dir, "--groups", winoground_root, "--out", out, *TINY)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["by_tag"]) == {"Object", "Relation"} and "Object" in stdout
    assert not list(out.glob("*image_caption_selection.json")) and "benchmark" not in json.loads((out / "run.json").read_text())


def test_one_line_refusals(winoground_root, sd_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    (tmp_path / "empty").mkdir()
    cases = [
        ((), "give exactly one of --groups"),
        (("--groups", winoground_root, "--dataset", "winoground", "--root", winoground_root), "give exactly one of --groups"),
        (("--groups", winoground_root, "--root", winoground_root), "--root goes with --dataset"),
        (("--dataset", "winogrand", "--root", winoground_root), "unknown matching benchmark 'winogrand'; known: winoground, sugar_crepe/add_att"),
        (("--dataset", "sugar_crepe", "--root", winoground_root), "known: winoground, .*sugar_crepe/swap_obj"),
        (("--dataset", "winoground"), "--dataset winoground needs --root"),
        (("--dataset", "winoground", "--root", tmp_path / "nowhere"), r"nothing is downloaded.*data/images.zip.*does not exist"),
        (("--dataset", "winoground", "--root", tmp_path / "empty"), r"data/examples.jsonl is missing"),
        (("--dataset", "sugar_crepe/swap_obj", "--root", tmp_path / "empty"), r"swap_obj.json \(from the SugarCrepe .*swap_obj.json is missing"),
        (("--groups", tmp_path / "empty"), "no groups.jsonl, groups.csv or Winoground's data/examples.jsonl"),
    ]  # fmt: skip
    for args, msg in cases:
        code, _, err = run_main(monkeypatch, capsys, "match", "--model", sd_dir, *args, "--out", tmp_path / "r", "--quiet")
        assert code == 1 and len(err.strip().splitlines()) == 1 and re.search(msg, err), (args, err)
    assert not (tmp_path / "r").exists()  # refused before a model was loaded or a run directory made

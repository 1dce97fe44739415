"""`diffdisc report`: deterministic page, every section from real runs, partial/empty dirs, class alignment, escaping."""

import json
import re
import shutil
import sys

import numpy as np
import pytest

from diffdisc.errors import DiffdiscError
from diffdisc.report.html import build_context, render, write_report
from diffdisc.report.load import load_runs
from diffdisc.report.stats import pruning_trace
from diffdisc.scoring.calibrate import top_label_ece
from report_runs import SCRIPT, session_runs

STAMP = re.compile(r'<span id="generated">[^<]*</span>')


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sd_dir, classcond_dir, image_folder):
    return session_runs(tmp_path_factory, sd_dir, classcond_dir, image_folder)


@pytest.fixture(scope="module")
def ctx(runs):
    return build_context(load_runs([runs["a"], runs["b"]]), "t", "now")


def test_report_is_deterministic_apart_from_the_timestamp(runs, tmp_path):
    a = write_report([runs["a"], runs["b"]], tmp_path / "1.html").read_text()
    b = write_report([runs["a"], runs["b"]], tmp_path / "2.html", generated="another time").read_text()
    assert a != b and STAMP.sub("", a) == STAMP.sub("", b)
    for section in ("metrics", "settings", "per-class", "confusion", "reliability", "timesteps", "pruning", "mistakes",
                    "probes", "sweeps", "attention", "synth"):  # fmt: skip
        assert f'<section id="{section}">' in a, section
    assert "http://" not in a and "https://" not in a and 'src="data:image/png;base64,' in a
    assert not re.search(r'src="(?!data:)', a)  # every image inline


def test_sections_hold_the_runs_data(ctx):
    assert [m["strategy"] for m in ctx["metrics"]] == ["ttest", "halving"]
    probes = ctx["cols"]["probes"][0]
    assert {r["kind"] for r in probes} >= {"diffusion"} and all(r["n"] == 3 for r in probes)
    assert "binding" in {r["probe"] for r in probes} and all("–" not in r["cells"].get("text", "") for r in probes)
    assert ctx["cols"]["probes"][1] is None and ctx["cols"]["synth"][1] is None  # run b lacks them
    assert ctx["cols"]["sweeps"][0][0]["best"].startswith("mid at t=100")
    assert len(ctx["cols"]["synth"][0][0]["samples"]) == 6 and ctx["cols"]["attention"][0][0]["caption"].startswith("a red <script>")
    assert ctx["cols"]["timesteps"][0]["curves"] and ctx["cols"]["pruning"][1]["pruning"]


def test_pruning_trace_from_per_candidate_calls():
    x, y = pruning_trace(np.array([6, 3, 3]))  # two classes dropped after 3 calls each; the winner ran to 6
    assert x.tolist() == [0, 9, 12] and y.tolist() == [3, 1, 1]
    x, y = pruning_trace(np.array([4, 4, 4]))  # exhaustive: no pruning
    assert x.tolist() == [0, 12] and y.tolist() == [3, 3]


def test_vectorised_ece_equals_torchmetrics():
    import torch
    from torchmetrics.functional.classification import multiclass_calibration_error

    rng = np.random.default_rng(0)
    for n, m, bins in [(7, 3, 10), (200, 10, 15)]:
        p = rng.dirichlet(np.ones(m) * 0.3, n).astype(np.float32).astype(np.float64)
        y = rng.integers(0, m, n)
        ref = multiclass_calibration_error(torch.from_numpy(p).float(), torch.from_numpy(y), num_classes=m, n_bins=bins, norm="l1")
        conf, hit = p.max(1), p.argmax(1) == y
        assert top_label_ece(conf, hit, bins)[0] == pytest.approx(ref.item(), abs=1e-6)


def test_two_runs_with_different_classes_are_aligned_by_name(ctx):
    rows = {r["name"]: r for r in ctx["per_class"]["rows"]}
    assert list(rows) == ["red", SCRIPT, "blue"] and ctx["per_class"]["runs"] == ["a", "b"]
    assert rows[SCRIPT]["cells"][1] == {"text": "not in this run", "missing": True} and rows[SCRIPT]["partial"]
    assert not rows["red"]["partial"] and rows["red"]["cells"][1]["text"].endswith("%)")


def test_a_folder_of_runs_gives_one_column_per_run(runs):
    found = load_runs([runs["a"].parent])  # like `diffdisc report runs/demo`
    assert [r.name for r in found] == ["report-runs/a", "report-runs/b"]
    assert found[0].overlays and found[0].sweeps and found[0].synth and found[0].matchings


def test_user_text_is_escaped_in_the_html_source(runs):
    html = render(load_runs([runs["a"], runs["b"]]), title=f"title {SCRIPT}")
    assert "<script" not in html.lower() and "alert(1)" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_empty_partial_and_broken_run_dirs_render_what_exists(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(runs["b"] / "run.json", partial / "run.json")
    shutil.copytree(runs["b"] / "shards", partial / "shards")
    shard = partial / "shards" / "part-00000.jsonl"
    shard.write_bytes(shard.read_bytes()[:-30])  # killed mid-write, never merged
    started = tmp_path / "started"
    started.mkdir()
    shutil.copy(runs["b"] / "run.json", started / "run.json")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    (broken / "features_sweep.json").write_text(json.dumps({"model": "m", "blocks": ["x"]}))
    html = write_report([empty, partial, started, broken, runs["b"]], tmp_path / "r.html").read_text()
    assert "Nothing diffdisc wrote was found" in html and "not merged: metrics.json is missing" in html
    assert "no image is finished yet" in html and "run.json is unreadable" in html and "needs blocks, timesteps" in html
    ctx = build_context(load_runs([partial]), "t", "now")
    assert ctx["metrics"][0]["images"] == 5  # 6 images, the torn last one dropped
    with pytest.raises(DiffdiscError, match="does not exist"):
        load_runs([tmp_path / "nope"])


def test_cli_report_exit_codes_and_json(runs, tmp_path, monkeypatch, capsys):
    from diffdisc.cli import main

    def cli(*args) -> int:
        monkeypatch.setattr(sys, "argv", ["diffdisc", *map(str, args)])
        try:
            main()
        except SystemExit as e:
            return e.code
        return 0

    assert cli("report", runs["b"], tmp_path / "not-there", "--out", tmp_path / "x.html") == 1
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "does not exist" in err and "Traceback" not in err
    assert cli("report", "--no-such-option") == 2 and "No such option" in capsys.readouterr().err
    assert cli("report", runs["b"], "--out", tmp_path / "x.html", "--json") == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["classification"] is True and (tmp_path / "x.html").is_file()

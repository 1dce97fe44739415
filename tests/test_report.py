"""`diffdisc report`: deterministic page, every section from real runs, partial/empty dirs, class alignment, escaping."""

import base64
import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from diffdisc.errors import DiffdiscError
from diffdisc.report.html import build_context, render, write_report
from diffdisc.report.load import load_runs
from diffdisc.report.stats import pruning_trace
from diffdisc.scoring.calibrate import top_label_ece
from report_runs import MODEL_NAME, SCRIPT, session_runs

STAMP = re.compile(r'<span id="generated">[^<]*</span>')


@pytest.fixture(scope="module")
def runs(tmp_path_factory, sd_dir, classcond_dir, image_folder):
    return session_runs(tmp_path_factory, sd_dir, classcond_dir, image_folder)


@pytest.fixture(scope="module")
def ctx(runs):
    return build_context(load_runs([runs["a"], runs["b"]]), "t", "now")


@pytest.fixture(scope="module")
def page(runs):
    return render(load_runs([runs["a"], runs["b"]]))


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


def _edited_copy(src, dst, **changes):
    """A copy of a classify run whose run.json has `changes` (settings a test needs, without a new run)."""
    shutil.copytree(src, dst)
    settings = json.loads((dst / "run.json").read_text())
    (dst / "run.json").write_text(json.dumps({**settings, **changes}))
    return dst


def test_models_are_named_by_their_own_name_not_their_folder(runs, ctx, tmp_path):
    from diffdisc.backbones.base import model_label
    from diffdisc.runs import RUNTIME_KEYS
    from diffdisc.runs.guard import setting_diffs

    assert json.loads((runs["a"] / "run.json").read_text())["model"]["label"] == MODEL_NAME  # recorded by classify
    assert [m["model"] for m in ctx["metrics"]] == [MODEL_NAME, MODEL_NAME]
    assert any(r["key"] == "model.label" for r in ctx["settings"]["rows"])
    assert model_label("/x/model", {"recipe": "fmnist-classcond", "config": {"data": "/d/mydata"}}) == "fmnist-classcond-mydata"
    assert model_label("/x/model+lora", {"name": "mine"}) == "mine+lora" and model_label("/x/model", {}) == "model"
    old = {"model": {"name": "/x/model", "fingerprint": "f"}}  # a run made before labels were recorded
    assert setting_diffs(old, {"model": {**old["model"], "label": MODEL_NAME}}, RUNTIME_KEYS) == []  # still resumes
    unlabelled = _edited_copy(runs["b"], tmp_path / "old", model=old["model"])
    assert build_context(load_runs([unlabelled]), "t", "now")["metrics"][0]["model"] == "model"


def test_settings_table_compares_only_settings_a_run_used(ctx, page):
    from diffdisc.report.html import _unused

    rows = {r["key"]: r for r in ctx["settings"]["rows"]}  # run a: ttest, run b: halving
    assert "prompts" not in rows and "candidates" not in rows  # class ids of a class-conditional model; = classes
    assert "adaptive.n_timesteps" not in rows  # neither run is exhaustive
    assert [c["used"] for c in rows["adaptive.stages"]["cells"]] == [False, True] and not rows["adaptive.stages"]["differs"]
    assert [c["used"] for c in rows["adaptive.p_value"]["cells"]] == [True, False] and not rows["adaptive.p_value"]["differs"]
    assert rows["adaptive.strategy"]["differs"] and rows["classes"]["differs"]
    assert "score.min_snr_gamma" not in rows and "score.clark_rate" not in rows  # uniform weighting
    s = {"adaptive": {"strategy": "exhaustive"}, "score": {"weighting": "min_snr"}, "classes": ["cat"], "prompts": ["a cat"]}
    assert not _unused("adaptive.n_timesteps", s, False) and not _unused("score.min_snr_gamma", s, False)
    assert not _unused("prompts", s, False) and _unused("adaptive.n_timesteps", s, True)  # contrastive: no timesteps
    own = [dict(r["kv"]) for r in ctx["settings"]["per_run"]]  # each run's line lists only what it used
    assert ["adaptive.stages" in o for o in own] == [False, True] and ["adaptive.p_value" in o for o in own] == [True, False]


def test_percentages_round_the_same_in_tables_and_figures(monkeypatch):
    from matplotlib.text import Text

    from diffdisc.report import figures, html
    from diffdisc.report.load import Run, Sweep
    from diffdisc.report.stats import pct

    drawn = []
    real = figures.fig_png
    monkeypatch.setattr(figures, "fig_png", lambda fig, **kw: drawn.extend(t.get_text() for t in fig.findobj(Text)) or real(fig))
    best = {"block": "mid", "t": 10, "val_acc": 0.915}
    run = Run("r", Path("."), sweeps=[Sweep(Path("s.json"), "m", ["mid"], [10, 100], np.array([[0.915, 0.5]]), best, {})])
    table = html._sweeps(run)[0]["best"]  # draws the heat map
    assert pct(0.915) == "91.5%" and "91.5%" in drawn and table.endswith("val 91.5%")


def test_what_a_run_lacks_is_said_once(page):
    assert "Not in this run:" not in page  # both are classification runs: other kinds of run are not "missing"
    assert "not in this run: b" not in page


def test_long_labels_are_not_cut(monkeypatch):
    from matplotlib.text import Text
    from PIL import Image

    from diffdisc.report import figures

    names = ["a class name of exactly 40 characters ok", "short"]
    figs = []
    real = figures.fig_png
    monkeypatch.setattr(figures, "fig_png", lambda fig, **kw: figs.append(fig) or real(fig))
    png = figures.confusion_png(np.array([0, 1]), np.array([0, 0]), names, "t")
    texts = [t.get_text() for t in figs[0].findobj(Text)]
    assert names[0] in texts  # whole, not "…"-shortened
    w, h = Image.open(io.BytesIO(base64.b64decode(png))).size
    box = figs[0].get_tightbbox()  # inches: every drawn label
    assert w >= box.width * 80 - 1 and h >= box.height * 80 - 1  # saved to the drawn extent: nothing clipped


def test_glyphs_the_default_font_lacks(runs, tmp_path):
    """A glyph another installed font has comes from it; one no font has is a box, noted once, never a warning."""
    import warnings

    from diffdisc.report import figures

    assert figures.fallback_fonts("a⌒b") == ("DejaVu Sans Mono",)  # the arc is in matplotlib's own Mono face
    cjk = ["连衣裙", "外套"]
    run = _edited_copy(runs["b"], tmp_path / "cjk", classes=cjk, candidates=cjk)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ctx = build_context(load_runs([run]), "t", "now")
        figures.confusion_png(np.array([0, 1]), np.array([0, 1]), ["a⌒b", "c"], "t")
    assert not [x for x in w if "Glyph" in str(x.message)]
    if figures.fallback_fonts("连衣裙"):  # a CJK font is installed: it draws them
        assert ctx["glyph_note"] is None
    else:
        assert "连衣裙外套" in ctx["glyph_note"] and "Noto Sans CJK" in ctx["glyph_note"]

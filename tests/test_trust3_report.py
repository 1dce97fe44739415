"""Issue 24, items 18-20: one ECE (cross-fitted or at a T from elsewhere) with intervals on the command line and in
the report; the report describes cascades and learned timesteps as they ran, shows CNN baselines everywhere, fits
13 runs' settings and lists only what a run's kind lacks; `features probe --out` feeds the report."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import run_main
from diffdisc.report.html import _settings_table, build_context, environment
from diffdisc.report.load import load_runs
from diffdisc.results import ClassificationResult
from diffdisc.results.classification import summary_lines, with_ci

CLASSES = ["a", "b", "c"]


def _run(root, name, n=40, seed=0, calls=((10, 10, 10),), extra=None, **settings):
    """A merged classify run from made-up scores (no model): mostly right, noisy, at denoising-error scale; image i
    spent calls[i % len(calls)] U-Net calls per class and carries the record fields `extra`."""
    rng = np.random.default_rng(seed)
    base = {"task": "classify", "model": {"name": "/m", "fingerprint": "f", "label": "tiny"}, "data": "/d", "labels": None,
            "classes": CLASSES, "candidates": CLASSES, "prompts": ["0", "1", "2"],
            "score": {"loss": "l2", "weighting": "uniform", "scorer": "denoise"},
            "adaptive": {"strategy": "exhaustive", "n_timesteps": 10, "timesteps": "even"},
            "temperature": None, "model_temperature": None}  # fmt: skip
    records = []
    for i in range(n):
        y = i % 3
        s = rng.normal(1.0, 0.03, 3)
        s[y] -= 0.03
        rk = np.argsort(s, kind="stable").tolist()
        c = list(calls[i % len(calls)])
        records.append({"image_id": f"{i}.png", "order": i, "path": None, "label": y, "pred": rk[0], "ranking": rk,
                        "scores": s.tolist(), "n_calls": c, "calls": sum(c), "timesteps": [], "errors": None,
                        **(extra or {})})  # fmt: skip
    d = root / name
    (d / "shards").mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({**base, **settings}))
    (d / "shards" / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    res = ClassificationResult.load(d)
    res.write(d, res.metrics())
    return d


def _metrics(d):
    return json.loads((d / "metrics.json").read_text())


# ------------------------------------------------------------------ item 18: one ECE, with its interval
def test_one_ece_with_intervals_the_same_on_the_command_line_and_in_the_report(tmp_path):
    from diffdisc.scoring.calibrate import cross_fitted_ece

    d = _run(tmp_path, "r")
    m, res = _metrics(d), ClassificationResult.load(d)
    assert m["ece"] == m["ece_temperature_scaled"] == pytest.approx(cross_fitted_ece(res.scores, res.labels, res.rankings))
    assert m["ece_ci"][0] <= m["ece_ci"][1] and m["accuracy_ci"][0] <= m["accuracy"] <= m["accuracy_ci"][1]
    lines = summary_lines(m)
    ece = [x for x in lines if "ece" in x.lower()]
    assert len(ece) == 1 and with_ci(m["ece"], m["ece_ci"]) in ece[0] and "cross-fitted" in ece[0] and "%" in ece[0]
    assert any(x.startswith("accuracy [95% CI]: ") and with_ci(m["accuracy"], m["accuracy_ci"]) in x for x in lines)
    # a calibration.json in the run was fitted on these very images: the report does not measure at its T
    (d / "calibration.json").write_text(json.dumps({"temperature": 0.01, "fitted_on": str(d), "n": 40}))
    row = build_context(load_runs([d]), "t", "now")["metrics"][0]
    assert row["ece"] == with_ci(m["ece"], m["ece_ci"]) and row["accuracy"] == with_ci(m["accuracy"], m["accuracy_ci"])
    assert row["calibration"] == "cross-fitted T" and "cross-fitted" in row["calibration_title"]
    assert not [v for v in row.values() if re.fullmatch(r"0\.\d+", str(v))]  # no fraction beside the percents


def test_a_temperature_from_another_run_is_the_one_ece_in_both(tmp_path):
    from diffdisc.tasks.calibrate import calibrate

    val, test = _run(tmp_path, "val", seed=1), _run(tmp_path, "test", seed=2)
    applied = calibrate(val, apply_to=test)["applied_metrics"]
    m = _metrics(test)
    assert m["ece"] == applied["ece"] and m["temperature_source"] == "given" and m["ece_source"].startswith("at T = ")
    assert [x for x in summary_lines(m) if "ECE" in x] == [f"ECE [95% CI]: {with_ci(m['ece'], m['ece_ci'])} ({m['ece_source']})"]
    row = build_context(load_runs([test]), "t", "now")["metrics"][0]
    assert row["ece"] == with_ci(m["ece"], m["ece_ci"]) and row["calibration"].startswith("T = ")


# ------------------------------------------------------------------ item 19: cascades, learned t, baselines, layout
def test_a_shortlist_run_is_described_as_a_cascade_with_split_calls(tmp_path):
    sl = {"keep": 2, "scorer": "self", "model": {"name": "/m", "fingerprint": "f", "label": "tiny"}, "timesteps": [100, 500]}
    # 2 shortlist t for each of 3 classes, then 20 t for the 2 kept (21 for one class of every other image): 46.5 calls
    d = _run(tmp_path, "cascade", calls=((22, 22, 2), (22, 2, 23)), extra={"shortlist_calls": 6, "shortlist": [0, 1]},
             shortlist=sl)  # fmt: skip
    ctx = build_context(load_runs([d]), "t", "now")
    row = ctx["metrics"][0]
    assert row["strategy"] == "shortlist top 2 (self) → exhaustive"
    assert row["calls"] == "46.5 = 6 shortlist + 40.5 decider"  # not "46", not one unsplit number
    assert ctx["cols"]["pruning"][0]["pruning"] and "no pruning" not in str(ctx["cols"]["pruning"][0].get("pruning_note"))
    assert any("46.5 = 6 shortlist (top 2 by self) + 40.5 decider" in x for x in summary_lines(_metrics(d)))


def test_learned_timesteps_are_named_in_the_search_and_the_note(tmp_path):
    adaptive = {"strategy": "exhaustive", "n_timesteps": 4, "timesteps": "even", "timestep_weights": "/w/weights.json"}
    d = _run(tmp_path, "learned", adaptive=adaptive, timestep_weights={"path": "/w/weights.json", "sha256": "0"})
    ctx = build_context(load_runs([d]), "t", "now")
    assert ctx["metrics"][0]["strategy"] == "exhaustive, learned timesteps"
    assert ctx["cols"]["pruning"] == [None]  # nothing pruned: no section, but the run says what it did
    from diffdisc.report.html import _search_note

    assert "learned timesteps" in _search_note(ClassificationResult.load(d))


def test_the_cnn_baseline_joins_the_per_class_and_confusion_sections(tmp_path):
    d = _run(tmp_path, "diffusion")
    cnn = tmp_path / "cnn"
    cnn.mkdir()
    (cnn / "classifier.json").write_text(json.dumps({"classes": CLASSES, "config": {"model": "resnet18"}, "val_acc": 0.9}))
    (cnn / "evaluations.json").write_text(json.dumps({"evaluations": [
        {"data": "/d/test", "labels": [0, 1, 2, 2], "predictions": [0, 1, 1, 2], "confidence": [0.9, 0.8, 0.6, 0.7], "top5": 1.0}]}))  # fmt: skip
    ctx = build_context(load_runs([d, cnn]), "t", "now")
    assert ctx["per_class"]["runs"] == ["diffusion", "cnn"]
    assert {r["name"]: r["cells"][1]["text"] for r in ctx["per_class"]["rows"]}["c"] == "1/2 (50.0%)"
    assert len(ctx["cols"]["confusion"][1]) == 1 and "supervised baseline" in ctx["cols"]["confusion"][1][0]["title"]


def test_thirteen_runs_settings_fit_the_page_and_say_shared_settings_once(tmp_path):
    dirs = [_run(tmp_path, f"run-{i:02d}", n=6, adaptive={"strategy": "exhaustive", "n_timesteps": 5 + i, "timesteps": "even"})
            for i in range(13)]  # fmt: skip
    st = _settings_table(load_runs(dirs))
    html = environment().get_template("report.html.j2").render(title="t", runs=[], settings=st, sections=[], metrics=[],
                                                               notes={}, names=[], cols={})  # fmt: skip
    section = html[html.index('<section id="settings">') :]
    section = section[: section.index("</section>")]
    widest = max(len(re.findall(r"<t[dh][ >]", row)) for row in section.split("<tr"))
    assert widest <= 2  # one line per run, not one column per run
    assert section.count("model.label") == 1 and section.count("adaptive.n_timesteps") == 13


def test_what_is_missing_lists_only_what_a_runs_kind_lacks(tmp_path):
    d = _run(tmp_path, "r")
    empty = tmp_path / "empty"
    empty.mkdir()
    run, nothing = load_runs([d, empty])
    assert run.absent == []  # a classify run lacks no probe, sweep, heat map or synthetic set
    assert any("diffdisc classify" in cmd for _, cmd in nothing.absent)


# ------------------------------------------------------------------ item 20: features probe --out, its cache
def test_features_probe_out_is_shown_by_the_report_and_caches_in_the_user_cache(classcond_dir, image_folder, tmp_path,
                                                                                  monkeypatch, capsys):  # fmt: skip
    work, xdg = tmp_path / "work", tmp_path / "xdg"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    code, out, err = run_main(monkeypatch, capsys, "features", "probe", "--model", classcond_dir, "--data", image_folder,
                              "--test-data", image_folder, "--cells", "mid@10", "--val-fraction", "0.3", "--quiet",
                              "--out", tmp_path / "probe")  # fmt: skip
    assert code == 0, err
    assert json.loads((tmp_path / "probe" / "run.json").read_text())["task"] == "features-probe"
    assert not (work / "runs").exists() and any((xdg / "diffdisc" / "features").rglob("*.safetensors"))
    rows = build_context(load_runs([tmp_path / "probe"]), "t", "now")["cols"]["feature_probes"][0]
    assert rows[0]["representation"] == "mid@10 (gap, linear)" and rows[0]["test"].endswith("%")

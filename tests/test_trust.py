"""Regression tests for the trust defects (issue 13): each is named after the defect it pins down."""

import errno
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError
from diffdisc.results import ClassificationResult
from diffdisc.results.classification import bootstrap_intervals as intervals
from diffdisc.runs import RunStore
from diffdisc.runs.io import atomic_write_text
from diffdisc.scoring.adaptive import evaluate, ranked_scores
from diffdisc.scoring.calibrate import classification_metrics, top_label_ece
from diffdisc.scoring.config import AdaptiveConfig
from diffdisc.tasks.classify import ClassifyConfig, classify

FAST = AdaptiveConfig(n_timesteps=4)


class FakeEngine:
    """Errors from a table: base[candidate] + slope where t > 900 (late t cost more) + a little t-dependent jitter (no U-Net)."""

    calls_per_item = 1
    needs_timesteps = True

    def __init__(self, base, slope=0.0):
        self.base, self.slope = torch.tensor(base, dtype=torch.float64), slope
        self.backbone = type("B", (), {"num_train_timesteps": 1000})()
        self.config = type("C", (), {"seed": 0})()

    def candidates(self, conds, groups):
        return conds, groups

    def run(self, x0, keys, conds, work):
        t = work.t.double()
        return self.base[work.candidate] + self.slope * (t > 900) + 0.01 * torch.sin(t + work.candidate)


def test_halving_early_exit_keeps_the_lowest_error_candidate():
    cfg = AdaptiveConfig(strategy="halving", stages=((5, 3), (10, 1)), exit_z=1.0)
    r = evaluate(FakeEngine([0.5, 0.6, 0.1]), torch.zeros(1), ["img"], torch.zeros(3), cfg)[0]
    assert r.prediction == 2


def test_metrics_follow_the_strategy_ranking_not_partial_means():
    # errors grow with t: survivors' means over more (later) timesteps look worse than pruned partial means
    cfg = AdaptiveConfig(strategy="halving", stages=((2, 2), (20, 1)))
    res = evaluate(FakeEngine([0.30, 0.31, 0.5, 0.6, 0.7], slope=5.0), torch.zeros(1), ["a"], torch.zeros(5), cfg)[0]
    raw = res.means
    assert int(np.argmin(raw)) != res.prediction  # the defect's precondition: raw means disagree
    sc = res.scores
    assert int(np.argmin(sc)) == res.prediction
    assert [sc[c] for c in res.ranking()] == sorted(sc)  # scores are ordered like the ranking
    # one set of records: accuracy 1.0 must come with per-class accuracy 1.0 and top-5 1.0
    recs = [{"image_id": "a", "pred": res.prediction, "ranking": res.ranking(), "scores": raw, "label": res.prediction,
             "calls": res.calls, "n_calls": res.n_calls}]  # fmt: skip
    settings = {"candidates": list("abcde")}
    m_old_scores = ClassificationResult(settings, recs).metrics()
    assert m_old_scores["accuracy"] == m_old_scores["mean_per_class_accuracy"] == m_old_scores["top5"] == 1.0


def test_ranked_scores_are_plain_means_for_exhaustive():
    errors = {0: {10: 0.3, 20: 0.5}, 1: {10: 0.2, 20: 0.4}}
    assert ranked_scores(errors, [1, 0]) == pytest.approx([0.4, 0.3])


def test_mean_per_class_accuracy_averages_labelled_classes_only():
    y = np.array([0] * 10 + [1, 1])
    ranking = np.array([[0, 1, 2]] * 10 + [[1, 0, 2], [2, 1, 0]])  # class 2 is predicted once, never labelled
    scores = np.argsort(ranking, axis=1).astype(float)
    assert classification_metrics(scores, y, 1.0, ranking)["mean_per_class_accuracy"] == pytest.approx(0.75)


def _with_temperature(model_dir, tmp_path, value):
    import shutil

    dst = tmp_path / "m"
    shutil.copytree(model_dir, dst)
    meta = json.loads((dst / "diffdisc.json").read_text())
    meta["temperature"] = {"denoise l2 uniform": {"value": value, "fitted_on": "9 training images"}}
    (dst / "diffdisc.json").write_text(json.dumps(meta))
    return dst


def test_default_probabilities_use_the_model_temperature_or_report_cross_fitted_ece(classcond_dir, image_folder, tmp_path):
    plain = json.loads(json.dumps(classify(create_backbone(classcond_dir), image_folder, ClassifyConfig(adaptive=FAST),
                                           out=tmp_path / "plain").metrics()))  # fmt: skip
    assert plain["temperature_source"].startswith("none") and plain["ece"] == plain["ece_temperature_scaled"]
    assert "ece_uncalibrated" in plain
    bb = create_backbone(_with_temperature(classcond_dir, tmp_path, 0.05))
    m = json.loads((classify(bb, image_folder, ClassifyConfig(adaptive=FAST), out=tmp_path / "cal") and tmp_path / "cal" / "metrics.json").read_text())
    assert m["temperature"] == 0.05 and m["temperature_source"].startswith("model metadata (fitted on 9 training images")
    assert "ece_uncalibrated" not in m


def test_shipped_models_carry_a_fitted_temperature():
    from diffdisc.backbones.base import read_metadata
    from diffdisc.backbones.registry import list_backbones, shipped_models_dir

    for name in list_backbones():
        meta = read_metadata(shipped_models_dir() / name)
        t = meta.get("temperature") or {}
        flow = (meta.get("config") or {}).get("objective") == "flow"  # scored with cosmap by default
        key = "contrastive" if "clip" in name else "denoise l2 cosmap" if flow else "denoise l2 uniform"
        assert t.get(key, {}).get("value", 0) > 0, name
        assert "train" in t[key]["fitted_on"], name


_HOLD = textwrap.dedent("""
    import sys, time
    from diffdisc.runs import RunStore
    from diffdisc.errors import DiffdiscError
    try:
        s = RunStore(sys.argv[1], None, {"adaptive": {"n_timesteps": int(sys.argv[2])}}, rank=int(sys.argv[3]))
    except DiffdiscError as e:
        print(e, file=sys.stderr); sys.exit(1)
    time.sleep(2.0)
""")


def _start_two(out, a, b):
    procs = [subprocess.Popen([sys.executable, "-c", _HOLD, str(out), str(t), str(r)], stderr=subprocess.PIPE, text=True)
             for t, r in (a, b)]  # fmt: skip
    return [(p.wait(), p.stderr.read()) for p in procs]


def test_two_processes_on_one_out_are_refused(tmp_path):
    res = _start_two(tmp_path / "x", (20, 0), (30, 0))
    assert sorted(c for c, _ in res) == [0, 1]
    assert "other settings" in next(e for c, e in res if c) and "n_timesteps" in next(e for c, e in res if c)
    res = _start_two(tmp_path / "y", (20, 0), (20, 0))
    assert sorted(c for c, _ in res) == [0, 1] and "torchrun" in next(e for c, e in res if c)
    assert [c for c, _ in _start_two(tmp_path / "z", (20, 0), (20, 1))] == [0, 0]  # ranks share a run


def test_labels_csv_is_part_of_the_run_settings(classcond_dir, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for k in range(3):
        Image.fromarray(np.full((16, 16, 3), 60 * k, np.uint8)).save(flat / f"{k}.png")
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("image,label\n0.png,red\n1.png,green\n2.png,blue\n")
    b.write_text("image,label\n0.png,blue\n1.png,green\n2.png,red\n")
    bb = create_backbone(classcond_dir)
    classify(bb, flat, ClassifyConfig(adaptive=FAST, labels_csv=a), out=tmp_path / "r")
    with pytest.raises(DiffdiscError, match="labels"):
        classify(bb, flat, ClassifyConfig(adaptive=FAST, labels_csv=b), out=tmp_path / "r")


def test_settings_mismatch_names_the_meaningful_keys(tmp_path):
    base = {"candidates": ["a", "b"], "adaptive": {"n_timesteps": 50, "strategy": "exhaustive"}}
    with RunStore(tmp_path, None, base):
        pass
    with pytest.raises(DiffdiscError) as e:
        RunStore(tmp_path, None, {**base, "candidates": ["a", "c"], "adaptive": {"n_timesteps": 20, "strategy": "exhaustive"}})
    assert str(e.value).index("adaptive.n_timesteps: 50 -> 20") < str(e.value).index("candidates")


def test_disk_full_during_append_is_one_line_error(tmp_path, monkeypatch):
    store = RunStore(tmp_path, None, {"x": 1})

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiffdiscError, match="disk full.*kept.*rerun"):
        store.append([{"image_id": "a"}])


def test_failed_write_leaves_no_temp_and_old_leftovers_are_cleaned(tmp_path, monkeypatch):
    dead = tmp_path / ".results.jsonl.tmp-999999999"
    dead.write_text("torn")
    RunStore(tmp_path, None, {"x": 1}).close()
    assert not dead.exists()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(DiffdiscError, match="could not write"):
        atomic_write_text(tmp_path / "metrics.json", "{}")
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_all_images_unreadable_with_skip_fails(classcond_dir, tmp_path):
    bad = tmp_path / "bad" / "red"
    bad.mkdir(parents=True)
    for k in range(2):
        (bad / f"{k}.png").write_bytes(b"not a png")
    with pytest.raises(DiffdiscError, match="nothing was classified"):
        classify(create_backbone(classcond_dir), tmp_path / "bad", ClassifyConfig(adaptive=FAST, on_error="skip"), out=tmp_path / "r")


def test_limit_rerun_on_a_finished_run_says_it_reports_more(classcond_dir, image_folder, tmp_path):
    bb = create_backbone(classcond_dir)
    classify(bb, image_folder, ClassifyConfig(adaptive=FAST, limit=6), out=tmp_path / "r")
    res = classify(bb, image_folder, ClassifyConfig(adaptive=FAST, limit=3), out=tmp_path / "r")
    assert len(res) == 6 and any("more than the 3 selected" in n for n in res.notes)


def test_ece_point_estimate_lies_in_its_bootstrap_interval():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.5, 1, 1000)
    hit = (rng.random(1000) < conf).astype(np.float64)
    (acc, acc_ci), (ece, ece_ci) = intervals(hit, conf)
    assert ece == pytest.approx(top_label_ece(conf, hit)[0])
    assert ece_ci[0] <= ece <= ece_ci[1] and acc_ci[0] <= acc <= acc_ci[1]

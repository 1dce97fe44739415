"""Learned timesteps that never hurt: the fit checks itself against the even grid on held-out training images at
each number of timesteps, keeps the even grid where nothing learned beat it, says so, and classify follows."""

import json
import logging

import numpy as np
import pytest

from conftest import run_main
from diffdisc.scoring.calibrate import temperature_key
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.schedule import dc_grid, stage_subset
from diffdisc.scoring.timestep_weights import PLANS, TimestepWeights, choose_plans, fit_weights


def _weights(grid, plans=None, fingerprint="fp", curve=True):
    g = len(grid)
    cal = {"folds": 3, "images": 30, "l2": 1.0, "l2_cv": {"1.0": {}}}
    if curve:
        cal["curve"] = {"n": list(range(1, g + 1)), "fitted": [0.5] * g, "even": [0.6] * g, "even_weighted": [0.55] * g}
    return TimestepWeights(model={"fingerprint": fingerprint}, score=temperature_key(ScoreConfig()), sigmas="scheduler",
                           grid=grid, order=list(reversed(grid)), weights=[1 / g] * g, scales=[1.0] * g,
                           informativeness={"accuracy": [0.5] * g, "margin": [0.0] * g}, calibration=cal, n_images=30,
                           seed=0, plans=plans)  # fmt: skip


def test_the_even_grid_is_kept_unless_a_learned_plan_earns_its_place():
    n = 40
    even = np.zeros((n, 1), bool)
    even[:20] = True  # 50 %
    lucky = even.copy()
    lucky[20] = True  # +1 image: not more than one standard error of the paired difference (1 > 1·√1 fails)
    clear = even.copy()
    clear[20:30] = True  # +10 images, never worse
    worse = even.copy()
    worse[:5] = False
    hits = {"even": even, "even_weighted": lucky, "learned": clear}
    assert choose_plans(hits, z_min=1.0) == ["learned"]
    assert choose_plans({"even": even, "even_weighted": lucky, "learned": worse}, z_min=1.0) == ["even"]
    assert choose_plans({"even": even, "even_weighted": lucky, "learned": worse}, z_min=0.0) == ["even_weighted"]
    assert choose_plans({"even": even, "even_weighted": clear, "learned": clear}) == ["even_weighted"]  # tie: simpler


def test_when_every_timestep_says_the_same_the_file_keeps_the_even_grid():
    """Each t separates the classes equally well: nothing learned can beat the even grid, so every budget keeps
    it, the file is recommended nowhere and a run ignores it (with a warning that says why)."""
    rng = np.random.default_rng(0)
    labels = np.arange(4).repeat(8)
    grid = dc_grid(1000, 8)
    errors = 1.0 + 0.05 * rng.random((32, 4, 8)) + 0.5 * (np.arange(4)[None, :, None] != labels[:, None, None])
    w = fit_weights(errors, labels, grid)
    assert w.plans == ["even"] * 8 and not any(w.recommended(n) for n in range(1, 9))
    curve = w.calibration["curve"]
    assert set(curve) >= {"n", "fitted", "even", "even_weighted", "plan"} and curve["even"] == [1.0] * 8
    assert "nothing learned beat the even grid" in w.verdict(5) and "--timesteps 5 without --timestep-weights" in w.verdict(5)
    assert "cross-validation" in w.verdict(5) and "8 timesteps" in w.verdict(8)
    assert w.for_run(AdaptiveConfig(n_timesteps=5)) is None


def test_informative_timesteps_are_used_where_they_win():
    """Only 2 of 8 timesteps carry the class: the learned first two beat the even grid's two, and the file says so."""
    rng = np.random.default_rng(1)
    labels = np.arange(4).repeat(10)
    grid = dc_grid(1000, 8)
    errors = 1.0 + rng.normal(0, 0.3, (40, 4, 8))
    errors[..., [2, 5]] += 0.6 * (np.arange(4)[None, :, None] != labels[:, None, None])  # t = 312, 687
    w = fit_weights(errors, labels, grid)
    assert sorted(w.order[:2]) == [312, 687] and w.plan(2) == "learned" and w.recommended(2)
    assert sorted(w.ordered_grid(2)) == [312, 687]
    assert "the file uses the learned timesteps" in w.verdict(2)
    assert w.for_run(AdaptiveConfig(n_timesteps=2)) is w


def test_ordered_grid_follows_the_plan_and_files_round_trip(tmp_path, caplog):
    grid = [100, 300, 500, 700]
    w = _weights(grid, plans=["learned", "even_weighted", "even", "learned"])
    assert w.ordered_grid(1) == [700] and w.ordered_grid(2) == stage_subset(grid, 2) and w.ordered_grid(4) == w.order
    with caplog.at_level(logging.WARNING, logger="diffdisc"):
        assert w.ordered_grid(3) == stage_subset(grid, 3)
        w.ordered_grid(3)
    assert sum("using the file anyway" in r.message for r in caplog.records) == 1  # said once
    back = TimestepWeights.load(w.save(tmp_path / "w.json"))
    assert back.plans == w.plans and back.to_dict() == w.to_dict()
    d = json.loads((tmp_path / "w.json").read_text())
    del d["plans"]  # a file written before plans: the learned order everywhere, as before
    (tmp_path / "old.json").write_text(json.dumps(d))
    old = TimestepWeights.load(tmp_path / "old.json")
    assert old.plans is None and old.plan(2) == "learned" and old.ordered_grid(2) == [700, 500]
    assert old.recommended(2) is False  # its recorded curve: 0.5 learned vs 0.6 even
    assert _weights(grid, curve=False).recommended(2) is None
    with pytest.raises(Exception, match="'plans' must name"):
        _weights(grid, plans=["learned"] * 3)
    assert PLANS[0] == "even"


def test_classify_scores_the_even_grid_where_the_file_lost(classcond_dir, image_folder, tmp_path, caplog, one_thread):
    from diffdisc.backbones.registry import create_backbone
    from diffdisc.tasks.classify import classify

    bb = create_backbone(classcond_dir)
    grid = [100, 300, 500, 700]
    path = _weights(grid, plans=["learned", "even", "even", "learned"], fingerprint=bb.info.fingerprint).save(tmp_path / "w.json")
    with caplog.at_level(logging.WARNING, logger="diffdisc"):
        res = classify(bb, image_folder, out=tmp_path / "r", limit=3,
                       adaptive=AdaptiveConfig(n_timesteps=2, timestep_weights=str(path)))  # fmt: skip
    assert all(sorted(ts) == dc_grid(1000, 2) for ts in res.timesteps)  # the even grid, not the file's
    assert any("scoring the even grid without the weights file" in r.message for r in caplog.records)
    res1 = classify(bb, image_folder, out=tmp_path / "r1", limit=3,
                    adaptive=AdaptiveConfig(n_timesteps=1, timestep_weights=str(path)))  # fmt: skip
    assert all(ts == [700] for ts in res1.timesteps)  # where it won, the file's


def test_cli_says_the_cost_and_the_verdict_in_words(monkeypatch, capsys, tmp_path, classcond_dir, image_folder, one_thread):
    out = tmp_path / "w.json"
    code, stdout, err = run_main(monkeypatch, capsys, "timesteps", "fit", "--model", classcond_dir, "--data", image_folder,
                                 "--out", out, "--grid", "3", "--batch-size", "27")  # fmt: skip
    assert code == 0, err
    assert "9 images x 3 classes/prompts x 3 timesteps = 81 U-Net calls" in err
    text = " ".join(stdout.split())
    assert "held-out training images" in text and "not by weight" in text and "chosen by cross-validation" in text
    assert "Recommended at --timesteps" in text or "Not recommended at" in text
    w = TimestepWeights.load(out)
    assert w.plans is not None and len(w.plans) == 3

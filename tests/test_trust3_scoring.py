"""Issue 24, where search strategies join: a decided image costs nothing more (halving's early exit, a tree
level narrowed to one leaf), the t-test ignores zero-weight timesteps, temperature keys name what shapes the
score, and Clark's weighting reads σ on a flow model."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from diffdisc.scoring import adaptive
from diffdisc.scoring.adaptive import evaluate
from diffdisc.scoring.calibrate import probabilities, temperature_key
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.engine import ScoringEngine
from diffdisc.scoring.hierarchy import tree_search
from diffdisc.scoring.label_tree import LabelTree
from diffdisc.scoring.search import ttest
from diffdisc.scoring.timestep_weights import TimestepWeights
from label_trees import NAMES
from test_scoring import TemplateBackbone


def _world(n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(10, 1, 8, 8, generator=g)
    labels = torch.arange(10).repeat(n // 10)
    x0 = templates[labels] + 0.3 * torch.randn(n, 1, 8, 8, generator=g)
    bb = TemplateBackbone(templates)
    return bb, x0, [f"i{i}" for i in range(n)], bb.conditions(list(range(10))), labels.tolist()


def _finite_probabilities(results):
    p = probabilities(np.array([r.scores for r in results]), 1e-3)
    assert np.isfinite(p).all() and np.allclose(p.sum(1), 1)
    return p


# ------------------------------------------------------------- bug 1: halving keeps scoring a decided image
def test_halving_early_exit_charges_nothing_after_the_exit():
    bb, x0, keys, conds, labels = _world()
    engine = ScoringEngine(bb)
    cfg = AdaptiveConfig(strategy="halving", stages=((5, 3), (10, 2), (20, 1)), exit_z=2.0)
    res = evaluate(engine, x0, keys, conds, cfg)
    exited = [r for r in res if sum(lv > 0 for lv in r.level) == 1]  # only the leader survived stage 1
    assert exited, "the clear-cut images should exit after stage 1"
    # was 65: 15 calls on the lone leader
    assert all(r.calls == 10 * 5 and len(r.timesteps) == 5 for r in exited)
    assert engine.calls == sum(r.calls for r in res)
    assert [r.prediction for r in res] == labels


def test_halving_stage_keeping_one_ends_the_search():
    bb, x0, keys, conds, labels = _world(10)
    cfg = AdaptiveConfig(strategy="halving", stages=((4, 1), (8, 1)))
    res = evaluate(ScoringEngine(bb), x0, keys, conds, cfg)
    assert [r.calls for r in res] == [10 * 4] * 10 and [r.prediction for r in res] == labels


@pytest.mark.parametrize("strategy", ["halving", "ttest"])
def test_a_lone_candidate_costs_nothing_and_takes_all_the_probability(strategy):
    bb, x0, keys, conds, _ = _world(10)
    cfg = AdaptiveConfig(strategy=strategy, stages=((4, 2), (8, 1)), min_scores=3, max_scores=8)
    res = evaluate(ScoringEngine(bb), x0[:2], keys[:2], conds, cfg, candidates=[[7], [2, 5]])
    assert res[0].calls == 0 and res[0].prediction == 7 and res[1].calls > 0
    p = _finite_probabilities(res)
    assert p[0, 7] == 1.0


# ------------------------------------------------------------- bug 2: tree level narrowed to one leaf
@pytest.mark.parametrize("strategy", ["exhaustive", "halving", "ttest"])
def test_tree_level_with_one_leaf_is_decided_not_scored(tree_world, strategy):
    bb, x0, keys, conds, labels = tree_world
    shape = {"a": ["a0", "a1"], "b": ["b0", "b1"], "c": ["c0"], "d": ["c1"]}  # c and d: one-child nodes
    tree = LabelTree.from_dict(shape, NAMES)
    cfg = AdaptiveConfig(strategy=strategy, n_timesteps=4, stages=((2, 2), (4, 1)), min_scores=3,
                         max_scores=6)  # fmt: skip
    engine = ScoringEngine(bb, ScoreConfig(batch_size=7))
    got = tree_search(engine, x0, keys, conds, tree, cfg, beam=1)
    assert [r.prediction for r in got] == labels
    lone = got[2]  # label 5 = c1, node d's only child
    assert sum(lone.n_calls) == 0 and lone.calls == sum(lone.node_calls.values()) > 0
    assert engine.calls == sum(r.calls for r in got)
    p = _finite_probabilities(got)
    assert p[2, 5] == 1.0


def test_tree_shortlist_of_one_leaf_under_ttest(tree_world):
    bb, x0, keys, conds, labels = tree_world
    tree = LabelTree.from_dict({"a": ["a0", "a1"], "b": ["b0", "b1"], "c": ["c0", "c1"]}, NAMES)
    cfg = AdaptiveConfig(strategy="ttest", min_scores=3, max_scores=6)
    allowed = [[0, 1], [3, 5], [5], [2, 4]]
    got = tree_search(ScoringEngine(bb), x0, keys, conds, tree, cfg, beam=1, candidates=allowed)
    assert got[2].calls == 0 and got[2].prediction == 5
    _finite_probabilities(got)


# ------------------------------------------------------------- minor: zero-weight timesteps in the t-test
def test_ttest_drops_zero_weight_timesteps_from_its_samples(monkeypatch):
    bb, x0, keys, conds, _ = _world(10)
    grid = [50 + 100 * k for k in range(8)]
    order = [450, 250, 650, 50, 150, 350, 550, 750]  # four weighted timesteps first, then four of weight 0
    w = TimestepWeights(model={"fingerprint": bb.info.fingerprint}, score=temperature_key(ScoreConfig()),
                        sigmas="scheduler", grid=grid, order=order, weights=[0.4, 0.3, 0.2, 0.1, 0, 0, 0, 0],
                        scales=[1.0] * 8, informativeness={}, calibration={}, n_images=0, seed=0)  # fmt: skip
    seen = []
    real = adaptive.paired_p
    monkeypatch.setattr(ttest, "paired_p", lambda a, b: seen.append(a - b) or real(a, b))  # where the t-test reads it
    cfg = AdaptiveConfig(strategy="ttest", min_scores=3, max_scores=8, p_value=1e-300)  # prune nobody
    res = evaluate(ScoringEngine(bb), x0, keys, conds, cfg, weights=w)
    assert all(r.calls == 10 * 8 for r in res) and seen
    assert max(len(d) for d in seen) == 4  # the weighted timesteps only
    assert not any((d == 0).any() for d in seen)  # no exact-zero differences from weight-0 timesteps


def test_paired_p_with_one_sample_gives_no_evidence():
    assert adaptive.paired_p(np.array([2.0]), np.array([1.0])) == 1.0


# ------------------------------------------------------------- minor: temperature keys
def test_temperature_key_names_the_values_that_shape_the_score():
    shipped = {}
    for f in Path(adaptive.__file__).parents[1].glob("assets/models/*/diffdisc.json"):
        shipped.update(json.loads(f.read_text()).get("temperature") or {})
    # the defaults keep their keys, so the shipped temperatures still match
    assert {temperature_key(ScoreConfig()), temperature_key(ScoreConfig(weighting="cosmap")),
            temperature_key(ScoreConfig(), contrastive=True)} == set(shipped)  # fmt: skip
    assert temperature_key(ScoreConfig(weighting="clark")) == "denoise l2 clark"
    assert temperature_key(ScoreConfig(scorer="attention")) == "attention l2 uniform"
    distinct = [ScoreConfig(weighting="clark"), ScoreConfig(weighting="clark", clark_rate=3.0),
                ScoreConfig(weighting="min_snr"), ScoreConfig(weighting="min_snr", min_snr_gamma=1.0),
                ScoreConfig(scorer="attention"),
                ScoreConfig(scorer="attention", attention_bias=False)]  # fmt: skip
    keys = [temperature_key(s) for s in distinct]
    assert len(set(keys)) == len(keys)
    # a value the score does not read keeps the key
    unread = ScoreConfig(clark_rate=3.0, min_snr_gamma=1.0, attention_bias=False)
    assert temperature_key(unread) == "denoise l2 uniform"


# ------------------------------------------------------------- minor: Clark's weighting on a flow model
def test_clark_weighting_on_a_flow_model_reads_sigma(tmp_path):
    from diffdisc.backbones.registry import create_backbone
    from test_flow import make_flow_dir

    bb = create_backbone(make_flow_dir(tmp_path / "flow", shift=3.0))
    x0 = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    eps = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t, cond = torch.tensor([500, 500]), bb.conditions([0, 1])
    e7, e0 = (ScoringEngine(bb, ScoreConfig(weighting="clark", clark_rate=r)).errors(x0, eps, t, cond)
              for r in (7.0, 0.0))  # fmt: skip
    sigma = bb.process.sigmas[500].item()
    assert sigma == pytest.approx(0.75, abs=1e-3)  # shift 3 puts row 500 (t/T = 0.5) at σ 0.75
    torch.testing.assert_close(e7 / e0, torch.full((2,), float(np.exp(-7 * sigma))), rtol=1e-4, atol=0)

"""A cascade of two scorers: the cheap stage's shortlist bounds what the expensive stage may choose, and both
stages' U-Net calls are counted."""

import torch

from diffdisc.scoring.adaptive import evaluate
from diffdisc.scoring.cascade import Cascade, Stage
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.engine import ScoringEngine
from test_scoring import TemplateBackbone

M, KEEP = 6, 2


def _stage(templates, x0, n_timesteps):
    bb = TemplateBackbone(templates)
    return Stage(ScoringEngine(bb, ScoreConfig(batch_size=5)), x0, bb.conditions(list(range(M))),
                 adaptive=AdaptiveConfig(n_timesteps=n_timesteps))  # fmt: skip


def test_cascade_decides_within_the_cheap_shortlist_and_counts_both_stages():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(M, 1, 8, 8, generator=g)
    truth, lure = [1, 4], [5, 0]  # per image: its class, and a candidate the expensive scorer alone would pick
    x0 = torch.stack([base[c] + 0.05 * torch.randn(1, 8, 8, generator=g) for c in truth])
    cheap_t, exp_t = base.clone(), base.clone()
    for i in range(2):
        cheap_t[lure[i]] = base[lure[i]] + 10.0  # the cheap stage ranks the lure last
        exp_t[lure[i]] = x0[i]  # the expensive stage alone prefers the lure
        exp_t[truth[i]] = x0[i] + 0.2 * torch.randn(1, 8, 8, generator=g)
    keys = ["a", "b"]
    cheap, expensive = _stage(cheap_t, x0, 1), _stage(exp_t, x0, 4)
    alone = evaluate(expensive.engine, x0, keys, expensive.conds, expensive.adaptive)
    assert [r.prediction for r in alone] == lure  # ignoring the shortlist would give the lure

    first = cheap.evaluate(keys)
    got = Cascade(cheap, expensive, keep=KEEP)(keys)
    assert [r.prediction for r in got] == truth
    for c_res, r in zip(first, got, strict=True):
        shortlist = c_res.ranking()[:KEEP]
        assert sorted(r.errors) == sorted(shortlist)  # the expensive stage scored the shortlist only
        assert sorted(r.ranking()[:KEEP]) == sorted(shortlist)
        assert r.ranking()[KEEP:] == c_res.ranking()[KEEP:]  # the rest in the cheap stage's order
        assert r.calls == M * 1 + KEEP * 4  # cheap: every candidate at 1 t; expensive: the shortlist at 4 t
        assert all(s == float("inf") for c, s in enumerate(r.scores) if c not in shortlist)

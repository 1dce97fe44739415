"""Paired t-test search (Clark & Jaini Alg. 1): shared (t, ε) samples; a candidate is dropped once a one-sided
paired t-test against the current best says it is worse."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from ..config import check_ttest
from ..timestep_weights import TimestepWeights, ordered_grid
from .base import Chunk, GridConfig, GridSearch, ImageScores, decided, image_generator, register


@register
@dataclass(frozen=True)
class TTestConfig(GridConfig):
    """After `min_scores` shared samples (then one at a time), drop every candidate whose paired test against
    the best gives p < `p_value`; stop at one survivor or `max_scores`. Timesteps are drawn without replacement
    per image (with learned weights: their order)."""

    kind = "ttest"

    min_scores: int = 20
    max_scores: int = 100
    p_value: float = 2e-3

    def __post_init__(self):
        super().__post_init__()
        check_ttest(self.min_scores, self.max_scores)

    def build(self, ctx=None) -> TTest:
        return TTest(self)


class TTest(GridSearch):
    def search(self, chunk: Chunk, results: list[ImageScores]) -> None:
        cfg, weights, N = self.config, chunk.weights, len(chunk.keys)
        if weights is not None:
            order = [ordered_grid(weights, min(cfg.max_scores, len(weights.order)))] * N
        else:
            seed = chunk.engine.config.seed
            order = [chunk.place(torch.randperm(chunk.T, generator=image_generator(seed, k, "ttest"))[: cfg.max_scores].tolist(),
                                 cfg.sigmas) for k in chunk.keys]  # fmt: skip
        alive = [chunk.alive(i) for i in range(N)]
        n_done = 0
        while n_done < cfg.max_scores:
            step = cfg.min_scores if n_done == 0 else 1
            active = [i for i in range(N) if not decided(alive[i])]
            if not active:
                break
            chunk.run([(i, c, t) for i in active for t in order[i][n_done : n_done + step] for c in alive[i]], results)
            n_done += step
            for i in active:
                r = results[i]
                ts, f = paired_timesteps(order[i][:n_done], weights)
                e = np.array([[r.errors[c][t] for t in ts] for c in alive[i]])
                if f is not None:
                    e = e * f
                best = int(np.argmin(e.mean(1)))
                keep = [c for j, c in enumerate(alive[i]) if j == best or paired_p(e[j], e[best]) >= cfg.p_value]
                for c in keep:
                    r.level[c] = n_done
                alive[i] = keep
        for i, r in enumerate(results):
            for c in alive[i]:
                r.level[c] = cfg.max_scores + 1


def paired_timesteps(ts: list[int], weights: TimestepWeights | None) -> tuple[list[int], np.ndarray | None]:
    """The timesteps a paired test compares candidates on, and their multipliers (None: unweighted).

    A zero-weight t counts for nothing in the weighted mean, so its weighted difference is an exact 0: as a
    sample it would shrink the spread and inflate n, and the test would prune on evidence it does not have.
    It is dropped (all kept when every weight there is 0: the weighted mean is then the plain one)."""
    if weights is None:
        return list(ts), None
    kept = [t for t in ts if weights.factor(t) > 0] or list(ts)
    return kept, weights.factors(kept)


def paired_p(worse: np.ndarray, best: np.ndarray) -> float:
    """One-sided paired t-test p-value for H1: mean(worse - best) > 0 (1 below 2 samples: no evidence)."""
    d = worse - best
    n = len(d)
    if n < 2:
        return 1.0
    sd = d.std(ddof=1)
    if sd == 0:
        return 0.0 if d.mean() > 0 else 1.0
    return float(stats.t.sf(d.mean() / (sd / np.sqrt(n)), n - 1))

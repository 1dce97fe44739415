"""The flat strategies' first entry point, kept for its callers: `evaluate` runs exhaustive, halving or the
t-test of an `AdaptiveConfig` through the one search protocol (`scoring.search`), where the strategies and the
rules they share (`decided`, `ranked_scores`, call accounting) live."""

from __future__ import annotations

import torch

from .config import AdaptiveConfig
from .engine import ScoringEngine
from .search import Inputs, from_adaptive
from .search.base import ImageScores, decided, image_generator, ranked_scores
from .search.ttest import paired_p, paired_timesteps
from .timestep_weights import TimestepWeights

__all__ = ["ImageScores", "decided", "evaluate", "image_generator", "paired_p", "paired_timesteps", "ranked_scores"]


def evaluate(
    engine: ScoringEngine,
    x0: torch.Tensor,
    keys: list[str],
    conds: torch.Tensor,
    cfg: AdaptiveConfig,
    groups: list[list[int]] | None = None,
    candidates: list[list[int]] | None = None,
    weights: TimestepWeights | None = None,
) -> list[ImageScores]:
    """Score a chunk of images (x0 [N, ...], one key each) against candidates.

    `conds` [P, ...] are prompt/class conditions; `groups[c]` lists the conditions of candidate c (several
    prompt templates of one class): its error at (image, t) is their mean, under the same noise (how a
    scorer combines them is its own: `engine.candidates`). `candidates[i]`, when given, are the only
    candidates image i competes with (a cascade's shortlist); the rest are never scored. A scorer without
    timesteps (contrastive) scores each candidate once, at 'timestep' 0, whatever the strategy. `weights`
    (`diffdisc timesteps fit`, checked against the engine's model and score): every strategy evaluates the most
    informative timesteps first and averages errors with the learned weights (`search.learned`).
    """
    search = from_adaptive(cfg, weights=False).build()
    return search(Inputs(engine, x0, conds, groups, weights), keys, candidates)

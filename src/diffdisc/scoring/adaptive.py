"""Which (candidate, t) pairs to evaluate: exhaustive, successive halving (Li et al.), paired t-test (Clark & Jaini).

Each strategy advances a chunk of images together, so one engine call carries the work of many images
(fixed-size U-Net batches even when each image keeps only a few candidates).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from ..errors import DiffdiscError
from .config import AdaptiveConfig
from .engine import ScoringEngine, Work, derive_seed
from .schedule import check_sigma_grid, dc_grid, sigma_rows, stage_subset, stratified
from .timestep_weights import TimestepWeights, ordered_grid, weighted_mean


@dataclass
class ImageScores:
    """Everything scored for one image. `level[c]` = how long candidate c survived (higher is better)."""

    key: str
    n_candidates: int
    timesteps: list[int] = field(default_factory=list)
    errors: dict[int, dict[int, float]] = field(default_factory=dict)  # candidate -> t -> error
    level: list[int] = field(default_factory=list)
    n_calls: list[int] = field(default_factory=list)
    weights: TimestepWeights | None = field(default=None, repr=False, compare=False)  # learned t weights, if any

    def __post_init__(self):
        self.level = self.level or [0] * self.n_candidates
        self.n_calls = self.n_calls or [0] * self.n_candidates

    def add(self, c: int, t: int, e: float, calls: int = 1) -> None:
        self.errors.setdefault(c, {})[t] = e
        if t not in self.timesteps:
            self.timesteps.append(t)
        self.n_calls[c] += calls

    @property
    def calls(self) -> int:
        return sum(self.n_calls)

    def mean(self, c: int, ts: list[int] | None = None) -> float:
        """Mean error over `ts` (default: its own timesteps), weighted by the learned weights if any."""
        return weighted_mean(self.errors.get(c, {}), ts, self.weights)

    @property
    def means(self) -> list[float]:
        """Each candidate's mean error over its own timesteps (not comparable across pruning levels)."""
        return [self.mean(c) for c in range(self.n_candidates)]

    def ranking(self) -> list[int]:
        """Candidates best first: survivors of later stages first, then lower mean error."""
        sc = self.means
        return sorted(range(self.n_candidates), key=lambda c: (-self.level[c], sc[c], c))

    @property
    def scores(self) -> list[float]:
        """One comparable score per candidate, ordered as the strategy's ranking (see `ranked_scores`)."""
        return ranked_scores(self.errors, self.ranking(), self.weights)

    @property
    def prediction(self) -> int:
        return self.ranking()[0]

    def error_matrix(self) -> list[list[float | None]]:
        """[candidate][t in self.timesteps] with None where a candidate was not evaluated."""
        return [[self.errors.get(c, {}).get(t) for t in self.timesteps] for c in range(self.n_candidates)]


def ranked_scores(errors: dict[int, dict[int, float]], ranking: list[int],
                  weights: TimestepWeights | None = None) -> list[float]:  # fmt: skip
    """Scores that agree with the strategy's ranking, so probabilities and top-k follow its decision.

    Adaptive strategies score pruned candidates on fewer timesteps, and errors grow with t, so raw means
    over different timestep sets are not comparable. Each candidate is instead compared with the leader on
    the timesteps both were scored at: score(c) = mean(leader) + mean_t∈shared(e_c(t) − e_leader(t)) (the
    leader's own mean for the leader; the plain mean error for exhaustive runs, where all share every t; with
    learned timestep weights every mean is their weighted mean).
    A running maximum along the ranking then keeps a pruned candidate from scoring better than one that
    outlived it. Candidates never scored get inf; a leader never scored gets 0 (never inf: that made every
    score inf and the probabilities NaN).
    """
    lead = errors.get(ranking[0], {})
    # a leader never scored was decided without a choice (`decided`: one candidate left, e.g. a tree level
    # narrowed to one leaf): any finite score gives it all the probability over the never-scored (inf) rest
    base = weighted_mean(lead, None, weights) if lead else 0.0
    out, floor = {}, -float("inf")
    for c in ranking:
        row = errors.get(c, {})
        shared = [t for t in row if t in lead]
        if c == ranking[0]:
            s = base
        elif shared:
            s = base + weighted_mean({t: row[t] - lead[t] for t in shared}, None, weights)
        else:
            s = float("inf")
        floor = max(floor, s)
        out[c] = floor
    return [out[c] for c in range(len(ranking))]


def decided(alive: list) -> bool:
    """The one stopping rule of every search that prunes (halving, its early exit, the t-test, each level of
    a label tree): one candidate left (or none) means the image is decided: nothing more scored or charged."""
    return len(alive) <= 1


def image_generator(seed: int, key: str, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, key, purpose))


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
    timesteps (contrastive) scores each candidate once, at 'timestep' 0, whatever the strategy. `weights` (`diffdisc timesteps fit`, checked against the engine's model and
    score): every strategy evaluates the most informative timesteps first (exhaustive N = the top N; halving's
    stage n = the top n; the t-test takes them in that order) and averages errors with the learned weights.
    """
    groups = groups or [[p] for p in range(conds.shape[0])]
    results = [ImageScores(k, len(groups), weights=weights) for k in keys]
    conds, groups = engine.candidates(conds, groups)
    strategy = {"exhaustive": _exhaustive, "halving": _halving, "ttest": _ttest}[cfg.strategy]
    strategy = strategy if engine.needs_timesteps else _once
    if engine.needs_timesteps:
        check_sigma_grid(engine.backbone, cfg.sigmas)
        if weights is not None:
            if cfg.timesteps == "stratified":
                raise DiffdiscError("learned timestep weights fix the timesteps: they do not combine with stratified ones")
            weights.check(engine.backbone, engine.config, cfg.sigmas)
    strategy(_Ctx(engine, x0, keys, conds, groups, candidates, weights), cfg, results)
    return results


@dataclass
class _Ctx:
    engine: ScoringEngine
    x0: torch.Tensor
    keys: list[str]
    conds: torch.Tensor
    groups: list[list[int]]
    allowed: list[list[int]] | None = None
    weights: TimestepWeights | None = None

    @property
    def M(self) -> int:
        return len(self.groups)

    def alive(self, i: int) -> list[int]:
        """The candidates image i starts with: all, or its shortlist."""
        return list(self.allowed[i]) if self.allowed is not None else list(range(self.M))

    @property
    def T(self) -> int:
        return self.engine.backbone.num_train_timesteps

    def place(self, ts: list[int], cfg: AdaptiveConfig) -> list[int]:
        """The grid's rows moved to where `cfg.sigmas` puts σ (flow models; the identity otherwise)."""
        if cfg.sigmas == "scheduler":
            return ts
        return sigma_rows(self.engine.backbone.process.sigmas, ts, cfg.sigmas)

    def run(self, plan: list[tuple[int, int, int]], results: list[ImageScores]) -> None:
        """Evaluate (image, candidate, t) triples (each candidate = its group of conditions) and record them."""
        if not plan:
            return
        flat = [(i, p, t) for i, c, t in plan for p in self.groups[c]]
        img, cond, ts = zip(*flat, strict=True)
        errs = self.engine.run(self.x0, self.keys, self.conds, Work.from_lists(img, cond, ts)).tolist()
        pos = 0
        for i, c, t in plan:
            k = len(self.groups[c])
            results[i].add(c, t, float(np.mean(errs[pos : pos + k])), calls=k * self.engine.calls_per_item)
            pos += k


def _timesteps_for(ctx: _Ctx, key: str, cfg: AdaptiveConfig, n: int) -> list[int]:
    if ctx.weights is not None:  # already placed on σ when they were fitted
        return ordered_grid(ctx.weights, n)
    if cfg.timesteps == "stratified":
        return ctx.place(stratified(ctx.T, n, image_generator(ctx.engine.config.seed, key, "timesteps")), cfg)
    return ctx.place(dc_grid(ctx.T, n), cfg)


def _exhaustive(ctx: _Ctx, cfg, results):
    plan = [(i, c, t) for i, k in enumerate(ctx.keys) for c in ctx.alive(i) for t in _timesteps_for(ctx, k, cfg, cfg.n_timesteps)]
    ctx.run(plan, results)


def _once(ctx: _Ctx, cfg, results):
    """Scorers without timesteps: every candidate once, recorded at 'timestep' 0."""
    ctx.run([(i, c, 0) for i in range(len(ctx.keys)) for c in ctx.alive(i)], results)


def _halving(ctx: _Ctx, cfg, results):
    """Official semantics: stage grids are centred strata of one grid of max(n) points; earlier errors are
    reused; after a stage keep the `keep` candidates with the lowest mean over all timesteps seen."""
    grid_n = max(n for n, _ in cfg.stages)
    grids = [_timesteps_for(ctx, k, cfg, grid_n) for k in ctx.keys]
    alive = [ctx.alive(i) for i in range(len(ctx.keys))]
    for level, (n, keep) in enumerate(cfg.stages, start=1):
        plan = []
        for i, r in enumerate(results):
            if decided(alive[i]):  # kept 1 (a stage's keep, or the early exit): its later stages cost nothing
                continue
            stage = ordered_grid(ctx.weights, n) if ctx.weights is not None else stage_subset(grids[i], n)
            new = [t for t in stage if t not in r.timesteps]
            plan += [(i, c, t) for c in alive[i] for t in new]
        ctx.run(plan, results)
        for i, r in enumerate(results):
            # rank every stage (not only when pruning): the early exit below compares alive[i][0] and [1]
            alive[i] = sorted(alive[i], key=lambda c, r=r: (r.mean(c), c))[:keep]
            if cfg.exit_z > 0 and len(alive[i]) > 1 and _decisive(r, alive[i], cfg.exit_z):
                alive[i] = alive[i][:1]  # early exit: the leader's margin is already decisive
            for c in alive[i]:
                r.level[c] = level


def _decisive(r: ImageScores, ranked: list[int], z: float) -> bool:
    """Leader vs runner-up on their shared timesteps: mean paired difference > z standard errors."""
    a, b = r.errors[ranked[0]], r.errors[ranked[1]]
    shared, f = paired_timesteps([t for t in a if t in b], r.weights)
    if len(shared) < 3:
        return False
    d = np.array([b[t] - a[t] for t in shared])
    if f is not None:
        d = d * f
    se = d.std(ddof=1) / np.sqrt(len(d))
    return bool(d.mean() > z * se) if se > 0 else bool(d.mean() > 0)


def _ttest(ctx: _Ctx, cfg, results):
    """Clark & Jaini Alg. 1 with shared (t, ε) samples; timesteps drawn without replacement per image."""
    seed = ctx.engine.config.seed
    if ctx.weights is not None:
        order = [ordered_grid(ctx.weights, min(cfg.max_scores, len(ctx.weights.order)))] * len(ctx.keys)
    else:
        order = [ctx.place(torch.randperm(ctx.T, generator=image_generator(seed, k, "ttest"))[: cfg.max_scores].tolist(), cfg)
                 for k in ctx.keys]  # fmt: skip
    alive = [ctx.alive(i) for i in range(len(ctx.keys))]
    n_done = 0
    while n_done < cfg.max_scores:
        step = cfg.min_scores if n_done == 0 else 1
        active = [i for i in range(len(ctx.keys)) if not decided(alive[i])]
        if not active:
            break
        plan = [(i, c, t) for i in active for t in order[i][n_done : n_done + step] for c in alive[i]]
        ctx.run(plan, results)
        n_done += step
        for i in active:
            r = results[i]
            ts, f = paired_timesteps(order[i][:n_done], ctx.weights)
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

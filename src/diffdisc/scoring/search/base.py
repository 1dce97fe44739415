"""The one search protocol: which (candidate, t) pairs each image's decision costs.

Every strategy is a `Search` built from a `SearchConfig` with one call: (`Inputs`: the engine, a chunk's
encoded images, the candidates' conditions; the images' keys; `allowed`: each image's candidates, None = all)
-> one `ImageScores` per image (errors, ranking, the U-Net calls charged to each candidate). Configs are a
tagged union (`kind`) that nests (a tree whose levels run halving, a cascade whose decider is a tree) and
round-trips through `to_dict` / `from_dict`; `register` adds a kind, so a new strategy is one file holding its
config (with `build`) and its search.

The rules every strategy shares live here, once: one candidate left means decided, nothing more scored or
charged (`decided`); scores of pruned candidates agree with the ranking (`ranked_scores`); every
(image, candidate, t) goes through `Chunk.run`, which charges it to its candidate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import ClassVar, TypeVar

import numpy as np
import torch

from ...config import ConfigMixin, check_choice
from ...errors import DiffdiscError
from ..engine import ScoringEngine, Work, derive_seed
from ..schedule import SIGMA_GRIDS, check_sigma_grid, dc_grid, sigma_rows, stratified
from ..timestep_weights import TimestepWeights, ordered_grid, weighted_mean

S = TypeVar("S", bound="SearchConfig")
SEARCHES: dict[str, type[SearchConfig]] = {}  # kind -> config class (`register`)


def register(cls: type[S]) -> type[S]:
    """Class decorator: make a config's `kind` readable by `SearchConfig.from_dict` (and so by run files)."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} needs a `kind`")
    SEARCHES[cls.kind] = cls
    return cls


@dataclass(frozen=True)
class SearchConfig(ConfigMixin):
    """Base of every strategy's config. `to_dict` leads with `kind`; `from_dict` picks the class by it, so a
    field typed `SearchConfig` holds any registered strategy and nested configs come back as they were."""

    kind: ClassVar[str] = ""
    config_label: ClassVar[str] = "search config"

    def to_dict(self) -> dict:
        return {"kind": self.kind, **super().to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> SearchConfig:
        d = dict(d)
        kind = d.pop("kind", cls.kind)
        sub = cls if kind == cls.kind else SEARCHES.get(kind)
        if sub is None or not issubclass(sub, cls):
            known = ", ".join(k for k, c in SEARCHES.items() if issubclass(c, cls))
            raise DiffdiscError(f"unknown search kind {kind!r} (known: {known})")
        return super(SearchConfig, sub).from_dict(d)

    def build(self, ctx: SearchContext | None = None) -> Search:
        """The strategy object; `ctx` gives what a config cannot hold (the model and candidates, for a tree)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def children(self) -> list[SearchConfig]:
        """The nested configs that search the same inputs (a cascade's cheap stage scores inputs of its own)."""
        return [v for f in fields(self) if isinstance(v := getattr(self, f.name), SearchConfig)]

    def walk(self) -> Iterator[SearchConfig]:
        """This config and every nested one that searches its inputs, outermost first."""
        yield self
        for c in self.children():
            yield from c.walk()

    def find(self, cls: type[S]) -> S | None:
        return next((c for c in self.walk() if isinstance(c, cls)), None)

    def map(self, fn: Callable[[SearchConfig], SearchConfig]) -> SearchConfig:
        """`fn` applied bottom up to every nested config (e.g. a cascade replaced by its decider)."""
        kw = {f.name: v.map(fn) for f in fields(self) if isinstance(v := getattr(self, f.name), SearchConfig)}
        return fn(dataclasses.replace(self, **kw) if kw else self)


@dataclass(frozen=True)
class GridConfig(SearchConfig):
    """A strategy that scores candidates itself, on a timestep grid: where the grid's t fall on σ (`sigmas`,
    flow models) and how many t each stage places (`grid_sizes`, checked against the model up front)."""

    sigmas: str = "scheduler"

    def __post_init__(self):
        check_choice("sigmas", self.sigmas, SIGMA_GRIDS)

    def grid_sizes(self) -> list[int]:
        return []


@dataclass
class SearchContext:
    """What a strategy may need to build itself, once per run: the deciding model, the candidates' names,
    condition keys and groups; `conds` encoded on first use (only a tree asks for them before the run)."""

    backbone: object
    classes: list[str]
    keys: list
    groups: list[list[int]]

    @cached_property
    def conds(self) -> torch.Tensor:
        return self.backbone.conditions(self.keys)


@dataclass
class Inputs:
    """One chunk as a strategy sees it: `x0` [N, ...] encoded by `engine`'s backbone, `conds` [P, ...] and
    `groups[c]` the conditions of candidate c (None: one each), learned timestep `weights` if any, `cheap`:
    a cascade's cheap stage for this chunk (anything with `evaluate(keys, candidates)`; None: the same inputs),
    and `known`: one `ImageScores` per image already scored on these very inputs (a same-model cheap stage: the
    same images, conditions and noise), whose (candidate, t) errors are reused, not computed or charged again."""

    engine: ScoringEngine
    x0: torch.Tensor
    conds: torch.Tensor
    groups: list[list[int]] | None = None
    weights: TimestepWeights | None = None
    cheap: object = None
    known: list[ImageScores] | None = None

    def candidate_groups(self) -> list[list[int]]:
        return self.groups or [[p] for p in range(self.conds.shape[0])]


class Search:
    """A strategy. `__call__(inputs, keys, allowed)` -> one `ImageScores` per key; `allowed[i]`, when given, are
    the only candidates image i competes with (the rest are never scored and rank last)."""

    def __call__(self, inputs: Inputs, keys: list[str], allowed: list[list[int]] | None = None) -> list[ImageScores]:
        raise NotImplementedError  # pragma: no cover - abstract

    def children(self) -> list[Search]:
        """The searches it runs on the same inputs (as `SearchConfig.children`)."""
        return []

    def walk(self) -> Iterator[Search]:
        yield self
        for c in self.children():
            yield from c.walk()


@dataclass
class Bound:
    """A search bound to one chunk's inputs: a scorer a cascade can hold (`evaluate(keys, candidates)`).
    `shared`: the inputs are the deciding ones (a same-model cheap stage), so a grid decider may reuse its errors."""

    inputs: Inputs
    search: Search
    shared: bool = False

    def evaluate(self, keys: list[str], candidates: list[list[int]] | None = None) -> list[ImageScores]:
        return self.search(self.inputs, keys, candidates)


# ---------------------------------------------------------------------- what a search returns
@dataclass
class ImageScores:
    """Everything scored for one image. `level[c]` = how long candidate c survived (higher is better).

    `n_calls[c]`: U-Net calls charged to candidate c; `unattributed_calls`: calls spent on no one candidate (a
    features head's forward); `forwards`: other forwards (a contrastive model's image encoder); `record`: what
    the run record adds for the image (a tree's node calls, a cascade's shortlist)."""

    key: str
    n_candidates: int
    timesteps: list[int] = field(default_factory=list)
    errors: dict[int, dict[int, float]] = field(default_factory=dict)  # candidate -> t -> error
    level: list[int] = field(default_factory=list)
    n_calls: list[int] = field(default_factory=list)
    weights: TimestepWeights | None = field(default=None, repr=False, compare=False)  # learned t weights, if any
    unattributed_calls: int = 0
    forwards: int = 0
    record: dict = field(default_factory=dict)

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
        return sum(self.n_calls) + self.unattributed_calls

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


# ---------------------------------------------------------------------- scoring candidates on a grid
@dataclass
class Chunk:
    """The images of one call of a grid strategy, their candidates (conditions as the scorer combines them)
    and the one place their (image, candidate, t) triples are scored and charged (`run`)."""

    engine: ScoringEngine
    x0: torch.Tensor
    keys: list[str]
    conds: torch.Tensor
    groups: list[list[int]]
    allowed: list[list[int]] | None = None
    weights: TimestepWeights | None = None
    known: list[ImageScores] | None = None  # `Inputs.known`

    @property
    def M(self) -> int:
        return len(self.groups)

    @property
    def T(self) -> int:
        return self.engine.backbone.num_train_timesteps

    def alive(self, i: int) -> list[int]:
        """The candidates image i starts with: all, or its shortlist."""
        return list(self.allowed[i]) if self.allowed is not None else list(range(self.M))

    def place(self, ts: list[int], sigmas: str) -> list[int]:
        """The grid's rows moved to where `sigmas` puts σ (flow models; the identity otherwise)."""
        if sigmas == "scheduler":
            return ts
        return sigma_rows(self.engine.backbone.process.sigmas, ts, sigmas)

    def timesteps(self, key: str, n: int, cfg: GridConfig) -> list[int]:
        """Image `key`'s n timesteps: the learned order's top n, else the even (or stratified) grid on σ."""
        if self.weights is not None:  # already placed on σ when they were fitted
            return ordered_grid(self.weights, n)
        if getattr(cfg, "timesteps", "even") == "stratified":
            return self.place(stratified(self.T, n, image_generator(self.engine.config.seed, key, "timesteps")), cfg.sigmas)
        return self.place(dc_grid(self.T, n), cfg.sigmas)

    def run(self, plan: list[tuple[int, int, int]], results: list[ImageScores]) -> None:
        """Evaluate (image, candidate, t) triples (each candidate = its group of conditions) and record them, in
        plan order; a triple in `known` is recorded from there and charged nothing (it was charged once already)."""
        known = [self.known[i].errors.get(c, {}).get(t) if self.known else None for i, c, t in plan]
        flat = [(i, p, t) for (i, c, t), e in zip(plan, known, strict=True) if e is None for p in self.groups[c]]
        errs = []
        if flat:
            img, cond, ts = zip(*flat, strict=True)
            errs = self.engine.run(self.x0, self.keys, self.conds, Work.from_lists(img, cond, ts)).tolist()
        pos = 0
        for (i, c, t), e in zip(plan, known, strict=True):
            if e is not None:
                results[i].add(c, t, e, calls=0)
                continue
            k = len(self.groups[c])
            results[i].add(c, t, float(np.mean(errs[pos : pos + k])), calls=k * self.engine.calls_per_item)
            pos += k


class GridSearch(Search):
    """Base of the strategies that score candidates themselves (exhaustive, halving, t-test): conditions as the
    scorer combines them, σ grid and learned weights checked, and a scorer without timesteps (contrastive)
    scoring each candidate once, at 'timestep' 0, whatever the strategy. Subclasses write `search`."""

    def __init__(self, config: GridConfig):
        self.config = config

    def __call__(self, inputs: Inputs, keys: list[str], allowed: list[list[int]] | None = None) -> list[ImageScores]:
        engine, cfg, weights = inputs.engine, self.config, inputs.weights
        groups = inputs.candidate_groups()
        results = [ImageScores(k, len(groups), weights=weights) for k in keys]
        conds, groups = engine.candidates(inputs.conds, groups)
        chunk = Chunk(engine, inputs.x0, keys, conds, groups, allowed, weights, inputs.known)
        if not engine.needs_timesteps:
            chunk.run([(i, c, 0) for i in range(len(keys)) for c in chunk.alive(i)], results)
            for r in results:
                r.forwards = 1  # the image encoder, once per image
            return results
        check_sigma_grid(engine.backbone, cfg.sigmas)
        if weights is not None:
            if getattr(cfg, "timesteps", "even") == "stratified":
                raise DiffdiscError("learned timestep weights fix the timesteps: they do not combine with stratified ones")
            weights.check(engine.backbone, engine.config, cfg.sigmas)
        for i, r in enumerate(results):
            if decided(lone := chunk.alive(i)):  # decided before any score: ranked first, never scored
                for c in lone:
                    r.level[c] = 1
        self.search(chunk, results)
        return results

    def search(self, chunk: Chunk, results: list[ImageScores]) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

"""What every claim stage shares: the row it returns, the paired interval and verdict rule of docs/methods.md,
and the context a stage runs in (its own directory, the three embedded models loaded once, progress)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ...scoring.match_metrics import bootstrap_ci

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


@dataclass
class Claim:
    """One row of the claims table. `value` and `ci` are the mean paired difference (favoured method −
    comparator) and its 95 % interval, in the unit `metric` names (points = percentage points)."""

    id: str
    claim: str
    source: str
    paper: str
    metric: str
    value: float | None
    ci: tuple[float, float] | None
    verdict: str
    n: int
    details: dict = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ci"] = list(self.ci) if self.ci is not None else None
        return d


def verdict(ci: tuple[float, float] | None) -> str:
    """holds if the interval is above 0, does not hold if below, inconclusive otherwise (or when absent)."""
    if ci is None or any(np.isnan(ci)):
        return INCONCLUSIVE
    return HOLDS if ci[0] > 0 else FAILS if ci[1] < 0 else INCONCLUSIVE


def paired(favoured, comparator, scale: float = 100.0) -> tuple[float, tuple[float, float], int]:
    """Mean and 95 % bootstrap interval of the per-item difference favoured − comparator (×`scale`: points)."""
    a, b = np.asarray(favoured, dtype=np.float64), np.asarray(comparator, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired items differ: {a.shape} vs {b.shape}")
    d = (a - b) * scale
    if len(d) == 0:
        return float("nan"), (float("nan"), float("nan")), 0
    lo, hi = bootstrap_ci(d)
    return float(d.mean()), (lo, hi), len(d)


def own_score(correct, **extra) -> dict:
    """One side's own score (points: mean of its per-item 0/1 values) with its bootstrap 95 % interval."""
    correct = np.asarray(correct, dtype=np.float64) * 100
    lo, hi = bootstrap_ci(correct)
    score = round(float(correct.mean()), 4) if len(correct) else float("nan")
    return {"score": score, "ci": [round(lo, 4), round(hi, 4)], "n": len(correct), **extra}


@dataclass
class ModelSpec:
    """Which models the claims are tested on (shipped names or model directories)."""

    text: str = "fmnist-scenes-text"
    clip: str = "fmnist-scenes-clip"
    classcond: str = "fmnist-classcond"


@dataclass
class ClaimContext:
    """A stage's world: `out` is its own directory (every run it makes goes below it, so it resumes), `models`
    loads each model once per `diffdisc claims` call, `progress(description)` is a context manager yielding a
    callback in `classify`/`match`'s progress format (or None), `log` prints one line."""

    out: Path
    models: ModelSpec = field(default_factory=ModelSpec)
    device: str | None = None
    seed: int = 0
    batch_size: int = 64  # U-Net batch (0: auto-tune); speed only, so not part of a stage's settings
    progress: Callable[[str], contextlib.AbstractContextManager] | None = None
    log: Callable[[str], None] = lambda msg: None
    _loaded: dict = field(default_factory=dict, repr=False)

    def load(self, which: str):
        """The backbone of `models.<which>` (text | clip | classcond), loaded on first use and then shared."""
        from ...backbones.registry import create_backbone

        key = getattr(self.models, which)
        if key not in self._loaded:
            self._loaded[key] = create_backbone(key, self.device)
        return self._loaded[key]

    def score(self, **fields):
        """The stages' ScoreConfig: the protocol's defaults, this run's noise seed and U-Net batch."""
        from ...scoring.config import ScoreConfig

        return ScoreConfig(seed=self.seed, batch_size=self.batch_size, **fields)

    def zero_shot_runs(self, per_class: int, n_timesteps: int):
        """The two zero-shot classifiers the comparisons share, as (role, which, backbone, adaptive, run dir):
        the text diffusion model exhaustive at `n_timesteps` evenly spaced t, the contrastive model in one pass.
        The run dir names model, items, seed and t, so every stage that classifies the same way resumes alike."""
        from ...scoring.config import AdaptiveConfig

        for role, which, adaptive, tag in (("diffusion", "text", AdaptiveConfig(n_timesteps=n_timesteps), f"t{n_timesteps}"),
                                           ("contrastive", "clip", AdaptiveConfig(), "once")):  # fmt: skip
            bb = self.load(which)
            yield role, which, bb, adaptive, self.sub(f"classify/{which}-{bb.info.fingerprint[:8]}-{per_class}-s{self.seed}-{tag}")

    def sub(self, name: str) -> Path:
        p = self.out / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    def track(self, description: str):
        """`with ctx.track("...") as cb:` -- cb is a progress callback or None."""
        return self.progress(description) if self.progress else contextlib.nullcontext(None)


"""What every claim stage shares: the row it returns, the paired interval and verdict rule of docs/methods.md,
and the context a stage runs in (its own directory, the three embedded models loaded once, progress)."""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ...errors import DiffdiscError
from ...scoring.match_metrics import bootstrap_ci

HOLDS, FAILS, INCONCLUSIVE = "holds", "does not hold", "inconclusive"


# ---------------------------------------------------------------------- knobs
# A knob's type is its default's in the stage's SIZES (int, float, str, or a non-empty list of one of those),
# so adding a knob there declares it. Bounds: a count is ≥ 1 (0 would silently mean "all images" to some
# readers), a rate > 0; the exceptions are this table's, (minimum, maximum) with None for none.
KNOB_BOUNDS: dict[tuple[str, str], tuple[int | None, int | None]] = {
    ("shape_bias", "warmup"): (0, None),  # no warm-up is a setting
    ("shape_bias", "train_images"): (0, None),  # 0: the whole train split, as the size documents
    ("features", "timesteps"): (0, None),  # timesteps themselves, not a count
    ("features", "n_train"): (10, None),  # one image per class at least
    ("features", "n_test"): (10, None),
    # subsets of the shipped test split, which holds 100 images per class
    ("zero_shot", "per_class"): (1, 100),
    ("robustness", "per_class"): (1, 100),
    ("diversity", "test_per_class"): (1, 100),
    ("shape_bias", "cue_per_class"): (1, 100),
}


def _number(value, kind: type, lo, hi):
    """`value` as `kind` (int: a whole number; float: finite) within [lo, hi], else None."""
    if isinstance(value, str):
        try:
            value = int(value) if kind is int else float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):  # numpy too
        return None
    if kind is int:
        if value != int(value):
            return None
        value = int(value)
    else:
        value = float(value)
    too_low = value <= 0 if lo is None else value < lo
    return None if too_low or (hi is not None and value > hi) else value


def _describe(kind: type, lo, hi, many: bool = False) -> str:
    if kind is str:
        return "non-empty strings" if many else "a non-empty string"
    what = ("integers" if many else "an integer") if kind is int else ("numbers" if many else "a number")
    if lo is None:
        return f"{what} > 0"
    return f"{what} from {lo} to {hi}" if hi is not None else f"{what} ≥ {lo}"


def check_knob(stage: str, knob: str, value, default, flag: str = "knob"):
    """`value` for `stage.knob`, typed like `default` and within `KNOB_BOUNDS` (counts ≥ 1, rates > 0): the
    value to use, or a one-line DiffdiscError saying what was expected. A list knob also takes a single value
    or comma-separated text (`1e-4,1e-2`)."""
    listed = isinstance(default, list | tuple)
    kind = type(default[0]) if listed and default else str if listed else type(default)
    kind = float if kind is float else int if kind is int else str
    lo, hi = KNOB_BOUNDS.get((stage, knob), (1 if kind is int else None, None))

    def one(v):
        if kind is str:
            return v.strip() if isinstance(v, str) and v.strip() else None
        return _number(v, kind, lo, hi)

    if listed:
        items = value.split(",") if isinstance(value, str) else value if isinstance(value, list | tuple) else [value]
        out = [one(x) for x in items]
        ok, expected = bool(out) and None not in out, f"a non-empty list of {_describe(kind, lo, hi, many=True)}"
    else:
        out = one(value)
        ok, expected = out is not None, _describe(kind, lo, hi)
    if not ok:
        raise DiffdiscError(f"{flag} {stage}.{knob}: expected {expected}, got {value!r}")
    return out


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


"""Which timesteps carry the class, learned from labelled calibration images, and how strategies use that.

A diffusion classifier averages denoising errors over timesteps, but not every t discriminates: Li et al.
found mid-range t the most informative, and Clark & Jaini chose their timestep weighting on held-out data.
`fit_weights` learns, from exhaustive calibration errors E[image, class, t] on a grid of candidate t, a
weighting w_t ≥ 0 and an order of the grid (most informative first). Strategies then evaluate the
informative t first (`ordered_grid`) and combine errors with the learned weights (`weighted_mean`); without
a weights file nothing changes, so the fixed schedules stay the comparison.

The fit, on errors normalised per t (`normalise`: the errors minus the image's mean over candidates, divided
by the typical spread between candidates at that t, so every t speaks on one scale):

- weights: multinomial logistic regression on scores s_c = -Σ_t w_t Z[c, t] with w ≥ 0 and an L2 penalty λ,
  λ chosen by cross-validated accuracy (then NLL) over folds of the calibration images. A large λ tends to
  weights ∝ how far, on average, the true class's normalised error lies below the candidates' mean at t (a
  robust, nearly parameter-free weighting); a small λ fits the weights discriminatively.
- order: greedy forward selection of the weighted timesteps by calibration accuracy of the prefix (ties by
  its mean margin), so each prefix is a good small budget; zero-weight t follow, by their own accuracy.
- plans, the check that keeps it from hurting: at every budget n, three ways of spending n timesteps are
  scored on held-out training images (k-fold: each image by a fit that never saw it): the learned first n,
  the grid's n evenly spread points with the learned weights, and those points' plain mean (what classify
  does without a file). The plain even grid is kept unless a learned plan gets more of those images right
  (`choose_plans`, `Z_MIN`; ties: the even grid). Measured on the shipped model (bench/timestep_fit_check.py,
  docs/benchmarks.md, 20 splits of 200 training images): the learned order wins by 26 points at 1 timestep
  (the even grid's lone t = 525 is a poor one there) and its gain fades by half the grid, where the learned
  first 10 lost to the even 10 in 7 of 20 splits; with the check, 3 of 20. Where the even grid is kept the
  file is not recommended and a run ignores it (`for_run`, with a warning that says why).

A weighting belongs to the model (fingerprint), the kind of score (scorer, loss, weighting) and the σ placement
it was fitted with: `TimestepWeights.check` refuses another.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import optimize
from scipy.special import logsumexp

from ..backbones.capabilities import Capability, require
from ..errors import DiffdiscError
from ..runs.io import atomic_write_text
from .schedule import stage_subset

FILENAME = "timestep_weights.json"
KIND = "diffdisc timestep weights"
VERSION = 1
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
PLANS = ("even", "even_weighted", "learned")  # per budget, simplest first: a tie goes to the simpler
# A learned plan replaces the even grid only when it beats it by more than Z_MIN standard errors of the paired
# difference. 0: strictly more held-out images right. Measured (20 splits of 200 shipped training images,
# docs/benchmarks.md): 1 lost fewer splits at 10 timesteps (1 vs 3 of 20) but fell back at 2-3 timesteps where
# the learned order wins by 4-14 points (mean 72.2 vs 75.7 % at 2); 2 kept the even grid almost everywhere.
Z_MIN = 0.0
log = logging.getLogger("diffdisc")


@dataclass
class TimestepWeights:
    """A fitted weighting: `grid` (ascending) the candidate t; `order` the grid, most informative first, with
    `weights` (aligned with `order`, ≥ 0, summing to 1) on errors divided by `scales` (aligned with `grid`).

    `informativeness` (aligned with `grid`): each t alone, its calibration accuracy and mean normalised margin
    (true class vs best other). `calibration`: how it was fitted and what it gained (cross-validated accuracy
    of the fitted weighting vs the even grid, overall and per budget n in `curve`)."""

    model: dict
    score: str
    sigmas: str
    grid: list[int]
    order: list[int]
    weights: list[float]
    scales: list[float]
    informativeness: dict
    calibration: dict
    n_images: int
    seed: int
    plans: list[str] | None = None
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self):
        self.grid, self.order = [int(t) for t in self.grid], [int(t) for t in self.order]
        self.weights, self.scales = [float(w) for w in self.weights], [float(s) for s in self.scales]
        where = self.path or "timestep weights"
        if sorted(self.order) != sorted(self.grid) or len(set(self.grid)) != len(self.grid):
            raise DiffdiscError(f"{where}: 'order' must list each timestep of 'grid' once")
        if len(self.weights) != len(self.order) or len(self.scales) != len(self.grid):
            raise DiffdiscError(f"{where}: 'weights' must align with 'order' and 'scales' with 'grid'")
        if any(not np.isfinite(w) or w < 0 for w in self.weights) or any(not np.isfinite(s) or s <= 0 for s in self.scales):
            raise DiffdiscError(f"{where}: weights must be finite and >= 0, scales finite and > 0")
        if self.plans is not None:
            self.plans = [str(p) for p in self.plans]
            if len(self.plans) != len(self.grid) or not set(self.plans) <= set(PLANS):
                raise DiffdiscError(f"{where}: 'plans' must name one of {', '.join(PLANS)} for each budget 1..{len(self.grid)}")
        w = dict(zip(self.order, self.weights, strict=True))
        self._factor = {t: w[t] / s for t, s in zip(self.grid, self.scales, strict=True)}
        self._warned: set[int] = set()

    # ------------------------------------------------------------------ applying
    @property
    def informative(self) -> list[int]:
        """The timesteps with a positive weight, most informative first."""
        return [t for t, w in zip(self.order, self.weights, strict=True) if w > 0]

    def plan(self, n: int) -> str:
        """Which timesteps the fit chose for a budget of n (`PLANS`): `learned` (the first n of `order`),
        `even_weighted` (the grid's n evenly spread points, errors weighted) or `even` (the same points, plain
        mean: the file has nothing to add). Files without plans: `learned`."""
        return self.plans[n - 1] if self.plans is not None and 1 <= n <= len(self.plans) else "learned"

    def ordered_grid(self, n: int) -> list[int]:
        """The n timesteps to score at a budget of n (`plan`), the most informative first where learned. n = the
        whole grid keeps the learned order (the t-test takes them in turn). Said once, as a warning, when the
        fit found the plain even grid better at n."""
        if not 1 <= n <= len(self.order):
            raise DiffdiscError(f"{self.path or 'timestep weights'} ranks {len(self.order)} timesteps; {n} were asked for "
                                f"(fit with `diffdisc timesteps fit --grid {max(n, 1)}` or more)")  # fmt: skip
        plan = self.plan(n)
        if plan == "even" and n not in self._warned:
            self._warned.add(n)
            log.warning("%s; using the file anyway, as asked", self.verdict(n))
        if plan == "learned" or n == len(self.order):
            return self.order[:n]
        return stage_subset(self.grid, n)

    def for_run(self, search) -> TimestepWeights | None:
        """These weights for a run of `search` (a search config, or the flat `AdaptiveConfig`), or None, with a
        warning, where the fit found the plain even grid better at the run's budget (its largest grid: exhaustive
        n, halving's last stage, the t-test's cap): the run then scores the even grid as if no file were given.
        Learned timesteps that lost on held-out training images are not used."""
        n = run_budget(search, len(self.order))
        if n is None or not 1 <= n <= len(self.order) or self.plan(n) != "even":
            return self  # out of range: ordered_grid refuses it with its own message
        self._warned.add(n)
        log.warning("%s; scoring the even grid without the weights file", self.verdict(n))
        return None

    def budget_check(self, n: int) -> dict | None:
        """The held-out comparison at `n` timesteps: the learned first n vs the even grid's n, accuracy on
        cross-validated held-out training images (None: not recorded, e.g. a hand-written file)."""
        cal = self.calibration or {}
        curve = cal.get("curve") or {}
        ns = list(curve.get("n") or [])
        if n not in ns:
            return None
        i = ns.index(n)
        ew = curve.get("even_weighted")
        return {"n": n, "learned": float(curve["fitted"][i]), "even": float(curve["even"][i]),
                "even_weighted": float(ew[i]) if ew else None, "plan": self.plan(n),
                "images": int(cal.get("images", self.n_images)), "folds": cal.get("folds")}  # fmt: skip

    def recommended(self, n: int) -> bool | None:
        """Whether the file beat the plain even grid at n on held-out training images (None: unchecked). A tie is
        not a recommendation: the even grid is as good and needs no file."""
        if self.plans is not None:
            return self.plan(n) != "even"
        c = self.budget_check(n)
        return None if c is None else c["learned"] > c["even"]

    def verdict(self, n: int) -> str:
        """The held-out comparison at n timesteps in plain words."""
        c = self.budget_check(n)
        where = self.path or "these timestep weights"
        if c is None:
            return f"{where} records no held-out check at {n} timesteps"
        how = (f"on {c['images']} training images, each scored by a fit that had not seen it ({c['folds']}-fold "
               "cross-validation)")  # fmt: skip
        txt = f"at {n} timesteps: learned timesteps {c['learned']:.1%}, "
        if c.get("even_weighted") is not None:
            txt += f"even grid with learned weights {c['even_weighted']:.1%}, "
        txt += f"even grid {c['even']:.1%} {how}"
        if self.recommended(n):
            best = "the learned timesteps" if self.plan(n) == "learned" else "the even grid's timesteps with the learned weights"
            return f"{txt}: the file uses {best} there"
        return f"{txt}: nothing learned beat the even grid there; --timesteps {n} without --timestep-weights is as good or better"

    def factor(self, t: int) -> float:
        """The multiplier of a raw error at t (w_t / scale_t); a t off the grid takes its nearest grid point's."""
        t = int(t)
        if t not in self._factor:
            t = min(self.grid, key=lambda g: (abs(g - t), g))
        return self._factor[t]

    def factors(self, ts) -> np.ndarray:
        """Multipliers of the errors at `ts`, scaled to mean 1 over them (for paired tests on weighted
        differences); all ones when every weight there is 0."""
        f = np.array([self.factor(t) for t in ts], dtype=np.float64)
        return f / f.mean() if f.sum() > 0 else np.ones(len(f))

    def check(self, backbone, score=None, sigmas: str | None = None, data: str | Path | None = None) -> None:
        """Refuse weights fitted for another model, kind of score or σ placement, or on the images to classify."""
        from .calibrate import temperature_key

        where = self.path or "timestep weights"
        info = backbone.info
        require(backbone, Capability.DENOISE, where)
        fp = self.model.get("fingerprint")
        if fp != info.fingerprint:
            raise DiffdiscError(f"{where} was fitted for model {self.model.get('name', '?')} (fingerprint {fp}), not "
                                f"{info.name} ({info.fingerprint}): fit weights for this model with `diffdisc timesteps fit`")  # fmt: skip
        if max(self.grid) >= backbone.num_train_timesteps:
            raise DiffdiscError(f"{where} has timesteps up to {max(self.grid)}; {info.name} has {backbone.num_train_timesteps}")
        if score is not None and (key := temperature_key(score)) != self.score:
            raise DiffdiscError(f"{where} was fitted on {self.score!r} scores, not {key!r}: fit it with the same "
                                "--scorer / --loss / --weighting")  # fmt: skip
        if sigmas is not None and sigmas != self.sigmas:
            raise DiffdiscError(f"{where} was fitted with --sigmas {self.sigmas}, not {sigmas}")
        fitted_on = self.calibration.get("data")
        if data is not None and fitted_on and Path(data).expanduser().resolve() == Path(fitted_on):
            raise DiffdiscError(f"{where} was fitted on {fitted_on}, the images to classify: fit it on training images "
                                "(a calibration split), never on the images it is measured on")  # fmt: skip

    # ------------------------------------------------------------------ file
    def to_dict(self) -> dict:
        return {"kind": KIND, "version": VERSION, "model": self.model, "score": self.score, "sigmas": self.sigmas,
                "grid": self.grid, "order": self.order, "weights": self.weights, "scales": self.scales,
                "informativeness": self.informativeness, "calibration": self.calibration,
                "n_images": self.n_images, "seed": self.seed, **({"plans": self.plans} if self.plans is not None else {})}  # fmt: skip

    def save(self, path: str | Path) -> Path:
        """Write to `path` (a directory gets `timestep_weights.json` inside), whole or not at all."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | Path) -> TimestepWeights:
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DiffdiscError(f"cannot read timestep weights {path}: {getattr(e, 'strerror', None) or e}") from None
        if not isinstance(d, dict) or d.get("kind") != KIND:
            raise DiffdiscError(f"{path} is not a timestep weights file (written by `diffdisc timesteps fit`)")
        if d.get("version") != VERSION:
            raise DiffdiscError(f"{path} has timestep weights version {d.get('version')}; this diffdisc reads {VERSION}")
        keys = ("model", "score", "sigmas", "grid", "order", "weights", "scales", "informativeness", "calibration", "n_images", "seed")
        missing = [k for k in keys if k not in d]
        if missing:
            raise DiffdiscError(f"{path}: timestep weights without {', '.join(missing)}")
        return cls(**{k: d[k] for k in keys}, plans=d.get("plans"), path=path)


def run_budget(search, ranked: int) -> int | None:
    """The largest number of timesteps a run of `search` (a search config, or the flat `AdaptiveConfig`) scores
    each candidate at (a t-test: its cap, at most the `ranked` timesteps of a weights file); None when it
    places none. Read by shape (`walk`, `grid_sizes`), so this module needs no import of the strategies."""
    if hasattr(search, "strategy"):  # AdaptiveConfig: the flat options
        sizes = {"exhaustive": [search.n_timesteps], "halving": [n for n, _ in search.stages],
                 "ttest": [min(search.max_scores, ranked)]}.get(search.strategy, [])  # fmt: skip
    else:
        sizes = [min(c.max_scores, ranked) if c.kind == "ttest" else max(c.grid_sizes(), default=0)
                 for c in search.walk() if hasattr(c, "grid_sizes")]  # fmt: skip
    return max(sizes, default=0) or None


def ordered_grid(weights: TimestepWeights, n: int) -> list[int]:
    """The `n` most informative timesteps of `weights`, most informative first."""
    return weights.ordered_grid(n)


def weighted_mean(row: dict[int, float], ts: list[int] | None = None, weights: TimestepWeights | None = None) -> float:
    """One candidate's error over its timesteps (those of `row`, or of `ts` that it has): the plain mean without
    `weights` (today's score), else Σ f_t e_t / Σ f_t with f_t = w_t / scale_t, a weighted average that keeps the
    errors' scale (temperatures stay meaningful). inf when no timestep is scored; the plain mean when every
    weight there is 0."""
    vals = [(t, row[t]) for t in (ts if ts is not None else row) if t in row]
    if not vals:
        return float("inf")
    e = np.array([v for _, v in vals], dtype=np.float64)
    if weights is None:
        return float(e.mean())
    f = np.array([weights.factor(t) for t, _ in vals], dtype=np.float64)
    return float((f * e).sum() / f.sum()) if f.sum() > 0 else float(e.mean())


def weighted_means(errors: dict[int, dict[int, float]], n_candidates: int, weights: TimestepWeights | None = None,
                   ts: list[int] | None = None) -> list[float]:  # fmt: skip
    """`weighted_mean` of each candidate (`ImageScores.errors`: candidate -> t -> error)."""
    return [weighted_mean(errors.get(c, {}), ts, weights) for c in range(n_candidates)]


# ---------------------------------------------------------------------- fitting
def normalise(errors: np.ndarray, scales: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """E [N, M, G] -> (Z, scales): each (image, t) centred over candidates (which leaves every argmin over
    candidates unchanged) and divided by scale_t, the RMS spread between candidates at t (computed here unless
    given: held-out images use the fitting images' scales). A t where candidates never differ gets Z = 0."""
    d = errors - errors.mean(axis=1, keepdims=True)
    if scales is None:
        scales = np.sqrt((d**2).mean(axis=(0, 1)))
        tiny = max(float(scales.max()) * 1e-9, 1e-30) if scales.size else 1e-30
        scales = np.where(scales > tiny, scales, 1.0)
        d = np.where((np.abs(d).max(axis=(0, 1)) > 0)[None, None], d, 0.0)
    return d / scales, scales


def margins(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Best other candidate's score minus the true one's ([N, M, ...] -> [N, ...]; > 0: correct, ties are not)."""
    n = np.arange(len(labels))
    true = scores[n, labels]
    other = scores.copy()
    other[n, labels] = np.inf
    return other.min(axis=1) - true


def _logistic(z: np.ndarray, labels: np.ndarray, l2: float) -> np.ndarray:
    """w ≥ 0 minimising mean cross-entropy of softmax(-Σ_t w_t Z[:, :, t]) + l2·‖w‖² (L-BFGS-B, analytic gradient).

    From w = 0, so a t the loss does not depend on (candidates equal there) keeps weight 0 at any λ."""
    n, m, g = z.shape
    onehot = np.zeros((n, m))
    onehot[np.arange(n), labels] = 1.0

    def loss(w):
        logits = -np.einsum("nmg,g->nm", z, w)
        lse = logsumexp(logits, axis=1)
        p = np.exp(logits - lse[:, None])
        ce = float((lse - logits[np.arange(n), labels]).mean())
        grad = -np.einsum("nm,nmg->g", (p - onehot) / n, z) + 2 * l2 * w
        return ce + l2 * float(w @ w), grad

    res = optimize.minimize(loss, np.zeros(g), jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * g)
    return np.clip(res.x, 0.0, None)


def _nll(z: np.ndarray, labels: np.ndarray, w: np.ndarray) -> float:
    logits = -np.einsum("nmg,g->nm", z, w)
    return float((logsumexp(logits, axis=1) - logits[np.arange(len(labels)), labels]).mean())


def _greedy_order(z: np.ndarray, labels: np.ndarray, w: np.ndarray) -> list[int]:
    """Grid indices: weighted t by greedy forward selection (prefix accuracy, then mean margin of the weighted
    average, then grid order), then zero-weight t by their own accuracy and margin. (Tried for issue 27: the
    fitted model's NLL of the prefix instead; on the shipped model it picked redundant heavily weighted t and
    lost 3-5 points at 3-5 timesteps, bench/timestep_fit_check.py.)"""
    n, m, g = z.shape
    chosen: list[int] = []
    rest = [k for k in range(g) if w[k] > 0]
    total, wsum = np.zeros((n, m)), 0.0
    while rest:
        cand = (total[..., None] + z[..., rest] * w[rest]) / (wsum + w[rest])  # [N, M, R]
        mg = margins(cand, labels)  # [N, R]
        acc, mean = (mg > 0).mean(0), mg.mean(0)
        j = int(np.lexsort((np.arange(len(rest)), -mean, -acc))[0])
        k = rest.pop(j)
        chosen.append(k)
        total, wsum = total + w[k] * z[..., k], wsum + w[k]
    single = margins(z, labels)
    zero = [k for k in range(g) if w[k] <= 0]
    zero.sort(key=lambda k: (-(single[:, k] > 0).mean(), -single[:, k].mean(), k))
    return chosen + zero


def _prefix_correct(z: np.ndarray, labels: np.ndarray, w: np.ndarray, order: list[int]) -> np.ndarray:
    """[N, G] whether image i is right with the first n+1 timesteps of `order`, weighted by w."""
    return margins(np.cumsum(z[..., order] * w[order], axis=2), labels) > 0


def _even_weighted_correct(z: np.ndarray, labels: np.ndarray, w: np.ndarray, errors: np.ndarray) -> np.ndarray:
    """[N, G] whether image i is right with the weighted mean over `stage_subset(grid, n)` (plain mean of raw
    `errors` where every weight there is 0, as `weighted_mean` does), n = 1..G."""
    g = z.shape[2]
    idx = list(range(g))
    out = []
    for n in range(1, g + 1):
        sub = stage_subset(idx, n)
        score = z[..., sub] @ w[sub] if w[sub].sum() > 0 else errors[..., sub].mean(axis=2)
        out.append(margins(score, labels) > 0)
    return np.stack(out, axis=1)


def choose_plans(hits: dict[str, np.ndarray], z_min: float = Z_MIN) -> list[str]:
    """Per budget, the plan to use, from held-out correctness hits[plan] [N, G]: the plain even grid unless a
    learned plan beats it by more than `z_min` standard errors of the paired difference (images it gets right
    and the even grid wrong, minus the reverse, over √ of their sum); among those, the most accurate (a tie goes
    to the simpler, `PLANS` order). The even grid is the default: a plan has to earn its place."""
    g = hits["even"].shape[1]
    out = []
    for i in range(g):
        ok = ["even"]
        for p in PLANS[1:]:
            b = int((hits[p][:, i] & ~hits["even"][:, i]).sum())
            c = int((hits["even"][:, i] & ~hits[p][:, i]).sum())
            if b > c and (b - c) > z_min * np.sqrt(b + c):
                ok.append(p)
        out.append(max(ok, key=lambda p: (hits[p][:, i].mean(), -PLANS.index(p))))
    return out


def _even_correct(errors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[N, G] whether image i is right with the plain mean of raw errors over `stage_subset(grid, n)`, n = 1..G:
    the fixed schedule at the same budget (centred strata of the grid, as halving takes its stages)."""
    g = errors.shape[2]
    idx = list(range(g))
    return np.stack([margins(errors[..., stage_subset(idx, n)].mean(axis=2), labels) > 0 for n in range(1, g + 1)], axis=1)


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold of each image: each class's images in a seeded order, dealt round the k folds."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    start = 0
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold[idx] = (start + np.arange(len(idx))) % k
        start += len(idx)
    return fold


def fit_weights(errors, labels, grid: list[int], *, folds: int = 3, l2=L2_GRID, seed: int = 0, model: dict | None = None,
                score: str = "", sigmas: str = "scheduler", data: str | None = None, z_min: float = Z_MIN) -> TimestepWeights:  # fmt: skip
    """Fit a `TimestepWeights` on exhaustive calibration errors E [N images, M candidates, G timesteps] (lower =
    better) with true candidates `labels` [N] and the G timesteps `grid` (any order; stored ascending).

    λ (one of `l2`) is chosen by `folds`-fold cross-validated accuracy, ties by NLL; the weights and order are
    then fitted on every image. `calibration` reports the cross-validated accuracy of the fitted weighting
    (weights and order refitted in each fold, held-out images scored on the fitting images' scales) beside the
    even grid's, in total and per budget n (`curve`: the first n of the order vs n evenly spaced grid points).
    `model`, `score`, `sigmas`, `data` identify what the weights belong to (see `TimestepWeights.check`).
    """
    e = np.asarray(errors, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if e.ndim != 3 or e.shape[0] != len(y) or e.shape[2] != len(grid):
        raise DiffdiscError(f"calibration errors must be [images, candidates, {len(grid)} timesteps], got {list(e.shape)}")
    if not np.isfinite(e).all():
        raise DiffdiscError("calibration errors must be finite (an exhaustive run: every candidate at every timestep)")
    n, m, g = e.shape
    if m < 2 or n < 2 or g < 1:
        raise DiffdiscError(f"fitting timestep weights needs at least 2 labelled images and 2 candidates, got {n} and {m}")
    if (y < 0).any() or (y >= m).any():
        raise DiffdiscError("every calibration image needs a label among the candidates")
    pos = np.argsort(grid, kind="stable")
    grid, e = [int(grid[k]) for k in pos], e[..., pos]
    l2 = tuple(float(v) for v in l2)
    if not l2 or min(l2) < 0:
        raise DiffdiscError(f"l2 penalties must be >= 0, got {l2}")
    k = min(int(folds), n)
    if k < 2:
        raise DiffdiscError(f"folds must be >= 2, got {folds}")
    fold = stratified_folds(y, k, seed)

    # λ by cross-validation: per fold, fit on the rest, score the held-out fold on the rest's scales.
    per_fold = []
    for f in range(k):
        tr, te = fold != f, fold == f
        z_tr, scales = normalise(e[tr])
        per_fold.append((tr, te, z_tr, normalise(e[te], scales)[0]))
    cv = {}
    for lam in l2:
        ws = [_logistic(z_tr, y[tr], lam) for tr, _, z_tr, _ in per_fold]
        hits = sum(int((margins(np.einsum("nmg,g->nm", z_te, w), y[te]) > 0).sum()) for (_, te, _, z_te), w in zip(per_fold, ws, strict=True))
        nll = sum(_nll(z_te, y[te], w) * int(te.sum()) for (_, te, _, z_te), w in zip(per_fold, ws, strict=True))
        cv[lam] = (hits / n, nll / n, ws)
    lam = min(l2, key=lambda v: (-cv[v][0], cv[v][1], -v))  # ties: the stronger penalty

    # the held-out check at λ: weights and order refitted per fold, each image scored by the fold that left it out
    hits = {p: np.zeros((n, g), dtype=bool) for p in PLANS}
    hits["even"] = _even_correct(e, y)
    for (tr, te, z_tr, z_te), w in zip(per_fold, cv[lam][2], strict=True):
        w = _unit(w)
        hits["learned"][te] = _prefix_correct(z_te, y[te], w, _greedy_order(z_tr, y[tr], w))
        hits["even_weighted"][te] = _even_weighted_correct(z_te, y[te], w, e[te])
    acc = {p: h.mean(0) for p, h in hits.items()}
    plans = choose_plans(hits, z_min)

    z, scales = normalise(e)
    w = _unit(_logistic(z, y, lam))
    order = _greedy_order(z, y, w)
    single = margins(z, y)
    calibration = {
        "data": data,
        "images": n,
        "candidates": m,
        "folds": k,
        "l2": lam,
        "l2_cv": {str(v): {"accuracy": cv[v][0], "nll": cv[v][1]} for v in l2},
        "z_min": z_min,
        "accuracy": {"fitted": float(acc["learned"][-1]), "even": float(acc["even"][-1])},
        "curve": {"n": list(range(1, g + 1)), "fitted": acc["learned"].tolist(), "even": acc["even"].tolist(),
                  "even_weighted": acc["even_weighted"].tolist(), "plan": plans},
        "how": f"{k}-fold cross-validated over the calibration images: each image scored by weights and an order "
               "fitted without it (fitted: the first n of the order, weighted; even_weighted: the n evenly spread "
               "grid points, weighted); even: their plain mean, nothing to fit. Per budget n the file uses the best "
               "(`plans`; a tie goes to the simpler). λ chosen on the same folds",
    }  # fmt: skip
    return TimestepWeights(
        model=dict(model or {}), score=score, sigmas=sigmas, grid=grid, order=[grid[j] for j in order],
        weights=[float(w[j]) for j in order], scales=scales.tolist(),
        informativeness={"accuracy": (single > 0).mean(0).tolist(), "margin": single.mean(0).tolist()},
        calibration=calibration, n_images=n, seed=seed, plans=plans,
    )  # fmt: skip


def _unit(w: np.ndarray) -> np.ndarray:
    """Weights summing to 1 (only ratios matter to a weighted average); uniform when the fit found nothing."""
    return w / w.sum() if w.sum() > 0 else np.full(len(w), 1.0 / len(w))

"""Frozen configs saved with every result, so a run directory says exactly how its numbers were made."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import SPEED_ONLY, ConfigMixin, check_choice
from ..errors import DiffdiscError
from .schedule import SIGMA_GRIDS

LOSSES = ("l2", "l1", "huber")
FLOW_WEIGHTINGS = ("velocity", "sigma_sqrt", "cosmap")
WEIGHTINGS = ("uniform", "clark", "min_snr", *FLOW_WEIGHTINGS)
DTYPES = ("fp32", "bf16", "fp16")
STRATEGIES = ("exhaustive", "halving", "ttest")
NOISE_SHARING = ("image", "global")
SCORERS = ("denoise", "attention")


# The command line's default weighting per kind of model (`--weighting` not given): measured on the embedded
# matched pair (docs/results.md), cosmap put the flow model within 0.5 points of its ε-model where the
# ε-equivalent `uniform` left it 5 points below; ε-models keep Li et al.'s `uniform`.
DEFAULT_FLOW_WEIGHTING = "cosmap"


def default_weighting(backbone) -> str:
    """`cosmap` for flow-matching models, `uniform` for the others (the CLI's default; ScoreConfig's is uniform)."""
    return DEFAULT_FLOW_WEIGHTING if getattr(backbone, "is_flow", False) else "uniform"


@dataclass(frozen=True)
class ScoreConfig(ConfigMixin):
    """How one (image, candidate, t) error is computed.

    loss: element-wise loss on ε (l2 = MSE, the papers' default; l1 as in the official CIFAR-10 runs).
    weighting: `uniform` (Li et al.: mean ε-error), `clark` (Clark & Jaini: exp(-7 t/T) on the x0-space
    error of the clipped x̂0), `min_snr` (ε-error × min(SNR, 5) / SNR). Flow-matching models only: `velocity`
    (‖v̂ - v‖², their training loss), `sigma_sqrt` (σ⁻²‖v̂ - v‖²) and `cosmap` (SD3's loss weights); `uniform`
    on a flow model is the ε-equivalent (1 - σ)²‖v̂ - v‖².
    noise: `image` draws ε per (image, t) (shared by all candidates); `global` shares one bank across
    images, as the official Winoground and Discffusion code.
    scorer: `denoise` (the weighted ε-error above) or `attention` (Discffusion: cross-attention LogSumExp
    score, plus the denoising bias when `attention_bias`; text-conditional U-Nets, or SD3 / FLUX transformers (their joint attention); negated so that lower
    is better for every scorer). A contrastive model has one scorer of its own and ignores it (`scorers.py`).
    batch_size: U-Net batch; 0 tunes it on the first batch of work (largest that fits memory and still
    speeds up per item; see scoring/autotune.py). Errors do not depend on it.
    compile / channels_last: speed options (torch.compile of the denoiser; NHWC activations). They change
    no formula, only kernels, so errors may differ in the last bits.
    batch_size, compile and channels_last are marked `SPEED_ONLY`: a resume may change them (the run guard).
    """

    loss: str = "l2"
    weighting: str = "uniform"
    batch_size: int = field(default=64, metadata=SPEED_ONLY)
    dtype: str = "fp32"
    seed: int = 0
    noise: str = "image"
    min_snr_gamma: float = 5.0
    clark_rate: float = 7.0
    compile: bool = field(default=False, metadata=SPEED_ONLY)
    channels_last: bool = field(default=False, metadata=SPEED_ONLY)
    scorer: str = "denoise"
    attention_bias: bool = True

    def __post_init__(self):
        check_choice("loss", self.loss, LOSSES)
        check_choice("weighting", self.weighting, WEIGHTINGS)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("noise", self.noise, NOISE_SHARING)
        check_choice("scorer", self.scorer, SCORERS)
        if self.batch_size < 0:
            raise DiffdiscError(f"batch_size must be >= 1 (or 0 = auto-tune), got {self.batch_size}")


@dataclass(frozen=True)
class AdaptiveConfig(ConfigMixin):
    """Which candidates get which timesteps, in the flat form of the command line and of run.json's `adaptive`
    (`scoring.search.from_adaptive` gives the search config it stands for; the strategies live there).

    exhaustive: every candidate at `n_timesteps` evenly spaced t (the official grid).
    halving: Li et al. stages `((n_t, keep), ...)`; errors of earlier stages are reused and the score is
    the mean over all timesteps seen so far; the last stage keeps 1.
    ttest: Clark & Jaini Alg. 1; after `min_scores` shared (t, ε) samples a candidate is dropped when a
    one-sided paired t-test against the current best gives p < `p_value`; stop at one survivor or
    `max_scores`.
    sigmas (flow models): where the grid's t fall on σ: `scheduler` (rows of the scheduler's own σ table,
    its shift included), `uniform` (evenly spaced σ) or `logit_normal` (quantiles of SD3's training density).
    timestep_weights: learned from labelled training images (`diffdisc timesteps fit`): every strategy
    evaluates the most informative t first and averages errors with the learned weights (`search.learned`).
    exit_z (halving, ours): after any stage, an image whose leader beats the runner-up by more than `exit_z`
    standard errors of their paired differences stops there (0 = off): easy images skip the later stages.

    Defaults, from the calls-vs-accuracy measurements on the shipped `fmnist-classcond` (docs/results.md,
    docs/benchmarks.md). Exhaustive 20 t (200 calls/image for 10 classes): 89.0 % on 1,000 test images; on 200,
    5 / 10 / 20 t gave 77.5 / 84.5 / 85.5 %, so the gain was flattening by 20 t; 50 t (the official grid, 2.5x
    the calls) was not measured. Halving `10:3,20:1` (130 calls/image): 88.5 % on 1,000 (0.5 points below
    exhaustive at 0.65x the calls) and the best halving schedule on 200 images (84.5 %; 5:2,20:1 at 80
    calls: 82.5 %). The shipped models' temperatures were fitted on exhaustive 20-t scores, this default.
    """

    ignore_unknown = True  # run.json files written before a key was dropped still load
    added = ("sigmas", "timestep_weights")

    strategy: str = "exhaustive"
    n_timesteps: int = 20
    timesteps: str = "even"  # even | stratified (one random t per stratum, seeded per image)
    stages: tuple[tuple[int, int], ...] = ((10, 3), (20, 1))
    min_scores: int = 20
    max_scores: int = 100
    p_value: float = 2e-3
    exit_z: float = 0.0
    sigmas: str = "scheduler"
    timestep_weights: str | None = None  # a `diffdisc timesteps fit` file; the run guards its content hash

    def __post_init__(self):
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("sigmas", self.sigmas, SIGMA_GRIDS)
        if self.timestep_weights and self.timesteps == "stratified":
            raise DiffdiscError("learned timestep weights fix the timesteps: they do not combine with stratified ones")
        check_choice("timesteps", self.timesteps, ("even", "stratified"))
        object.__setattr__(self, "stages", tuple((int(n), int(k)) for n, k in self.stages))
        check_count("n_timesteps", self.n_timesteps)
        if self.strategy == "halving":
            check_stages(self.stages)
        check_non_negative("exit_z", self.exit_z)
        if self.strategy == "ttest":
            check_ttest(self.min_scores, self.max_scores)


# The checks of the search configs (`scoring.search`), shared with the flat AdaptiveConfig above.
def check_count(name: str, n: int) -> None:
    if n < 1:
        raise DiffdiscError(f"{name} must be >= 1, got {n}")


def check_non_negative(name: str, v: float) -> None:
    if v < 0:
        raise DiffdiscError(f"{name} must be >= 0, got {v}")


def check_stages(stages) -> tuple[tuple[int, int], ...]:
    """Halving stages as int pairs: at least one, sizes increasing, the last keeping 1."""
    stages = tuple((int(n), int(k)) for n, k in stages)
    if not stages:
        raise DiffdiscError("halving needs at least one stage (n_timesteps, keep)")
    if stages[-1][1] != 1:
        raise DiffdiscError(f"the last halving stage must keep 1 candidate, got {stages[-1]}")
    ns = [n for n, _ in stages]
    if ns != sorted(ns) or len(set(ns)) != len(ns):
        raise DiffdiscError(f"halving stage sizes must increase, got {ns}")
    return stages


def check_ttest(min_scores: int, max_scores: int) -> None:
    if not 2 <= min_scores <= max_scores:
        raise DiffdiscError(f"ttest needs 2 <= min_scores <= max_scores, got {min_scores}, {max_scores}")


def parse_stages(text: str) -> tuple[tuple[int, int], ...]:
    """'10:3,20:1' -> ((10, 3), (20, 1))."""
    try:
        return tuple((int(a), int(b)) for a, b in (s.split(":") for s in text.split(",") if s.strip()))
    except ValueError:
        raise DiffdiscError(f"bad stages {text!r}: expected 'n_t:keep,n_t:keep', e.g. '10:3,20:1'") from None

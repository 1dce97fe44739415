"""The scorer seam: what turns (x0, noise, t, condition) into one number per sample, lower = better.

A scorer owns the formula; the engine (`engine.py`) owns everything else (packing work into batches, the
shared noise, batch-size tuning, autocast, channels_last, torch.compile). A new way of scoring is a new
scorer, and no task changes: classify, match and the probes call the same engine whatever scores.

- `DenoiseScorer`: the weighted denoising error (Li et al.; Clark & Jaini), through the backbone contract only.
- `AttentionScorer` (`attention.py`): Discffusion's cross-attention score, negated.
- `ContrastiveScorer` (`contrastive.py`): negated scaled cosine of an open_clip model; no noise, no U-Net.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..backbones.capabilities import Capability
from ..errors import DiffdiscError
from .config import FLOW_WEIGHTINGS, ScoreConfig

Predict = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t, cond) -> ε̂
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device_type: str, dtype: str) -> Callable[[], contextlib.AbstractContextManager]:
    """A factory of the run's autocast context (`ScoreConfig.dtype`): torch.autocast for bf16/fp16, none for fp32."""
    if dtype == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type, dtype=_AUTOCAST[dtype])


class Scorer:
    """Base of every scorer.

    calls_per_item: U-Net forwards per (image, condition, t), reported as the cost of a run.
    needs_noise: whether the engine draws ε and timesteps for it. A scorer without (contrastive) is scored once
    per (image, candidate), at the one 'timestep' 0, through `table` instead of `__call__`.
    name / kind: what probe run names and tables call it ("denoise", "attention", "contrastive"; "diffusion", ...).
    """

    name = ""
    kind = "diffusion"
    calls_per_item = 1
    needs_noise = True
    target = "eps"  # what `predict` returns: "eps" (ε̂) or "velocity" (v̂, flow models)

    def __init__(self, backbone, config: ScoreConfig, predict: Predict | None = None):
        self.backbone, self.config = backbone, config
        # the engine passes its own prediction (autocast, channels_last, compiled); alone, the backbone's, in fp32
        self.predict = predict or getattr(backbone, f"predict_{self.target}", None)
        self.autocast = autocast(backbone.device.type, config.dtype)

    def candidates(self, conds: torch.Tensor, groups: list[list[int]]) -> tuple[torch.Tensor, list[list[int]]]:
        """The conditions scored and which belong to each candidate. Denoising scorers keep every prompt of a
        candidate and the strategy averages their errors under the same noise."""
        return conds, groups

    def __call__(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Score (B,) of each sample x0[i] under noise[i] at timestep t[i] against cond[i]; lower = better."""
        raise NotImplementedError  # pragma: no cover - abstract

    def table(self, x0: torch.Tensor, conds: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """[images, conditions] scores, for scorers that need no noise."""
        raise NotImplementedError


class DenoiseScorer(Scorer):
    """Per-sample weighted denoising error: `uniform` (mean ε-error), `clark` (exp(-rate t/T) × error of the
    clipped x̂0; σ in place of t/T on a flow model: `noise_level`) or `min_snr` (ε-error × min(SNR, γ)/SNR),
    with the config's element-wise loss.

    Uses only the backbone contract (`add_noise`, `predict_eps`, `predict_x0`, `snr`, `clip_range`,
    `num_train_timesteps`), so a backbone with another noising (flow matching) scores here unchanged.
    """

    name = "denoise"

    def __init__(self, backbone, config: ScoreConfig, predict: Predict | None = None):
        if config.weighting in FLOW_WEIGHTINGS:
            if not getattr(backbone, "is_flow", False):
                raise DiffdiscError(f"weighting {config.weighting!r} weights a flow-matching model's velocity error; "
                                    f"{backbone.info.name} is a VP (ε/v) model (use uniform, clark or min_snr)")  # fmt: skip
            self.target = "velocity"
        super().__init__(backbone, config, predict)

    def __call__(self, x0, noise, t, cond):
        bb, cfg = self.backbone, self.config
        x_t = bb.add_noise(x0, noise, t)
        if self.target == "velocity":  # w(σ) ‖v̂ - (ε - x0)‖², the flow-matching training loss and its weightings
            v_hat = finite(self.predict(x_t, t, cond))
            err = loss(v_hat, noise.float() - x0.float(), cfg.loss)
            return err * bb.process.weight(t.to(bb.device), cfg.weighting).float().to(err.device)
        eps_hat = finite(self.predict(x_t, t, cond))
        if cfg.weighting == "clark":
            # Imagen-style clipped x̂0: unclipped x0-space error = ε-error/SNR explodes near t = T.
            x0_hat = bb.predict_x0(x_t, t, eps_hat)
            if bb.clip_range is not None:
                x0_hat = x0_hat.clamp(*bb.clip_range)
            else:  # latents have no fixed range: clip to this sample's own magnitude
                bound = x0.float().abs().flatten(1).amax(1).view(-1, *([1] * (x0.ndim - 1)))
                x0_hat = torch.maximum(torch.minimum(x0_hat, bound), -bound)
            err = loss(x0_hat, x0.float(), cfg.loss)
            return err * torch.exp(-cfg.clark_rate * noise_level(bb, t)).float().to(err.device)
        err = loss(eps_hat, noise.float(), cfg.loss)
        if cfg.weighting == "min_snr":
            snr = bb.snr(t)
            err = err * (snr.clamp(max=cfg.min_snr_gamma) / snr).float().to(err.device)
        return err


def noise_level(backbone, t: torch.Tensor) -> torch.Tensor:
    """Clark & Jaini's t/T in [0, 1] (float64): a flow model's σ_t, since its table row t/T is not where its
    noise is (a shifted σ table puts row 500 at σ 0.75 for shift 3); t/T for a VP model, as in the paper."""
    if getattr(backbone, "is_flow", False):
        return backbone.process.sigma(t.to(backbone.process.sigmas.device)).double()
    return t.double() / backbone.num_train_timesteps


def scorer_class(backbone, config: ScoreConfig) -> type[Scorer]:
    """Which scorer scores `backbone` under `config`: a model that matches by embedding similarity (MATCH, a
    contrastive one) always its own; otherwise `config.scorer`."""
    if Capability.MATCH in backbone.capabilities:
        from .contrastive import ContrastiveScorer

        return ContrastiveScorer
    if config.scorer == "attention":
        from .attention import AttentionScorer

        return AttentionScorer
    return DenoiseScorer


def make_scorer(backbone, config: ScoreConfig | None = None, predict: Predict | None = None) -> Scorer:
    """The scorer for `backbone` and `config` (refuses combinations that cannot score, e.g. attention on a class model)."""
    config = config or ScoreConfig()
    return scorer_class(backbone, config)(backbone, config, predict)


def finite(x: torch.Tensor) -> torch.Tensor:
    """The one NaN/inf check of every scorer: a NaN must never become a score."""
    if not torch.isfinite(x).all():
        raise DiffdiscError("the model produced NaN/inf predictions (try --dtype fp32, or check the weights)")
    return x


def loss(pred: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Element-wise loss averaged per sample: (B,)."""
    if kind == "l2":
        e = F.mse_loss(pred, target, reduction="none")
    elif kind == "l1":
        e = F.l1_loss(pred, target, reduction="none")
    else:
        e = F.huber_loss(pred, target, reduction="none", delta=1.0)
    return e.flatten(1).mean(1)

"""The forward (noising) processes a backbone can be trained with, behind one interface.

A backbone owns a process: `VPProcess` (x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε; ε-, v- or x0-prediction) or `FlowProcess`
(rectified flow, x_σ = (1 - σ) x0 + σ ε; the model predicts the velocity v = ε - x0). Both index their noise
levels by an integer t in 0..T-1, so the engine's noise keying by (seed, image, t), the grids, halving and the
t-test run unchanged over either: for a flow model t is a row of the scheduler's own σ table (the table
diffusers' SD3 / FLUX training examples draw σ from), σ_t increasing with t.

Each process turns the model's raw output into ε̂ (the error every weighting starts from) and, for a flow
model, keeps the velocity too: since ε̂ - ε = (1 - σ)(v̂ - v), Li et al.'s ε-error is the flow error weighted
by (1 - σ)².
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import DiffdiscError

FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.dtype).view((-1,) + (1,) * (like.ndim - 1))


class VPProcess(nn.Module):
    """ᾱ_t from the scheduler config (float64); the model predicts ε, v or x0 (`prediction_type`)."""

    kind = "vp"

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon"):
        super().__init__()
        if prediction_type not in {"epsilon", "v_prediction", "sample"}:
            raise DiffdiscError(f"unsupported prediction_type {prediction_type!r} (epsilon, v_prediction, sample)")
        self.prediction_type = prediction_type
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float64), persistent=False)

    @property
    def table(self) -> torch.Tensor:
        return self.alphas_cumprod

    def __len__(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def coef(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alphas_cumprod[t]
        return _view(a.sqrt(), like), _view((1 - a).sqrt(), like)

    def add_noise(self, x0, noise, t):
        """x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε (DDPMScheduler.add_noise)."""
        sa, sb = self.coef(t, x0)
        return sa * x0 + sb * noise

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def eps(self, x_t, t, out):
        if self.prediction_type == "epsilon":
            return out
        sa, sb = self.coef(t, x_t)
        if self.prediction_type == "v_prediction":
            return sa * out + sb * x_t
        return (x_t - sa * out) / sb  # "sample": the model predicts x0

    def x0(self, x_t, t, eps):
        sa, sb = self.coef(t, x_t)
        return (x_t - sb * eps) / sa

    def snr(self, t):
        a = self.alphas_cumprod[t]
        return a / (1 - a)


class FlowProcess(nn.Module):
    """Rectified flow: σ_t from the scheduler's table (shift applied), model timestep 1000·σ (`timestep_scale`)."""

    kind = "flow"
    prediction_type = "flow"

    def __init__(self, sigmas: torch.Tensor, timestep_scale: float = 1000.0):
        super().__init__()
        s = sigmas.to(torch.float64)
        if s.ndim != 1 or not len(s) or not bool((s[1:] >= s[:-1]).all()) or s[0] < 0 or s[-1] > 1:
            raise DiffdiscError("a flow model's σ table must increase within [0, 1]")
        self.register_buffer("sigmas", s, persistent=False)
        self.timestep_scale = float(timestep_scale)

    @property
    def table(self) -> torch.Tensor:
        return self.sigmas

    def __len__(self) -> int:
        return int(self.sigmas.shape[0])

    def sigma(self, t: torch.Tensor, like: torch.Tensor | None = None) -> torch.Tensor:
        s = self.sigmas[t]
        return s if like is None else _view(s, like)

    def add_noise(self, x0, noise, t):
        """x_σ = (1 - σ) x0 + σ ε (FlowMatchEulerDiscreteScheduler.scale_noise)."""
        s = self.sigma(t, x0)
        return (1 - s) * x0 + s * noise

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return (self.sigmas[t] * self.timestep_scale).float()

    def eps(self, x_t, t, out):
        """ε̂ = x_σ + (1 - σ) v̂ (from x_σ = ε - (1 - σ) v)."""
        return x_t + (1 - self.sigma(t, x_t)) * out

    def x0(self, x_t, t, eps):
        """x̂0 = (x_σ - σ ε̂) / (1 - σ); at σ = 1 the input holds no x0 at all (kept finite, not meaningful)."""
        s = self.sigma(t, x_t)
        return (x_t - s * eps) / (1 - s).clamp(min=1e-6)

    def snr(self, t):
        s = self.sigmas[t]
        return ((1 - s) / s.clamp(min=1e-12)) ** 2

    def weight(self, t: torch.Tensor, weighting: str) -> torch.Tensor:
        """w(σ) on the velocity error ‖v̂ - v‖²: `velocity` 1, `sigma_sqrt` σ⁻², `cosmap` 2 / (π (1 - 2σ + 2σ²))
        (diffusers' `compute_loss_weighting_for_sd3`), `uniform` (1 - σ)² (= the ε-error)."""
        s = self.sigmas[t]
        if weighting == "velocity":
            return torch.ones_like(s)
        if weighting == "sigma_sqrt":
            return s.clamp(min=1e-12) ** -2.0
        if weighting == "cosmap":
            return 2 / (math.pi * (1 - 2 * s + 2 * s**2))
        if weighting == "uniform":
            return (1 - s) ** 2
        raise DiffdiscError(f"weighting {weighting!r} is not a flow-matching weighting")


def flow_sigmas(scheduler, mu: float | None = None) -> torch.Tensor:
    """The scheduler's training σ table, increasing: its own `sigmas` (static `shift` already applied), or for
    `use_dynamic_shifting` (FLUX) the table shifted by `mu`, the resolution-dependent shift the pipeline
    computes from the image's token count (`calculate_shift`)."""
    sig = torch.as_tensor(scheduler.sigmas, dtype=torch.float32)[: scheduler.config.num_train_timesteps]
    if scheduler.config.get("use_dynamic_shifting"):
        if mu is None:
            raise DiffdiscError("this scheduler shifts σ by the image resolution (use_dynamic_shifting): mu is needed")
        sig = scheduler.time_shift(mu, 1.0, sig)
    return sig.flip(0).to(torch.float64)


def is_flow_scheduler(scheduler_config) -> bool:
    return scheduler_config.get("_class_name") in FLOW_SCHEDULERS


def load_scheduler(root, subfolder: str = "scheduler"):
    """The directory's scheduler as its own class when it is a flow scheduler, else as DDPMScheduler (whose
    ᾱ_t every VP scheduler config reproduces)."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    from .base import read_config

    cfg = read_config(root / subfolder / "scheduler_config.json")
    cls = FlowMatchEulerDiscreteScheduler if is_flow_scheduler(cfg) else DDPMScheduler
    return cls.from_pretrained(root, subfolder=subfolder)


def noise_process(scheduler, *, mu: float | None = None) -> VPProcess | FlowProcess:
    """The process a scheduler config describes: flow for flow-matching schedulers, VP for the others."""
    if is_flow_scheduler(scheduler.config):
        return FlowProcess(flow_sigmas(scheduler, mu))
    from diffusers import DDPMScheduler

    ddpm = DDPMScheduler.from_config(dict(scheduler.config))
    return VPProcess(ddpm.alphas_cumprod, scheduler.config.get("prediction_type", "epsilon"))

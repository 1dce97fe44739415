"""Classifier-free-guided sampling with any diffusers scheduler, for every backbone (class or text).

One loop over the backbone's own `predict_eps` (so ε/v/x0 models and class or text conditioning need no
special case) and a diffusers scheduler built from the model's scheduler config: a user sees what the
model they are about to use as a classifier has learned, and synthetic-data generation reuses it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..backbones.base import Backbone
from ..errors import DiffdiscError

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "ddpm": "DDPMScheduler",
}


def make_scheduler(backbone: Backbone, name: str = "ddim"):
    """A diffusers scheduler of kind `name` with the backbone's training noise schedule, predicting ε."""
    import diffusers

    if name not in SCHEDULERS:
        raise DiffdiscError(f"unknown scheduler {name!r} (known: {', '.join(SCHEDULERS)})")
    cfg = dict(getattr(backbone, "scheduler_config", None) or {})
    if not cfg:
        cfg = {"num_train_timesteps": backbone.num_train_timesteps,
               "trained_betas": (1 - backbone.alphas_cumprod / torch.cat([backbone.alphas_cumprod.new_ones(1),
                                 backbone.alphas_cumprod[:-1]])).tolist()}  # fmt: skip
    cfg["prediction_type"] = "epsilon"  # the loop hands the scheduler ε̂ whatever the model predicts
    cls = getattr(diffusers, SCHEDULERS[name])
    return cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})


@torch.inference_mode()
def sample(
    backbone: Backbone,
    conds: torch.Tensor,
    *,
    guidance: float | torch.Tensor = 3.0,
    steps: int = 50,
    scheduler: str = "ddim",
    generator: torch.Generator | None = None,
    init_noise: torch.Tensor | None = None,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Images in [-1, 1] (B, C, H, W), one per condition; `guidance` may differ per image (a B-vector).

    ε̂ = ε̂(∅) + w (ε̂(c) - ε̂(∅)); w = 1 is the plain conditional model (no unconditional pass).
    Initial noise is drawn on the CPU from `generator` (or given as `init_noise`, e.g. one seed per image),
    so images do not depend on the device; with a deterministic scheduler (ddim, dpm, euler) an image then
    does not depend on the batch it was drawn in either.
    """
    if steps < 1:
        raise DiffdiscError(f"steps must be >= 1, got {steps}")
    if backbone.is_flow and scheduler not in ("ddim", "euler"):
        raise DiffdiscError(f"{backbone.info.name} is a flow-matching model: it samples with the Euler flow "
                            f"solver (--scheduler euler), not {scheduler!r}")  # fmt: skip
    B = conds.shape[0]
    w = torch.as_tensor(guidance, dtype=torch.float32).expand(B).to(backbone.device)
    probe = backbone.encode(torch.zeros(1, backbone.info.image_channels, backbone.info.image_size, backbone.info.image_size))
    shape = (B, *probe.shape[1:])
    if init_noise is not None and tuple(init_noise.shape) != shape:
        raise DiffdiscError(f"init_noise has shape {tuple(init_noise.shape)}, expected {shape}")
    x0 = init_noise if init_noise is not None else torch.randn(shape, generator=generator)
    conds = conds.to(backbone.device)
    use_cfg = bool((w != 1).any())
    null = None
    if use_cfg:
        null = backbone.null_condition().to(backbone.device)
        null = null.expand(B, *null.shape) if null.ndim else null.expand(B)

    def guided(predict, xin, tt):
        if not use_cfg:
            return predict(xin, tt, conds)
        e_c, e_u = predict(torch.cat([xin, xin]), torch.cat([tt, tt]), torch.cat([conds, null])).chunk(2)
        return e_u + w.view(-1, *([1] * (xin.ndim - 1))) * (e_c - e_u)

    if backbone.is_flow:
        return backbone.decode(_flow_euler(backbone, x0.to(backbone.device), guided, steps, progress))
    sched = make_scheduler(backbone, scheduler)
    sched.set_timesteps(steps, device=backbone.device)
    x = x0.to(backbone.device) * sched.init_noise_sigma
    for i, t in enumerate(sched.timesteps):
        xin = sched.scale_model_input(x, t)
        tt = torch.full((B,), int(t), device=backbone.device, dtype=torch.long)
        x = sched.step(guided(backbone.predict_eps, xin, tt), t, x, generator=generator).prev_sample
        if progress:
            progress(i + 1)
    return backbone.decode(x)


def _flow_euler(backbone, x, guided, steps: int, progress) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler's step, x ← x + (σ_next - σ) v̂, on `steps` rows of the backbone's own σ
    table from the noisiest to σ = 0 (guidance on v̂, as the SD3 pipeline guides its velocity)."""
    T = backbone.num_train_timesteps
    rows = torch.linspace(T - 1, 0, steps).round().long().tolist()
    sig = backbone.process.sigmas
    for i, r in enumerate(rows):
        tt = torch.full((x.shape[0],), r, device=backbone.device, dtype=torch.long)
        nxt = float(sig[rows[i + 1]]) if i + 1 < len(rows) else 0.0
        x = x + (nxt - float(sig[r])) * guided(backbone.predict_velocity, x, tt)
        if progress:
            progress(i + 1)
    return x

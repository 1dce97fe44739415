"""`diffdisc sample`: a labelled grid of samples per class or caption, so a user can see the model is real."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..backbones.base import Backbone
from ..backbones.capabilities import Capability, require
from ..config import ConfigMixin
from ..data.templates import fill
from ..errors import DiffdiscError
from ..generation.sampler import sample


@dataclass(frozen=True)
class SampleConfig(ConfigMixin):
    """`per_key` samples per class or caption, drawn with `scheduler` in `steps` steps at classifier-free
    `guidance`, from one generator seeded by `seed`, `batch_size` at a time (the grid is not saved)."""

    config_label = "sample config"

    per_key: int = 8
    guidance: float = 3.0
    steps: int = 50
    scheduler: str = "ddim"
    seed: int = 0
    batch_size: int = 64


def sample_grid(backbone: Backbone, keys: list[str] | None = None, config: SampleConfig | None = None, *,
                out: str | Path = "samples.png", progress=None) -> Path:  # fmt: skip
    """Rows = classes (class-conditional) or captions (text-conditional), `per_key` samples each -> PNG."""
    from ..plotting import pyplot, save_figure

    require(backbone, Capability.SAMPLE, "sampling (`diffdisc sample`)")
    plt = pyplot()
    cfg = config or SampleConfig()
    per_key, guidance, steps, scheduler, seed, batch_size = (cfg.per_key, cfg.guidance, cfg.steps, cfg.scheduler,
                                                             cfg.seed, cfg.batch_size)  # fmt: skip
    keys = list(keys) if keys else list(backbone.info.class_names)
    if not keys:
        raise DiffdiscError("nothing to sample: pass classes or captions (the model records no class names)")
    if per_key < 1:
        raise DiffdiscError(f"per_key must be >= 1, got {per_key}")
    tpl = backbone.info.metadata.get("templates", ["{}"])[0] if backbone.info.conditioning == "text" else "{}"
    prompts = [fill(tpl, k) if backbone.info.conditioning == "text" and k in backbone.info.class_names else k for k in keys]
    conds = backbone.conditions(prompts)
    flat = conds.repeat_interleave(per_key, 0)
    g = torch.Generator().manual_seed(seed)
    imgs = []
    for s in range(0, len(flat), batch_size):
        imgs.append(sample(backbone, flat[s : s + batch_size], guidance=guidance, steps=steps, scheduler=scheduler,
                           generator=g).cpu())  # fmt: skip
        if progress:
            progress(min(s + batch_size, len(flat)), len(flat))
    x = ((torch.cat(imgs) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    x = x.reshape(len(keys), per_key, *x.shape[1:])
    fig, axes = plt.subplots(len(keys), per_key, figsize=(per_key * 0.9 + 1.6, len(keys) * 0.9), squeeze=False)
    for r, p in enumerate(prompts):
        for c in range(per_key):
            ax = axes[r][c]
            img = x[r, c]
            ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                      vmin=0, vmax=255, interpolation="nearest")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(p, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{backbone.info.name}: {scheduler} {steps} steps, guidance {guidance}, seed {seed}", fontsize=9)
    return save_figure(fig, out)

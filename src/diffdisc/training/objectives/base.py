"""What every objective shares: the data hash, image preprocessing, the fine-tuning source, the noise schedule.

An objective answers only what differs between the model kinds (its data, module, the loss of one step and
the layout its weights are saved in); the loop in `training/train.py` does the rest. Every random draw of a
step comes from the generator the loop passes in, so resumed runs match uninterrupted ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from ...assets import MODELS_DIR
from ...errors import DiffdiscError
from ..config import TrainConfig

DATA_ORDER = "per step s: Generator(seed*1000003+s) draws batch indices, caption variant/dropout, t, noise"


def data_hash(*arrays: torch.Tensor) -> str:
    """sha256 of the preprocessed training arrays: ties shipped weights to the exact data they saw."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(a.numpy().tobytes())
    return h.hexdigest()


def to_u8(x: list[torch.Tensor]) -> torch.Tensor:
    """[-1, 1] float images -> uint8 (4x less memory); `u8 / 127.5 - 1` is bit-identical to `to_tensor`."""
    return ((torch.stack(x) + 1) * 127.5).round().to(torch.uint8)


def resize_note(sizes: Counter, modes: Counter, cfg: TrainConfig) -> str | None:
    """The one log line saying how source images ((w, h) and PIL modes counted) become the model's input, or
    None when they already match: a 28x28 folder trained at 32x32 should not be resized silently. Same wording
    as `classify`'s note (both from `images.resize_note`), plus any colour-to-grey conversion."""
    from ...data.images import resize_note as sizes_note

    grey = cfg.channels == 1 and any(m != "L" for m in modes)
    note = sizes_note(sizes, cfg.image_size, "training images")
    parts = [note] if note else []
    if grey:
        parts.append(("" if note else "training images: ") + "colour converted to grey (1-channel model)")
    return "; ".join(parts) or None


def open_images(paths, cfg: TrainConfig) -> tuple[torch.Tensor, str | None]:
    """Decode and preprocess image files (the inference transform), counting their sizes for `resize_note`."""
    from ...data.images import open_image, to_tensor

    sizes, modes, x = Counter(), Counter(), []
    for path in paths:
        im = open_image(path)
        sizes[im.size] += 1
        modes[im.mode] += 1
        x.append(to_tensor(im, cfg.image_size, cfg.channels))
    return to_u8(x), resize_note(sizes, modes, cfg)


def fmnist_train(cfg: TrainConfig):
    """Fashion-MNIST train split (or `cfg.fmnist_images` of it), or for the tiny test recipes 64 shipped test
    images (no system dataset)."""
    from ...datasets.fashion_mnist import fmnist_subset, load_fashion_mnist, load_shipped_subset

    if cfg.recipe.startswith("tiny"):
        imgs, labels, _ = load_shipped_subset()
        return imgs[:64], labels[:64]
    if cfg.fmnist_images:
        imgs, labels, _, _ = fmnist_subset("train", cfg.fmnist_images, cfg.seed)
        return imgs, labels
    return load_fashion_mnist("train")


def init_dir(cfg: TrainConfig) -> Path | None:
    """The model directory `cfg.init_from` names (a shipped model name or a path), checked to be of cfg.kind."""
    if not cfg.init_from:
        return None
    shipped = MODELS_DIR / cfg.init_from
    src = shipped if "/" not in cfg.init_from and shipped.is_dir() else Path(cfg.init_from).expanduser()
    if not src.is_dir():
        raise DiffdiscError(f"init_from {cfg.init_from!r} is not a model directory or shipped model name")
    meta = src / "diffdisc.json"
    kind = json.loads(meta.read_text()).get("kind") if meta.is_file() else None
    if kind not in (None, cfg.kind):
        raise DiffdiscError(f"init_from {src} is a {kind!r} model; recipe {cfg.recipe!r} trains {cfg.kind!r}")
    return src


def load_init(model: nn.Module, state: dict, src: Path) -> None:
    """Load `state` into `model` strictly: fine-tuning from a model of another architecture is a user error."""
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).split("\n")[1].strip() if "\n" in str(e) else str(e)
        raise DiffdiscError(f"init_from {src} does not fit this recipe's architecture ({first})") from None


def make_scheduler(cfg: TrainConfig):
    """The scheduler saved with the model: it tells the loader which noise process the model was trained with."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if cfg.model.objective == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule=cfg.model.beta_schedule, prediction_type="epsilon")


class DiffusionObjective:
    """Shared by the two diffusion objectives: a noised batch and the regression target of `cfg.model.objective`."""

    @functools.cached_property
    def scheduler(self):
        return make_scheduler(self.cfg)

    def _noised(self, x0: torch.Tensor, g: torch.Generator):
        """(x_t, the denoiser's timestep input, target): ε-models at uniform t against ε; flow models as the SD3
        training example (logit-normal u -> a row of the scheduler's σ table) against v = ε - x0."""
        sched = self.scheduler
        if self.cfg.model.objective == "flow":
            from diffusers.training_utils import compute_density_for_timestep_sampling

            u = compute_density_for_timestep_sampling("logit_normal", len(x0), logit_mean=0.0, logit_std=1.0, generator=g)
            idx = (u * sched.config.num_train_timesteps).long().clamp(max=sched.config.num_train_timesteps - 1)
            noise = torch.randn(x0.shape, generator=g)
            sigma = sched.sigmas[idx].view(-1, 1, 1, 1)
            return (1 - sigma) * x0 + sigma * noise, sched.timesteps[idx], noise - x0
        ac = sched.alphas_cumprod
        t = torch.randint(0, len(ac), (len(x0),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = ac[t].view(-1, 1, 1, 1)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise


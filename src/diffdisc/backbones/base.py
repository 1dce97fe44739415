"""The Backbone protocol: one thin wrapper per model family, scoring always in ε-space.

A backbone hides what kind of diffusion model it is (text- or class-conditional, latent or pixel,
ε-, v- or x0-prediction). Everything model specific is read from the model's own configs, as in
k-diffusion's external wrappers: the scoring engine only sees `encode`, `conditions`, `add_noise`
and `predict_eps`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import DiffdiscError


@dataclass(frozen=True)
class BackboneInfo:
    """What a user (and a result file) needs to know about a loaded backbone."""

    name: str
    family: str  # "sd" | "classcond"
    conditioning: str  # "text" | "class"
    prediction_type: str
    num_train_timesteps: int
    image_size: int
    image_channels: int
    latent: bool
    fingerprint: str  # hash of the model configs + weight file sizes: ties results to weights
    class_names: tuple[str, ...] = ()
    metadata: dict = field(default_factory=dict, compare=False, hash=False)


def alphas_cumprod_from_scheduler(scheduler) -> torch.Tensor:
    """ᾱ_t in float64 from any diffusers scheduler config (never a hard-coded beta schedule)."""
    from diffusers import DDPMScheduler

    cfg = dict(scheduler.config)
    ddpm = DDPMScheduler.from_config(cfg)
    return ddpm.alphas_cumprod.to(torch.float64)


class Backbone(nn.Module):
    """Base class; subclasses implement `_encode`, `_condition_batch`, `null_condition` and `model_output`."""

    info: BackboneInfo

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str):
        super().__init__()
        if prediction_type not in {"epsilon", "v_prediction", "sample"}:
            raise DiffdiscError(f"unsupported prediction_type {prediction_type!r} (epsilon, v_prediction, sample)")
        self.prediction_type = prediction_type
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float64), persistent=False)
        self._cond_cache: dict = {}

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def clip_range(self) -> tuple[float, float] | None:
        """Range of x0 for clipped x̂0 (pixel models live in [-1, 1]; latents have no fixed range)."""
        return None if self.info.latent else (-1.0, 1.0)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t.to(self.alphas_cumprod.device)]
        return a / (1 - a)

    # ------------------------------------------------------------------ encoding
    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B, C, H, W) -> x0 in the model's space (latents × scaling for latent models)."""
        return self._encode(images.to(self.device, torch.float32)).float()

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        return images

    @torch.inference_mode()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Inverse of `encode`: the model's space -> images in [-1, 1] (sampling, visualisation)."""
        vae = getattr(self, "vae", None)
        if vae is None:
            return x0.float().clamp(-1, 1)
        cfg = vae.config
        lat = x0 / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)
        return vae.decode(lat.to(vae.dtype)).sample.float().clamp(-1, 1)

    @torch.inference_mode()
    def conditions(self, candidates: list) -> torch.Tensor:
        """Conditions for candidates (prompts or class ids), stacked on dim 0 and cached per candidate."""
        missing = [c for c in dict.fromkeys(candidates) if c not in self._cond_cache]
        if missing:
            for c, emb in zip(missing, self._condition_batch(missing), strict=True):
                self._cond_cache[c] = emb
        return torch.stack([self._cond_cache[c] for c in candidates])

    def _condition_batch(self, candidates: list) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def null_condition(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------------ diffusion
    def _coef(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alphas_cumprod[t].to(like.dtype)
        shape = (-1,) + (1,) * (like.ndim - 1)
        return a.sqrt().view(shape), (1 - a).sqrt().view(shape)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) ε (VP form, same as DDPMScheduler.add_noise)."""
        sa, sb = self._coef(t, x0)
        return sa * x0 + sb * noise

    def model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """ε̂ whatever the model predicts; learned-variance channels (DiT) are dropped."""
        out = self.model_output(x_t, t, cond).float()
        if out.shape[1] == 2 * x_t.shape[1]:
            out = out[:, : x_t.shape[1]]
        if self.prediction_type == "epsilon":
            return out
        x_t = x_t.float()
        sa, sb = self._coef(t, x_t)
        if self.prediction_type == "v_prediction":
            return sa * out + sb * x_t
        return (x_t - sa * out) / sb  # "sample": model predicts x0

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        sa, sb = self._coef(t, x_t)
        return (x_t.float() - sb * eps) / sa


# ---------------------------------------------------------------------- loading helpers
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def require_safetensors(component_dir: Path) -> None:
    """Refuse folders whose weights exist only as pickles (loading them could run arbitrary code)."""
    if not component_dir.is_dir():
        raise DiffdiscError(f"incomplete model directory: missing {component_dir}")
    if not (component_dir / "config.json").is_file():
        raise DiffdiscError(f"incomplete model directory: {component_dir} has no config.json")
    files = [p.name for p in component_dir.iterdir()]
    if any(f.endswith(".safetensors") for f in files):
        return
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise DiffdiscError(
            f"{component_dir} holds only pickle weights ({pickles[0]}); diffdisc loads safetensors only "
            "because unpickling can run arbitrary code - convert them with safetensors first"
        )
    raise DiffdiscError(f"incomplete model directory: no weights (*.safetensors) in {component_dir}")


def read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DiffdiscError(f"cannot read model config {path}: {e}") from e


def fingerprint(root: Path) -> str:
    """Cheap identity of a model directory: configs and weight file sizes (not a full weight hash)."""
    import hashlib

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.suffix in {".json", ".safetensors", ".txt"}:
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes() if p.suffix == ".json" else str(p.stat().st_size).encode())
    return h.hexdigest()[:16]


def read_metadata(root: Path) -> dict:
    """Optional `diffdisc.json` sidecar: class names, recipe, data hash, training steps."""
    p = root / "diffdisc.json"
    return read_config(p) if p.is_file() else {}

"""The Backbone contract: one thin wrapper per model family, scored per sample through the same few methods.

A backbone hides what kind of diffusion model it is (text- or class-conditional, latent or pixel, ε-, v- or
x0-prediction). Everything model specific is read from the model's own configs, as in k-diffusion's external
wrappers. Scorers (`diffdisc.scoring.scorers`) and the feature taps use only this contract, so a model with
another noising (flow matching: x_t = (1 - σ) x0 + σ ε, target v = ε - x0) is a new backbone overriding these
methods, with no change to the engine or the scorers:

- `encode(images) -> x0` in the model's space; `conditions(candidates)`, `null_condition()`;
- `num_train_timesteps`: timesteps are integers 0 <= t < T; t / T is the noise level's fraction of the way;
- `add_noise(x0, noise, t) -> x_t`, the forward process;
- `predict_eps(x_t, t, cond) -> ε̂`, the noise the model implies, whatever it predicts (`model_output`);
- `predict_x0(x_t, t, eps) -> x̂0`, and `snr(t)` (signal-to-noise ratio), for the weightings;
- `clip_range`: the range of x0 for clipped x̂0 (None for latents).

This class implements them for ε-VP models (x_t = √ᾱ_t x0 + √(1-ᾱ_t) ε, ᾱ_t from the scheduler config).
"""

from __future__ import annotations

import hashlib
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
    family: str  # "sd" | "classcond" | "clip"
    conditioning: str  # "text" | "class"
    prediction_type: str
    num_train_timesteps: int
    image_size: int
    image_channels: int
    latent: bool
    fingerprint: str  # content hash of the model directory (`fingerprint`): ties results to weights
    class_names: tuple[str, ...] = ()
    metadata: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def label(self) -> str:
        """The name shown to people (`model_label`); `name` stays the identity that run settings guard."""
        return model_label(self.name, self.metadata)


def model_label(name: str, metadata: dict) -> str:
    """A trained model's own name (`diffdisc train --name`, in diffdisc.json), else its recipe and data folder
    (models exported before names were stored), else `name`; "+lora" carries over from `name`.

    Every trained model's directory is called `model`, so its folder name tells runs apart by nothing.
    """
    own = metadata.get("name")
    if not own and metadata.get("recipe"):
        data = (metadata.get("config") or {}).get("data")
        own = "-".join([str(metadata["recipe"]), *([Path(str(data)).name] if data and Path(str(data)).name else [])])
    if not own:
        return Path(name).name
    return str(own) + ("+lora" if name.endswith("+lora") and not str(own).endswith("+lora") else "")


def has_learned_variance(model_config, scheduler_config) -> bool:
    """Whether the model also outputs a variance (DiT, IF): its config has twice as many output channels as
    input channels. DiT's `learn_sigma` or the scheduler's `variance_type` learned/learned_range claiming so
    for a model without the extra channels is a contradiction in the model's own configs: refused."""
    cin = model_config.get("in_channels")
    twice = cin is not None and (model_config.get("out_channels") or cin) == 2 * cin
    vt = scheduler_config.get("variance_type")
    if not twice and (model_config.get("learn_sigma") or vt in ("learned", "learned_range")):
        claim = "learn_sigma" if model_config.get("learn_sigma") else f"the scheduler's variance_type {vt!r}"
        raise DiffdiscError(f"{claim} says the model predicts its variance, but its out_channels "
                            f"({model_config.get('out_channels')}) are not twice its in_channels ({cin})")  # fmt: skip
    return twice


def alphas_cumprod_from_scheduler(scheduler) -> torch.Tensor:
    """ᾱ_t in float64 from any diffusers scheduler config (never a hard-coded beta schedule)."""
    from diffusers import DDPMScheduler

    cfg = dict(scheduler.config)
    ddpm = DDPMScheduler.from_config(cfg)
    return ddpm.alphas_cumprod.to(torch.float64)


def diffusion_args(model_config, scheduler) -> tuple[torch.Tensor, str, bool]:
    """`Backbone.__init__`'s (ᾱ_t, prediction_type, learned_variance), read from a model's and its scheduler's configs."""
    return (alphas_cumprod_from_scheduler(scheduler), scheduler.config.get("prediction_type", "epsilon"),
            has_learned_variance(model_config, scheduler.config))  # fmt: skip


class Backbone(nn.Module):
    """Base class; subclasses implement `_encode`, `_condition_batch`, `null_condition` and `model_output`."""

    info: BackboneInfo

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str, learned_variance: bool = False):
        super().__init__()
        if prediction_type not in {"epsilon", "v_prediction", "sample"}:
            raise DiffdiscError(f"unsupported prediction_type {prediction_type!r} (epsilon, v_prediction, sample)")
        self.prediction_type = prediction_type
        self.learned_variance = learned_variance  # read from the configs (`has_learned_variance`)
        self.register_buffer("alphas_cumprod", alphas_cumprod.to(torch.float64), persistent=False)
        self._cond_cache: dict = {}

    def _make_info(self, name: str, family: str, conditioning: str, root: Path | None, meta: dict, *, image_size: int,
                   image_channels: int, latent: bool, class_names=()) -> BackboneInfo:  # fmt: skip
        """The info every diffusion family fills alike: the schedule's facts from self, the identity from `root`."""
        return BackboneInfo(name=name, family=family, conditioning=conditioning, prediction_type=self.prediction_type,
                            num_train_timesteps=len(self.alphas_cumprod), image_size=image_size,
                            image_channels=image_channels, latent=latent,
                            fingerprint=fingerprint(root) if root else "in-memory", class_names=tuple(class_names),
                            metadata=meta)  # fmt: skip

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
        if self.learned_variance:  # [ε̂, variance] on the channel axis, as DiTPipeline splits it
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


def load_model(cls, directory: Path):
    """`cls.from_pretrained(directory)` from safetensors only (a diffusers or transformers model class).

    Weights whose shapes contradict the config become one diffdisc error naming the tensor and the
    directory, instead of the loaders' advice about their own options (`ignore_mismatched_sizes`, ...).
    """
    require_safetensors(directory)
    try:
        return cls.from_pretrained(directory, use_safetensors=True)
    except (ValueError, RuntimeError):
        try:
            bad = _shape_mismatch(cls, directory)
        except Exception:  # diagnosis only: the loader's own error stands
            bad = None
        if bad is None:
            raise
        name, got, want = bad
        raise DiffdiscError(f"weights in {directory} do not match its config.json: {name} has shape "
                            f"{list(got)} in the weights, {list(want)} from the config") from None  # fmt: skip


def _shape_mismatch(cls, directory: Path) -> tuple[str, tuple, tuple] | None:
    """First tensor whose shape in the safetensors headers differs from the model built from the config
    (on the meta device: no memory, no weights read)."""
    from safetensors import safe_open

    with torch.device("meta"):
        if hasattr(cls, "load_config"):  # diffusers
            model = cls.from_config(cls.load_config(directory))
        else:  # transformers
            model = cls._from_config(cls.config_class.from_pretrained(directory))
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for p in sorted(directory.glob("*.safetensors")):
        with safe_open(str(p), framework="pt") as f:
            for k in f.keys():
                got = tuple(f.get_slice(k).get_shape())
                if k in want and got != want[k]:
                    return k, got, want[k]
    return None


def read_config(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DiffdiscError(f"cannot read model config {path}: {e}") from e


SAMPLE = 4096  # values read per tensor for a fingerprint


def tensor_sample(t) -> torch.Tensor:
    """About SAMPLE evenly strided values of `t`, a torch tensor or a safetensors slice (`get_slice`).

    The same strides in every dimension for both, so a loaded model and its file are sampled alike; a slice
    reads only the sampled values, so this stays fast on multi-GB checkpoints.
    """
    shape = tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t.get_shape())
    k = max(1, round(SAMPLE ** (1 / max(len(shape), 1))))
    return t[tuple(slice(None, None, max(1, -(-d // k))) for d in shape)]


def update_digest(h, tensors) -> None:
    """Feed (name, tensor or safetensors slice) pairs to the hash `h`: name, shape and a strided sample.

    The one content digest of weights: model directories (`fingerprint`), loaded backbones (the feature
    cache) and, through the fingerprint, the LoRA guard all use it.
    """
    for name, t in tensors:
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t.get_shape())
        h.update(f"{name}{shape}".encode())
        h.update(tensor_sample(t).detach().float().cpu().numpy().tobytes())


def fingerprint(root: Path) -> str:
    """Identity of a model directory by content: configs and tokenizer files in full, and for each
    safetensors file its metadata plus a strided sample of every tensor (`update_digest`).

    Weight-file sizes alone accepted a model retrained in place (same architecture, same sizes) into an
    old run. Paths are relative to `root`: an identical copy elsewhere has the same fingerprint.
    """
    from safetensors import SafetensorError, safe_open

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix not in {".json", ".safetensors", ".txt"}:
            continue
        h.update(str(p.relative_to(root)).encode())
        if p.suffix != ".safetensors":
            h.update(p.read_bytes())
            continue
        try:
            with safe_open(str(p), framework="pt") as f:
                h.update(json.dumps(f.metadata() or {}, sort_keys=True).encode())
                update_digest(h, ((k, f.get_slice(k)) for k in sorted(f.keys())))
        except (OSError, SafetensorError) as e:  # truncated, or not safetensors at all
            raise DiffdiscError(f"cannot read weights {p}: {e}") from None
    return h.hexdigest()[:16]


def read_metadata(root: Path) -> dict:
    """Optional `diffdisc.json` sidecar: class names, recipe, data hash, training steps."""
    p = root / "diffdisc.json"
    return read_config(p) if p.is_file() else {}

"""The Backbone contract: one thin wrapper per model family, scored per sample through the same few methods.

A backbone hides what kind of diffusion model it is (text- or class-conditional, latent or pixel, ε-, v- or
x0-prediction, VP or rectified flow). Everything model specific is read from the model's own configs, as in
k-diffusion's external wrappers. Scorers (`diffdisc.scoring.scorers`) and the feature taps use only this
contract:

- `encode(images) -> x0` in the model's space (`vae_encode` for latent models); `conditions(candidates)`,
  `null_condition()` (both cached);
- `num_train_timesteps`: timesteps are integers 0 <= t < T, rows of the noise process's table (ᾱ_t, or σ_t
  for flow models); t / T is the noise level's fraction of the way;
- `add_noise(x0, noise, t) -> x_t`, the forward process;
- `predict_eps(x_t, t, cond) -> ε̂`, the noise the model implies, whatever it predicts (`model_output`);
  flow models also give `predict_velocity` (v̂);
- `predict_x0(x_t, t, eps) -> x̂0`, and `snr(t)` (signal-to-noise ratio), for the weightings;
- `clip_range`: the range of x0 for clipped x̂0 (None for latents);
- `capabilities`: what the model can do (`capabilities.py`), which tasks ask instead of its family.

The formulas belong to the backbone's noise process (`process.py`: `VPProcess`, `FlowProcess`), chosen from
the scheduler config, so a family only builds its model, conditions and `model_output` (which gives the
denoiser `timestep_input(t)`). Conditions that are several tensors (SDXL's pooled embedding and time ids,
SD3's pooled projection) are packed into one row per candidate (`conditioning.CondPack`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import DiffdiscError
from .capabilities import DIFFUSION, Capability
from .process import FlowProcess, VPProcess, noise_process

NoiseProcess = VPProcess | FlowProcess


@dataclass(frozen=True)
class BackboneInfo:
    """What a user (and a result file) needs to know about a loaded backbone."""

    name: str
    family: str  # "sd" | "classcond" | "clip" | "sdxl" | "sd3" | "flux" | "pixart"
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


def diffusion_args(model_config, scheduler, *, mu: float | None = None) -> tuple[NoiseProcess, bool]:
    """`Backbone.__init__`'s (process, learned_variance), read from a model's and its scheduler's configs."""
    return noise_process(scheduler, mu=mu), has_learned_variance(model_config, scheduler.config)


NULL_KEY = ("diffdisc:null",)  # the null condition's key in `_cond_cache`: a tuple is never a candidate


def vae_shift(config) -> float:
    """A VAE's `shift_factor` (SD3 / FLUX); None or absent (SD 1.x, SDXL) means 0."""
    return float(getattr(config, "shift_factor", None) or 0.0)


def vae_encode(vae, images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> latents: the posterior mean (deterministic, as the official Diffusion Classifier code),
    (mean - shift_factor) × scaling_factor, the pipelines' convention. The one VAE encode of every family, so
    none can forget the shift while `vae_decode` adds it back."""
    cfg = vae.config
    mean = vae.encode(images.to(vae.dtype)).latent_dist.mean
    return (mean - vae_shift(cfg)) * cfg.scaling_factor


def vae_decode(vae, x0: torch.Tensor) -> torch.Tensor:
    """The inverse of `vae_encode`: latents -> images (not clamped)."""
    cfg = vae.config
    return vae.decode((x0 / cfg.scaling_factor + vae_shift(cfg)).to(vae.dtype)).sample


class Backbone(nn.Module):
    """Base class; subclasses implement `_condition_batch`, `_null_condition` and `model_output` (and
    `_encode` when their model space is neither pixels nor a `vae`'s latents)."""

    info: BackboneInfo
    # What the model can do (`capabilities.py`): a family adds its conditioning and, with attention over text
    # tokens, ATTEND.
    capabilities: frozenset[Capability] = DIFFUSION
    # Submodules that only encode conditions (a 4.7B T5 beside an SD3 transformer): kept on the CPU by `to`,
    # moved to the backbone's device only while `conditions` encodes, so scoring holds denoiser + VAE only.
    offloaded: tuple[str, ...] = ()
    denoiser = ""  # attribute name of the denoiser ("unet", "transformer", "model")
    # The dtype the denoiser's weights were loaded in (`loading.LoadSpec`): its inputs are cast to it.
    weights_dtype: torch.dtype = torch.float32
    # Modules whose device diffusers' offload hooks or device map decide (`loading.place`): `to` leaves them.
    held: tuple[str, ...] = ()
    offload_hooks: tuple = ()  # accelerate's model-offload hooks, offloaded before the text encoders move in
    condition_store = None  # `condcache.ConditionStore`: conditions kept on disk across runs

    def __init__(self, process: NoiseProcess, learned_variance: bool = False):
        super().__init__()
        self.process = process  # VP (ε / v / x0 prediction) or rectified flow: `process.py`
        self.learned_variance = learned_variance  # read from the configs (`has_learned_variance`)
        self._cond_cache: dict = {}

    @property
    def prediction_type(self) -> str:
        return self.process.prediction_type

    @property
    def is_flow(self) -> bool:
        return self.process.kind == "flow"

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        if self.is_flow:
            raise DiffdiscError(f"{self.info.name} is a flow-matching model: it has σ_t, not ᾱ_t")
        return self.process.alphas_cumprod

    def _make_info(self, name: str, family: str, conditioning: str, root: Path | None, meta: dict, *, image_size: int,
                   image_channels: int, latent: bool, class_names=()) -> BackboneInfo:  # fmt: skip
        """The info every diffusion family fills alike: the schedule's facts from self, the identity from `root`."""
        return BackboneInfo(name=name, family=family, conditioning=conditioning, prediction_type=self.prediction_type,
                            num_train_timesteps=len(self.process), image_size=image_size,
                            image_channels=image_channels, latent=latent,
                            fingerprint=fingerprint(root) if root else "in-memory", class_names=tuple(class_names),
                            metadata=meta)  # fmt: skip

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.process.table.device

    @property
    def num_train_timesteps(self) -> int:
        return len(self.process)

    @property
    def clip_range(self) -> tuple[float, float] | None:
        """Range of x0 for clipped x̂0 (pixel models live in [-1, 1]; latents have no fixed range)."""
        return None if self.info.latent else (-1.0, 1.0)

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        return self.process.snr(t.to(self.device))

    def timestep_input(self, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser is given as its timestep: t for VP models, 1000·σ_t for flow models."""
        return self.process.model_timestep(t)

    # ------------------------------------------------------------------ encoding
    @torch.inference_mode()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1], (B, C, H, W) -> x0 in the model's space (latents × scaling for latent models)."""
        return self._encode(images.to(self.device, torch.float32)).float()

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels for pixel models; for latent ones (a `vae`) the one `vae_encode` every family shares."""
        vae = getattr(self, "vae", None)
        return images if vae is None else vae_encode(vae, images)

    @torch.inference_mode()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Inverse of `encode`: the model's space -> images in [-1, 1] (sampling, visualisation)."""
        vae = getattr(self, "vae", None)
        return (x0 if vae is None else vae_decode(vae, x0)).float().clamp(-1, 1)

    def to(self, *args, **kwargs):
        """Moves everything but the `offloaded` encoders, which are never copied to the accelerator at all, and
        the `held` modules, which their offload hooks or device map place."""
        held = {n: self._modules.pop(n) for n in (*self.offloaded, *self.held) if self._modules.get(n) is not None}
        try:
            return super().to(*args, **kwargs)
        finally:
            self._modules.update(held)

    @contextlib.contextmanager
    def encoders_on_device(self):
        """The `offloaded` encoders on the backbone's device for the duration (then back on the CPU)."""
        mods = [getattr(self, n) for n in self.offloaded if getattr(self, n, None) is not None]
        moved = self.device.type != "cpu" and bool(mods)
        with torch.inference_mode(False):  # quantized weights cannot be swapped by inference-mode copies
            for hook in self.offload_hooks:  # --offload model: the denoiser and VAE leave before the encoders come
                hook.offload()
        if moved:
            for m in mods:
                m.to(self.device)
        try:
            yield
        finally:
            if moved:
                for m in mods:
                    m.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    @torch.inference_mode()
    def conditions(self, candidates: list) -> torch.Tensor:
        """Conditions for candidates (prompts or class ids), stacked on dim 0 and cached per candidate."""
        missing = [c for c in dict.fromkeys(candidates) if c not in self._cond_cache]
        store = self.condition_store
        if missing and store is not None:  # encoded by an earlier run of this model with these options
            found = store.get(self.info.fingerprint, missing)
            for c, emb in found.items():
                self._cond_cache[c] = emb.to(self.device)
            missing = [c for c in missing if c not in found]
        if missing:
            with self.encoders_on_device():
                embs = self._condition_batch(missing)
            for c, emb in zip(missing, embs, strict=True):
                self._cond_cache[c] = emb.to(self.device)
            if store is not None:
                store.put(self.info.fingerprint, dict(zip(missing, embs, strict=True)))
        return torch.stack([self._cond_cache[c] for c in candidates])

    def _condition_batch(self, candidates: list) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def null_condition(self) -> torch.Tensor:
        """The unconditional condition (∅), encoded once per backbone: scorers and samplers ask for it every
        batch, and on SD3 / FLUX each encoding moved T5 to the accelerator and back. Kept with the conditions,
        so `clear_conditions` (a LoRA load) forgets it too."""
        null = self._cond_cache.get(NULL_KEY)
        if null is None and self.condition_store is not None:
            null = self.condition_store.get(self.info.fingerprint, [NULL_KEY]).get(NULL_KEY)
            if null is not None:
                null = self._cond_cache[NULL_KEY] = null.to(self.device)
        if null is None:
            with self.encoders_on_device():
                null = self._cond_cache[NULL_KEY] = self._null_condition().to(self.device)
            if self.condition_store is not None:
                self.condition_store.put(self.info.fingerprint, {NULL_KEY: null})
        elif null.device != self.device:  # the backbone moved since
            null = self._cond_cache[NULL_KEY] = null.to(self.device)
        return null

    def _null_condition(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def clear_conditions(self) -> None:
        """Forget the cached conditions and ∅: after the model changed in place (a LoRA, a pipeline config)."""
        self._cond_cache.clear()

    # ------------------------------------------------------------------ diffusion
    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The forward process: VP (DDPMScheduler.add_noise) or flow (FlowMatchEulerDiscreteScheduler.scale_noise)."""
        return self.process.add_noise(x0, noise, t)

    def model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def denoiser_input(self, x: torch.Tensor) -> torch.Tensor:
        """`x` in the denoiser's weights dtype (bf16 weights take bf16 inputs; under autocast fp32 stays fp32)."""
        return x.to(self.weights_dtype) if x.is_floating_point() else x

    def _output(self, x_t, t, cond) -> torch.Tensor:
        # float32 on x_t's device (a split denoiser ends on another GPU): errors are reduced in fp32 from here
        out = self.model_output(x_t, t, cond).to(x_t.device).float()
        if self.learned_variance:  # [prediction, variance] on the channel axis, as DiTPipeline splits it
            out = out[:, : x_t.shape[1]]
        return out

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """ε̂ whatever the model predicts; learned-variance channels (DiT, PixArt) are dropped."""
        return self.process.eps(x_t.float(), t, self._output(x_t, t, cond))

    def predict_velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """v̂ of a flow model (its raw output), for the velocity weightings."""
        if not self.is_flow:
            raise DiffdiscError(f"{self.info.name} is not a flow-matching model: it predicts no velocity")
        return self._output(x_t, t, cond)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self.process.x0(x_t.float(), t, eps)


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


def load_model(cls, directory: Path, **kwargs):
    """`cls.from_pretrained(directory, **kwargs)` from safetensors only (a diffusers or transformers model class);
    `torch_dtype` is passed to transformers as its `dtype`.

    Weights whose shapes contradict the config become one diffdisc error naming the tensor and the
    directory, instead of the loaders' advice about their own options (`ignore_mismatched_sizes`, ...).
    """
    require_safetensors(directory)
    if "torch_dtype" in kwargs and dtype_keyword("diffusers" if hasattr(cls, "load_config") else "transformers") == "dtype":
        kwargs["dtype"] = kwargs.pop("torch_dtype")
    try:
        return cls.from_pretrained(directory, use_safetensors=True, **kwargs)
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


def dtype_keyword(library: str) -> str:
    """`from_pretrained`'s name for the weights dtype: `dtype` where the library has renamed `torch_dtype` (and
    warns about the old name: transformers 4.56, diffusers with `_resolve_dtype`), else `torch_dtype`."""
    if library == "transformers":
        import transformers

        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
        return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


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


# The command-line flag of each loader option (`cli.options.FamilyOptions.kwargs`): errors name what the user typed.
OPTION_FLAGS = {"no_t5": "--no-t5", "guidance": "--distilled-guidance", "image_size": "--image-size"}


def option_flag(option: str) -> str:
    """The command-line flag of loader option `option` (`no_t5` -> `--no-t5`)."""
    return OPTION_FLAGS.get(option, "--" + option.replace("_", "-"))


def refuse_options(options: dict, family: str) -> None:
    """Loader options a family does not take (`--no-t5` on an SD 1.x model) are an error, not ignored; named
    by the flag a command-line user typed and the keyword a Python caller passed."""
    if options:
        first = sorted(options)[0]
        raise DiffdiscError(f"{family} models take no option {option_flag(first)} ({first})")


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
    for name, t in _plain_tensors(tensors):
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else tuple(t.get_shape())
        h.update(f"{name}{shape}".encode())
        h.update(tensor_sample(t).detach().float().cpu().numpy().tobytes())


BIG_FILE = 256 * 2**20  # weight files above this size are fingerprinted by byte windows (`_window_digest`)
WINDOWS, WINDOW = 8, 4096  # windows per tensor, bytes per window


def _plain_tensors(tensors):
    """(name, tensor) pairs with quantized tensor subclasses (torchao's Int8Tensor, ...) as their inner plain tensors
    (int8 data, scales), which is what they hold and all that can be read as numbers."""
    for name, t in tensors:
        if isinstance(t, torch.Tensor) and hasattr(t, "__tensor_flatten__"):
            inner, _ = t.__tensor_flatten__()
            yield from _plain_tensors((f"{name}.{k}", getattr(t, k)) for k in inner)
        else:
            yield name, t


def fingerprint(root: Path) -> str:
    """Identity of a model directory by content: configs and tokenizer files in full, and for each
    safetensors file its metadata plus a sample of every tensor.

    What is read of the weights: files under BIG_FILE (every shipped and test model) give a strided sample of
    about SAMPLE values per tensor (`update_digest`), as fingerprints always did, so earlier runs still match;
    larger files give each tensor's name, dtype, shape and WINDOWS windows of WINDOW bytes spread evenly over
    its data, read with `pread` and no read-ahead (`_window_digest`): 32 KiB per tensor, ~40 MB of FLUX.1-dev's
    24 GB, where the strided sample, read through a memory map, faulted in every page of the file.
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
        if p.stat().st_size > BIG_FILE:
            _window_digest(h, p)
            continue
        try:
            with safe_open(str(p), framework="pt") as f:
                h.update(json.dumps(f.metadata() or {}, sort_keys=True).encode())
                update_digest(h, ((k, f.get_slice(k)) for k in sorted(f.keys())))
        except (OSError, SafetensorError) as e:  # truncated, or not safetensors at all
            raise DiffdiscError(f"cannot read weights {p}: {e}") from None
    return h.hexdigest()[:16]


def _window_digest(h, path: Path) -> None:
    """Feed `h` a big safetensors file's header facts and WINDOWS byte windows of each tensor (see `fingerprint`)."""
    from .loading import safetensors_header

    header, start = safetensors_header(path)
    size = path.stat().st_size
    h.update(json.dumps(header.pop("__metadata__", None) or {}, sort_keys=True).encode())
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):  # windows far apart: read-ahead would read what is skipped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for name in sorted(header):
            info = header[name]
            a, b = (start + int(x) for x in info["data_offsets"])
            if b > size:
                raise DiffdiscError(f"cannot read weights {path}: {name} ends past the end of the file (truncated)")
            h.update(f"{name}{info['dtype']}{tuple(info['shape'])}".encode())
            n = b - a
            if n <= WINDOWS * WINDOW:
                h.update(os.pread(fd, n, a))
                continue
            for i in range(WINDOWS):
                h.update(os.pread(fd, WINDOW, a + (n - WINDOW) * i // (WINDOWS - 1)))
    except (OSError, KeyError, TypeError, ValueError) as e:
        raise DiffdiscError(f"cannot read weights {path}: {e}") from None
    finally:
        os.close(fd)


def read_metadata(root: Path) -> dict:
    """Optional `diffdisc.json` sidecar: class names, recipe, data hash, training steps."""
    p = root / "diffdisc.json"
    return read_config(p) if p.is_file() else {}

"""How a model's weights are loaded and placed: dtype, quantization, offload, multi-GPU split (`LoadSpec`).

`create_backbone` resolves the user's choices once (`LoadSpec.resolve`: `auto` becomes a dtype for the device,
a quantization scheme becomes an installed backend that runs it there), the family loaders hand them to
diffusers / transformers (`torch_dtype`, `quantization_config`, `device_map`: the weights are read straight
into that form, never as an fp32 copy first), and `place` puts diffusers' offload hooks on the loaded
denoiser. Weights dtype and quantization change scores, so they join the model fingerprint (`tag`); offload and
placement do not (the same numbers to float rounding), so they do not.

Facts from diffusers 0.42.1: `PipelineQuantizationConfig(quant_mapping={component: config})` quantizes pipeline
components as they load (a diffusers config for diffusers models, a transformers one for T5); bitsandbytes
runs on CUDA only; torchao int8 weight-only runs on the CPU too; `ModelMixin.enable_group_offload` streams a
model's blocks to the accelerator; `device_map="balanced"` splits a model whose class names `_no_split_modules`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import DiffdiscError

WEIGHTS_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
QUANT_SCHEMES = ("none", "int8", "nf4", "fp8")
OFFLOAD_MODES = ("none", "model", "group")
DEVICE_MAPS = ("balanced",)
# Below this many denoiser parameters quantizing saves < 200 MB and only costs accuracy and speed (every shipped
# model has a few million): refused, not silently done.
MIN_QUANTIZE_PARAMS = 100_000_000
INSTALL = "pip install 'diffdisc[quant]'"
_PACKAGES = {"torchao": "torchao", "bitsandbytes": "bitsandbytes", "quanto": "optimum.quanto"}


def quiet_backends() -> None:
    """An installed torchao is imported by diffusers whenever a model loads, quantized or not, and says so on
    stderr (torch's pytree deprecation notes, diffusers' note on serialized torchao tensors): silenced, those
    loggers only, so every command's output stays what diffdisc prints."""
    for name in ("torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
        logging.getLogger(name).setLevel(logging.ERROR)


def installed(backend: str) -> bool:
    """Whether a quantization backend's package is importable (without importing it)."""
    return importlib.util.find_spec(_PACKAGES[backend].split(".")[0]) is not None and (
        "." not in _PACKAGES[backend] or importlib.util.find_spec(_PACKAGES[backend]) is not None
    )


def _choose(name: str, value, allowed) -> None:
    if value not in allowed:
        raise DiffdiscError(f"--{name.replace('_', '-')} {value}: use one of {', '.join(map(str, allowed))}")


def auto_dtype(device) -> str:
    """bf16 on an accelerator that computes in it, fp16 on one that does not, fp32 on the CPU (where `--dtype
    bf16` stays the autocast switch: CPU bf16 weights are a choice, not a default)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cpu":
        return "fp32"
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp16"
    if dev.type == "mps":
        return "fp16"
    try:  # another accelerator: bf16 where it can hold a bf16 tensor
        torch.ones(1, dtype=torch.bfloat16, device=dev)
        return "bf16"
    except (RuntimeError, TypeError):
        return "fp16"


def quant_backend(scheme: str, device) -> str:
    """The installed backend that runs `scheme` on `device`; a one-line refusal naming what to install or use."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    cuda = dev.type == "cuda" and torch.cuda.is_available()
    if scheme == "int8":
        for backend in ("torchao", "quanto"):
            if installed(backend):
                return backend
        if cuda and installed("bitsandbytes"):
            return "bitsandbytes"
        raise DiffdiscError(f"--quantize int8 needs torchao (or optimum-quanto): {INSTALL}, or pip install torchao")
    if scheme == "nf4":
        if not cuda:
            raise DiffdiscError("--quantize nf4 runs on a CUDA GPU only (bitsandbytes); on the CPU use --quantize int8")
        if not installed("bitsandbytes"):
            raise DiffdiscError(f"--quantize nf4 needs bitsandbytes: {INSTALL}, or pip install bitsandbytes")
        return "bitsandbytes"
    # fp8: torchao's float8 kernels need compute capability 8.9 (Ada, Hopper); quanto stores float8 anywhere
    if cuda and torch.cuda.get_device_capability(dev) >= (8, 9) and installed("torchao"):
        return "torchao"
    if installed("quanto"):
        return "quanto"
    where = "this GPU (compute capability < 8.9)" if cuda else "the CPU"
    raise DiffdiscError(f"--quantize fp8 cannot run on {where} with what is installed: it needs torchao on a GPU of "
                        "compute capability >= 8.9, or optimum-quanto (pip install optimum-quanto); or use --quantize int8")  # fmt: skip


@dataclass(frozen=True)
class LoadSpec:
    """Resolved loading choices. `weights_dtype`: the denoiser's and text encoders'; `vae_dtype`: None = follow
    the VAE's config (`vae_dtype_for`); `backend`: the quantization backend chosen for `quantize`."""

    weights_dtype: str = "fp32"
    vae_dtype: str | None = None
    quantize: str = "none"
    backend: str = ""
    offload: str = "none"
    device_map: str | None = None

    @classmethod
    def resolve(cls, device=None, weights_dtype: str = "auto", vae_dtype: str | None = None, quantize: str = "none",
                offload: str = "none", device_map: str | None = None) -> LoadSpec:  # fmt: skip
        """Check the values and decide `auto` and the backend for `device` (one-line errors)."""
        _choose("weights_dtype", weights_dtype, ("auto", *WEIGHTS_DTYPES))
        if vae_dtype is not None:
            _choose("vae_dtype", vae_dtype, tuple(WEIGHTS_DTYPES))
        _choose("quantize", quantize, QUANT_SCHEMES)
        _choose("offload", offload, OFFLOAD_MODES)
        if device_map is not None:
            _choose("device_map", device_map, DEVICE_MAPS)
            gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if gpus < 2:
                raise DiffdiscError(f"--device-map balanced splits the denoiser over several CUDA GPUs; this machine has "
                                    f"{gpus}: use --offload group to fit a large denoiser on one")  # fmt: skip
            if offload != "none":
                raise DiffdiscError("--device-map and --offload both place the denoiser: give one of them")
        dtype = auto_dtype(device) if weights_dtype == "auto" else weights_dtype
        backend = quant_backend(quantize, device) if quantize != "none" else ""
        return cls(dtype, vae_dtype, quantize, backend, offload, device_map)

    @property
    def torch_dtype(self) -> torch.dtype:
        return WEIGHTS_DTYPES[self.weights_dtype]

    def vae_dtype_for(self, vae_config: dict) -> torch.dtype:
        """`--vae-dtype` when given; else the weights dtype, but fp32 for fp16 weights when the VAE's config says
        `force_upcast` (SDXL's VAE overflows in fp16; diffusers' pipelines upcast it the same way)."""
        if self.vae_dtype:
            return WEIGHTS_DTYPES[self.vae_dtype]
        if self.weights_dtype == "fp16" and vae_config.get("force_upcast", True):
            return torch.float32
        return self.torch_dtype

    def tag(self) -> dict:
        """What joins the fingerprint: the choices that change scores, where they differ from the default (so
        every fp32 run made before this option existed keeps its fingerprint)."""
        out = {"weights_dtype": self.weights_dtype if self.weights_dtype != "fp32" else None, "vae_dtype": self.vae_dtype,
               "quantize": f"{self.quantize}-{self.backend}" if self.quantize != "none" else None}  # fmt: skip
        return {k: v for k, v in out.items() if v is not None}

    # ------------------------------------------------------------------ what the loaders are given
    def model_kwargs(self, directory: Path | None = None, *, quantize: bool = True) -> dict:
        """`from_pretrained` keywords of a diffusers denoiser: its dtype, quantization config and device map."""
        kw: dict = {"torch_dtype": self.torch_dtype}
        if quantize and self.quantize != "none":
            if directory is not None:
                check_worth_quantizing(directory)
            kw["quantization_config"] = quant_config(self, "diffusers")
        if self.device_map:
            kw["device_map"] = self.device_map
        return kw


def quant_config(spec: LoadSpec, library: str):
    """The quantization config of `spec` for a `library` ("diffusers" or "transformers") model."""
    mod = importlib.import_module(library)
    if spec.backend == "torchao":
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

        return mod.TorchAoConfig(Int8WeightOnlyConfig() if spec.quantize == "int8" else Float8WeightOnlyConfig())
    if spec.backend == "quanto":
        weights = "int8" if spec.quantize == "int8" else "float8"
        return mod.QuantoConfig(weights_dtype=weights) if library == "diffusers" else mod.QuantoConfig(weights=weights)
    if spec.quantize == "nf4":
        return mod.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=spec.torch_dtype)
    return mod.BitsAndBytesConfig(load_in_8bit=True)


def pipeline_quantization(spec: LoadSpec, components: dict[str, Path]):
    """`PipelineQuantizationConfig` for a pipeline's `components` ({name: directory}): the denoiser gets a
    diffusers config, T5 encoders a transformers one (None when nothing is quantized)."""
    if spec.quantize == "none" or not components:
        return None
    from diffusers.quantizers import PipelineQuantizationConfig

    mapping = {name: quant_config(spec, "diffusers" if (d / "config.json").is_file() and _is_diffusers(d) else "transformers")
               for name, d in components.items()}  # fmt: skip
    return PipelineQuantizationConfig(quant_mapping=mapping)


def _is_diffusers(directory: Path) -> bool:
    return "_diffusers_version" in json.loads((directory / "config.json").read_text())


def safetensors_header(path: Path) -> tuple[dict, int]:
    """(header, data start) of a safetensors file: its first 8 bytes give the JSON header's length. Reading it
    costs one small read, whatever the file's size."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        if n > 100_000_000:
            raise DiffdiscError(f"cannot read weights {path}: not a safetensors file (header of {n} bytes)")
        try:
            return json.loads(f.read(n)), 8 + n
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise DiffdiscError(f"cannot read weights {path}: not a safetensors file") from None


def parameter_count(directory: Path) -> int:
    """Parameters in a model directory's safetensors files, from their headers alone (nothing loaded)."""
    total = 0
    for p in sorted(directory.glob("*.safetensors")):
        header, _ = safetensors_header(p)
        for k, v in header.items():
            if k != "__metadata__":
                n = 1
                for d in v["shape"]:
                    n *= int(d)
                total += n
    return total


def check_worth_quantizing(directory: Path) -> None:
    """Refuse to quantize a denoiser under MIN_QUANTIZE_PARAMS parameters (what it would save is noise)."""
    n = parameter_count(directory)
    if n < MIN_QUANTIZE_PARAMS:
        raise DiffdiscError(f"--quantize: this denoiser has {n / 1e6:.1f}M parameters; quantizing a model under "
                            f"{MIN_QUANTIZE_PARAMS // 1_000_000}M saves nothing worth its error: load it with --quantize none")  # fmt: skip


def load_error(spec: LoadSpec, error: Exception) -> DiffdiscError:
    """A loader's failure under a quantization or device map, in one line naming the option."""
    what = f"--quantize {spec.quantize} ({spec.backend})" if spec.quantize != "none" else f"--device-map {spec.device_map}"
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return DiffdiscError(f"{what} failed while loading: {first[:300]}")


# ---------------------------------------------------------------------- placement after loading
def held_modules(backbone, spec: LoadSpec) -> tuple[str, ...]:
    """Modules whose device diffusers' hooks decide (`Backbone.to` leaves them where they are)."""
    if spec.device_map:
        return (backbone.denoiser,)
    if spec.offload == "model":
        return tuple(n for n in (backbone.denoiser, "vae") if getattr(backbone, n, None) is not None)
    if spec.offload == "group":
        return (backbone.denoiser,)
    return ()


def place(backbone, spec: LoadSpec, device) -> None:
    """Offload hooks on the denoiser (and, for `model`, the VAE), onloading to `device` (the CPU when None: the
    same hooks, a no-op move, so a CPU-only machine runs the code path a GPU runs).

    `model`: accelerate's `cpu_offload_with_hook`, what `enable_model_cpu_offload` puts on each pipeline
    component: the module is moved to the accelerator whole when called, and back when another is called.
    `group`: diffusers' `enable_group_offload` (block level, one block at a time, on a CUDA stream when there is
    one): the denoiser never sits on the accelerator whole, so one larger than its memory still runs.
    """
    onload = torch.device(device) if device is not None else torch.device("cpu")
    net = getattr(backbone, backbone.denoiser)
    hooks = []
    try:
        if spec.offload == "model":
            from accelerate import cpu_offload_with_hook

            prev = None
            for name in ("vae", backbone.denoiser):
                module = getattr(backbone, name, None)
                if module is not None:
                    _, prev = cpu_offload_with_hook(module, onload, prev_module_hook=prev)
                    hooks.append(prev)
        elif spec.offload == "group":
            if not hasattr(net, "enable_group_offload"):
                raise DiffdiscError(f"--offload group: {type(net).__name__} is not a diffusers model")
            net.enable_group_offload(onload_device=onload, offload_device=torch.device("cpu"), offload_type="block_level",
                                     num_blocks_per_group=1, use_stream=onload.type == "cuda")  # fmt: skip
    except (ValueError, RuntimeError, NotImplementedError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DiffdiscError(f"--offload {spec.offload} cannot be applied to {type(net).__name__}: {first}") from None
    backbone.offload_hooks = tuple(hooks)
    backbone.placement = (spec, device)


@contextlib.contextmanager
def hooks_lifted(backbone):
    """Model-offload hooks taken off for the duration and put back after: diffusers' `load_lora_weights` sees
    them on a pipeline and calls `enable_model_cpu_offload` on the whole pipeline itself (text encoders too, and
    on a CPU-only machine it refuses)."""
    hooks = getattr(backbone, "offload_hooks", ())
    if not hooks:
        yield
        return
    for hook in hooks:
        hook.offload()
        hook.remove()
    backbone.offload_hooks = ()
    try:
        yield
    finally:
        place(backbone, *backbone.placement)


def describe(spec: LoadSpec) -> dict:
    """The loading choices as recorded in `info.metadata["loading"]` (placement included: it is speed only)."""
    return {k: v for k, v in dataclasses.asdict(spec).items() if v not in (None, "", "none")}

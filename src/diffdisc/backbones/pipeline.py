"""Backbones loaded from a diffusers pipeline directory (SDXL, SD3 / SD3.5, FLUX.1, PixArt-α/Σ).

`model_index.json`'s `_class_name` names the pipeline, and so the family. The pipeline class itself loads the
directory (safetensors only, no remote code) after `check_components` has named any missing component, and
the backbone keeps it: its `encode_prompt` makes the conditions exactly as the pipeline does (cached once per
candidate, packed into one row by `CondPack`), `load_lora_weights` puts a user's LoRA on it, and sampling
calls it. The backbone registers the same modules (no copies): `transformer` (or `unet`), `vae` and the text
encoders, which stay on the CPU except while conditions are encoded (`Backbone.offloaded`).

A family module subclasses `PipelineBackbone` with its pipeline class name, its components and the two
methods that differ: `encode_rows` (conditions) and `model_output`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from ..errors import DiffdiscError
from .base import (
    Backbone,
    dtype_keyword,
    has_learned_variance,
    load_model,
    read_config,
    read_metadata,
    refuse_options,
    require_safetensors,
)
from .capabilities import DIFFUSION, Capability
from .families import pipeline_class, register_family
from .loading import LoadSpec, check_worth_quantizing, load_error, pipeline_quantization
from .process import noise_process

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "spiece.model")


class PipelineBackbone(Backbone):
    """A text-conditional latent model held by its diffusers pipeline."""

    family = ""
    pipelines: tuple[str, ...] = ()  # model_index.json `_class_name`s this family loads
    denoiser = "transformer"  # or "unet"
    capabilities = DIFFUSION | {Capability.ENCODE_TEXT}  # a family whose attention reads prompts adds ATTEND
    text_components: tuple[str, ...] = ("text_encoder",)  # offloaded encoders; tokenizers are found by name
    optional_components: tuple[str, ...] = ()  # may be null in model_index.json (or dropped by an option)

    def __init__(self, pipe, name: str, root: Path | None = None, *, image_size: int | None = None,
                 mu: float | None = None):  # fmt: skip
        net = getattr(pipe, self.denoiser)
        super().__init__(noise_process(pipe.scheduler, mu=mu),
                         has_learned_variance(net.config, pipe.scheduler.config))  # fmt: skip
        self.pipe = pipe
        setattr(self, self.denoiser, net)
        self.vae = pipe.vae
        self.offloaded = tuple(c for c in self.text_components if getattr(pipe, c, None) is not None)
        for c in self.offloaded:
            setattr(self, c, getattr(pipe, c))
        self.scheduler_config = dict(pipe.scheduler.config)
        meta = read_metadata(root) if root else {}
        size = int(image_size or self.default_size())
        if size % (self.vae_scale * self.patch) or size < 1:
            raise DiffdiscError(f"image size {size} is not a multiple of {self.vae_scale * self.patch} "
                                f"(the VAE's factor {self.vae_scale} × the denoiser's patch {self.patch})")  # fmt: skip
        self.info = self._make_info(name, self.family, "text", root, meta, image_size=size,
                                    image_channels=self.vae.config.in_channels, latent=True,
                                    class_names=meta.get("class_names", ()))  # fmt: skip

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, root: str | Path, name: str | None = None, image_size: int | None = None,
                        spec: LoadSpec | None = None, **options) -> PipelineBackbone:  # fmt: skip
        """`image_size`: the side images are scored at (default: the denoiser's configured size); `spec`: how
        the weights load (`loading_kwargs`)."""
        root, spec = Path(root), spec or LoadSpec()
        drop = cls.dropped_components(options)
        cls.check_components(root, drop)
        import diffusers

        pipe_cls = getattr(diffusers, pipeline_class(root))
        try:
            kwargs = cls.loading_kwargs(root, spec, drop)
            pipe = pipe_cls.from_pretrained(root, use_safetensors=True, **{c: None for c in drop}, **kwargs)
        except DiffdiscError:
            raise
        except (OSError, ValueError, TypeError, RuntimeError, ImportError) as e:
            if spec.quantize != "none" or spec.device_map:
                raise load_error(spec, e) from None
            raise DiffdiscError(f"cannot load {pipe_cls.__name__} from {root}: {str(e).splitlines()[0]}") from None
        pipe.set_progress_bar_config(disable=True)
        bb = cls(pipe, name=name or root.name, root=root, image_size=image_size,
                 **cls.init_options(pipe, options, image_size))  # fmt: skip
        bb.weights_dtype = spec.torch_dtype
        bb.mark_options({"image_size": image_size, **options})
        return bb.eval().requires_grad_(False)

    @classmethod
    def loading_kwargs(cls, root: Path, spec: LoadSpec, drop: tuple[str, ...] = ()) -> dict:
        """The pipeline's `from_pretrained` keywords for `spec`: every component in the weights dtype but the VAE
        (`LoadSpec.vae_dtype_for`); the denoiser quantized, and the T5 encoders too where the backend leaves
        them movable between CPU and accelerator (torchao, quanto; not bitsandbytes); with a device map, the
        denoiser loaded here, split over the GPUs, and handed to the pipeline."""
        index = read_config(root / "model_index.json")
        dtypes = {"default": spec.torch_dtype}
        if (root / "vae" / "config.json").is_file():
            dtypes["vae"] = spec.vae_dtype_for(read_config(root / "vae" / "config.json"))
        kwargs: dict = {dtype_keyword("diffusers"): dtypes}
        quantized: dict[str, Path] = {}
        if spec.quantize != "none":
            check_worth_quantizing(root / cls.denoiser)
            quantized[cls.denoiser] = root / cls.denoiser
            if spec.backend in ("torchao", "quanto"):
                quantized.update({c: root / c for c, v in index.items() if c not in drop and isinstance(v, list)
                                  and len(v) == 2 and str(v[1]).startswith("T5")})  # fmt: skip
        if spec.device_map:
            import diffusers

            net_cls = getattr(diffusers, index[cls.denoiser][1])
            kwargs[cls.denoiser] = load_model(net_cls, root / cls.denoiser, **spec.model_kwargs())
            quantized.pop(cls.denoiser, None)
        config = pipeline_quantization(spec, quantized)
        if config is not None:
            kwargs["quantization_config"] = config
        return kwargs

    def mark_options(self, options: dict) -> None:
        """Loader options change every score (FLUX's σ shift follows the image size, guidance is an input,
        --no-t5 changes the conditions): they join the fingerprint, so runs, the feature cache and adapters made
        with other options never mix with these."""
        given = {k: v for k, v in sorted(options.items()) if v is not None}
        if given:
            tag = ",".join(f"{k}={v}" for k, v in given.items())
            self.info = dataclasses.replace(self.info, fingerprint=f"{self.info.fingerprint}@{tag}")
            self.info.metadata["loader_options"] = given

    @classmethod
    def dropped_components(cls, options: dict) -> tuple[str, ...]:
        """Components an option leaves out (SD3's `no_t5`); unknown options are refused here."""
        refuse_options(options, cls.family)
        return ()

    @classmethod
    def init_options(cls, pipe, options: dict, image_size: int | None) -> dict:
        """Keyword arguments of `__init__` that options and the loaded pipeline decide (FLUX: `mu` from the
        image size, `guidance`); `dropped_components` has already checked `options`."""
        return {}

    @classmethod
    def check_components(cls, root: Path, drop: tuple[str, ...] = ()) -> None:
        """Every component model_index.json lists is present (safetensors weights, tokenizer files), named
        with its class when it is not; `optional_components` may be null there."""
        index = read_config(root / "model_index.json")
        for comp, spec in index.items():
            if comp.startswith("_") or not isinstance(spec, list) or len(spec) != 2 or comp in drop:
                continue
            lib, klass = spec
            if lib is None or klass is None:
                if comp not in cls.optional_components and comp not in ("feature_extractor", "image_encoder"):
                    raise DiffdiscError(f"{root}: model_index.json lists no {comp} (a {cls.family} pipeline needs it)")
                continue
            d = root / comp
            if comp.startswith("tokenizer"):
                if not d.is_dir() or not any((d / f).is_file() for f in TOKENIZER_FILES):
                    raise DiffdiscError(f"{root}: missing {comp}/ ({klass}; expected {comp}/tokenizer.json or "
                                        f"{comp}/spiece.model){cls.missing_hint(comp)}")  # fmt: skip
            elif comp == "scheduler":
                if not (d / "scheduler_config.json").is_file():
                    raise DiffdiscError(f"{root}: missing scheduler/scheduler_config.json ({klass})")
            elif not d.is_dir() or not (d / "config.json").is_file():
                raise DiffdiscError(f"{root}: missing {comp}/config.json ({klass}){cls.missing_hint(comp)}")
            else:
                require_safetensors(d)

    @classmethod
    def missing_hint(cls, component: str) -> str:
        return ""

    def lora_pipeline(self):
        """The pipeline whose `load_lora_weights` puts a LoRA on this backbone's modules (`backbones.lora`)."""
        return self.pipe

    # ------------------------------------------------------------------ geometry and encoding
    patch = 1  # latent pixels per token side (2 for SD3 / PixArt patches and FLUX's 2×2 packing)

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def default_size(self) -> int:
        """The image side the denoiser was configured for (its `sample_size` in latents × the VAE's factor);
        FLUX has none and overrides this with its pipeline's default."""
        s = getattr(self, self.denoiser).config.sample_size
        return int(s if isinstance(s, int) else s[0]) * self.vae_scale

    # ------------------------------------------------------------------ conditions
    prompt_batch = 32  # prompts per encode_prompt call

    def encode_rows(self, prompts: list[str], null: bool = False) -> torch.Tensor:  # pragma: no cover - abstract
        """Packed condition rows (N, width) of `prompts`, from the pipeline's `encode_prompt` without guidance;
        `null`: the pipeline's negative for an empty negative prompt (what its CFG uses as ∅)."""
        raise NotImplementedError

    def _condition_batch(self, candidates: list) -> torch.Tensor:
        prompts = [str(p) for p in candidates]
        if any(not p.strip() for p in prompts):
            raise DiffdiscError("empty caption/prompt")
        return torch.cat([self.encode_rows(prompts[i : i + self.prompt_batch])
                          for i in range(0, len(prompts), self.prompt_batch)])  # fmt: skip

    @torch.inference_mode()
    def _null_condition(self) -> torch.Tensor:
        return self.encode_rows([""], null=True)[0]


def register_pipeline_family(cls: type[PipelineBackbone], expects: str) -> None:
    """Register `cls` as the family of directories whose model_index.json names one of `cls.pipelines`."""
    register_family(cls.family, lambda root: pipeline_class(root) in cls.pipelines, cls.from_pretrained,
                    priority=25, expects=expects, pipelines=cls.pipelines, loading=True)  # fmt: skip

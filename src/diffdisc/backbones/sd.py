"""Stable-Diffusion layout: UNet2DConditionModel + optional AutoencoderKL + CLIP text encoder/tokenizer.

Covers SD 1.x / 2.x directories (ε- or v-prediction, read from the scheduler config) and the embedded
text-conditional model, which has no VAE and runs in pixel space.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from ..errors import DiffdiscError
from .base import (
    Backbone,
    diffusion_args,
    load_model,
    read_config,
    read_metadata,
    refuse_options,
    require_safetensors,
)
from .capabilities import DIFFUSION, Capability
from .families import config_class, pipeline_class, register_family
from .loading import LoadSpec, load_error
from .process import load_scheduler

SD_PIPELINES = ("StableDiffusionPipeline",)


class SDBackbone(Backbone):
    denoiser = "unet"
    capabilities = DIFFUSION | {Capability.ENCODE_TEXT, Capability.ATTEND}  # cross-attention to the prompt

    def __init__(self, unet, text_encoder, tokenizer, scheduler, vae=None, name: str = "sd", root: Path | None = None):
        super().__init__(*diffusion_args(unet.config, scheduler))
        self.unet, self.text_encoder, self.tokenizer, self.vae = unet, text_encoder, tokenizer, vae
        self.scheduler_config = dict(scheduler.config)
        meta = read_metadata(root) if root else {}
        if vae is not None:
            scale = 2 ** (len(vae.config.block_out_channels) - 1)
            image_channels = vae.config.in_channels
        else:
            scale, image_channels = 1, unet.config.in_channels
        self.info = self._make_info(name, "sd", "text", root, meta, image_size=int(unet.config.sample_size) * scale,
                                    image_channels=image_channels, latent=vae is not None,
                                    class_names=meta.get("class_names", ()))  # fmt: skip

    @classmethod
    def from_pretrained(cls, root: str | Path, name: str | None = None, spec: LoadSpec | None = None,
                        **options) -> SDBackbone:  # fmt: skip
        """`spec`: weights dtype (U-Net and text encoder), the VAE's dtype, the U-Net's quantization and device map."""
        refuse_options(options, "Stable Diffusion 1.x/2.x")
        spec = spec or LoadSpec()
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        root = Path(root)
        for sub in ("unet", "text_encoder"):
            require_safetensors(root / sub)  # both checked before either loads
        if not (root / "tokenizer").is_dir():
            raise DiffdiscError(f"incomplete model directory: missing {root / 'tokenizer'}")
        if not (root / "scheduler" / "scheduler_config.json").is_file():
            raise DiffdiscError(f"incomplete model directory: missing {root / 'scheduler/scheduler_config.json'}")
        try:
            unet = load_model(UNet2DConditionModel, root / "unet", **spec.model_kwargs(root / "unet"))
        except (ValueError, RuntimeError, ImportError, TypeError) as e:
            if spec.quantize == "none" and not spec.device_map:
                raise
            raise load_error(spec, e) from None
        text_encoder = load_model(CLIPTextModel, root / "text_encoder", torch_dtype=spec.torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        scheduler = load_scheduler(root)
        vae = None
        if (root / "vae").is_dir():
            vae = load_model(AutoencoderKL, root / "vae",
                             torch_dtype=spec.vae_dtype_for(read_config(root / "vae" / "config.json")))  # fmt: skip
        bb = cls(unet, text_encoder, tokenizer, scheduler, vae, name=name or root.name, root=root)
        bb.weights_dtype = spec.torch_dtype
        return bb.eval().requires_grad_(False)

    # ------------------------------------------------------------------ protocol
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer
        max_len = tok.model_max_length
        for p in prompts:
            if not p.strip():
                raise DiffdiscError("empty caption/prompt")
            n = len(tok(p, truncation=False)["input_ids"])
            if n > max_len:
                warnings.warn(f"prompt {p!r} has {n} tokens; truncated to {max_len}", stacklevel=3)
        ids = tok(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
        return ids["input_ids"].to(self.device)

    def _condition_batch(self, candidates: list) -> torch.Tensor:
        # last_hidden_state, no attention mask, no CFG: as in the official SD zero-shot classifier.
        out = []
        for i in range(0, len(candidates), 64):
            ids = self.tokenize([str(c) for c in candidates[i : i + 64]])
            out.append(self.text_encoder(ids)[0].float())
        return torch.cat(out)

    def _null_condition(self) -> torch.Tensor:
        ids = self.tokenizer([""], padding="max_length", max_length=self.tokenizer.model_max_length, return_tensors="pt")
        with torch.inference_mode():
            return self.text_encoder(ids["input_ids"].to(self.device))[0].float()[0]

    def lora_pipeline(self):
        """A StableDiffusionPipeline around this backbone's own modules (no copies), for `load_lora_weights`."""
        from diffusers import DDPMScheduler, StableDiffusionPipeline

        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=DDPMScheduler.from_config(self.scheduler_config),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    def model_output(self, x_t, t, cond):
        x_t = self.denoiser_input(x_t)
        return self.unet(x_t, self.timestep_input(t), encoder_hidden_states=cond.to(x_t.dtype)).sample


def _detect(root: Path) -> bool:
    # A UNet2DConditionModel without text_encoder/ is SD only when it is not a DiT directory (transformer/).
    if pipeline_class(root) not in ("", *SD_PIPELINES):  # SDXL has unet/ + text_encoder/ too
        return False
    both = (root / "unet").is_dir() and (root / "text_encoder").is_dir()
    return both or (not (root / "transformer").is_dir() and config_class(root) == "UNet2DConditionModel")


register_family("sd", _detect, SDBackbone.from_pretrained, priority=20, expects="unet/+text_encoder/ (Stable Diffusion)",
                pipelines=SD_PIPELINES, loading=True)

"""FLUX.1 (dev, schnell): FluxTransformer2DModel on packed 2×2 latent patches, CLIP pooled + T5 sequence.

Three things differ from the other pipeline families, each done with the FluxPipeline's own code:

- The σ table depends on the image size: FLUX.1-dev's scheduler has `use_dynamic_shifting`, and the pipeline
  shifts σ by `mu = calculate_shift(image tokens, ...)`. The backbone scores at one size (`image_size`, default
  the pipeline's 1024), so `mu` is computed once for it and `FlowProcess` holds the shifted table.
- The transformer sees 2×2 latent patches as tokens with position ids (the pipeline's private `_pack_latents`,
  `_prepare_latent_image_ids`, reached through `compat`); `model_output` packs x_t, calls it as the denoising
  loop does and unpacks v̂, so scorers see (B, C, h, w) latents like every other latent model.
- Guidance-distilled FLUX.1-dev takes the guidance scale as an input (`transformer.config.guidance_embeds`):
  option `guidance` (`--distilled-guidance`), default 3.5 as the pipeline's `guidance_scale`. FLUX.1-schnell
  has no such input and refuses the option. There is no classifier-free guidance in the pipeline; "" is the
  null prompt.
"""

from __future__ import annotations

import math

import torch

from ..errors import DiffdiscError
from . import compat
from .base import option_flag, refuse_options
from .capabilities import Capability
from .conditioning import CondPack
from .pipeline import PipelineBackbone, register_pipeline_family

DEFAULT_GUIDANCE = 3.5  # FluxPipeline.__call__'s guidance_scale
MAX_SEQUENCE_LENGTH = 512  # FluxPipeline's max_sequence_length (its default and its limit)


def pipeline_default_size(pipe) -> int:
    """FluxPipeline's default side (`default_sample_size` × `vae_scale_factor`): the transformer has no sample_size."""
    return int(pipe.default_sample_size * pipe.vae_scale_factor)


def resolution_shift(pipe, image_size: int) -> float:
    """`mu` for square images of side `image_size`, as FluxPipeline.__call__ computes it from the packed
    latent's token count (h/2 · w/2 latent pixels)."""
    side = int(image_size) // (pipe.vae_scale_factor * 2)
    cfg = pipe.scheduler.config
    return compat.calculate_shift(side * side, cfg.get("base_image_seq_len", 256),
                                  cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                                  cfg.get("max_shift", 1.15))  # fmt: skip


def resolve_guidance(pipe, guidance) -> float | None:
    """The guidance scale the transformer is given: the option, else 3.5, for a guidance-distilled model;
    None (and the option refused) for one without guidance embeddings."""
    embeds = bool(pipe.transformer.config.get("guidance_embeds", False))
    if guidance is None:
        return DEFAULT_GUIDANCE if embeds else None
    if not embeds:
        raise DiffdiscError(f"{option_flag('guidance')}: this FLUX transformer has no guidance embedding "
                            "(guidance_embeds is false, as in FLUX.1-schnell)")  # fmt: skip
    try:
        g = float(guidance)
    except (TypeError, ValueError):
        g = float("nan")
    if isinstance(guidance, bool) or not math.isfinite(g):
        raise DiffdiscError(f"{option_flag('guidance')} must be a number, got {guidance!r}")
    return g


class FluxBackbone(PipelineBackbone):
    """FluxPipeline directories; `guidance` is the embedded guidance scale of FLUX.1-dev."""

    family = "flux"
    capabilities = PipelineBackbone.capabilities | {Capability.ATTEND}  # joint attention: prompt and image
    pipelines = ("FluxPipeline",)
    denoiser = "transformer"
    text_components = ("text_encoder", "text_encoder_2")
    patch = 2  # 2×2 latent patches packed into one token

    def __init__(self, pipe, name: str, root=None, *, image_size: int | None = None, mu: float | None = None,
                 guidance: float | None = None):  # fmt: skip
        size = int(image_size or pipeline_default_size(pipe))
        if mu is None:
            mu = resolution_shift(pipe, size)
        super().__init__(pipe, name, root, image_size=size, mu=mu)
        self.max_sequence_length = min(MAX_SEQUENCE_LENGTH, int(pipe.tokenizer_2.model_max_length))
        self.mu = float(mu)
        self.guidance = resolve_guidance(pipe, guidance)
        self.info.metadata["guidance"] = self.guidance  # the dict is mutable; BackboneInfo itself is frozen
        cfg = self.transformer.config
        self.cond_pack = CondPack(prompt_embeds=(self.max_sequence_length, cfg.joint_attention_dim),
                                  pooled_prompt_embeds=(cfg.pooled_projection_dim,))  # fmt: skip

    # ------------------------------------------------------------------ loading
    def default_size(self) -> int:
        return pipeline_default_size(self.pipe)

    @classmethod
    def dropped_components(cls, options: dict) -> tuple[str, ...]:
        refuse_options({k: v for k, v in options.items() if k != "guidance"}, cls.family)
        return ()

    @classmethod
    def init_options(cls, pipe, options: dict, image_size: int | None) -> dict:
        size = int(image_size or pipeline_default_size(pipe))
        return {"mu": resolution_shift(pipe, size), "guidance": resolve_guidance(pipe, options.get("guidance"))}

    # ------------------------------------------------------------------ conditions
    def encode_rows(self, prompts: list[str], null: bool = False) -> torch.Tensor:
        """FLUX has no negative prompt: the null condition is "" encoded like any prompt."""
        embeds, pooled, _text_ids = self.pipe.encode_prompt(prompt=prompts, prompt_2=None, device=self.device,
                                                             max_sequence_length=self.max_sequence_length)  # fmt: skip
        return self.cond_pack.pack(prompt_embeds=embeds, pooled_prompt_embeds=pooled)

    # ------------------------------------------------------------------ denoiser
    def model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """v̂ for latents (B, C, h, w): packed into 2×2 patches and called as FluxPipeline's denoising loop
        calls the transformer (timestep σ = t_model / 1000, zero text ids), unpacked back."""
        x_t = self.denoiser_input(x_t)
        b, c, h, w = x_t.shape
        pipe, vsf = self.pipe, self.pipe.vae_scale_factor
        parts = self.cond_pack.unpack(cond, x_t.dtype)
        latents = compat.pack_latents(pipe, x_t)
        img_ids = compat.latent_image_ids(pipe, b, h // 2, w // 2, x_t.device, x_t.dtype)
        txt_ids = torch.zeros(self.max_sequence_length, 3, device=x_t.device, dtype=x_t.dtype)
        guidance = None
        if self.guidance is not None:
            guidance = torch.full([1], self.guidance, device=x_t.device, dtype=torch.float32).expand(b)
        out = self.transformer(hidden_states=latents, timestep=self.timestep_input(t).to(x_t.dtype) / 1000,
                               guidance=guidance, pooled_projections=parts["pooled_prompt_embeds"],
                               encoder_hidden_states=parts["prompt_embeds"], txt_ids=txt_ids, img_ids=img_ids,
                               return_dict=False)[0]  # fmt: skip
        return compat.unpack_latents(pipe, out, h * vsf, w * vsf)


register_pipeline_family(FluxBackbone, "model_index.json of a FluxPipeline")

"""SDXL (StableDiffusionXLPipeline): an ε- (or v-) prediction UNet with two CLIP text encoders and micro-conditions.

The pipeline's own `encode_prompt` makes the conditions: the penultimate hidden states of both encoders,
concatenated, and the pooled projection of the second; its private `_get_add_time_ids` (`compat`) makes the
size / crop micro-conditions for a square image of the scoring size (original = target = that size, no
crop), which is what `StableDiffusionXLPipeline.__call__` passes for such an image. The three are packed into
one row per candidate (`CondPack`). The noise process is VP, ᾱ_t read from whichever VP scheduler the directory has
(EulerDiscreteScheduler in real checkpoints), as in diffusers' SDXL training example, which noises with
DDPMScheduler loaded from the same scheduler config.

A directory without the first encoder (`text_encoder` and `tokenizer` null in model_index.json) loads too:
the pipeline then encodes with the second encoder alone.
"""

from __future__ import annotations

import torch

from ..errors import DiffdiscError
from . import compat
from .capabilities import Capability
from .conditioning import CondPack
from .pipeline import PipelineBackbone, register_pipeline_family


class SDXLBackbone(PipelineBackbone):
    family = "sdxl"
    capabilities = PipelineBackbone.capabilities | {Capability.ATTEND}  # cross-attention to the prompt
    pipelines = ("StableDiffusionXLPipeline",)
    denoiser = "unet"
    text_components = ("text_encoder", "text_encoder_2")
    optional_components = ("text_encoder", "tokenizer")

    def __init__(self, pipe, name: str, root=None, *, image_size: int | None = None, mu: float | None = None):
        super().__init__(pipe, name, root, image_size=image_size, mu=mu)
        if pipe.text_encoder_2 is None or pipe.tokenizer_2 is None:
            raise DiffdiscError(
                f"{name}: SDXL needs text_encoder_2 and tokenizer_2 (the pooled prompt embedding)"
            )
        size = self.info.image_size
        try:
            time_ids = compat.sdxl_add_time_ids(pipe, (size, size), (0, 0), (size, size), dtype=torch.float32,
                                                text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)  # fmt: skip
        except ValueError as e:
            raise DiffdiscError(
                f"{name}: the unet and text_encoder_2 configs disagree: {str(e).splitlines()[0]}"
            ) from None
        self.register_buffer("add_time_ids", time_ids[0], persistent=False)
        encoders = [e for e in (pipe.text_encoder, pipe.text_encoder_2) if e is not None]
        self.pack = CondPack(prompt_embeds=(pipe.tokenizer_2.model_max_length, sum(e.config.hidden_size for e in encoders)),
                             pooled=(pipe.text_encoder_2.config.projection_dim,), time_ids=tuple(time_ids.shape[1:]))  # fmt: skip

    def encode_rows(self, prompts: list[str], null: bool = False) -> torch.Tensor:
        """The null condition is the pipeline's negative of an empty negative prompt: zeros when its
        `force_zeros_for_empty_prompt` says so (SDXL base), else the encoded empty prompt."""
        embeds, neg, pooled, neg_pooled = self.pipe.encode_prompt(prompts, device=self.device, num_images_per_prompt=1,
                                                                  do_classifier_free_guidance=null)  # fmt: skip
        if null:
            embeds, pooled = neg, neg_pooled
        time_ids = self.add_time_ids.to(embeds.device).expand(embeds.shape[0], -1)
        return self.pack.pack(prompt_embeds=embeds, pooled=pooled, time_ids=time_ids)

    def model_output(self, x_t, t, cond):
        x_t = self.denoiser_input(x_t)
        c = self.pack.unpack(cond, dtype=x_t.dtype)
        added = {"text_embeds": c["pooled"], "time_ids": c["time_ids"]}
        return self.unet(x_t, self.timestep_input(t), encoder_hidden_states=c["prompt_embeds"],
                         added_cond_kwargs=added).sample  # fmt: skip


register_pipeline_family(SDXLBackbone, expects="model_index.json of a StableDiffusionXLPipeline")

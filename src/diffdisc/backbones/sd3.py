"""SD3 / SD3.5: an MMDiT (`SD3Transformer2DModel`) conditioned by CLIP-L + CLIP-G + T5, on a 16-channel VAE.

A rectified-flow model (`FlowMatchEulerDiscreteScheduler`, static `shift`): its σ table, 1000·σ as the
transformer's timestep and the velocity target ε - x0 come from `process.FlowProcess`. The condition of a
prompt is what `StableDiffusion3Pipeline.encode_prompt` makes of it without guidance: the sequence (both CLIP
hidden states side by side, padded to the T5 width, then the T5 tokens) and the pooled CLIP projections,
packed into one row (`CondPack`).

The T5 encoder (4.7B parameters) is optional: `no_t5=True` (`--no-t5`) loads without it, and its part of the
sequence is then zeros, as the pipeline fills it when `text_encoder_3` is None. A directory saved without T5
loads so without the option.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .base import read_config, refuse_options
from .capabilities import Capability
from .conditioning import CondPack
from .pipeline import PipelineBackbone, register_pipeline_family

T5_COMPONENTS = ("text_encoder_3", "tokenizer_3")
MAX_SEQUENCE_LENGTH = 256  # StableDiffusion3Pipeline's default T5 length


class SD3Backbone(PipelineBackbone):
    family = "sd3"
    capabilities = PipelineBackbone.capabilities | {Capability.ATTEND}  # joint attention: prompt and image
    pipelines = ("StableDiffusion3Pipeline",)
    denoiser = "transformer"
    text_components = ("text_encoder", "text_encoder_2", "text_encoder_3")
    optional_components = T5_COMPONENTS

    def __init__(self, pipe, name: str, root: Path | None = None, *, image_size: int | None = None):
        if root is not None and pipe.text_encoder_3 is None and _lists_t5(root):
            name = f"{name}+no-t5"  # other conditions than the directory's own: never the same run identity
        super().__init__(pipe, name, root, image_size=image_size)
        self.max_sequence_length = self._t5_length()
        clip_len = pipe.tokenizer_max_length
        width = pipe.transformer.config.joint_attention_dim
        if pipe.text_encoder_3 is not None:
            width = pipe.text_encoder_3.config.d_model  # what encode_prompt pads the CLIP states to
        pooled = pipe.text_encoder.config.projection_dim + pipe.text_encoder_2.config.projection_dim
        self.cond_pack = CondPack(prompt_embeds=(clip_len + self.max_sequence_length, width), pooled=(pooled,))

    @property
    def patch(self) -> int:
        return int(self.transformer.config.patch_size)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, root, name: str | None = None, image_size: int | None = None, **options) -> SD3Backbone:
        """A directory saved without T5 (model_index.json: null) loads as with `no_t5`: diffusers loads it only
        when told text_encoder_3=None."""
        if (Path(root) / "model_index.json").is_file() and not _lists_t5(Path(root)):
            options["no_t5"] = True
        return super().from_pretrained(root, name, image_size, **options)

    @classmethod
    def dropped_components(cls, options: dict) -> tuple[str, ...]:
        options = dict(options)
        no_t5 = bool(options.pop("no_t5", False))
        refuse_options(options, cls.family)
        return T5_COMPONENTS if no_t5 else ()

    @classmethod
    def missing_hint(cls, component: str) -> str:
        if component in T5_COMPONENTS:
            return "; pass --no-t5 (no_t5=True) to load without the T5 encoder (its embeddings are then zeros)"
        return ""

    def _t5_length(self) -> int:
        """The pipeline's default T5 length, or the T5 tokenizer's own limit when that is shorter."""
        if self.pipe.text_encoder_3 is None or self.pipe.tokenizer_3 is None:
            return MAX_SEQUENCE_LENGTH  # the zeros encode_prompt fills in are this long
        return min(MAX_SEQUENCE_LENGTH, int(self.pipe.tokenizer_3.model_max_length))

    # ------------------------------------------------------------------ conditions
    def encode_rows(self, prompts: list[str], null: bool = False) -> torch.Tensor:
        """The same prompt to all three encoders; the null condition is "" (the pipeline's default negative)."""
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )  # fmt: skip
        return self.cond_pack.pack(prompt_embeds=embeds, pooled=pooled)

    # ------------------------------------------------------------------ denoiser
    def model_output(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x_t = self.denoiser_input(x_t)
        c = self.cond_pack.unpack(cond, dtype=x_t.dtype)
        return self.transformer(hidden_states=x_t, timestep=self.timestep_input(t),
                                encoder_hidden_states=c["prompt_embeds"], pooled_projections=c["pooled"],
                                return_dict=False)[0]  # fmt: skip


def _lists_t5(root: Path) -> bool:
    """Whether the directory's model_index.json names a T5 encoder (not null)."""
    spec = read_config(root / "model_index.json").get("text_encoder_3")
    return isinstance(spec, list) and len(spec) == 2 and spec[1] is not None


register_pipeline_family(SD3Backbone, "model_index.json of a StableDiffusion3Pipeline")

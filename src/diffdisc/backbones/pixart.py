"""PixArt-α / PixArt-Σ (PixArtAlphaPipeline, PixArtSigmaPipeline): a DiT over 2×2 latent patches, T5 text.

The pipeline's own `encode_prompt` gives the T5 sequence and its attention mask, padded to the pipeline's
default `max_sequence_length` (120 for α, 300 for Σ, read from the pipeline's signature); both are packed into
one row per candidate (`CondPack`) and the mask goes to the transformer with the sequence, as in
`__call__`. The transformer predicts ε and its variance (out_channels = 2 × in_channels): the variance
channels are dropped by `Backbone` (`learned_variance`, read from the config). PixArt-α at 1024 px
(sample_size 128) also takes the image's resolution and aspect ratio, built here as `__call__` builds them
for a square image of the scoring size; Σ and the smaller α models take none.
"""

from __future__ import annotations

import inspect

import torch

from .conditioning import CondPack
from .pipeline import PipelineBackbone, register_pipeline_family


class PixArtBackbone(PipelineBackbone):
    family = "pixart"
    pipelines = ("PixArtAlphaPipeline", "PixArtSigmaPipeline")
    denoiser = "transformer"
    text_components = ("text_encoder",)

    def __init__(self, pipe, name: str, root=None, *, image_size: int | None = None, mu: float | None = None):
        super().__init__(pipe, name, root, image_size=image_size, mu=mu)
        self.max_sequence_length = int(
            inspect.signature(type(pipe).__call__).parameters["max_sequence_length"].default
        )
        cfg = self.transformer.config
        self.pack = CondPack(prompt_embeds=(self.max_sequence_length, cfg.caption_channels),
                             mask=(self.max_sequence_length,))  # fmt: skip
        # PixArtAlphaPipeline.__call__ passes the size conditions to its 1024 px models only (sample_size 128).
        self.size_conditions = type(pipe).__name__ == "PixArtAlphaPipeline" and cfg.sample_size == 128

    @property
    def patch(self) -> int:
        return int(self.transformer.config.patch_size)

    def encode_rows(self, prompts: list[str], null: bool = False) -> torch.Tensor:
        """Sequence and attention mask; the null condition is the pipeline's negative for its default ""."""
        embeds, mask, neg_embeds, neg_mask = self.pipe.encode_prompt(
            prompts, do_classifier_free_guidance=null, negative_prompt="", device=self.device,
            clean_caption=False, max_sequence_length=self.max_sequence_length,
        )  # fmt: skip
        if null:
            embeds, mask = neg_embeds, neg_mask
        return self.pack.pack(prompt_embeds=embeds, mask=mask)

    def added_cond_kwargs(self, batch: int, dtype: torch.dtype) -> dict:
        """`added_cond_kwargs` as `PixArtAlphaPipeline.__call__` builds them for a square image of the scoring size."""
        if not self.size_conditions:
            return {"resolution": None, "aspect_ratio": None}
        size = self.info.image_size
        resolution = torch.tensor([size, size]).repeat(batch, 1).to(dtype=dtype, device=self.device)
        aspect_ratio = torch.tensor([float(size / size)]).repeat(batch, 1).to(dtype=dtype, device=self.device)
        return {"resolution": resolution, "aspect_ratio": aspect_ratio}

    def model_output(self, x_t, t, cond):
        x_t = self.denoiser_input(x_t)
        c = self.pack.unpack(cond, dtype=x_t.dtype)
        return self.transformer(x_t, encoder_hidden_states=c["prompt_embeds"], encoder_attention_mask=c["mask"],
                                timestep=self.timestep_input(t), added_cond_kwargs=self.added_cond_kwargs(len(x_t), x_t.dtype),
                                return_dict=False)[0]  # fmt: skip


register_pipeline_family(
    PixArtBackbone, expects="model_index.json of a PixArtAlphaPipeline / PixArtSigmaPipeline"
)

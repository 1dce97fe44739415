"""Cross-attention scores (He et al., Discriminative Stable Diffusion) captured with diffusers processors.

In each chosen cross-attention layer the logits QKᵀ/√d between image queries and text-token keys are
reduced by LogSumExp over the tokens: how strongly the image attends to the caption at all. As in the
official code, the layers are the last transformer block of every Transformer2D in the last cross-attention
down block, the mid block and the last cross-attention up block; each layer's value is averaged over heads and
positions and the layers are averaged. Unlike the official code (which also averages over the batch and the
empty-prompt half, so all pairs of a batch share one number) we keep one value per pair, from the
conditional pass only.

The processors only replace how attention is computed, so they compose with peft LoRA on to_q/to_k/to_v/to_out.
SD3 and FLUX have no cross-attention: `joint_attention.py` reads the same score from their joint attention,
and `make_capture` picks the capture a backbone needs.
"""

from __future__ import annotations

import torch

from ..backbones.capabilities import Capability, require
from ..errors import DiffdiscError
from .scorers import Scorer, finite


def discffusion_layers(unet) -> list[tuple[str, torch.nn.Module]]:
    """(name, attn2) of the layers the official aggregation reads, in down, mid, up order."""
    names = {id(m): n for n, m in unet.named_modules()}
    down = [b for b in unet.down_blocks if getattr(b, "attentions", None)]
    up = [b for b in unet.up_blocks if getattr(b, "attentions", None)]
    mid = [unet.mid_block] if getattr(unet.mid_block, "attentions", None) else []
    layers = []
    for block in ([down[-1]] if down else []) + mid + ([up[-1]] if up else []):
        for t2d in block.attentions:
            attn = t2d.transformer_blocks[-1].attn2
            if attn is not None and attn.is_cross_attention:
                layers.append((names[id(attn)], attn))
    if not layers:
        raise DiffdiscError("the attention scorer needs a U-Net with cross-attention layers (a text-conditional model)")
    return layers


class _CaptureProcessor:
    """diffusers' plain AttnProcessor plus a record of LSE over keys (and, optionally, the attention maps)."""

    def __init__(self, sink: dict, name: str, keep_maps: bool):
        self.sink, self.name, self.keep_maps = sink, name, keep_maps

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        batch, seq = hidden_states.shape[0], (encoder_hidden_states if encoder_hidden_states is not None else hidden_states).shape[1]
        attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        query, key, value = (attn.head_to_batch_dim(x) for x in (query, key, value))
        logits = torch.bmm(query.float(), key.float().transpose(1, 2)) * attn.scale  # (B*heads, HW, tokens)
        if attention_mask is not None:
            logits = logits + attention_mask
        heads = attn.heads
        lse = torch.logsumexp(logits, dim=-1).view(batch, heads, -1)  # per pair, head, query position
        self.sink[self.name] = lse.mean((1, 2))
        probs = logits.softmax(-1)
        if self.keep_maps:
            self.sink[f"{self.name}:maps"] = probs.view(batch, heads, *probs.shape[1:]).mean(1).detach()
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs.to(value.dtype), value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class CrossAttentionCapture:
    """Context manager: while active, every forward of `unet` records per-pair LSE scores of its layers.

        with CrossAttentionCapture(unet) as cap:
            eps = unet(x_t, t, encoder_hidden_states=text).sample
            a = cap.score()          # (B,) mean over layers
    """

    def __init__(self, unet, keep_maps: bool = False):
        self.unet, self.layers, self.keep_maps = unet, discffusion_layers(unet), keep_maps
        self.sink: dict[str, torch.Tensor] = {}
        self._saved: list = []

    def __enter__(self) -> CrossAttentionCapture:
        self.sink.clear()
        self._saved = [attn.processor for _, attn in self.layers]
        for name, attn in self.layers:
            attn.set_processor(_CaptureProcessor(self.sink, name, self.keep_maps))
        return self

    def __exit__(self, *exc) -> None:
        for (_, attn), proc in zip(self.layers, self._saved, strict=True):
            attn.set_processor(proc)

    def score(self) -> torch.Tensor:
        vals = [self.sink[n] for n, _ in self.layers if n in self.sink]
        if len(vals) != len(self.layers):
            raise DiffdiscError("no cross-attention was captured: run a forward pass inside the context")
        return torch.stack(vals).mean(0)

    def maps(self) -> dict[str, torch.Tensor]:
        """Per layer: attention probabilities (B, HW, tokens), averaged over heads (keep_maps=True)."""
        return {k.split(":")[0]: v for k, v in self.sink.items() if k.endswith(":maps")}


def make_capture(backbone, keep_maps: bool = False):
    """The attention capture of a model that can ATTEND (others are refused): `CrossAttentionCapture` on its
    U-Net, else a `JointAttentionCapture` on its SD3 / FLUX transformer (the same score, read from its joint
    attention)."""
    require(backbone, Capability.ATTEND, "the attention scorer")
    if getattr(backbone, "unet", None) is not None:
        return CrossAttentionCapture(backbone.unet, keep_maps)
    from .joint_attention import JointAttentionCapture

    return JointAttentionCapture(backbone.transformer, keep_maps)


def attention_score(backbone, capture, x_t: torch.Tensor, eps: torch.Tensor, t: torch.Tensor,
                    cond: torch.Tensor, bias: bool = True, predict=None) -> torch.Tensor:  # fmt: skip
    """Discffusion's per-pair score (higher = better match): LSE attention score, plus by default the
    denoising bias ||ε - ε̂(∅)|| - ||ε - ε̂(c)|| (how much the caption helps denoise; one extra U-Net pass).
    Differentiable: the LoRA trainer calls it with gradients on. `predict` replaces `backbone.predict_eps`
    (the engine's torch.compile'd one: the capture sets its processors outside the compiled call)."""
    predict = predict or backbone.predict_eps
    with capture:
        eps_c = predict(x_t, t, cond)
        score = capture.score().float()
    if bias:
        null = backbone.null_condition()
        eps_u = predict(x_t, t, null.expand(len(t), *null.shape))
        score = score + (eps - eps_u).flatten(1).norm(dim=1) - (eps - eps_c).flatten(1).norm(dim=1)
    return score


class AttentionScorer(Scorer):
    """Discffusion through the scorer seam: the negated `attention_score` (higher attention = better match, and
    every scorer's lower = better). 2 denoiser calls per item with the denoising bias, else 1. U-Nets are read
    at their cross-attention, SD3 / FLUX transformers at their joint attention (`make_capture`)."""

    name = "attention"
    kind = "diffusion attention"

    def __init__(self, backbone, config, predict=None):
        self.capture = make_capture(backbone)  # may refuse
        super().__init__(backbone, config, predict)
        self.calls_per_item = 2 if config.attention_bias else 1

    def __call__(self, x0, noise, t, cond):
        x_t = self.backbone.add_noise(x0, noise, t)
        with self.autocast():  # all of it, as always; ∅ is encoded once per backbone (`null_condition`)
            score = attention_score(self.backbone, self.capture, x_t, noise, t, cond, self.config.attention_bias,
                                    self.predict)  # fmt: skip
        return -finite(score)

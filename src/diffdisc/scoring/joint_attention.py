"""Discffusion's attention score on joint attention: SD3's MMDiT and FLUX's double- and single-stream blocks.

These transformers have no cross-attention: image and text tokens are concatenated and attend jointly. The
image-query × text-key block of the joint logits QKᵀ/√d (after the processor's own q/k norms and, for FLUX,
its rotary embedding) is exactly the cross-attention the U-Net score reads, so the score is the same: per
layer, LogSumExp over the text keys, averaged over heads and image queries; the layers are averaged
(`scoring.attention`). The heat maps are that block's softmax over the text keys (renormalised: the image
queries' attention to other image tokens is left out), averaged over heads.

Which layers: Discffusion reads the last block of the last down, the mid and the last up cross-attention
level of a U-Net, its low-resolution semantic layers. A transformer has no such hierarchy (every block works
on the same tokens at the same resolution) and no block stands out, so by default the score averages every
block with a joint attention of separate text and image weights: all of SD3's `JointTransformerBlock`s and
FLUX's double-stream `FluxTransformerBlock`s (SD3.5's extra image-only `attn2` is self-attention and is not
read). FLUX's single-stream blocks, where text and image tokens share one set of weights, are added with
`layers="all"`.

The capture processors reproduce diffusers' `JointAttnProcessor2_0` and `FluxAttnProcessor` line for line
(the same projections, norms, rotary embedding and attention call, so the transformer's output is unchanged)
and additionally compute the text-key block for the score; they refuse any other processor (IP-Adapter,
fused-QKV or PAG variants) rather than silently replace it. LoRA on the projections composes, as for U-Nets.
The diffusers internals they call are reached through `backbones.compat`, which checks them against the
installed version.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..backbones import compat
from ..errors import DiffdiscError

LAYER_CHOICES = ("joint", "all")


def _block_stats(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, keep_maps: bool):
    """LSE over the keys of `query` · `key`ᵀ / √d per pair (B,), averaged over heads and queries, and the
    head-averaged softmax over the keys (B, queries, keys) when `keep_maps`. q, k: (B, heads, n, d).
    In float32 even under autocast (which would run the matmul in bf16/fp16): only (B,) leaves here."""
    with torch.autocast(query.device.type, enabled=False):
        logits = torch.matmul(query.float(), key.float().transpose(-1, -2)) * query.shape[-1] ** -0.5
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else logits + mask.float()
    lse = torch.logsumexp(logits, dim=-1).mean((1, 2))
    maps = logits.softmax(-1).mean(1).detach() if keep_maps else None
    return lse, maps


def _mask_block(mask: torch.Tensor | None, rows: slice, cols: slice) -> torch.Tensor | None:
    """The (queries `rows`, keys `cols`) block of an attention mask broadcastable to (B, heads, N, N), or of a
    (B, N) key mask; size-1 (broadcast) dimensions are kept as they are."""
    if mask is None:
        return None
    if mask.ndim == 2:
        mask = mask[:, None, None, :]
    while mask.ndim < 4:
        mask = mask.unsqueeze(0)
    if mask.shape[-2] > 1:
        mask = mask[..., rows, :]
    return mask[..., cols] if mask.shape[-1] > 1 else mask


class _SD3CaptureProcessor:
    """diffusers' JointAttnProcessor2_0 (token order [image, text]) plus the image × text block's LSE."""

    def __init__(self, sink: dict, name: str, keep_maps: bool):
        self.sink, self.name, self.keep_maps = sink, name, keep_maps

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        residual = hidden_states
        batch_size = hidden_states.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query, key, value = (x.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if encoder_hidden_states is None:  # not a joint layer: nothing to read
            raise DiffdiscError(f"attention layer {self.name} got no text tokens (not a joint attention)")
        eq, ek, ev = (p(encoder_hidden_states).view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
                      for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))  # fmt: skip
        if attn.norm_added_q is not None:
            eq = attn.norm_added_q(eq)
        if attn.norm_added_k is not None:
            ek = attn.norm_added_k(ek)
        # the processor ignores attention_mask; so does the score
        self.sink[self.name], maps = _block_stats(query, ek, None, self.keep_maps)
        if maps is not None:
            self.sink[f"{self.name}:maps"] = maps
        query, key, value = torch.cat([query, eq], dim=2), torch.cat([key, ek], dim=2), torch.cat([value, ev], dim=2)

        hidden_states = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        n_image = residual.shape[1]
        hidden_states, encoder_hidden_states = hidden_states[:, :n_image], hidden_states[:, n_image:]
        if not attn.context_pre_only:
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        return hidden_states, encoder_hidden_states


class _FluxCaptureProcessor:
    """diffusers' FluxAttnProcessor (token order [text, image], RoPE on q and k) plus the image × text block's
    LSE. Double-stream blocks pass the text separately; single-stream blocks pass [text, image] already
    joined, and `text_len` (set by a pre-hook on the block, from its encoder_hidden_states) splits them."""

    def __init__(self, sink: dict, name: str, keep_maps: bool, original):
        self.sink, self.name, self.keep_maps = sink, name, keep_maps
        self.backend, self.parallel_config = compat.processor_dispatch(original)
        self.text_len: int | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        query, key, value, encoder_query, encoder_key, encoder_value = compat.flux_qkv_projections(
            attn, hidden_states, encoder_hidden_states
        )
        query = query.unflatten(-1, (-1, attn.head_dim))
        key = key.unflatten(-1, (-1, attn.head_dim))
        value = value.unflatten(-1, (-1, attn.head_dim))
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            encoder_query = attn.norm_added_q(encoder_query.unflatten(-1, (-1, attn.head_dim)))
            encoder_key = attn.norm_added_k(encoder_key.unflatten(-1, (-1, attn.head_dim)))
            encoder_value = encoder_value.unflatten(-1, (-1, attn.head_dim))
            text_len = encoder_query.shape[1]
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        else:
            text_len = self.text_len
            if text_len is None:
                raise DiffdiscError(f"attention layer {self.name}: the text length of a single-stream block is unknown")
        if image_rotary_emb is not None:
            query = compat.apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = compat.apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        image, text = slice(text_len, None), slice(0, text_len)
        q_img, k_txt = query[:, image].transpose(1, 2), key[:, text].transpose(1, 2)  # (B, heads, n, d)
        mask = _mask_block(attention_mask, image, text)
        self.sink[self.name], maps = _block_stats(q_img, k_txt, mask, self.keep_maps)
        if maps is not None:
            self.sink[f"{self.name}:maps"] = maps

        hidden_states = compat.dispatch_attention_fn(
            query,
            key,
            value,
            attn_mask=attention_mask,
            backend=self.backend,
            parallel_config=self.parallel_config,
        )
        hidden_states = hidden_states.flatten(2, 3)
        hidden_states = hidden_states.to(query.dtype)
        if encoder_hidden_states is not None:
            encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
                [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1
            )
            hidden_states = attn.to_out[0](hidden_states.contiguous())
            hidden_states = attn.to_out[1](hidden_states)
            encoder_hidden_states = attn.to_add_out(encoder_hidden_states.contiguous())
            return hidden_states, encoder_hidden_states
        return hidden_states


def joint_layers(transformer, layers: str = "joint") -> list[tuple[str, torch.nn.Module, torch.nn.Module]]:
    """(name, attention module, its block) of the layers the score reads, in forward order (module docstring)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    if layers not in LAYER_CHOICES:
        raise DiffdiscError(f"attention layers must be one of {', '.join(LAYER_CHOICES)}, got {layers!r}")
    if isinstance(transformer, SD3Transformer2DModel):
        blocks = list(transformer.transformer_blocks)
    elif isinstance(transformer, FluxTransformer2DModel):
        blocks = list(transformer.transformer_blocks)
        if layers == "all":
            blocks += list(transformer.single_transformer_blocks)
    else:
        kind = type(transformer).__name__
        raise DiffdiscError(f"joint-attention scoring needs an SD3 or FLUX transformer, not {kind}")
    names = {id(m): n for n, m in transformer.named_modules()}
    out = [(names[id(b.attn)], b.attn, b) for b in blocks]
    if not out:
        raise DiffdiscError(f"{type(transformer).__name__} has no joint-attention blocks")
    return out


class JointAttentionCapture:
    """Context manager: while active, every forward of an SD3 / FLUX `transformer` records per-pair LSE
    scores of its joint-attention layers (`joint_layers`); the interface of `CrossAttentionCapture`.

        with JointAttentionCapture(transformer) as cap:
            v = transformer(...).sample
            a = cap.score()          # (B,) mean over layers
    """

    def __init__(self, transformer, keep_maps: bool = False, layers: str = "joint"):
        from diffusers import FluxTransformer2DModel

        joint_processor, flux_processor = compat.joint_processor_classes()
        self.transformer, self.keep_maps = transformer, keep_maps
        self.layers = joint_layers(transformer, layers)
        self.flux = isinstance(transformer, FluxTransformer2DModel)
        self._expected = flux_processor if self.flux else joint_processor
        self.sink: dict[str, torch.Tensor] = {}
        self._saved: list = []
        self._hooks: list = []

    def _capture_processor(self, name, attn):
        proc = attn.processor
        if type(proc) is not self._expected:
            raise DiffdiscError(f"the attention scorer reproduces diffusers' {self._expected.__name__}; layer {name} "
                                f"uses {type(proc).__name__} (an IP-Adapter, fused or PAG processor?)")  # fmt: skip
        if self.flux:
            return _FluxCaptureProcessor(self.sink, name, self.keep_maps, proc)
        return _SD3CaptureProcessor(self.sink, name, self.keep_maps)

    def __enter__(self) -> JointAttentionCapture:
        self.sink.clear()
        procs = [self._capture_processor(name, attn) for name, attn, _ in self.layers]  # may refuse: nothing set yet
        self._saved = [attn.processor for _, attn, _ in self.layers]
        for (_, attn, block), proc in zip(self.layers, procs, strict=True):
            attn.set_processor(proc)
            if isinstance(proc, _FluxCaptureProcessor) and attn.added_kv_proj_dim is None:
                self._hooks.append(block.register_forward_pre_hook(_text_length_hook(proc), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for (_, attn, _), proc in zip(self.layers, self._saved, strict=True):
            attn.set_processor(proc)

    def score(self) -> torch.Tensor:
        vals = [self.sink[n] for n, _, _ in self.layers if n in self.sink]
        if len(vals) != len(self.layers):
            raise DiffdiscError("no joint attention was captured: run a forward pass inside the context")
        return torch.stack(vals).mean(0)

    def maps(self) -> dict[str, torch.Tensor]:
        """Per layer: the image queries' attention over the text keys (B, image tokens, text tokens), softmax
        over the text keys only, averaged over heads (keep_maps=True). Image tokens are row-major over the
        token grid: SD3's patches (h/p, w/p), FLUX's packed 2×2 patches (h/2, w/2)."""
        return {k.split(":")[0]: v for k, v in self.sink.items() if k.endswith(":maps")}


def _text_length_hook(proc: _FluxCaptureProcessor):
    """A FluxSingleTransformerBlock joins [text, image] itself: record the text length from its arguments."""

    def hook(module, args, kwargs):
        text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        proc.text_len = None if text is None else int(text.shape[1])

    return hook


def text_token_labels(backbone, caption: str) -> list[str | None]:
    """One label per text key of a joint-attention backbone's condition (None for padding), for heat maps.

    SD3's sequence is the CLIP tokens (CLIP-L and CLIP-G side by side, one position each) then the T5 tokens
    (labelled "T5 ..."; zeros without T5: unlabelled); FLUX's is the T5 tokens. Tokenised as the pipelines'
    encode_prompt does."""
    pipe = backbone.pipe

    def labels(tok, length, **kw):
        ids = tok(caption, padding="max_length", max_length=length, truncation=True, **kw)["input_ids"]
        return [None if t == tok.pad_token else t for t in tok.convert_ids_to_tokens(ids)]

    if backbone.info.family == "flux":
        return labels(pipe.tokenizer_2, backbone.max_sequence_length)
    if backbone.info.family == "sd3":
        clip = labels(pipe.tokenizer, pipe.tokenizer_max_length)
        if pipe.text_encoder_3 is None:
            return clip + [None] * backbone.max_sequence_length
        t5 = labels(pipe.tokenizer_3, backbone.max_sequence_length, add_special_tokens=True)
        return clip + [None if t is None else f"T5 {t}" for t in t5]  # the same words again: told apart
    raise DiffdiscError(f"{backbone.info.name} has no joint-attention text tokens")

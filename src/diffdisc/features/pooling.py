"""Pooling of a feature map into what a head consumes.

`gap` (global average: one C-vector, the paper's default for linear probes), `avgK` (adaptive average pool
to K x K: keeps a coarse layout, K*K tokens for the attention head) and `flat` (the whole map). Spatial
poolings keep [C, K, K] so the attention head can read tokens; the linear head flattens.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from ..errors import DiffdiscError

HELP = "gap (global average) | avgK, e.g. avg2 (adaptive average pool to KxK) | flat (whole map)"


def parse_pooling(spec: str) -> tuple[str, int]:
    """'gap' -> ('gap', 1); 'avg4' -> ('avg', 4); 'flat' -> ('flat', 0)."""
    s = spec.strip().lower()
    if s in ("gap", "avg1"):
        return "gap", 1
    if s == "flat":
        return "flat", 0
    m = re.fullmatch(r"avg(\d+)", s)
    if m and int(m.group(1)) >= 1:
        return "avg", int(m.group(1))
    raise DiffdiscError(f"unknown pooling {spec!r}: {HELP}")


def keeps_tokens(spec: str) -> bool:
    """True when the pooled feature is still a spatial map (tokens for the attention head)."""
    return parse_pooling(spec)[0] != "gap"


def to_map(out) -> torch.Tensor:
    """A module output as [B, C, H, W]: tuples/dataclasses give their first tensor; token sequences
    [B, N, C] with square N (DiT blocks) are folded back to a map."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        out = out.sample if hasattr(out, "sample") else out[0]
    if out.ndim == 3:
        b, n, c = out.shape
        h = int(round(n**0.5))
        if h * h != n:
            raise DiffdiscError(f"cannot read {n} tokens as a square feature map")
        out = out.transpose(1, 2).reshape(b, c, h, h)
    if out.ndim != 4:
        raise DiffdiscError(f"feature tap expected a [B, C, H, W] map, got shape {tuple(out.shape)}")
    return out


def pool(x: torch.Tensor, spec: str, name: str = "block") -> torch.Tensor:
    """[B, C, H, W] -> [B, C] (gap) or [B, C, K, K] (avgK) or [B, C, H, W] (flat), float32."""
    kind, k = parse_pooling(spec)
    x = x.float()
    if kind == "gap":
        return x.mean(dim=(2, 3))
    if kind == "flat":
        return x.contiguous()
    if k > min(x.shape[-2:]):
        raise DiffdiscError(f"pooling {spec} needs a map of at least {k}x{k}; {name} is {x.shape[-2]}x{x.shape[-1]}")
    return F.adaptive_avg_pool2d(x, k)

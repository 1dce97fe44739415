"""Conditions made of several tensors, packed into one row per candidate.

The engine indexes conditions by candidate (`conds[candidate]`) and moves them as one tensor. A family whose
denoiser takes several condition tensors (SDXL: prompt embeddings + pooled embedding + time ids; SD3: prompt
embeddings + pooled projection; FLUX: T5 sequence + CLIP pooled; PixArt: T5 sequence + attention mask) packs
them here, once per candidate, and unpacks a batch of rows inside `model_output`: no change to the engine,
the strategies or the cache, and every tensor of a candidate travels together.
"""

from __future__ import annotations

import math

import torch


class CondPack:
    """A fixed layout {name: shape}; rows are float32 (masks and ids are small integers, exact in float32)."""

    def __init__(self, **shapes: tuple[int, ...]):
        self.shapes = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
        self.sizes = {k: math.prod(v) for k, v in self.shapes.items()}
        self.width = sum(self.sizes.values())

    def pack(self, **tensors: torch.Tensor) -> torch.Tensor:
        """(N, *shape) per name -> (N, width)."""
        if set(tensors) != set(self.shapes):
            raise ValueError(f"pack needs {sorted(self.shapes)}, got {sorted(tensors)}")
        n = next(iter(tensors.values())).shape[0]
        parts = []
        for k, shape in self.shapes.items():
            t = tensors[k]
            if tuple(t.shape[1:]) != shape:
                raise ValueError(f"{k}: expected (N, {', '.join(map(str, shape))}), got {tuple(t.shape)}")
            parts.append(t.reshape(n, -1).float())
        return torch.cat(parts, 1)

    def unpack(self, rows: torch.Tensor, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """(B, width) -> {name: (B, *shape)}, cast to `dtype` when given (the denoiser's compute dtype)."""
        out, pos = {}, 0
        for k, shape in self.shapes.items():
            v = rows[:, pos : pos + self.sizes[k]].reshape(rows.shape[0], *shape)
            out[k] = v.to(dtype) if dtype is not None else v
            pos += self.sizes[k]
        return out

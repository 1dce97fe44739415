"""Batch size chosen by the machine, not the user: the largest that fits memory and still pays.

On a GPU the best batch is usually the largest that fits; on a CPU throughput stops improving long
before memory runs out. `auto_batch_size` doubles the batch on real inputs until the device runs out of
memory, the per-item time gets clearly worse, or a cap is reached, and keeps the fastest size per item.
Errors do not depend on the batch size (noise is keyed by (image, t), not by position), so tuning never
changes results.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ..errors import DiffdiscError

MAX_BATCH = {"cuda": 4096, "cpu": 512}


def is_oom(e: BaseException) -> bool:
    """Out-of-memory on any device (CUDA raises OutOfMemoryError, CPU allocators a RuntimeError)."""
    return isinstance(e, torch.OutOfMemoryError) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower()
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def auto_batch_size(step: Callable[[int], object], device: torch.device, start: int = 8,
                    max_batch: int | None = None, slack: float = 0.10, repeats: int = 2) -> int:  # fmt: skip
    """The power-of-two batch (from `start`) with the lowest per-item time for `step(bs)`, among those that fit.

    step(bs) runs one representative forward of batch `bs`. Each size is timed after one warm-up call; the
    search doubles until the first out-of-memory, `max_batch`, or a size more than `slack` slower per item
    than the best so far (past the knee: on CPUs per-item time flattens, then rises with cache misses).
    Stopping at the first small gain instead picked too small a batch on a CPU, where timings are flat and noisy.
    """
    cap = max_batch or MAX_BATCH.get(device.type, MAX_BATCH["cuda"])
    per_item: dict[int, float] = {}
    bs = max(1, start)
    while bs <= cap:
        try:
            step(bs)  # warm-up: allocator, kernels, lazy init
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                step(bs)
            _sync(device)
            per_item[bs] = (time.perf_counter() - t0) / (repeats * bs)
        except Exception as e:
            if not is_oom(e):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
        if per_item[bs] > min(per_item.values()) * (1 + slack):
            break
        bs *= 2
    if not per_item:
        raise DiffdiscError(f"even a batch of {max(1, start)} does not fit in {device} memory; use a smaller model or --dtype bf16")
    return min(per_item, key=per_item.get)

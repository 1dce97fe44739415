"""Batch size chosen by the machine, not the user: the largest that fits memory and still pays.

On a GPU the best batch is usually the largest that fits; on a CPU throughput stops improving long
before memory runs out. `auto_batch_size` doubles the batch on real inputs until the device runs out of
memory, the per-item time stops improving, or a cap is reached. Errors do not depend on the batch size
(noise is keyed by (image, t), not by position), so tuning never changes results.
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
                    max_batch: int | None = None, min_gain: float = 0.05, repeats: int = 2) -> int:  # fmt: skip
    """Largest power-of-two batch (from `start`) for which `step(bs)` fits and is ≥ `min_gain` faster per item.

    step(bs) runs one representative forward of batch `bs`. Each size is timed after one warm-up call;
    the search stops at the first out-of-memory, at `max_batch`, or when doubling gains less than
    `min_gain` per item (CPU: bigger batches only add latency and memory there).
    """
    cap = max_batch or MAX_BATCH.get(device.type, MAX_BATCH["cuda"])
    best_bs, best_per_item, bs = None, float("inf"), max(1, start)
    while bs <= cap:
        try:
            step(bs)  # warm-up: allocator, kernels, lazy init
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                step(bs)
            _sync(device)
            per_item = (time.perf_counter() - t0) / (repeats * bs)
        except Exception as e:
            if not is_oom(e):
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
        if per_item > best_per_item * (1 - min_gain):
            break
        best_bs, best_per_item = bs, per_item
        bs *= 2
    if best_bs is None:
        raise DiffdiscError(f"even a batch of {max(1, start)} does not fit in {device} memory; use a smaller model or --dtype bf16")
    return best_bs

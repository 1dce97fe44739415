"""Process-wide settings: torch CPU threads, quiet library logging, and the device of one process of a
multi-process (torchrun / accelerate launch) run."""

from __future__ import annotations

import contextlib
import os

from .errors import DiffdiscError


def set_threads(n: int) -> None:
    """torch intra- and inter-op threads; the inter-op setting is accepted once per process, before any work."""
    import torch

    torch.set_num_threads(n)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(n)


def quiet_libraries() -> None:
    """No diffusers / transformers progress bars or info logs: diffdisc prints its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def launch_rank() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as `torchrun` and `accelerate launch` set them, or a user per machine: which share of a
    run on a shared --out this process takes; (0, 1) when they are unset. Nothing else of torch.distributed is
    used, so processes on several machines need a shared filesystem, not a network between them."""
    env = {k: os.environ.get(k, d) for k, d in (("RANK", "0"), ("WORLD_SIZE", "1"))}
    try:
        rank, world_size = int(env["RANK"]), int(env["WORLD_SIZE"])
    except ValueError:
        raise DiffdiscError(f"RANK and WORLD_SIZE must be integers, got RANK={env['RANK']!r} WORLD_SIZE={env['WORLD_SIZE']!r}") from None
    if world_size < 1:
        raise DiffdiscError(f"WORLD_SIZE must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise DiffdiscError(f"rank {rank} is outside 0..{world_size - 1}")
    return rank, world_size


def process_device(rank: int, world_size: int, device: str | None = None, threads: int | None = None) -> str | None:
    """The device of process `rank` of `world_size`: `device` when given; else on GPUs the launcher's LOCAL_RANK
    (or `rank`) modulo the GPU count. On CPU the cores are shared out between this machine's processes
    (LOCAL_WORLD_SIZE, else all `world_size`), unless `threads` set them already."""
    if not 0 <= rank < world_size:
        raise DiffdiscError(f"rank {rank} is outside 0..{world_size - 1}")
    if device is not None or world_size == 1:
        return device
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', rank)) % torch.cuda.device_count()}"
    if not threads:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", world_size))))
    return None

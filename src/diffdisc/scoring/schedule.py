"""Timestep grids and weights, as the official Diffusion Classifier code places them (GitHub
diffusion-classifier/diffusion-classifier): evenly spaced centred strata; halving stages are subsets of one grid.
"""

from __future__ import annotations

import math

import torch

from ..errors import DiffdiscError


def dc_grid(num_train_timesteps: int, n: int) -> list[int]:
    """The official evenly spaced grid: start = T//n//2, step T//n (n=50, T=1000 -> 10, 30, ..., 990)."""
    T = num_train_timesteps
    if not 1 <= n <= T:
        raise DiffdiscError(f"number of timesteps must be in 1..{T}, got {n}")
    step = T // n
    return list(range(step // 2, T, step))[:n]


def stage_subset(grid: list[int], n: int) -> list[int]:
    """Centred strata of `grid` with n points: `grid[len//n//2 :: len//n][:n]` as the official code."""
    if n > len(grid):
        raise DiffdiscError(f"stage asks for {n} timesteps but the grid has only {len(grid)}")
    k = len(grid) // n
    return grid[k // 2 :: k][:n]


def stratified(num_train_timesteps: int, n: int, generator: torch.Generator) -> list[int]:
    """One uniform t inside each of n equal strata: unbiased and lower-variance than iid t."""
    edges = [math.floor(i * num_train_timesteps / n) for i in range(n + 1)]
    u = torch.rand(n, generator=generator, dtype=torch.float64).tolist()
    return [min(edges[i] + int(u[i] * (edges[i + 1] - edges[i])), num_train_timesteps - 1) for i in range(n)]


def uniform_draws(num_train_timesteps: int, n: int, generator: torch.Generator) -> list[int]:
    return torch.randint(0, num_train_timesteps, (n,), generator=generator).tolist()


TIMESTEPS_HELP = "N: N evenly spaced timesteps (the official grid); T1,T2,...: exactly those (one timestep: T1,)"


def _timestep_spec(spec: str | int) -> int | list[int]:
    text = str(spec).strip()
    try:
        ts = int(text) if "," not in text else [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise DiffdiscError(f"bad --timesteps {spec!r}: {TIMESTEPS_HELP}") from None
    if ts == []:
        raise DiffdiscError(f"bad --timesteps {spec!r}: no timesteps ({TIMESTEPS_HELP})")
    return ts


def parse_timesteps(spec: str | int, num_train_timesteps: int) -> list[int]:
    """`--timesteps`, one meaning for every command: "N" is a count, the N evenly spaced timesteps of `dc_grid`;
    "T1,T2,..." is exactly those timesteps (the comma makes a list, so a single timestep is written "T1,"; the
    task checks them against the model's range)."""
    ts = _timestep_spec(spec)
    return dc_grid(num_train_timesteps, ts) if isinstance(ts, int) else ts


def timestep_count(spec: str | int, command: str) -> int:
    """The N of a count spec, for commands whose strategy places N evenly spaced (or stratified) timesteps itself
    (classify, match, probe); a list of timesteps is refused there rather than silently regridded."""
    ts = _timestep_spec(spec)
    if not isinstance(ts, int):
        raise DiffdiscError(f"{command} --timesteps {spec!r}: {command} places its timesteps itself; give a count N "
                            "(N evenly spaced timesteps)")  # fmt: skip
    return ts

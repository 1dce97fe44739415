"""Timestep grids and weights, as the official Diffusion Classifier code places them (GitHub
diffusion-classifier/diffusion-classifier): evenly spaced centred strata; halving stages are subsets of one grid.
"""

from __future__ import annotations

import math

import torch

from ..errors import DiffdiscError
from .timestep_help import TIMESTEPS_HELP


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


SIGMA_GRIDS = ("scheduler", "uniform", "logit_normal")


def check_sigma_grid(backbone, grid: str) -> None:
    """σ placements other than the scheduler's own exist for flow models only (an ε-model has no σ table)."""
    if grid not in SIGMA_GRIDS:
        raise DiffdiscError(f"unknown σ grid {grid!r} (known: {', '.join(SIGMA_GRIDS)})")
    if grid != "scheduler" and not getattr(backbone, "is_flow", False):
        raise DiffdiscError(f"--sigmas {grid} places σ for flow-matching models; {backbone.info.name} is a "
                            "VP (ε/v) model: its timesteps follow its own schedule (leave --sigmas at scheduler)")  # fmt: skip


def sigma_rows(sigmas: torch.Tensor, ts: list[int], grid: str, logit_mean: float = 0.0, logit_std: float = 1.0) -> list[int]:
    """Timestep rows of a flow model's σ table placed by `grid`, keeping each t's quantile u = (t + ½) / T.

    `scheduler`: the rows themselves (evenly spaced rows = the scheduler's own spacing, its shift included);
    `uniform`: σ = u, evenly spaced σ; `logit_normal`: σ = sigmoid(m + s·Φ⁻¹(u)), the quantiles of SD3's
    training density. Each σ goes to the nearest row (the table holds every σ the model was trained at), and
    an increasing grid stays strictly increasing; order is kept, repeats dropped.
    """
    if grid == "scheduler":
        return list(ts)
    T = len(sigmas)
    u = (torch.as_tensor(ts, dtype=torch.float64) + 0.5) / T
    if grid == "uniform":
        target = u
    else:
        target = torch.sigmoid(logit_mean + logit_std * math.sqrt(2) * torch.erfinv(2 * u - 1))
    i = torch.searchsorted(sigmas.cpu(), target).clamp(1, T - 1)
    lo, hi = sigmas.cpu()[i - 1], sigmas.cpu()[i]
    rows = torch.where((target - lo) <= (hi - target), i - 1, i).tolist()
    out: list[int] = []
    increasing = list(ts) == sorted(ts)
    for r in rows:
        if increasing and out and r <= out[-1]:
            r = out[-1] + 1
        if r < T and r not in out:
            out.append(r)
    return out


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

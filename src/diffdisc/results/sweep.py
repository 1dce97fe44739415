"""A `diffdisc features sweep` result: validation accuracy per (block, t), the chosen cell, its one test score."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DiffdiscError
from ..features import SWEEP_DETAILS, SWEEP_JSON
from ..runs.io import atomic_write_text
from .base import Result, load_json, optional_json

if TYPE_CHECKING:
    from ..features.heads import FittedHead

SWEEP_PNG = "features_sweep.png"
_KEYS = ("model", "blocks", "timesteps", "val_acc", "best", "test_acc", "head", "pooling", "n_train", "n_val", "n_test")
_EXTRA = ("test_acc", "head", "pooling", "n_train", "n_val", "n_test")


@dataclass
class SweepResult(Result):
    """The grid (validation accuracy per block x t), the chosen cell and its one test accuracy."""

    model: str  # the model's display name (`BackboneInfo.label`)
    blocks: list[str]
    timesteps: list[int]
    val_acc: list[list[float | None]]
    best: dict
    test_acc: float | None
    head: str
    pooling: str
    n_train: int
    n_val: int
    n_test: int
    details: dict = field(default_factory=dict)
    best_head: FittedHead | None = field(default=None, repr=False)
    path: Path | None = field(default=None, repr=False)  # the features_sweep.json it was read from
    problems: list[str] = field(default_factory=list, repr=False)

    marker = SWEEP_JSON

    @classmethod
    def load(cls, run_dir: str | Path) -> SweepResult:
        path = Path(run_dir) / SWEEP_JSON
        d = load_json(path)
        try:
            if not isinstance(d, dict):
                raise TypeError
            blocks, ts = [str(b) for b in d["blocks"]], [int(t) for t in d["timesteps"]]
            grid = [[None if v is None else float(v) for v in row[: len(ts)]] for row in d["val_acc"][: len(blocks)]]
        except (KeyError, TypeError, ValueError):
            raise DiffdiscError(f"{path.name}: needs blocks, timesteps and val_acc[block][t]; skipped") from None
        problems: list[str] = []
        details = optional_json(path.with_name(SWEEP_DETAILS), problems) or {}
        best = d.get("best") if isinstance(d.get("best"), dict) else {}
        return cls(str(d.get("model", "?")), blocks, ts, grid, best, *(d.get(k) for k in _KEYS[5:]), details=details,
                   path=path, problems=problems)  # fmt: skip

    @property
    def grid(self) -> np.ndarray:
        """[blocks, timesteps] validation accuracy; nan where a cell is missing."""
        a = np.full((len(self.blocks), len(self.timesteps)), np.nan)
        for i, row in enumerate(self.val_acc[: len(self.blocks)]):
            for j, v in enumerate(row[: len(self.timesteps)]):
                a[i, j] = np.nan if v is None else float(v)
        return a

    @property
    def extra(self) -> dict:
        """test_acc, head, pooling, n_train, n_val, n_test: those recorded."""
        return {k: getattr(self, k) for k in _EXTRA if getattr(self, k) is not None}

    def metrics(self) -> dict:
        return {**self.best, "test_acc": self.test_acc}

    def to_json(self) -> dict:
        """Exactly the `features_sweep.json` schema (other readers depend on it)."""
        return {k: getattr(self, k) for k in _KEYS}

    def write(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / SWEEP_JSON, json.dumps(self.to_json(), indent=2))
        atomic_write_text(out / SWEEP_DETAILS, json.dumps(self.details, indent=2, default=str))
        plot_sweep(self, out / SWEEP_PNG)
        if self.best_head is not None:
            self.best_head.save_pretrained(out / "head")
        return out / SWEEP_JSON


def plot_sweep(r: SweepResult, path: str | Path) -> Path:
    """Heat map of validation accuracy, blocks (rows) x timesteps (columns); the chosen cell is boxed."""
    from ..plotting import pyplot, save_figure

    plt = pyplot()
    a = np.asarray(r.val_acc, dtype=float) * 100
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(r.timesteps), 1.2 + 0.5 * len(r.blocks)))
    im = ax.imshow(a, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(r.timesteps)), [str(t) for t in r.timesteps])
    ax.set_yticks(range(len(r.blocks)), r.blocks)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("block")
    mid = (np.nanmax(a) + np.nanmin(a)) / 2 if a.size else 0
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            ax.text(j, i, f"{a[i, j]:.1f}", ha="center", va="center", fontsize=8, color="black" if a[i, j] > mid else "white")
    bi, bj = r.blocks.index(r.best["block"]), r.timesteps.index(r.best["t"])
    ax.add_patch(plt.Rectangle((bj - 0.5, bi - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    test = f", test {r.test_acc:.1%}" if r.test_acc is not None else ""
    ax.set_title(f"{r.model}: {r.head} probe, {r.pooling} — val acc %\nbest {r.best['block']} @ t={r.best['t']}{test}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return save_figure(fig, path)

"""Matplotlib without a display: one place that picks the Agg backend and writes figures atomically."""

from __future__ import annotations

from pathlib import Path


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: str | Path, dpi: int = 100, metadata: dict | None = None) -> Path:
    """tight_layout, write to a temporary name, rename (a kill never leaves half a PNG), close.

    `metadata`: PNG text chunks (latin-1) — how `diffdisc report` learns what a PNG shows.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp{out.suffix}")
    fig.savefig(tmp, dpi=dpi, metadata=metadata)
    tmp.replace(out)
    pyplot().close(fig)
    return out

"""Matplotlib without a display: one place that picks the Agg backend and writes figures atomically."""

from __future__ import annotations

from pathlib import Path

from .runs.io import atomic_write


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
    # the temporary name hides the suffix, so the format is named
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=dpi, metadata=metadata, format=out.suffix[1:].lower() or "png"))
    pyplot().close(fig)
    return out

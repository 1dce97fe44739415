"""A rich progress bar for long loops: images/s, U-Net calls/image and running accuracy."""

from __future__ import annotations

import contextlib
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


@contextlib.contextmanager
def classify_progress(description: str, enabled: bool = True):
    """Yields a callback taking the task's stats dict; a no-op when disabled (--quiet/--json)."""
    with step_progress(description, enabled) as step:
        if step is None:
            yield None
            return

        def update(s: dict) -> None:
            dt = max(time.time() - s["start"], 1e-9)
            info = f"{s['images'] / dt:.2f} img/s  {s['calls'] / max(s['images'], 1):.0f} calls/img"
            if s["labelled"]:
                info += f"  acc {s['correct'] / s['labelled']:.1%}"
            step(s["done"], s["total"], info)

        yield update


@contextlib.contextmanager
def step_progress(description: str, enabled: bool = True):
    """Yields `update(done, total, info)` for loops counted in steps (feature extraction, head fitting)."""
    if not enabled:
        yield None
        return
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn()]  # fmt: skip
    with Progress(*cols, console=console, transient=False) as prog:
        task = prog.add_task(description, total=None, info="")

        def update(done: int, total: int, info: str = "") -> None:
            prog.update(task, completed=done, total=total, info=info)

        yield update

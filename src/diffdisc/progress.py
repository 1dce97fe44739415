"""Progress for long loops: a rich bar on a terminal; plain lines elsewhere (nohup, batch jobs, CI logs), where a
rich bar would draw nothing until the loop ends."""

from __future__ import annotations

import contextlib
import datetime
import os
import sys
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
from rich.text import Text

from .errors import DiffdiscError

console = Console(stderr=True)
INTERVAL_ENV = "DIFFDISC_PROGRESS_INTERVAL"  # seconds between plain lines (default 30; 0 = every update)


def progress_interval() -> float:
    """Seconds between plain progress lines (DIFFDISC_PROGRESS_INTERVAL, default 30): also the cadence of
    `diffdisc train`'s log lines, so a log and a progress line never disagree on how often they come."""
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV) or 30))
    except ValueError:
        bad = os.environ[INTERVAL_ENV]
        raise DiffdiscError(f"{INTERVAL_ENV}={bad!r}: expected seconds between progress lines") from None


class _Eta(TimeRemainingColumn):
    """rich's time remaining, unless the loop knows better (`update(..., eta=s)`: e.g. --max-minutes stops a
    training run before its last step), so the bar and the loop never show two ETAs."""

    def render(self, task):
        eta = task.fields.get("eta")
        return super().render(task) if eta is None else Text(hms(eta), style="progress.remaining")


@contextlib.contextmanager
def classify_progress(description: str, enabled: bool = True):
    """Yields a callback taking the task's stats dict; a no-op when disabled (--quiet/--json)."""
    with step_progress(description, enabled) as step:
        if step is None:
            yield None
            return

        def update(s: dict) -> None:
            rate = s["images"] / max(time.time() - s["start"], 1e-9)  # scored by this process, not resumed
            info = f"{rate:.2f} img/s  {s['calls'] / max(s['images'], 1):.0f} calls/img"
            if s["labelled"]:
                info += f"  acc {s['correct'] / s['labelled']:.1%}"
            step(s["done"], s["total"], info, rate=rate if s["images"] else None)

        yield update


@contextlib.contextmanager
def step_progress(description: str, enabled: bool = True):
    """Yields `update(done, total, info="", rate=None, eta=None)` for counted loops (training steps, feature
    extraction, head fitting, images); None when disabled. `rate` (units/s) overrides the ETA's estimate from
    the updates seen; `eta` (seconds) overrides the ETA itself."""
    if not enabled:
        yield None
        return
    if not (console.is_jupyter or (console.is_terminal and not console.is_dumb_terminal)):
        with _plain_lines(description) as update:
            yield update
        return
    cols = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), _Eta()]  # fmt: skip
    with Progress(*cols, console=console, transient=False) as prog:
        task = prog.add_task(description, total=None, info="", eta=None)

        def update(done: int, total: int, info: str = "", rate: float | None = None, eta: float | None = None):
            prog.update(task, completed=done, total=total, info=info, eta=eta)

        yield update


def hms(seconds: float) -> str:
    """Seconds as h:mm:ss, as progress lines and training logs print them."""
    return str(datetime.timedelta(seconds=round(seconds)))


@contextlib.contextmanager
def _plain_lines(description: str):
    """One line on stderr every DIFFDISC_PROGRESS_INTERVAL seconds, and a final one however the loop ends.

    Without a `rate`, the ETA uses the progress since the first update, so work resumed from disk does not count."""
    interval = progress_interval()
    t_enter = last = time.monotonic()
    first: tuple[float, int] | None = None  # (time, done) at the first update
    state: dict = {}

    def emit() -> None:
        now, done, total = time.monotonic(), state["done"], state["total"]
        rate = state["rate"]
        if rate is None and first and done > first[1] and now > first[0]:
            rate = (done - first[1]) / (now - first[0])
        eta = hms((total - done) / rate) if rate and total else "0:00:00" if total and done >= total else "?"
        eta = hms(state["eta"]) if state["eta"] is not None else eta
        head = f"{description} {done}/{total}" + (f" ({done / total:.0%})" if total else "")
        print("  ".join(p for p in (head, state["info"], f"elapsed {hms(now - t_enter)}", f"eta {eta}") if p),
              file=sys.stderr, flush=True)  # fmt: skip
        state["printed"] = True

    def update(done: int, total: int, info: str = "", rate: float | None = None, eta: float | None = None):
        nonlocal first, last
        now = time.monotonic()
        first = first or (now, done)
        state.update(done=done, total=total, info=info, rate=rate, eta=eta, printed=False)
        if now - last >= interval:
            emit()
            last = now

    try:
        yield update
    finally:
        if state and not state["printed"]:
            emit()

"""`diffdisc suite`: a named set of benchmark tasks (or a YAML / JSON file of them) run with one model, or a
diffusion and a contrastive model side by side, into one table.

Each (task, model) is an ordinary resumable `match` / `classify` run under OUT/<task>/<size>/<model>/, so a
killed suite resumes where it stopped and a rerun only re-reads finished runs. A task whose data is missing is
skipped with the path it expected (checked before any image is read), a model that cannot do a task (a
class-conditional model on captions) gets "n/a", and the table (OUT/suite_table.json, suite_table.md; the
report's suite section) has a column per model, 95 % intervals and the U-Net calls each task cost.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ... import __version__
from ...errors import DiffdiscError
from ...results.suite import SuiteResult
from ...runs.io import atomic_write_text
from .base import (
    EMBEDDED_SIZES,
    MARKDOWN,
    TABLE,
    Skip,
    SuiteConfig,
    SuiteContext,
    TaskSpec,
    load_models,
    load_suite_file,
    named_suite,
)
from .catalogue import EMBEDDED, METRIC_ROWS, SUITES, task_info, task_root
from .runners import run_task


def run_suite(config: SuiteConfig, *, out: str | Path, device: str | None = None,
              progress: Callable[[str], contextlib.AbstractContextManager] | None = None,
              log: Callable[[str], None] | None = None, command: str | None = None) -> dict:  # fmt: skip
    """Run every task of `config` on every model into `out`; writes and returns the table (see module doc).

    `progress(description)`: a context manager yielding a classify/match progress callback; `log(line)`: one
    line per task; `command`: the command line, stored beside the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = log or (lambda msg: None)
    infos = [task_info(t.name) for t in config.tasks]  # every name is known before a model loads
    models = load_models(config.models, device)
    ctx = SuiteContext(config, out, models, progress, log)
    root = Path(config.root).expanduser() if config.root else None
    rows = []
    for i, (spec, info) in enumerate(zip(config.tasks, infos, strict=True), 1):
        spec = replace(spec, name=info.name)
        own = spec.root is not None
        where, missing = task_root(info, Path(spec.root).expanduser() if own else root, spec.split, own=own)
        row = {"task": info.name, "split": spec.split, "family": info.family, "metric": info.metric,
               "rows": list(METRIC_ROWS[info.metric]), "cells": {}}  # fmt: skip
        if missing:
            row.update(status="skipped", expected=[str(p) for p in missing],
                       reason=f"data missing: expected {missing[0]} ({info.layout})")  # fmt: skip
            log(f"[{i}/{len(infos)}] {info.name}: skipped ({row['reason']})")
            rows.append(row)
            continue
        t0 = time.time()
        log(f"[{i}/{len(infos)}] {info.name}" + (f" ({where})" if where else ""))
        try:
            row["cells"], row["n"] = run_task(ctx, spec, info, where)
            row["status"] = "done"
        except Skip as e:
            row.update(status="skipped", reason=str(e))
        except DiffdiscError as e:
            row.update(status="error", reason=str(e))
        row["wall_s"] = round(time.time() - t0, 1)
        log(f"      {_one_line(row)} ({row['wall_s']:.0f} s)")
        rows.append(row)
    table = {"version": __version__, "suite": config.name, "command": command,
             "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "settings": {"timesteps": config.timesteps, "limit": config.limit, "seed": config.seed,
                          "root": str(root) if root else None, "dtype": config.dtype},
             "models": [m.identity() for m in models], "tasks": rows}  # fmt: skip
    atomic_write_text(out / TABLE, json.dumps(table, indent=1))
    atomic_write_text(out / MARKDOWN, SuiteResult(table, out).markdown())
    return table


def _one_line(row: dict) -> str:
    if row.get("status") != "done":
        return f"{row.get('status')}: {row.get('reason')}"
    parts = []
    for label, c in row["cells"].items():
        if c.get("status") != "done":
            parts.append(f"{label}: {c.get('status')}")
            continue
        first = next(iter(c["metrics"].values()), None)
        parts.append(f"{label}: {100 * first['mean']:.1f}" if first else f"{label}: –")
    return "; ".join(parts)


__all__ = ["EMBEDDED", "EMBEDDED_SIZES", "SUITES", "SuiteConfig", "TaskSpec", "load_suite_file", "named_suite",
           "run_suite"]  # fmt: skip

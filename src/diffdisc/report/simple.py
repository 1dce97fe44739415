"""The demo's one-screen page: a metrics table, then a confusion matrix and examples per run.

Figures and the escaping jinja2 environment are the full report's (`figures.py`, `html.py`); only the
layout differs. `diffdisc report` renders everything else about the same run directories.
"""

from __future__ import annotations

from pathlib import Path

from ..runs.io import atomic_write_text
from .figures import confusion_png, image_png
from .html import environment

MAX_EXAMPLES = 20


def write_page(path: str | Path, title: str, model: str, header: list[str], rows: list[list], runs: list, note: str = "",
               banner: str = "", report_hint: str = "") -> Path:  # fmt: skip
    """runs: [(name, ClassificationResult)]; the page embeds everything (no network, no extra files)."""
    items = []
    for name, res in runs:
        preds, labels = res.predictions, res.labels
        ex = []
        for r, p, y in list(zip(res.records, preds, labels, strict=True))[:: max(1, len(res) // MAX_EXAMPLES)][:MAX_EXAMPLES]:
            ex.append({"png": image_png(r.get("path"), 64), "pred": res.classes[p], "label": res.classes[y] if y >= 0 else "?",
                       "ok": p == y})  # fmt: skip
        items.append({"name": name, "confusion": confusion_png(labels, preds, res.classes, name), "examples": ex})
    html = environment().get_template("simple.html.j2").render(title=title, model=model, header=header, rows=rows, runs=items,
                                                               note=note, banner=banner, report_hint=report_hint)  # fmt: skip
    path = Path(path)
    atomic_write_text(path, html)
    return path

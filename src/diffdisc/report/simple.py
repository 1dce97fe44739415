"""A small self-contained HTML page for classification runs: metrics table, confusion matrix, examples."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np

TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{{ title }}</title>
<style>body{font-family:sans-serif;margin:2em;max-width:1100px} table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right} .ex{display:inline-block;margin:4px;text-align:center;font-size:12px}
.ex img{width:64px;height:64px;image-rendering:pixelated;display:block} .bad{color:#b00}</style></head>
<body><h1>{{ title }}</h1>
{% if banner %}<p class="bad"><b>{{ banner }}</b></p>{% endif %}
<p>Model: <code>{{ model }}</code>. {{ note }}</p>
<table><tr>{% for h in header %}<th>{{ h }}</th>{% endfor %}</tr>
{% for row in rows %}<tr>{% for v in row %}<td>{{ v }}</td>{% endfor %}</tr>{% endfor %}</table>
{% for run in runs %}<h2>{{ run.name }}</h2>
<img alt="confusion matrix for {{ run.name }}" src="data:image/png;base64,{{ run.confusion }}">
<h3>Examples</h3>
{% for e in run.examples %}<div class="ex"><img alt="{{ e.label }}" src="data:image/png;base64,{{ e.png }}">
<span class="{{ '' if e.ok else 'bad' }}">{{ e.pred }}</span><br>({{ e.label }})</div>{% endfor %}
{% endfor %}</body></html>"""


def _png(fig_or_image) -> str:
    buf = io.BytesIO()
    if hasattr(fig_or_image, "savefig"):
        fig_or_image.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    else:
        fig_or_image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def confusion_png(labels: np.ndarray, preds: np.ndarray, classes: list[str], title: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    cm = np.zeros((n, n), dtype=int)
    for y, p in zip(labels, preds, strict=True):
        if y >= 0:
            cm[y, p] += 1
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=7, color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    s = _png(fig)
    plt.close(fig)
    return s


def write_page(path: str | Path, title: str, model: str, header: list[str], rows: list[list], runs: list, note: str = "", banner: str = "") -> Path:
    """runs: [(name, ClassificationResult)]; the page embeds everything (no network, no extra files)."""
    import jinja2
    from PIL import Image

    items = []
    for name, res in runs:
        preds, labels = res.predictions, res.labels
        ex = []
        for r, p, y in list(zip(res.records, preds, labels, strict=True))[:: max(1, len(res) // 20)][:20]:
            im = Image.open(r["path"]) if r.get("path") and Path(r["path"]).is_file() else Image.new("L", (8, 8))
            ex.append({"png": _png(im), "pred": res.classes[p], "label": res.classes[y] if y >= 0 else "?", "ok": p == y})
        items.append({"name": name, "confusion": confusion_png(labels, preds, res.classes, name), "examples": ex})
    env = jinja2.Environment(autoescape=True)
    html = env.from_string(TEMPLATE).render(title=title, model=model, header=header, rows=rows, runs=items, note=note, banner=banner)
    path = Path(path)
    path.write_text(html)
    return path

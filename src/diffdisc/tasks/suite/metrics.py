"""A finished run -> the numbers its paper reports, each with a 95 % bootstrap interval (items resampled; ARO's
macro accuracy resamples within each type), the chance level, the items scored and the U-Net calls they cost.

Scores S[image, caption] are lower = better and caption 0 is the true one wherever a group has one image.
"""

from __future__ import annotations

import numpy as np

from ...data.aro import aro_metrics
from ...scoring.match_metrics import bootstrap_ci, match_metrics
from .catalogue import METRIC_ROWS


def _summary(correct) -> dict:
    v = np.asarray(correct, dtype=np.float64)
    lo, hi = bootstrap_ci(v)
    return {"mean": float(v.mean()) if len(v) else float("nan"), "ci95": [lo, hi]}


def _calls(calls) -> dict:
    c = np.asarray(list(calls), dtype=np.float64)
    return {"calls_per_item": float(c.mean()) if len(c) else 0.0, "calls_total": int(c.sum())}


def match_summary(task: str, metric: str, records) -> dict:
    """`match`'s records (or its result) -> {metrics: {row: {mean, ci95}}, chance, n, calls_per_item, ...}."""
    recs = list(records)
    mats = [np.asarray(r["scores"], dtype=np.float64) for r in recs]
    out: dict = {"n": len(mats), **_calls(r.get("calls", 0) for r in recs)}
    if metric == "winoground":
        m = match_metrics(mats)
        out["metrics"] = {k: {"mean": m[k]["mean"], "ci95": m[k]["ci95"]} for k in METRIC_ROWS[metric] if k in m}
        out["chance"] = {"text": 0.25, "image": 0.25, "group": 1 / 6}
    elif metric in ("aro_vg", "aro_order"):
        a = aro_metrics(task, mats, [tuple(r.get("tags") or ()) for r in recs])
        row = METRIC_ROWS[metric][0]
        out["metrics"] = {row: a[a["headline"]], "accuracy (micro)": a["accuracy"]}
        out["chance"] = {row: float(np.mean([1 / m.shape[1] for m in mats])) if mats else None}
        if "types" in a:
            out["types"] = a["types"]
        if "note" in a:
            out["note"] = a["note"]
    else:  # one image, caption 0 true: SugarCrepe / cue-conflict strictly, CLEVR with ties to the true caption
        tie_ok = metric == "clevr"
        correct = [bool(m[0, 0] <= m[0, 1:].min()) if tie_ok else bool(m[0, 0] < m[0, 1:].min()) for m in mats]
        out["metrics"] = {METRIC_ROWS[metric][0]: _summary(correct)}
        out["chance"] = {METRIC_ROWS[metric][0]: float(np.mean([1 / m.shape[1] for m in mats])) if mats else None}
    return out


def classify_summary(result) -> dict:
    """A `ClassificationResult` -> top-1 accuracy over its labelled images, with calls per image."""
    labels, preds = np.asarray(result.labels), np.asarray(result.predictions)
    keep = labels >= 0
    correct = (preds[keep] == labels[keep]).astype(np.float64)
    n_classes = len(getattr(result, "classes", []) or [])
    return {"n": int(keep.sum()), **_calls(np.asarray(result.calls)),
            "metrics": {"top-1 accuracy": _summary(correct)},
            "chance": {"top-1 accuracy": 1 / n_classes if n_classes else None}}  # fmt: skip

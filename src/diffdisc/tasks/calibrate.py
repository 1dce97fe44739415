"""Calibrating a labelled classify run: the softmax temperature, and Clark & Jaini's Platt scaling on log U-Net
calls, saved as calibration.json and optionally applied to another run's metrics."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import DiffdiscError
from ..results import ClassificationResult
from ..results.classification import CalibrationResult
from ..runs.io import atomic_write_text
from ..scoring.calibrate import fit_platt_calls, fit_temperature
from .classify import finalize


def calibrate(run_dir: str | Path, apply_to: str | Path | None = None, *,
              log: Callable[[str], None] | None = None) -> CalibrationResult:  # fmt: skip
    """Fit on `run_dir`'s labelled images; writes `run_dir`/calibration.json and returns it (a
    `CalibrationResult`), with `applied_metrics` when `apply_to` is given (that run's metrics rewritten at the
    fitted temperature).

    Platt scaling needs positive call counts that differ between images: a run scored without U-Net calls
    (contrastive models) or with the same count for every image (exhaustive) gets the temperature only
    (`platt_log_calls`: None), and `log` is told why."""
    res = ClassificationResult.load(run_dir)
    lab = res.labels >= 0
    if lab.sum() < 2:
        raise DiffdiscError(f"{run_dir} has fewer than 2 labelled images; calibration needs labels")
    T = fit_temperature(res.scores[lab], res.labels[lab])
    platt, calls = None, res.calls[lab]
    if (calls > 0).all() and len(set(calls.tolist())) > 1:
        a, b = fit_platt_calls(calls, res.predictions[lab] == res.labels[lab])
        platt = {"a": a, "b": b}
    elif log:  # log(0), or one call count for every image: a fit would be meaningless, not (0, 0)
        why = "images scored without U-Net calls (a contrastive model?)" if not (calls > 0).all() else \
            "the same number of U-Net calls for every image (an exhaustive run)"
        log(f"{run_dir} has {why}: fitted the temperature only, no Platt scaling on log U-Net calls")
    cal = {"temperature": T, "platt_log_calls": platt, "fitted_on": str(run_dir), "n": int(lab.sum())}
    atomic_write_text(Path(run_dir) / "calibration.json", json.dumps(cal, indent=2))
    if apply_to:
        cal["applied_metrics"] = finalize(Path(apply_to), ClassificationResult.load(apply_to), T)
    return CalibrationResult(cal, run_dir)

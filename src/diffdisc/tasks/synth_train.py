"""`diffdisc synth train`: the supervised-baseline trainer (tasks/baseline.py) on a generated ImageFolder.

The only difference from `diffdisc baseline train` is labelling: validation accuracy is measured on held-out
*synthetic* images, so the log says "val acc (synthetic)" and classifier.json keeps its `val_acc_synthetic` key
(besides the neutral `val_acc`). Real images are only ever the test set (`evaluate_classifier`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..results.baseline import BaselineResult
from . import baseline
from .baseline import ClassifierConfig, evaluate_classifier, load_classifier

__all__ = ["ClassifierConfig", "evaluate_classifier", "load_classifier", "train_classifier"]


def train_classifier(data: str | Path, cfg: ClassifierConfig | None = None, *, out: str | Path,
                     log: Callable[[str], None] | None = None, progress: Callable[[int, int, str], None] | None = None,
                     max_minutes: float | None = None) -> BaselineResult:  # fmt: skip
    """`baseline.train_classifier` with validation accuracy labelled synthetic."""
    return baseline.train_classifier(data, cfg, out=out, log=log, progress=progress, max_minutes=max_minutes,
                                     synthetic=True)  # fmt: skip

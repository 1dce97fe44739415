"""A supervised baseline (`diffdisc baseline train` / `synth train`) read back: classifier.json and its evaluations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import Result, load_object, optional_json

CLASSIFIER_JSON = "classifier.json"
EVALUATIONS_JSON = "evaluations.json"


@dataclass
class BaselineEval:
    """One recorded evaluation of a baseline classifier on a labelled folder (evaluations.json entry)."""

    data: str
    labels: np.ndarray  # [N]
    preds: np.ndarray  # [N]
    confidence: np.ndarray  # [N] softmax probability of the predicted class
    top5: float | None

    def metrics(self) -> dict:
        return {"accuracy": float((self.preds == self.labels).mean()) if len(self.labels) else 0.0, "top5": self.top5,
                "n_images": len(self.labels), "data": self.data}  # fmt: skip


class BaselineResult(Result):
    """A timm classifier's training record (classifier.json) and every evaluation recorded for it."""

    marker = CLASSIFIER_JSON

    def __init__(self, path: Path, meta: dict, evaluations: list[BaselineEval]):
        self.path, self.meta, self.evaluations, self.problems = path, meta, evaluations, []
        cfg = meta.get("config")
        self.model = str(cfg.get("model", "?")) if isinstance(cfg, dict) else "?"

    @classmethod
    def load(cls, run_dir: str | Path) -> BaselineResult:
        path = Path(run_dir)
        meta = load_object(path / CLASSIFIER_JSON)
        r = cls(path, meta, [])
        ej = path / EVALUATIONS_JSON
        d = optional_json(ej, r.problems)
        for e in (d.get("evaluations") if isinstance(d, dict) else None) or []:
            try:
                labels, preds = np.asarray(e["labels"], dtype=np.int64), np.asarray(e["predictions"], dtype=np.int64)
                conf = np.asarray(e["confidence"], dtype=np.float64)
                if not (labels.shape == preds.shape == conf.shape and labels.ndim == 1):
                    raise ValueError
                r.evaluations.append(BaselineEval(str(e.get("data", "?")), labels, preds, conf,
                                                  float(e["top5"]) if e.get("top5") is not None else None))  # fmt: skip
            except (KeyError, TypeError, ValueError):
                r.problems.append(f"{ej.name}: an evaluation without labels, predictions and confidence lists of one "
                                  "length; skipped")  # fmt: skip
        if not r.evaluations:
            r.problems.append(f"baseline classifier {path.name} ({r.model}) has no recorded evaluation: "
                              f"run `diffdisc baseline eval {path} --data TEST_FOLDER`")  # fmt: skip
        return r

    def metrics(self) -> dict:
        """The last recorded evaluation's accuracy (and top-5), plus validation accuracy from training."""
        last = self.evaluations[-1].metrics() if self.evaluations else {}
        return {"val_acc": self.meta.get("val_acc"), **last}

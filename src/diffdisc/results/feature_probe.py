"""A `diffdisc features probe --out DIR` result: one head on fixed (block, t) cell(s), its validation and test
accuracy, so that `diffdisc report` can show what was otherwise one printed line."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import DiffdiscError
from ..runs.io import atomic_write_text, json_safe
from ..runs.store import RUN_JSON
from .base import Result, load_object

PROBE_JSON = "features_probe.json"
TASK = "features-probe"


@dataclass
class ProbeScores:
    """One head on one representation (diffusion cells, pixels, an embedding): what `features probe` prints."""

    representation: str  # "mid@5 (avg4, linear)"
    dims: int
    val_acc: float
    test_acc: float | None
    weight_decay: float
    n_train: int
    n_val: int
    n_test: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FeatureProbeResult(ProbeScores, Result):
    """What `features probe` measured (the numbers of its printed line) and on what."""

    model: str  # the model's display name (`BackboneInfo.label`)
    cells: list[list]  # [[block, t], ...]: several are fused
    pooling: str
    head: str
    train_data: str | None = None
    test_data: str | None = None
    path: Path | None = field(default=None, repr=False)  # the features_probe.json it was read from
    problems: list[str] = field(default_factory=list, repr=False)

    marker = PROBE_JSON

    @classmethod
    def load(cls, run_dir: str | Path) -> FeatureProbeResult:
        path = Path(run_dir) / PROBE_JSON
        d = load_object(path)
        try:
            r = cls(str(d["representation"]), int(d["dims"]), float(d["val_acc"]),
                    None if d.get("test_acc") is None else float(d["test_acc"]), float(d.get("weight_decay", 0.0)),
                    int(d["n_train"]), int(d["n_val"]), int(d.get("n_test") or 0), str(d.get("model", "?")),
                    [list(c) for c in d.get("cells", [])], str(d.get("pooling", "?")), str(d.get("head", "?")),
                    d.get("train_data"), d.get("test_data"))  # fmt: skip
        except (KeyError, TypeError, ValueError):
            raise DiffdiscError(f"{path.name}: needs representation, dims, val_acc, n_train and n_val; skipped") from None
        r.path = path
        return r

    def metrics(self) -> dict:
        return {"val_acc": self.val_acc, "test_acc": self.test_acc}

    def to_json(self) -> dict:
        """features_probe.json: what was probed first, then the scores."""
        d = asdict(self)
        d.pop("path"), d.pop("problems")
        return {**{k: d.pop(k) for k in ("model", "representation", "cells", "pooling", "head")}, **d}

    def write(self, out: str | Path, settings: dict) -> Path:
        """OUT/run.json (what was probed: the record of the run's inputs) and OUT/features_probe.json."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / RUN_JSON, json.dumps(json_safe({"task": TASK, **settings}), indent=2))
        atomic_write_text(out / PROBE_JSON, json.dumps(json_safe(self.to_json()), indent=2))
        self.path = out / PROBE_JSON
        return self.path

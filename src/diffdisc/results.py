"""Resumable, shardable result store and the classification result object.

A run directory holds `run.json` (every setting that changes the numbers), append-only shards
`shards/part-<rank>.jsonl` with one JSON line per finished image (written whole, flushed and fsynced),
and after `merge()`: `results.jsonl` (one row per (image, candidate)), `predictions.jsonl` and
`metrics.json`. A rerun skips finished images from every shard, so a killed job or a different number of
processes resumes without losing or duplicating an image; a torn last line (kill during a write) is
dropped and its image redone.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .errors import DiffdiscError


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _clean(v):
    """JSON has no inf/nan: store them as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


# Settings that change speed, not numbers (noise is keyed by (image, t)): a resume may change them.
RUNTIME_KEYS = frozenset({"score.batch_size"})


def _diff(a, b, prefix=""):
    """First differing key path between two settings dicts, or None."""
    if prefix.rstrip(".") in RUNTIME_KEYS:
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            d = _diff(a.get(k), b.get(k), f"{prefix}{k}.")
            if d:
                return d
        return None
    return None if a == b else (prefix.rstrip("."), a, b)


def repair_jsonl(path: Path) -> None:
    """Cut a torn last line left by a kill mid-write (the intact rows stay), before appending again."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(keep)


def read_records(shards_dir: Path) -> Iterator[dict]:
    """All complete records from all shards (first occurrence of an image id wins; torn lines are skipped)."""
    seen = set()
    for shard in sorted(Path(shards_dir).glob("part-*.jsonl")):
        with open(shard, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec["image_id"] not in seen:
                    seen.add(rec["image_id"])
                    yield rec


class ResultStore:
    """Append-only shards keyed by image id, guarded by the run's settings."""

    def __init__(self, out_dir: str | Path, settings: dict, rank: int = 0):
        self.dir = Path(out_dir)
        self.shards = self.dir / "shards"
        self.shards.mkdir(parents=True, exist_ok=True)
        self.settings = json.loads(json.dumps(_clean(settings)))
        run = self.dir / "run.json"
        if run.is_file():
            old = json.loads(run.read_text())
            d = _diff(old, self.settings)
            if d:
                raise DiffdiscError(
                    f"{self.dir} holds results made with different settings ({d[0]}: {d[1]!r} there, {d[2]!r} now); "
                    "use another --out or delete it"
                )
        else:
            atomic_write_text(run, json.dumps(self.settings, indent=2, sort_keys=True))
        self.path = self.shards / f"part-{rank:05d}.jsonl"
        repair_jsonl(self.path)


    def records(self) -> Iterator[dict]:
        return read_records(self.shards)

    def done(self) -> set[str]:
        return {r["image_id"] for r in self.records()}

    def append(self, records: Iterable[dict]) -> None:
        lines = "".join(json.dumps(_clean(r), separators=(",", ":")) + "\n" for r in records)
        if not lines:
            return
        with open(self.path, "a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())


class ClassificationResult:
    """A classification run read back from disk: scores, labels and metrics as methods."""

    def __init__(self, settings: dict, records: list[dict]):
        self.settings = settings
        self.records = sorted(records, key=lambda r: r.get("order", 0))
        self.candidates: list[str] = settings["candidates"]
        self.classes: list[str] = settings.get("classes", self.candidates)

    @classmethod
    def load(cls, run_dir: str | Path) -> ClassificationResult:
        run_dir = Path(run_dir)
        if not (run_dir / "run.json").is_file():
            raise DiffdiscError(f"{run_dir} is not a diffdisc run directory (no run.json)")
        settings = json.loads((run_dir / "run.json").read_text())
        return cls(settings, list(read_records(run_dir / "shards")))

    def __len__(self) -> int:
        return len(self.records)

    @property
    def image_ids(self) -> list[str]:
        return [r["image_id"] for r in self.records]

    @property
    def scores(self) -> np.ndarray:
        """[N, n_classes] class scores (lower = better); None (never scored) -> inf."""
        return np.array([[np.inf if s is None else s for s in r["scores"]] for r in self.records], dtype=np.float64)

    @property
    def predictions(self) -> np.ndarray:
        return np.array([r["pred"] for r in self.records], dtype=np.int64)

    @property
    def labels(self) -> np.ndarray:
        return np.array([-1 if r.get("label") is None else r["label"] for r in self.records], dtype=np.int64)

    @property
    def calls(self) -> np.ndarray:
        return np.array([r["calls"] for r in self.records], dtype=np.int64)

    def metrics(self, temperature: float | None = None) -> dict:
        from .scoring.calibrate import classification_metrics, cross_fitted_ece

        T = temperature or self.settings.get("temperature") or 1.0
        out = {"n_images": len(self), "unet_calls_per_image": float(self.calls.mean()) if len(self) else 0.0}
        lab = self.labels >= 0
        if lab.any():
            sc, y = self.scores[lab], self.labels[lab]
            out.update(classification_metrics(sc, y, T))
            out["accuracy"] = float((self.predictions[lab] == y).mean())  # the strategy's own decision
            out["ece_temperature_scaled"] = cross_fitted_ece(sc, y)
            out["n_labelled"] = int(lab.sum())
        return out

    def rows(self) -> Iterator[dict]:
        """One row per (image, candidate): score, U-Net calls spent on it, rank."""
        for r in self.records:
            rank = {c: i + 1 for i, c in enumerate(r["ranking"])}
            for c, name in enumerate(self.classes):
                yield {"image_id": r["image_id"], "candidate": name, "score": r["scores"][c], "n_calls": r["n_calls"][c], "rank": rank[c]}

    def write(self, run_dir: str | Path, metrics: dict) -> None:
        run_dir = Path(run_dir)
        atomic_write_text(run_dir / "results.jsonl", "".join(json.dumps(_clean(x)) + "\n" for x in self.rows()))
        preds = []
        p = self.probabilities(metrics.get("temperature", 1.0))
        for i, r in enumerate(self.records):
            preds.append({"image_id": r["image_id"], "path": r.get("path"), "label": r.get("label"), "pred": r["pred"], "pred_name": self.classes[r["pred"]], "prob": float(p[i, r["pred"]]), "calls": r["calls"]})
        atomic_write_text(run_dir / "predictions.jsonl", "".join(json.dumps(_clean(x)) + "\n" for x in preds))
        atomic_write_text(run_dir / "metrics.json", json.dumps(_clean(metrics), indent=2))

    def probabilities(self, temperature: float) -> np.ndarray:
        from .scoring.calibrate import probabilities

        return probabilities(self.scores, temperature) if len(self) else np.zeros((0, len(self.classes)))

"""Resumable, shardable result store and the classification result object.

A run directory holds `run.json` (every setting that changes the numbers), append-only shards
`shards/part-<rank>.jsonl` with one JSON line per finished image (written whole, flushed and fsynced),
and after `merge()`: `results.jsonl` (one row per (image, candidate)), `predictions.jsonl` and
`metrics.json`. A rerun skips finished images from every shard, so a killed job or a different number of
processes resumes without losing or duplicating an image; a torn last line (kill during a write) is
dropped and its image redone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from .errors import DiffdiscError
from .runs.guard import check_settings
from .runs.io import atomic_write_text, remove_stale_temps


def _clean(v):
    """JSON has no inf/nan: store them as null."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    return v


# Settings that change speed or display, not numbers (noise is keyed by (image, t)): a resume may change them
# (model.label is the model's display name, new in run.json: runs made before it still resume).
RUNTIME_KEYS = frozenset({"score.batch_size", "model.label"})


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
    """Append-only shards keyed by image id, guarded by the run's settings and locked per rank.

    `run.json` is read-or-created under an exclusive lock, so two processes started together on one
    directory cannot both write their own settings: the second sees the first's and is refused if they
    differ. Each rank also holds a lock on its own shard for as long as the store lives: a second process
    for the same rank (two identical commands, or a forgotten RANK/WORLD_SIZE) is refused.
    """

    def __init__(self, out_dir: str | Path, settings: dict, rank: int = 0):
        self.dir = Path(out_dir)
        self.shards = self.dir / "shards"
        self.shards.mkdir(parents=True, exist_ok=True)
        self.settings = json.loads(json.dumps(_clean(settings)))
        with open(self.dir / ".run.lock", "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            run = self.dir / "run.json"
            if check_settings(run, self.settings, runtime_keys=RUNTIME_KEYS, where=self.dir) is None:
                atomic_write_text(run, json.dumps(self.settings, indent=2, sort_keys=True))
        self._lock = _try_lock(self.dir / f".rank-{rank:05d}.lock")
        if self._lock is None:
            raise DiffdiscError(
                f"another process is already writing {self.dir} (rank {rank}); wait for it, or use another --out. "
                "To share one run across processes start them with torchrun or `accelerate launch` "
                "(they set RANK/WORLD_SIZE)"
            )
        remove_stale_temps(self.dir)
        remove_stale_temps(self.shards)
        self.path = self.shards / f"part-{rank:05d}.jsonl"
        repair_jsonl(self.path)

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.close()  # closing the file releases the lock
            self._lock = None

    def records(self) -> Iterator[dict]:
        return read_records(self.shards)

    def done(self) -> set[str]:
        return {r["image_id"] for r in self.records()}

    def append(self, records: Iterable[dict]) -> None:
        lines = "".join(json.dumps(_clean(r), separators=(",", ":")) + "\n" for r in records)
        if not lines:
            return
        try:
            with open(self.path, "a") as f:
                f.write(lines)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            why = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
            raise DiffdiscError(f"could not append results to {self.path} ({why}); images finished before this chunk "
                                "are kept: free space and rerun the same command to resume") from e  # fmt: skip


def _try_lock(path: Path):
    """An open file holding an exclusive lock on `path`, or None if another process holds it."""
    f = open(path, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


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
    def rankings(self) -> np.ndarray:
        """[N, n_classes] the strategy's ranking per image, best first: prediction, top-k and ECE come from it."""
        return np.array([r["ranking"] for r in self.records], dtype=np.int64).reshape(len(self), len(self.classes))

    @property
    def calls(self) -> np.ndarray:
        return np.array([r["calls"] for r in self.records], dtype=np.int64)

    def temperature(self, override: float | None = None) -> tuple[float | None, str]:
        """The softmax temperature for probabilities and where it comes from (None: uncalibrated, T = 1)."""
        if override:
            return float(override), "given"
        if self.settings.get("temperature"):
            return float(self.settings["temperature"]), "run setting (--temperature)"
        shipped = self.settings.get("model_temperature")
        if shipped:
            return float(shipped["value"]), shipped["source"]
        return None, "none: T = 1, uncalibrated (run `diffdisc calibrate` on a labelled run)"

    def metrics(self, temperature: float | None = None) -> dict:
        from .scoring.calibrate import classification_metrics, cross_fitted_ece

        T, source = self.temperature(temperature)
        out = {"n_images": len(self), "unet_calls_per_image": float(self.calls.mean()) if len(self) else 0.0,
               "temperature": T or 1.0, "temperature_source": source}  # fmt: skip
        lab = self.labels >= 0
        if lab.any():
            sc, y, rk = self.scores[lab], self.labels[lab], self.rankings[lab]
            m = classification_metrics(sc, y, T or 1.0, rk)
            out.update({k: v for k, v in m.items() if k != "temperature"})
            out["ece_temperature_scaled"] = cross_fitted_ece(sc, y, rk)
            if T is None:  # no temperature to trust: the headline is the cross-fitted one
                out["ece_uncalibrated"], out["ece"] = m["ece"], out["ece_temperature_scaled"]
                out["ece_source"] = "cross-fitted: T fitted on one half of these images, ECE on the other, and back"
            else:
                out["ece_source"] = f"at T = {T:.4g} ({source})"
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
        p = self.probabilities(metrics.get("temperature") or 1.0)
        for i, r in enumerate(self.records):
            preds.append({"image_id": r["image_id"], "path": r.get("path"), "label": r.get("label"), "pred": r["pred"], "pred_name": self.classes[r["pred"]], "prob": float(p[i, r["pred"]]), "calls": r["calls"]})
        atomic_write_text(run_dir / "predictions.jsonl", "".join(json.dumps(_clean(x)) + "\n" for x in preds))
        atomic_write_text(run_dir / "metrics.json", json.dumps(_clean(metrics), indent=2))

    def probabilities(self, temperature: float) -> np.ndarray:
        from .scoring.calibrate import probabilities

        return probabilities(self.scores, temperature) if len(self) else np.zeros((0, len(self.classes)))

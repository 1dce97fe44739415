"""A classify run read back from disk (merged or not): per-image arrays in the run's order, metrics, merge."""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import DiffdiscError
from ..runs.io import atomic_write_text, json_safe, write_jsonl
from ..runs.store import RUN_JSON, run_task
from .base import ShardedResult, model_label, optional_json


class ClassificationResult(ShardedResult):
    """Scores, labels and rankings of every finished image; `metrics()` computes, `write()` merges.

    Records without the fields every classify run writes (a foreign or damaged shard line) are skipped with a
    note in `problems`, so the report and `diffdisc merge` read a run the same way."""

    depth = 0

    def __init__(self, settings: dict, records: list[dict], path: str | Path | None = None):
        self.settings, self.path, self.problems = settings, Path(path) if path else None, []
        self.candidates: list[str] = list(settings.get("candidates") or settings.get("classes") or [])
        self.classes: list[str] = list(settings.get("classes") or self.candidates)
        if not self.classes:
            raise DiffdiscError("run.json lists no classes; classification skipped")
        ok = [r for r in records if all(k in r for k in ("image_id", "pred", "scores")) and len(r["scores"]) == len(self.classes)]
        if len(ok) < len(records):
            self.problems.append(f"{len(records) - len(ok)} shard record(s) without the expected fields were skipped")
        self.records = sorted(ok, key=lambda r: r.get("order", 0))
        self.stored_metrics: dict | None = None  # metrics.json (None: not merged yet)
        self.calibration: dict | None = None  # calibration.json from `diffdisc calibrate`

    @classmethod
    def claims(cls, run_dir: Path) -> bool:
        """A classify run, or a run.json too damaged to say (`read` then notes that it is unreadable)."""
        path = Path(run_dir) / RUN_JSON
        try:
            json.loads(path.read_text())
        except (OSError, ValueError):
            return path.is_file()
        return run_task(run_dir) == "classify"

    def _loaded(self) -> None:
        if not len(self):
            self.problems.append("classification started but no image is finished yet (shards are empty)")
        elif self.stored_metrics is None:
            self.problems.append(f"not merged: metrics.json is missing (unfinished run, or run `diffdisc merge {self.path}`); "
                                 f"showing the {len(self)} finished image(s) from the shards")  # fmt: skip
        self.calibration = optional_json(self.path / "calibration.json", self.problems)

    def __len__(self) -> int:
        return len(self.records)

    # ------------------------------------------------------------------ identity
    @property
    def strategy(self) -> str:
        return str(self.settings.get("adaptive", {}).get("strategy", "?"))

    @property
    def model(self) -> str:
        return model_label(self.settings.get("model"))

    @property
    def contrastive(self) -> bool:
        return len(self) > 0 and all(ts == [0] for ts in self.timesteps) and not self.n_calls.any()

    # ------------------------------------------------------------------ per-image arrays
    @property
    def image_ids(self) -> list[str]:
        return [str(r["image_id"]) for r in self.records]

    @property
    def paths(self) -> list[str | None]:
        return [r.get("path") for r in self.records]

    def image_path(self, i: int) -> Path | None:
        """Where image i is now: its recorded path, else the run's data root + image id (a relative path
        recorded from another working directory)."""
        root = self.settings.get("data")
        for p in (self.paths[i], Path(str(root)) / self.image_ids[i] if root else None):
            if p and Path(p).is_file():
                return Path(p)
        return None

    @cached_property
    def scores(self) -> np.ndarray:
        """[N, n_classes] class scores (lower = better); None (never scored) -> inf."""
        rows = [[np.inf if s is None else float(s) for s in r["scores"]] for r in self.records]
        return np.array(rows, dtype=np.float64).reshape(-1, len(self.classes))

    @cached_property
    def predictions(self) -> np.ndarray:
        return np.array([int(r["pred"]) for r in self.records], dtype=np.int64)

    @property
    def preds(self) -> np.ndarray:
        return self.predictions

    @cached_property
    def labels(self) -> np.ndarray:
        return np.array([-1 if r.get("label") is None else int(r["label"]) for r in self.records], dtype=np.int64)

    @cached_property
    def rankings(self) -> np.ndarray:
        """[N, n_classes] the strategy's ranking per image, best first: prediction, top-k and ECE come from it."""
        from ..scoring.calibrate import default_ranking

        M = len(self.classes)

        def ranking(r, row):
            v = r.get("ranking")
            return v if isinstance(v, list) and sorted(v) == list(range(M)) else default_ranking(row[None])[0].tolist()

        return np.array([ranking(r, row) for r, row in zip(self.records, self.scores, strict=True)], dtype=np.int64).reshape(-1, M)

    @cached_property
    def n_calls(self) -> np.ndarray:
        """[N, n_classes] U-Net calls spent on each candidate (0 where a record lacks them)."""
        M = len(self.classes)
        rows = [v if isinstance(v := r.get("n_calls"), list) and len(v) == M else [0] * M for r in self.records]
        return np.array(rows, dtype=np.int64).reshape(-1, M)

    @property
    def calls(self) -> np.ndarray:
        return np.array([r["calls"] for r in self.records], dtype=np.int64)

    @property
    def timesteps(self) -> list[list[int]]:
        """Per image: the t evaluated, in evaluation order."""
        return [list(r.get("timesteps") or []) for r in self.records]

    @property
    def errors(self) -> list[list[list[float | None]] | None]:
        """Per image: [candidate][t index] denoising errors, None = not evaluated."""
        return [r.get("errors") if isinstance(r.get("errors"), list) else None for r in self.records]

    # ------------------------------------------------------------------ metrics and merge
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
        from ..scoring.calibrate import classification_metrics, cross_fitted_ece

        T, source = self.temperature(temperature)
        out = {"n_images": len(self), "unet_calls_per_image": float(self.calls.mean()) if len(self) else 0.0,
               "temperature": T or 1.0, "temperature_source": source}  # fmt: skip
        out.update(self.shortlist_metrics())
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

    @property
    def shortlisted(self) -> bool:
        """Whether a cheap scorer shortlisted each image's candidates (a cascade run, `--shortlist K`)."""
        return bool(self.settings.get("shortlist")) and len(self) > 0

    def shortlist_metrics(self) -> dict:
        """A cascade's cost and loss: the cheap stage's U-Net calls and other (contrastive) forwards per image,
        both included in `unet_calls_per_image` where they are U-Net calls, and `shortlist_recall`, the share
        of labelled images whose true class the cheap stage kept (the rest count as errors in the accuracy)."""
        if not self.shortlisted:
            return {}
        sl = self.settings["shortlist"]
        cheap = np.array([int(r.get("shortlist_calls", 0)) for r in self.records], dtype=np.float64)
        fwd = np.array([int(r.get("contrastive_forwards", 0)) for r in self.records], dtype=np.float64)
        out = {"shortlist_keep": sl.get("keep"), "shortlist_scorer": sl.get("scorer"),
               "shortlist_model": (sl.get("model") or {}).get("name"), "shortlist_calls_per_image": float(cheap.mean()),
               "decider_calls_per_image": float(self.calls.mean() - cheap.mean()),
               "contrastive_forwards_per_image": float(fwd.mean())}  # fmt: skip
        lab = [r for r in self.records if r.get("label") is not None and isinstance(r.get("shortlist"), list)]
        if lab:
            out["shortlist_recall"] = float(np.mean([int(r["label"]) in r["shortlist"] for r in lab]))
        return out

    def rows(self) -> Iterator[dict]:
        """One row per (image, candidate): score, U-Net calls spent on it, rank."""
        for r in self.records:
            rank = {c: i + 1 for i, c in enumerate(r["ranking"])}
            for c, name in enumerate(self.classes):
                yield {"image_id": r["image_id"], "candidate": name, "score": r["scores"][c], "n_calls": r["n_calls"][c], "rank": rank[c]}

    def write(self, run_dir: str | Path, metrics: dict) -> None:
        """Merge: results.jsonl, predictions.jsonl and metrics.json, each written atomically."""
        run_dir = Path(run_dir)
        write_jsonl(run_dir / "results.jsonl", self.rows())
        p = self.probabilities(metrics.get("temperature") or 1.0)
        write_jsonl(run_dir / "predictions.jsonl", (
            {"image_id": r["image_id"], "path": r.get("path"), "label": r.get("label"), "pred": r["pred"],
             "pred_name": self.classes[r["pred"]], "prob": float(p[i, r["pred"]]), "calls": r["calls"]}
            for i, r in enumerate(self.records)))  # fmt: skip
        atomic_write_text(run_dir / "metrics.json", json.dumps(json_safe(metrics), indent=2))

    def probabilities(self, temperature: float) -> np.ndarray:
        from ..scoring.calibrate import probabilities

        return probabilities(self.scores, temperature) if len(self) else np.zeros((0, len(self.classes)))

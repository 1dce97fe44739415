"""A classify run read back from disk (merged or not): per-image arrays in the run's order, metrics, merge."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import DiffdiscError
from ..runs.io import atomic_write_text, json_safe, write_jsonl
from ..runs.store import RUN_JSON, run_task
from .base import DictResult, ShardedResult, model_label, optional_json

N_BOOT = 2000  # bootstrap resamples of the images (as scoring.match_metrics.bootstrap_ci)
CROSS_FITTED = "cross-fitted: T fitted on one half of these images, ECE measured on the other, and back"


def pct(v: float | None) -> str:
    """The one rounding rule for a share, on the command line, the report's tables and its figures: 0.915 -> "91.5%"."""
    return "–" if v is None or not np.isfinite(v) else f"{v:.1%}"


def with_ci(v: float | None, ci) -> str:
    """"91.5% [88.0%, 94.5%]" (a point and its 95% interval, both in percent)."""
    if v is None or not np.isfinite(v):
        return "–"
    return pct(v) if ci is None else f"{pct(v)} [{pct(ci[0])}, {pct(ci[1])}]"


def calls_text(v: float) -> str:
    """U-Net calls per image: one decimal where it has one (118.5, not 118), none where it is whole (130)."""
    return f"{v:.1f}".removesuffix(".0")


def bootstrap_intervals(correct: np.ndarray, conf: np.ndarray, groups: list[np.ndarray] | None = None, seed: int = 0,
                        chunk: int = 100):  # fmt: skip
    """(point, 95% interval) of accuracy and ECE, from one computation over the same image resamples.

    `groups` (the halves of a cross-fitted ECE) are resampled separately and their ECEs averaged by size, as
    the point estimate is. ECE is biased upward under resampling (duplicated images make every bin's gap
    noisier): the plain percentile interval of a well-calibrated run can lie entirely above its own point
    estimate. The interval is therefore the bootstrap percentiles shifted by the bootstrap's bias estimate
    (mean of resamples − point), clipped to [0, 1]; for accuracy, an unbiased mean, the shift is ~0. Resamples
    are drawn `chunk` at a time, so 50,000 images need tens of megabytes, not gigabytes. The temperatures of a
    cross-fitted ECE are not refitted per resample (the interval is over images, at the fitted T)."""
    from ..scoring.calibrate import ECE_BINS, top_label_ece

    n = len(correct)
    groups = [np.arange(n)] if groups is None else [np.asarray(g) for g in groups]
    rng = np.random.default_rng(seed)
    accs, eces = [], []
    for s in range(0, N_BOOT, chunk):
        k = min(chunk, N_BOOT - s)
        acc, ece = np.zeros(k), np.zeros(k)
        for g in groups:
            idx = g[rng.integers(0, len(g), (k, len(g)))]
            acc += correct[idx].sum(1) / n
            ece += top_label_ece(conf, correct, ECE_BINS, idx) * len(g) / n
        accs.append(acc)
        eces.append(ece)

    def ci(point: float, v: list[np.ndarray]) -> tuple[float, tuple[float, float]]:
        v = np.concatenate(v)
        shift = v.mean() - point
        lo, hi = np.percentile(v, 2.5) - shift, np.percentile(v, 97.5) - shift
        return point, (float(np.clip(lo, 0.0, 1.0)), float(np.clip(hi, 0.0, 1.0)))  # both are shares

    ece = sum(float(top_label_ece(conf[g], correct[g], ECE_BINS)[0]) * len(g) for g in groups) / n
    return ci(float(correct.mean()), accs), ci(ece, eces)


@dataclass
class Calibration:
    """A run's one ECE and its accuracy, each with a 95% bootstrap interval: what the command line and the report
    both show. The ECE is never measured at a temperature fitted on the same images: at the run's own T when
    it came from elsewhere (--temperature, `calibrate --apply-to`, the model's metadata), else cross-fitted."""

    conf: np.ndarray  # [labelled] probability given to the prediction, at the T the ECE uses
    correct: np.ndarray  # [labelled] prediction == label
    accuracy: float
    accuracy_ci: tuple[float, float]
    ece: float | None  # None: fewer than 4 labelled images and no temperature (nothing to cross-fit)
    ece_ci: tuple[float, float] | None
    temperature: float | None  # None: cross-fitted (one T per half)
    source: str  # how the ECE was measured, said beside it

    @property
    def how(self) -> str:
        """The short form for a table cell."""
        if self.ece is None:
            return "–"
        return "cross-fitted T" if self.temperature is None else f"T = {self.temperature:.4g}"


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
    def learned_timesteps(self) -> bool:
        return bool(self.settings.get("timestep_weights") or (self.settings.get("adaptive") or {}).get("timestep_weights"))

    @property
    def search(self) -> str:
        """How candidates were searched, in one phrase: the strategy alone says "exhaustive" for a cascade whose
        decider is exhaustive, though the cheap stage pruned every class but its shortlist."""
        parts = []
        if self.shortlisted:
            sl = self.settings["shortlist"]
            by = sl.get("scorer", "?") if sl.get("scorer") in (None, "self") else \
                f"{sl.get('scorer')} {model_label(sl.get('model'))}"
            parts.append(f"shortlist top {sl.get('keep', '?')} ({by})")
        if isinstance(tree := self.settings.get("tree"), dict):
            parts.append(f"label tree (beam {tree.get('beam', '?')})")
        parts.append(self.strategy + (", learned timesteps" if self.learned_timesteps else ""))
        return " → ".join(parts)

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

    def _cross_fitted(self, lab: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]] | None:
        """Each labelled image's confidence at a T fitted on the other half of them (halves drawn with seed 0,
        as `scoring.calibrate.cross_fitted_ece`), and the halves; None below 4 labelled images."""
        from ..scoring.calibrate import fit_temperature, probabilities

        sc, y, pred = self.scores[lab], self.labels[lab], self.rankings[lab][:, 0]
        n = len(y)
        if n < 4:
            return None
        idx = np.random.default_rng(0).permutation(n)
        halves = [idx[: n // 2], idx[n // 2 :]]
        conf = np.empty(n)
        for a, b in (halves, halves[::-1]):
            conf[b] = probabilities(sc[b], fit_temperature(sc[a], y[a]))[np.arange(len(b)), pred[b]]
        return conf, halves

    def calibrated(self, temperature: float | None = None) -> Calibration | None:
        """The run's one ECE (see `Calibration`) and accuracy, with intervals; None without labelled images."""
        from ..scoring.calibrate import probabilities

        lab = self.labels >= 0
        if not lab.any():
            return None
        T, source = self.temperature(temperature)
        pred, y = self.rankings[lab][:, 0], self.labels[lab]
        correct = (pred == y).astype(np.float64)
        groups, how = None, f"at T = {T:.4g}, {source}" if T is not None else CROSS_FITTED
        if T is not None:
            conf = probabilities(self.scores[lab], T)[np.arange(len(y)), pred]
        elif (cf := self._cross_fitted(lab)) is not None:
            conf, groups = cf
        else:  # nothing to fit a temperature on without measuring on the same images
            (acc, acc_ci), _ = bootstrap_intervals(correct, np.full(len(y), 0.5))
            return Calibration(np.full(len(y), np.nan), correct, acc, acc_ci, None, None, None,
                               "no ECE: fewer than 4 labelled images to cross-fit a temperature on")  # fmt: skip
        (acc, acc_ci), (ece, ece_ci) = bootstrap_intervals(correct, conf, groups)
        return Calibration(conf, correct, acc, acc_ci, ece, ece_ci, T, how)

    def metrics(self, temperature: float | None = None) -> dict:
        """metrics.json: `ece` is the one ECE (`Calibration`), with `ece_ci`, and `accuracy_ci`; the cross-fitted
        (`ece_temperature_scaled`) and T = 1 (`ece_uncalibrated`) figures stay for scripts that read them."""
        from ..scoring.calibrate import ECE_BINS, classification_metrics, top_label_ece

        T, source = self.temperature(temperature)
        out = {"n_images": len(self), "unet_calls_per_image": float(self.calls.mean()) if len(self) else 0.0,
               "temperature": T or 1.0, "temperature_source": source}  # fmt: skip
        out.update(self.shortlist_metrics())
        lab = self.labels >= 0
        if lab.any():
            sc, y, rk = self.scores[lab], self.labels[lab], self.rankings[lab]
            m = classification_metrics(sc, y, T or 1.0, rk)
            out.update({k: v for k, v in m.items() if k != "temperature"})
            cal = self.calibrated(temperature)
            out["accuracy_ci"] = list(cal.accuracy_ci)
            out["ece"] = float("nan") if cal.ece is None else cal.ece
            if T is None:
                out["ece_temperature_scaled"], out["ece_uncalibrated"] = out["ece"], m["ece"]
            elif (cf := self._cross_fitted(lab)) is not None:
                hit = rk[:, 0] == y
                out["ece_temperature_scaled"] = sum(float(top_label_ece(cf[0][g], hit[g], ECE_BINS)[0]) * len(g)
                                                    for g in cf[1]) / len(y)  # fmt: skip
            else:
                out["ece_temperature_scaled"] = float("nan")
            out["ece_ci"] = list(cal.ece_ci) if cal.ece_ci else None
            out["ece_source"] = cal.source
            out["n_labelled"] = int(lab.sum())
        return out

    @property
    def node_calls(self) -> float | None:
        """A label tree's U-Net calls per image on its coarse nodes (in `calls`); None for a flat run."""
        if not isinstance(self.settings.get("tree"), dict) or not len(self):
            return None
        return float(np.mean([int(r.get("node_calls", 0)) for r in self.records]))

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
        text = json.dumps(json_safe(metrics), indent=2)
        atomic_write_text(run_dir / "metrics.json", text)
        self.stored_metrics = json.loads(text)  # what the command line prints: the file just written, as read back

    def probabilities(self, temperature: float) -> np.ndarray:
        from ..scoring.calibrate import probabilities

        return probabilities(self.scores, temperature) if len(self) else np.zeros((0, len(self.classes)))


class CalibrationResult(DictResult):
    """What `calibrate` fitted (calibration.json: `temperature`, `platt_log_calls`, `fitted_on`, `n`), plus
    `applied_metrics` when it rewrote another run's metrics; the dict `calibrate` returned before."""

    def metrics(self) -> dict:
        return {k: self.get(k) for k in ("temperature", "platt_log_calls", "n")}


def summary_lines(metrics: dict) -> list[str]:
    """A finished run's metrics as the command line prints them: accuracy and the one ECE (see `Calibration`),
    each with its 95% bootstrap interval over images and in percent, as the report shows them, then the U-Net
    calls per image, split into shortlist and decider for a cascade."""
    lines = [f"images: {metrics.get('n_images', 0)}" + (f" ({metrics['n_labelled']} labelled)" if "n_labelled" in metrics else "")]
    if metrics.get("accuracy") is not None:
        extra = "".join(f"; {name} {pct(metrics[k])}" for k, name in (("top5", "top-5"),
                        ("mean_per_class_accuracy", "mean per class")) if metrics.get(k) is not None)  # fmt: skip
        lines.append(f"accuracy [95% CI]: {with_ci(metrics['accuracy'], metrics.get('accuracy_ci'))}{extra}")
        ece = metrics.get("ece")
        lines.append(f"ECE [95% CI]: {with_ci(ece, metrics.get('ece_ci'))} ({metrics.get('ece_source', '?')})"
                     if ece is not None and np.isfinite(ece) else f"ECE: – ({metrics.get('ece_source', 'not measured')})")  # fmt: skip
    else:
        lines.append("accuracy: – (no labelled images)")
    calls = f"U-Net calls/image: {calls_text(metrics.get('unet_calls_per_image', 0.0))}"
    if "shortlist_keep" in metrics:
        by = metrics["shortlist_scorer"] + ("" if metrics["shortlist_scorer"] == "self" else f" ({metrics['shortlist_model']})")
        calls += (f" = {calls_text(metrics['shortlist_calls_per_image'])} shortlist (top {metrics['shortlist_keep']} by "
                  f"{by}) + {calls_text(metrics['decider_calls_per_image'])} decider")  # fmt: skip
        if metrics.get("contrastive_forwards_per_image"):
            calls += f"; {calls_text(metrics['contrastive_forwards_per_image'])} contrastive forwards/image"
        if "shortlist_recall" in metrics:
            calls += f"; true class shortlisted for {pct(metrics['shortlist_recall'])} of labelled images"
    lines.append(calls)
    return lines

"""Results in clip_benchmark's JSON result format, so a diffusion row and a CLIP row sit in one table.

clip_benchmark's `eval` writes one JSON object per (dataset, model) run:
`{"dataset", "model", "pretrained", "task", "metrics", "language"}` (+ "classnames" / "templates" when asked),
with metrics {"acc1", "acc5", "mean_per_class_recall"} for zero-shot classification (acc5 NaN under 5 classes)
and {"image_acc", "text_acc", "acc"} for image-caption selection (Winoground, SugarCrepe; "acc" is the group
score). Its `build` command flattens a folder of them into one CSV; `clip_benchmark_rows` does the same here.
The file is written as clip_benchmark writes it, NaN included (Python's json reads it back; strict parsers do
not), since a table built from both kinds of file must not tell them apart.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import DiffdiscError
from ..runs.io import atomic_write_text

CLASSIFICATION, SELECTION = "zeroshot_classification", "image_caption_selection"
DEFAULT_PRETRAINED = "diffdisc"  # clip_benchmark's "pretrained" names the weights; ours say who scored them


def clip_benchmark_dataset(name: str) -> str:
    """Our dataset name (aliases too) -> clip_benchmark's `dataset_name`."""
    from ..data.benchmarks import ALIASES, BENCHMARKS
    from ..data.winoground import MATCH_BENCHMARKS

    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key in BENCHMARKS or key in MATCH_BENCHMARKS:
        return key
    raise DiffdiscError(f"unknown dataset {name!r}; known: {', '.join(sorted(BENCHMARKS) + list(MATCH_BENCHMARKS))}")


def _value(v):
    return v["mean"] if isinstance(v, dict) and "mean" in v else v


def clip_benchmark_metrics(metrics: dict, task: str, n_classes: int | None = None) -> dict:
    """Our metrics (classify's metrics.json, match's) -> clip_benchmark's names; theirs pass through.

    Classification: acc1 = accuracy, acc5 = top5 (NaN under 5 classes, as clip_benchmark has it),
    mean_per_class_recall = mean_per_class_accuracy (both the mean recall over the classes with images).
    Selection: text_acc / image_acc / acc = the text / image / group score. One-image groups (SugarCrepe)
    have no image score: clip_benchmark counts its only image as always found (image_acc 1) and acc = text_acc.
    """
    if task == CLASSIFICATION:
        if "acc1" in metrics:
            return dict(metrics)
        try:
            acc5 = float("nan") if n_classes is not None and n_classes < 5 else float(metrics["top5"])
            return {"acc1": float(metrics["accuracy"]), "acc5": acc5,
                    "mean_per_class_recall": float(metrics["mean_per_class_accuracy"])}  # fmt: skip
        except KeyError as e:
            raise DiffdiscError(f"no {e.args[0]!r} in the metrics: a classification run without labels has none") from None
    if task == SELECTION:
        if "acc" in metrics:
            return dict(metrics)
        if "text" not in metrics:
            raise DiffdiscError("no text score in the metrics: they are not a Winoground-style match run's")
        text = float(_value(metrics["text"]))
        if "image" not in metrics:
            return {"image_acc": 1.0, "text_acc": text, "acc": text}
        return {"image_acc": float(_value(metrics["image"])), "text_acc": text, "acc": float(_value(metrics["group"]))}
    raise DiffdiscError(f"task {task!r}: only {CLASSIFICATION} and {SELECTION} are written")


def clip_benchmark_filename(dataset: str, model: str, pretrained: str = DEFAULT_PRETRAINED, language: str = "en",
                            task: str | None = None) -> str:  # fmt: skip
    """clip_benchmark's default output name, "{dataset}_{pretrained}_{model}_{language}_{task}.json"."""
    from clip_benchmark.datasets.builder import get_dataset_default_task

    name = clip_benchmark_dataset(dataset)
    task = task or get_dataset_default_task(name)
    return "_".join(str(x).replace("/", "_") for x in (name, pretrained, model, language, task)) + ".json"


def write_clip_benchmark_json(path: str | Path, dataset: str, model_label: str, metrics: dict, *,
                              pretrained: str = DEFAULT_PRETRAINED, task: str | None = None, language: str = "en",
                              n_classes: int | None = None, classnames: list[str] | None = None,
                              templates: list[str] | None = None, extra: dict | None = None) -> Path:  # fmt: skip
    """Write one clip_benchmark result file; returns its path (`path` may be a folder: the default name in it).

    `metrics` in our names or theirs (`clip_benchmark_metrics`); `task` defaults to clip_benchmark's for the
    dataset; `classnames` / `templates` are stored as its --dump_classnames / --dump_templates store them
    (templates with its "{c}"); `extra` (flat numbers: U-Net calls per image, images) goes beside them, a
    column of its own in a built table.
    """
    from clip_benchmark.datasets.builder import get_dataset_default_task

    name = clip_benchmark_dataset(dataset)
    task = task or get_dataset_default_task(name)
    if n_classes is None and classnames is not None:
        n_classes = len(classnames)
    dump = {"dataset": name, "model": str(model_label), "pretrained": pretrained, "task": task,
            "metrics": clip_benchmark_metrics(metrics, task, n_classes), "language": language}  # fmt: skip
    if classnames:
        dump["classnames"] = list(classnames)
    if templates:
        dump["templates"] = [t.replace("{}", "{c}") for t in templates]
    for k, v in (extra or {}).items():
        if k in dump:
            raise DiffdiscError(f"extra field {k!r} would replace clip_benchmark's own")
        dump[k] = v
    path = Path(path)
    if path.is_dir():
        path = path / clip_benchmark_filename(name, str(model_label), pretrained, language, task)
    atomic_write_text(path, json.dumps(dump))
    return path


def read_clip_benchmark_json(path: str | Path) -> dict:
    """One result file, ours or clip_benchmark's (NaN accepted, as its writer emits it)."""
    try:
        d = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DiffdiscError(f"cannot read {path} ({type(e).__name__}: {e})") from None
    missing = [k for k in ("dataset", "model", "pretrained", "task", "metrics") if k not in d] if isinstance(d, dict) else ["an object"]
    if missing:
        raise DiffdiscError(f"{path} is not a clip_benchmark result (no {', '.join(missing)})")
    return d


def clip_benchmark_rows(paths) -> list[dict]:
    """Rows as clip_benchmark's `build` makes them: metrics flattened beside the other fields,
    model_fullname = "model pretrained"; a folder stands for its *.json files. NaN stays NaN."""
    files: list[Path] = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        p = Path(p)
        files += sorted(p.glob("*.json")) if p.is_dir() else [p]
    rows = []
    for f in files:
        d = read_clip_benchmark_json(f)
        row = {**d["metrics"], **{k: v for k, v in d.items() if k != "metrics"}}
        row["model_fullname"] = f"{row['model']} {row['pretrained']}"
        rows.append(row)
    return rows

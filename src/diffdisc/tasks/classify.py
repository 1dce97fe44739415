"""Zero-shot classification: one diffusion model, a folder of images, a list of classes.

Pure function of (backbone, data, configs): no globals. Images stream through in chunks; each finished
chunk is appended to the run's result store before the next starts, so a killed run loses at most the
chunk in flight and a rerun of the same call resumes.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..backbones.base import Backbone
from ..config import ConfigMixin
from ..data.folders import ImageDataset, Item, open_image_dataset, stratified_subset
from ..data.images import open_image, resize_note, to_tensor
from ..data.templates import fill, resolve_templates
from ..errors import DiffdiscError
from ..results import ClassificationResult
from ..runs.store import RunStore
from ..scoring.adaptive import evaluate, ranked_scores
from ..scoring.calibrate import model_temperature, temperature_key
from ..scoring.config import AdaptiveConfig, ScoreConfig
from ..scoring.engine import ScoringEngine
from ..scoring.scorers import is_contrastive


@dataclass(frozen=True)
class Candidates:
    """Classes, the condition keys given to the backbone, and which keys belong to which class."""

    classes: list[str]
    keys: list  # prompts (text backbones) or class ids (class-conditional)
    groups: list[list[int]]
    templates: tuple[str, ...] = ()


def build_candidates(backbone: Backbone, classes: list[str] | None, templates=None) -> Candidates:
    info = backbone.info
    classes = list(classes) if classes else list(info.class_names)
    if not classes:
        raise DiffdiscError("no classes given (pass --classes or use a model that records its class names)")
    classes = [c.strip() for c in classes]
    if any(not c for c in classes):
        raise DiffdiscError("empty class name in the class list")
    low = [c.lower() for c in classes]
    dup = sorted({c for c in low if low.count(c) > 1})
    if dup:
        raise DiffdiscError(f"duplicate class names: {', '.join(dup)}")
    if info.conditioning == "class":
        return Candidates(classes, [backbone.class_id(c) for c in classes], [[i] for i in range(len(classes))])
    tpl = resolve_templates(templates, tuple(info.metadata.get("templates", ())) or None)
    keys = [fill(t, c) for c in classes for t in tpl]
    n = len(tpl)
    return Candidates(classes, keys, [list(range(i * n, (i + 1) * n)) for i in range(len(classes))], tpl)


@dataclass(frozen=True)
class ClassifyConfig(ConfigMixin):
    """What `classify` does: the `classes` (None: the data's folder names for text models, else the model's) and
    prompt `templates` (text models), how one error is computed (`score`) and which candidates get which
    timesteps (`adaptive`), the `labels_csv` of a flat folder, `on_error` (fail | skip unreadable images),
    `chunk_images` scored together (speed and resume granularity, not scores), a `limit` subset (stratified by
    label, seeded by `limit_seed`, not by the noise seed, so runs that differ in seed or strategy score the same
    images) and the softmax `temperature` of the metrics.

    Not saved as such: run.json stores what changes a number in its own, older form (score and adaptive as
    their `to_dict()`), so `from_dict` of this config's `to_dict()` would not rebuild the nested configs."""

    config_label = "classify config"

    classes: tuple[str, ...] | None = None
    templates: str | tuple[str, ...] | None = None
    score: ScoreConfig = ScoreConfig()
    adaptive: AdaptiveConfig = AdaptiveConfig()
    labels_csv: str | Path | None = None
    on_error: str = "fail"
    chunk_images: int = 16
    limit: int | None = None
    limit_seed: int = 0
    temperature: float | None = None

    def __post_init__(self):
        if self.on_error not in ("fail", "skip"):
            raise DiffdiscError(f"on_error must be 'fail' or 'skip', got {self.on_error!r}")
        for name in ("classes", "templates"):  # lists as tuples: a frozen config holds no mutable field
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                object.__setattr__(self, name, tuple(v))
        object.__setattr__(self, "score", self.score or ScoreConfig())  # None: the defaults, as before
        object.__setattr__(self, "adaptive", self.adaptive or AdaptiveConfig())


def classify(
    backbone: Backbone,
    data: str | Path | ImageDataset,
    config: ClassifyConfig | None = None,
    *,
    out: str | Path | None = None,
    progress: Callable[[dict], None] | None = None,
    rank: int = 0,
    world_size: int = 1,
    **overrides,
) -> ClassificationResult:
    """Classify every image of `data`; results (and metrics, if labelled) go to `out` (a temp dir if None).

    `rank` / `world_size`: this process's shard of a multi-process run (which images it scores, not how).
    `overrides` (classes=, score=, adaptive=, limit=, ...) replace fields of `config`: the keyword calls made
    before `ClassifyConfig` existed still work. Images not of the model's size are resized; `result.notes`
    says so, once.
    """
    cfg = replace(config or ClassifyConfig(), **overrides)
    score, adaptive, labels_csv, temperature = cfg.score, cfg.adaptive, cfg.labels_csv, cfg.temperature
    classes = cfg.classes
    ds = data if isinstance(data, ImageDataset) else open_image_dataset(data, labels_csv)
    if not classes and ds.class_names and backbone.info.conditioning == "text":
        classes = ds.class_names
    cand = build_candidates(backbone, classes or None, cfg.templates)
    labels = ds.label_index(cand.classes)
    keep = stratified_subset(labels, cfg.limit, cfg.limit_seed)
    items = [(i, (ds.items[i], labels[i])) for i in keep]  # i: the image's place in the folder, the run's order
    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="diffdisc-"))
    settings = {  # every input that changes a number (docs/methods.md, "What a run directory guards")
        "task": "classify",
        "model": {"name": backbone.info.name, "fingerprint": backbone.info.fingerprint, "label": backbone.info.label},
        "data": str(Path(ds.root).resolve()),
        "labels": _file_identity(labels_csv),
        "classes": cand.classes,
        "candidates": cand.classes,
        "prompts": [str(k) for k in cand.keys],
        "score": score.to_dict(),
        "adaptive": adaptive.to_dict(),
        "temperature": temperature,
        "model_temperature": model_temperature(backbone.info.metadata, temperature_key(score, is_contrastive(backbone))),
    }
    # the store stays locked until the last chunk is saved; the engine gives the backbone back as it came
    with RunStore(out, "classify", settings, rank=rank) as store, contextlib.ExitStack() as stack:
        done = store.done()
        todo = [(i, it, y) for i, (it, y) in items if i % world_size == rank and it.image_id not in done]
        engine = stack.enter_context(ScoringEngine(backbone, score))
        conds = backbone.conditions(cand.keys)
        sizes: Counter = Counter()  # source (w, h) of the images read, for one resize note
        stats = {"done": len(done), "total": len(items), "calls": 0, "correct": 0, "labelled": 0, "images": 0, "start": time.time(), "skipped": []}
        for s in range(0, len(todo), cfg.chunk_images):
            chunk = todo[s : s + cfg.chunk_images]
            tensors, kept = _load(chunk, backbone, cfg.on_error, stats["skipped"], sizes)
            if not kept:
                continue
            x0 = backbone.encode(torch.stack(tensors))
            keys = [it.image_id for _, it, _ in kept]
            res = evaluate(engine, x0, keys, conds, adaptive, cand.groups)
            records = []
            for (i, it, y), r in zip(kept, res, strict=True):
                ranked = r.ranking()  # once: prediction, stored ranking and scores all follow it
                records.append({
                    "image_id": it.image_id, "order": i, "path": str(it.path), "label": y, "pred": ranked[0],
                    "ranking": ranked, "scores": ranked_scores(r.errors, ranked), "n_calls": r.n_calls, "calls": r.calls,
                    "timesteps": r.timesteps, "errors": r.error_matrix(),
                })  # fmt: skip
                stats["calls"] += r.calls
                stats["images"] += 1
                if y is not None:
                    stats["labelled"] += 1
                    stats["correct"] += int(ranked[0] == y)
            store.append(records)
            stats["done"] += len(chunk)
            if progress:
                progress(stats)
    result = ClassificationResult.load(out)
    if not len(result) and stats["skipped"]:
        first = stats["skipped"][0][1]
        raise DiffdiscError(f"no image could be read ({len(stats['skipped'])} skipped; first: {first}): nothing was classified")
    result.notes = [n for n in [resize_note(sizes, backbone.info.image_size)] if n]
    selected = {it.image_id for _, (it, _) in items}
    if len(result) > len(selected):
        result.notes.append(f"{out} holds {len(result)} finished images, more than the {len(selected)} selected now "
                            f"(--limit); the metrics cover all {len(result)}")  # fmt: skip
    # With several processes the last one to finish sees every shard complete and merges
    # (merging twice is harmless: the files are written atomically); otherwise `diffdisc merge`.
    if world_size == 1 or len(result) + len(stats["skipped"]) >= len(items):
        finalize(out, result, temperature)
    result.skipped = stats["skipped"]
    return result


def finalize(out: Path, result: ClassificationResult, temperature: float | None = None) -> dict:
    metrics = result.metrics(temperature)
    result.write(out, metrics)
    return metrics


def _file_identity(path: str | Path | None) -> dict | None:
    """Path and content hash of an input file (a labels CSV): another file, or the same one edited, is another run."""
    if path is None:
        return None
    p = Path(path)
    try:
        digest = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    except OSError as e:
        raise DiffdiscError(f"cannot read {p}: {e.strerror or e}") from None
    return {"path": str(p.resolve()), "sha256": digest}


def _load(chunk: list[tuple[int, Item, int | None]], backbone: Backbone, on_error: str, skipped: list, sizes: Counter):
    tensors, kept = [], []
    size, ch = backbone.info.image_size, backbone.info.image_channels
    for i, it, y in chunk:
        try:
            im = open_image(it.path)
            tensors.append(to_tensor(im, size, ch))
            sizes[im.size] += 1
            kept.append((i, it, y))
        except DiffdiscError as e:
            if on_error == "fail":
                raise DiffdiscError(f"{e} (use --on-error skip to skip unreadable images)") from None
            skipped.append((it.image_id, str(e)))
    return tensors, kept

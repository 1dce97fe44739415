"""Zero-shot classification: one diffusion model, a folder of images, a list of classes.

Pure function of (backbone, data, configs): no globals. Images stream through in chunks; each finished
chunk is appended to the run's result store before the next starts, so a killed run loses at most the
chunk in flight and a rerun of the same call resumes.

With `shortlist=K` a cheap scorer (the same model at a few timesteps, a contrastive model, a fitted features
head) ranks every candidate first and the run's own strategy decides among each image's top K
(`scoring.cascade`); both stages' costs are charged to the image.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..backbones.base import Backbone
from ..config import SPEED_ONLY, ConfigMixin
from ..data.folders import ImageDataset, Item, open_image_dataset, stratified_subset
from ..data.images import resize_note, to_tensor
from ..errors import DiffdiscError
from ..results import ClassificationResult
from ..runs.store import RUNTIME_KEYS, RunStore
from ..scoring.adaptive import ranked_scores
from ..scoring.calibrate import model_temperature, temperature_key
from ..scoring.cascade import Cascade, FeatureHead, Stage
from ..scoring.config import AdaptiveConfig, ScoreConfig
from ..scoring.engine import ScoringEngine
from ..scoring.hierarchy import TreeStage
from ..scoring.schedule import check_sigma_grid, dc_grid
from ..scoring.scorers import is_contrastive, make_scorer
from .candidates import Candidates, build_candidates  # noqa: F401 (Candidates: part of this module's API)
from .shortlist import make_shortlist

log = logging.getLogger("diffdisc")


@dataclass(frozen=True)
class ClassifyConfig(ConfigMixin):
    """What `classify` does: the `classes` (None: the data's folder names for text models, else the model's) and
    prompt `templates` (text models), how one error is computed (`score`) and which candidates get which
    timesteps (`adaptive`), the `labels_csv` of a flat folder, `on_error` (fail | skip unreadable images),
    `chunk_images` scored together (speed and resume granularity, not scores), a `limit` subset (stratified by
    label, seeded by `limit_seed`, not by the noise seed, so runs that differ in seed or strategy score the same
    images) and the softmax `temperature` of the metrics. `shortlist` (K): a cheap scorer (`classify`'s
    `shortlist_model`) keeps each image's top K candidates for the strategy to decide among; a diffusion cheap
    scorer scores every candidate at `shortlist_timesteps` evenly spaced t. `tree` (HDC: `auto`, `wordnet` or a
    JSON file, `scoring.label_tree.load_tree`): score the label tree's coarse nodes first and expand the best
    `beam` per level (auto trees: `tree_branching` children, `tree_top` top-level clusters; `tree_prompt`: a
    template for the coarse nodes' prompts, else the mean of their leaves' conditions).

    Not saved as such: run.json stores what changes a number in its own, older form (score and adaptive as
    their `to_dict()`); `from_dict(to_dict())` still gives this config back, nested configs included."""

    config_label = "classify config"

    classes: tuple[str, ...] | None = None
    templates: str | tuple[str, ...] | None = None
    score: ScoreConfig = ScoreConfig()
    adaptive: AdaptiveConfig = AdaptiveConfig()
    labels_csv: str | Path | None = None
    on_error: str = "fail"
    chunk_images: int = field(default=16, metadata=SPEED_ONLY)
    limit: int | None = None
    limit_seed: int = 0
    temperature: float | None = None
    shortlist: int | None = None
    shortlist_timesteps: int = 2
    tree: str | None = None
    beam: int = 1
    tree_branching: int = 4
    tree_top: int | None = None
    tree_prompt: str | None = None

    def __post_init__(self):
        if self.beam < 1:
            raise DiffdiscError(f"beam must be >= 1, got {self.beam}")
        if self.on_error not in ("fail", "skip"):
            raise DiffdiscError(f"on_error must be 'fail' or 'skip', got {self.on_error!r}")
        if self.shortlist is not None and self.shortlist < 1:
            raise DiffdiscError(f"shortlist must keep at least 1 candidate per image, got {self.shortlist}")
        if self.shortlist_timesteps < 1:
            raise DiffdiscError(f"shortlist_timesteps must be >= 1, got {self.shortlist_timesteps}")
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
    shortlist_model: Backbone | FeatureHead | str | None = None,
    **overrides,
) -> ClassificationResult:
    """Classify every image of `data`; results (and metrics, if labelled) go to `out` (a temp dir if None).

    `rank` / `world_size`: this process's shard of a multi-process run (which images it scores, not how).
    `overrides` (classes=, score=, adaptive=, limit=, ...) replace fields of `config`: the keyword calls made
    before `ClassifyConfig` existed still work. Images not of the model's size are resized; `result.notes`
    says so, once. `shortlist_model`, the cheap scorer of `config.shortlist`: None or "self" (`backbone` at
    `shortlist_timesteps` t), another loaded backbone (a contrastive model, or a diffusion model at those t),
    or a `FeatureHead` fitted on `backbone`'s features.
    """
    cfg = replace(config or ClassifyConfig(), **overrides)
    score, adaptive, labels_csv, temperature = cfg.score, cfg.adaptive, cfg.labels_csv, cfg.temperature
    classes = cfg.classes
    ds = data if isinstance(data, ImageDataset) else open_image_dataset(data, labels_csv)
    if not classes and ds.class_names and backbone.info.conditioning == "text":
        classes = ds.class_names
    benchmark = getattr(ds, "name", None) and {"name": ds.name, "split": ds.split}  # a `--dataset`: its ids repeat
    cand = build_candidates(backbone, classes or None, cfg.templates, allow_duplicates=bool(benchmark))
    if len(cand.classes) == 1:
        log.warning("one candidate class (%s): every image gets it, so accuracy is the share of images labelled "
                    "so and the scores decide nothing; give at least two classes", cand.classes[0])  # fmt: skip
    weights = _timestep_weights(backbone, score, adaptive, ds)
    check_scoring(backbone, score, adaptive, weights)  # before `out` exists: a corrected rerun starts clean
    cheap = make_shortlist(backbone, cand, cfg, shortlist_model)
    if cheap is not None and cheap.kind != "head":
        check_scoring(cheap.model, cheap.score, cheap.adaptive)
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
        # fitted on unweighted scores: no model temperature for a run with learned timestep weights
        "model_temperature": None if weights else model_temperature(backbone.info.metadata,
                                                                      temperature_key(score, is_contrastive(backbone))),
    }  # fmt: skip
    if weights is not None:
        settings["timestep_weights"] = _file_identity(adaptive.timestep_weights)
    if benchmark:
        settings["benchmark"] = benchmark
    tree = _tree(backbone, cand, cfg)
    if tree is not None:  # its outline: another tree (or beam) is another run
        settings["tree"] = {"tree": tree.to_dict(), "beam": cfg.beam}
    if cheap is not None:  # only then: a run without one has the settings it always had
        settings["shortlist"] = cheap.settings
    # speed-only settings (compile, channels_last, batch size) may change on a resume
    runtime = RUNTIME_KEYS | ScoreConfig.speed_only_keys("score", "shortlist.score")
    # the store stays locked until the last chunk is saved; the engine gives the backbone back as it came
    with RunStore(out, "classify", settings, rank=rank, runtime_keys=runtime) as store, contextlib.ExitStack() as stack:
        done = store.done()
        todo = [(i, it, y) for i, (it, y) in items if i % world_size == rank and it.image_id not in done]
        engine = stack.enter_context(ScoringEngine(backbone, score))
        conds = backbone.conditions(cand.keys)
        if cheap is not None:
            cheap.open(engine, conds, stack)
        shapes = [(backbone.info.image_size, backbone.info.image_channels)] + ([cheap.shape] if cheap and cheap.shape else [])
        sizes: Counter = Counter()  # source (w, h) of the images read, for one resize note
        peeked = Counter(filter(None, (ds.header_size(it) for _, it, _ in todo)))
        if note := resize_note(peeked, backbone.info.image_size):  # said before the run, from the headers
            log.warning("note: %s", note)
        stats = {"done": len(done), "total": len(items), "calls": 0, "correct": 0, "labelled": 0, "images": 0, "start": time.time(), "skipped": []}
        for s in range(0, len(todo), cfg.chunk_images):
            chunk = todo[s : s + cfg.chunk_images]
            tensors, kept = _load(ds, chunk, shapes, cfg.on_error, stats["skipped"], sizes)
            if not kept:
                continue
            pixels = torch.stack(tensors[0])
            x0 = backbone.encode(pixels)
            keys = [it.image_id for _, it, _ in kept]
            if tree is not None:
                decide = TreeStage(engine, x0, conds, tree, cand.groups, adaptive, cfg.beam, weights)
            else:
                decide = Stage(engine, x0, conds, cand.groups, adaptive, weights)
            if cheap is None:
                res = [(r, _tree_extra(r)) for r in decide.evaluate(keys)]
            else:
                cheap_pixels = torch.stack(tensors[1]) if cheap.shape else pixels
                cascade = Cascade(cheap.stage(x0, cheap_pixels), decide, cheap.keep)
                res = [(c.scores, {"calls": c.calls, "shortlist": c.shortlist, "shortlist_calls": c.cheap_calls,
                                   "contrastive_forwards": c.cheap_forwards}) for c in cascade.run(keys)]  # fmt: skip
            records = []
            for (i, it, y), (r, extra) in zip(kept, res, strict=True):
                ranked = r.ranking()  # once: prediction, stored ranking and scores all follow it
                records.append({
                    "image_id": it.image_id, "order": i, "path": str(it.path), "label": y, "pred": ranked[0],
                    "ranking": ranked, "scores": ranked_scores(r.errors, ranked, weights), "n_calls": r.n_calls, "calls": r.calls,
                    "timesteps": r.timesteps, "errors": r.error_matrix(), **extra,
                })  # fmt: skip
                stats["calls"] += records[-1]["calls"]
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
    result.announced = [note] if note else []  # notes already logged before the run
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


def check_scoring(backbone: Backbone, score: ScoreConfig, adaptive: AdaptiveConfig, weights=None) -> None:
    """Every refusal scoring would make, made up front: a scorer or weighting the model cannot score, a σ grid of
    an ε-model, more timesteps than the model has or than learned `weights` rank. Run before the run directory
    is made, so a refused setting never reaches run.json and the corrected command resumes the same --out."""
    if not make_scorer(backbone, score).needs_noise:
        return  # a contrastive model: one score per candidate, no timesteps
    check_sigma_grid(backbone, adaptive.sigmas)
    sizes = {"exhaustive": [adaptive.n_timesteps], "halving": [n for n, _ in adaptive.stages]}.get(adaptive.strategy, [])
    for n in sizes:  # the t-test takes at most what there is
        if weights is not None:
            weights.ordered_grid(n)
        else:
            dc_grid(backbone.num_train_timesteps, n)


def _timestep_weights(backbone: Backbone, score: ScoreConfig, adaptive: AdaptiveConfig, ds: ImageDataset):
    """The run's learned timestep weights (None: the fixed schedules), refused when fitted for another model or
    score, or on this very folder (they are fitted on training images, never on the images they classify)."""
    if not adaptive.timestep_weights:
        return None
    from ..scoring.timestep_weights import TimestepWeights

    w = TimestepWeights.load(adaptive.timestep_weights)
    w.check(backbone, score, adaptive.sigmas, data=ds.root)
    return w


def _tree(backbone: Backbone, cand: Candidates, cfg: ClassifyConfig):
    """The run's label tree (None: flat), built once per run (an auto tree from the candidates' conditions)."""
    if not cfg.tree:
        return None
    from ..scoring.label_tree import load_tree

    conds = backbone.conditions(cand.keys)
    tree = load_tree(cfg.tree, cand.classes, backbone, conds, cand.groups, branching=cfg.tree_branching, top=cfg.tree_top)
    if cfg.tree_prompt:
        tree.with_prompts(cfg.tree_prompt)
    return tree


def _tree_extra(r) -> dict:
    """What a tree search spent above the leaves, for the record (nothing for a flat run)."""
    if not hasattr(r, "node_calls"):
        return {}
    return {"node_calls": int(sum(r.node_calls.values())), "expanded": list(r.expanded)}


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


def _load(ds: ImageDataset, chunk: list[tuple[int, Item, int | None]], shapes: list[tuple[int, int]], on_error: str,
          skipped: list, sizes: Counter):  # fmt: skip
    """The chunk's readable images as tensors at each (size, channels) of `shapes` (the decider's, the cheap
    stage's), and the items they belong to."""
    tensors, kept = [[] for _ in shapes], []
    for i, it, y in chunk:
        try:
            im = ds.open(it)
            row = [to_tensor(im, size, ch) for size, ch in shapes]
        except DiffdiscError as e:
            if on_error == "fail":
                raise DiffdiscError(f"{e} (use --on-error skip to skip unreadable images)") from None
            skipped.append((it.image_id, str(e)))
            continue
        for out, x in zip(tensors, row, strict=True):
            out.append(x)
        sizes[im.size] += 1
        kept.append((i, it, y))
    return tensors, kept

"""Zero-shot classification: one diffusion model, a folder of images, a list of classes.

Pure function of (backbone, data, configs): no globals. Images stream through in chunks; each finished
chunk is appended to the run's result store before the next starts, so a killed run loses at most the
chunk in flight and a rerun of the same call resumes.

Which candidates get which timesteps is one search (`scoring.search`): the flat options (a strategy, a label
tree, a shortlist, learned timestep weights) stand for a composed one (`ClassifyConfig.search_config`), or
`search=` gives any, nested as wished. With a cascade, a cheap scorer (the same model at a few timesteps, a
contrastive model, a fitted features head) ranks every candidate first and the rest of the search decides
among each image's top K; both stages' costs are charged to the image.
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
from ..backbones.capabilities import Capability
from ..config import SPEED_ONLY, ConfigMixin
from ..data.folders import ImageDataset, Item, open_image_dataset, stratified_subset
from ..data.images import resize_note, to_tensor
from ..errors import DiffdiscError
from ..features.shortlist import FeatureHead
from ..results import ClassificationResult
from ..runs.store import RUNTIME_KEYS, UNUSED, RunStore, model_identity
from ..scoring.calibrate import model_temperature, temperature_key
from ..scoring.config import AdaptiveConfig, ScoreConfig
from ..scoring.engine import ScoringEngine
from ..scoring.schedule import check_sigma_grid, dc_grid
from ..scoring.scorers import make_scorer
from ..scoring.search import (
    CascadeConfig,
    ExhaustiveConfig,
    Inputs,
    LearnedOrderConfig,
    SearchConfig,
    SearchContext,
    Tree,  # fmt: skip
    TreeConfig,
    from_adaptive,
)
from ..scoring.search.base import GridConfig, ranked_scores
from ..scoring.timestep_weights import TimestepWeights
from . import auto_strategy
from .candidates import Candidates, build_candidates  # noqa: F401 (Candidates: part of this module's API)
from .noise_fit import load_for_run
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
    scorer scores every candidate at `shortlist_timesteps` evenly spaced t (the same model: those of the strategy's
    own grid, whose errors it reuses). `tree` (HDC: `auto`, `wordnet` or a
    JSON file, `scoring.label_tree.load_tree`): score the label tree's coarse nodes first and expand the best
    `beam` per level (auto trees: `tree_branching` children, `tree_top` top-level clusters; `tree_prompt`: a
    template for the coarse nodes' prompts, else the mean of their leaves' conditions). `noise`: a learned noise
    file (`diffdisc noise fit`, `scoring.learned_noise`): ε_t from it for every image instead of random draws.

    `validation`: a labelled folder sharing no image with the data (`tasks.auto_strategy`), on which `auto` picks
    the search (the cheapest of a fixed list within `auto_tolerance` of the best accuracy) and the ensemble's
    weight is fitted. `ensemble_weight`: log-linear pooling with `classify`'s `ensemble_model`, a contrastive
    model (`scoring.ensemble`): w in [0, 1] (1: the diffusion model alone) or "auto" (fitted on `validation`).

    `search`: the whole search as one nested config (`scoring.search`, e.g. a cascade whose decider is a tree
    running halving) instead of the flat options adaptive, tree and shortlist.

    run.json records it whole (`RunStore`), with what the run resolved it to (classes, prompts, the tree's
    outline, the shortlist's model) in place of the fields of those names."""

    config_label = "classify config"

    classes: tuple[str, ...] | None = None
    templates: str | tuple[str, ...] | None = None
    score: ScoreConfig = ScoreConfig()
    adaptive: AdaptiveConfig = AdaptiveConfig()
    # which images, and how an unreadable one is handled, never a score: a resume may change them (the labels'
    # content is guarded as the run's "labels" identity)
    labels_csv: str | Path | None = field(default=None, metadata=SPEED_ONLY)
    on_error: str = field(default="fail", metadata=SPEED_ONLY)
    chunk_images: int = field(default=16, metadata=SPEED_ONLY)
    limit: int | None = field(default=None, metadata=SPEED_ONLY)
    limit_seed: int = field(default=0, metadata=SPEED_ONLY)
    temperature: float | None = None
    shortlist: int | None = None
    shortlist_timesteps: int = 2
    tree: str | None = None
    beam: int = 1
    tree_branching: int = 4
    tree_top: int | None = None
    tree_prompt: str | None = None
    search: SearchConfig | None = None
    noise: str | Path | None = None
    validation: str | Path | None = None
    auto: bool = False
    auto_tolerance: float = 0.005
    ensemble_weight: float | str | None = None

    added = ("search", "validation", "auto", "auto_tolerance", "ensemble_weight")  # runs made before have no such keys

    def __post_init__(self):
        if self.beam < 1:
            raise DiffdiscError(f"beam must be >= 1, got {self.beam}")
        if self.on_error not in ("fail", "skip"):
            raise DiffdiscError(f"on_error must be 'fail' or 'skip', got {self.on_error!r}")
        if self.shortlist is not None and self.shortlist < 1:
            raise DiffdiscError(f"shortlist must keep at least 1 candidate per image, got {self.shortlist}")
        if self.shortlist_timesteps < 1:
            raise DiffdiscError(f"shortlist_timesteps must be >= 1, got {self.shortlist_timesteps}")
        if self.ensemble_weight is not None and self.ensemble_weight != "auto":
            try:
                w = float(self.ensemble_weight)
            except ValueError:
                w = -1.0
            if not 0.0 <= w <= 1.0:
                raise DiffdiscError(f"ensemble weight must be a number in [0, 1] or auto, got {self.ensemble_weight!r}")
            object.__setattr__(self, "ensemble_weight", w)
        if not 0.0 <= self.auto_tolerance < 1.0:
            raise DiffdiscError(f"auto tolerance is a share of accuracy in [0, 1), got {self.auto_tolerance}")
        for name in ("classes", "templates"):  # lists as tuples: a frozen config holds no mutable field
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                object.__setattr__(self, name, tuple(v))
        object.__setattr__(self, "score", self.score or ScoreConfig())  # None: the defaults, as before
        object.__setattr__(self, "adaptive", self.adaptive or AdaptiveConfig())
        if self.search is not None and (self.adaptive != AdaptiveConfig() or self.tree or self.shortlist is not None):
            raise DiffdiscError("give the search either whole (search=) or by the flat options (adaptive, tree, "
                                "shortlist), not both")  # fmt: skip

    def search_config(self) -> SearchConfig:
        """The run's search: `search` as given, else what the flat options stand for: the strategy, deciding each
        level of the tree, deciding after the shortlist (`shortlist_timesteps` even t on the same σ placement),
        all on the learned timestep order when there is one."""
        if self.search is not None:
            return self.search
        a = self.adaptive
        s = from_adaptive(a, weights=False)
        if self.tree:
            s = TreeConfig(tree=self.tree, beam=self.beam, branching=self.tree_branching, top=self.tree_top,
                           prompt=self.tree_prompt, inner=s)  # fmt: skip
        if self.shortlist is not None:
            s = CascadeConfig(keep=self.shortlist, shortlist=ExhaustiveConfig(n_timesteps=self.shortlist_timesteps,
                                                                               sigmas=a.sigmas), decide=s)  # fmt: skip
        return LearnedOrderConfig(weights=a.timestep_weights, inner=s) if a.timestep_weights else s


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
    ensemble_model=None,
    **overrides,
) -> ClassificationResult:
    """Classify every image of `data`; results (and metrics, if labelled) go to `out` (a temp dir if None).

    `rank` / `world_size`: this process's shard of a multi-process run (which images it scores, not how).
    `overrides` (classes=, score=, adaptive=, limit=, ...) replace fields of `config`: the keyword calls made
    before `ClassifyConfig` existed still work. Images not of the model's size are resized; `result.notes`
    says so, once. `shortlist_model`, the cheap scorer of `config.shortlist`: None or "self" (`backbone` at
    `shortlist_timesteps` t), another loaded backbone (a contrastive model, or a diffusion model at those t),
    or a `FeatureHead` fitted on `backbone`'s features. `ensemble_model`: the contrastive model of
    `config.ensemble_weight`; with `config.auto` the search is chosen on `config.validation` first.
    """
    cfg = replace(config or ClassifyConfig(), **overrides)
    score, labels_csv, temperature = cfg.score, cfg.labels_csv, cfg.temperature
    classes = cfg.classes
    ds = data if isinstance(data, ImageDataset) else open_image_dataset(data, labels_csv)
    if not classes and ds.class_names and backbone.info.conditioning == "text":
        classes = ds.class_names
    benchmark = getattr(ds, "name", None) and {"name": ds.name, "split": ds.split}  # a `--dataset`: its ids repeat
    cand = build_candidates(backbone, classes or None, cfg.templates, allow_duplicates=bool(benchmark))
    if len(cand.classes) == 1:
        log.warning("one candidate class (%s): every image gets it, so accuracy is the share of images labelled "
                    "so and the scores decide nothing; give at least two classes", cand.classes[0])  # fmt: skip
    validated = auto_strategy.plan(backbone, ds, cand, cfg, ensemble_model, shortlist_model)  # refusals; auto's choice
    if validated.choice is not None:
        cfg = replace(cfg, search=validated.choice.search, adaptive=AdaptiveConfig())
        log.warning("%s", validated.choice.line())
        if not validated.uses_shortlist_model:  # a self cascade, or no cascade: the given model is not used
            shortlist_model = None
    search_cfg = cfg.search_config()
    learned = search_cfg.find(LearnedOrderConfig)
    weights = _timestep_weights(backbone, score, learned, ds, search_cfg)
    if learned is not None and weights is None:  # the file's own check found the plain even grid better here
        search_cfg = search_cfg.map(lambda c: c.inner if isinstance(c, LearnedOrderConfig) else c)
    check_scoring(backbone, score, search_cfg, weights)  # before `out` exists: a corrected rerun starts clean
    cheap = make_shortlist(backbone, cand, cfg, shortlist_model, weights)
    if cheap is None:  # no cascade, or one whose shortlist would keep every candidate
        search_cfg = search_cfg.map(lambda c: c.decide if isinstance(c, CascadeConfig) else c)
    elif cheap.kind != "head":
        check_scoring(cheap.model, cheap.score, cheap.search)
    noise = _learned_noise(backbone, cfg, search_cfg, weights, ds, cheap)
    labels = ds.label_index(cand.classes)
    keep = stratified_subset(labels, cfg.limit, cfg.limit_seed)
    items = [(i, (ds.items[i], labels[i])) for i in keep]  # i: the image's place in the folder, the run's order
    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="diffdisc-"))
    identity = {  # what the config resolved to on this model and data (docs/methods.md, "What a run directory guards")
        "model": model_identity(backbone.info),
        "data": str(Path(ds.root).resolve()),
        "labels": _file_identity(labels_csv),
        "classes": cand.classes,
        "candidates": cand.classes,
        "prompts": [str(k) for k in cand.keys],
        # fitted on unweighted scores of random noise: none for a run with learned timestep weights or noise
        "model_temperature": None if weights or noise else model_temperature(
            backbone.info.metadata, temperature_key(score, Capability.MATCH in backbone.capabilities)),
        "timestep_weights": _file_identity(learned.weights) if weights is not None else UNUSED,
        "noise": _file_identity(cfg.noise) if noise is not None else UNUSED,
        "benchmark": benchmark or UNUSED,
        # a search given whole as it runs (a cascade whose shortlist would keep every candidate: its decider),
        # else the flat options as the config holds them
        **({"search": search_cfg, "adaptive": UNUSED} if cfg.search is not None else {}),
    }  # fmt: skip
    auto_strategy.fit_ensemble(validated, backbone, cand, cfg, search_cfg, weights=weights, noise=noise, cheap=cheap,
                               diffusion_temperature=(identity["model_temperature"] or {}).get("value"))  # fmt: skip
    identity |= validated.identity()
    partner = validated.partner
    ctx = SearchContext(backbone, cand.classes, cand.keys, cand.groups)
    search = search_cfg.build(ctx)  # a tree is built here, once per run (an auto tree from the conditions)
    tree = next((s for s in search.walk() if isinstance(s, Tree)), None)
    # a tree by its outline (another tree or beam is another run), a shortlist by what it kept (one that would
    # keep every candidate is none); the options of either are unused without it, as before
    if tree is not None:
        identity["tree"] = {"tree": tree.tree.to_dict(), "beam": tree.beam}
    else:
        identity |= dict.fromkeys(("tree", "beam", "tree_branching", "tree_top", "tree_prompt"), UNUSED)
    if cheap is not None:
        identity["shortlist"] = cheap.settings
    else:
        identity |= dict.fromkeys(("shortlist", "shortlist_timesteps"), UNUSED)
    # the config's speed-only fields may change on a resume (the store reads them); the shortlist's score too
    runtime = RUNTIME_KEYS | ScoreConfig.speed_only_keys("shortlist.score")
    # the store stays locked until the last chunk is saved; the engine gives the backbone back as it came
    with RunStore(out, "classify", cfg, identity=identity, rank=rank, runtime_keys=runtime) as store, \
            contextlib.ExitStack() as stack:  # fmt: skip
        done = store.done()
        todo = [(i, it, y) for i, (it, y) in items if i % world_size == rank and it.image_id not in done]
        engine = stack.enter_context(ScoringEngine(backbone, score, noise=noise))
        conds = ctx.conds
        if cheap is not None:
            cheap.open(engine, conds, stack)
        shapes = [(backbone.info.image_size, backbone.info.image_channels)] + ([cheap.shape] if cheap and cheap.shape else [])
        if partner is not None:  # the ensemble model reads the images at its own size, last
            shapes.append(partner.open(stack).shape)
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
            # the cascade's cheap scorer for this chunk, its images read at its own size
            stage = cheap and cheap.stage(x0, torch.stack(tensors[1]) if cheap.shape else pixels)
            res = search(Inputs(engine, x0, conds, cand.groups, weights, cheap=stage), keys)
            con = partner.scores(torch.stack(tensors[-1]), keys) if partner is not None else None
            records = []
            for j, ((i, it, y), r) in enumerate(zip(kept, res, strict=True)):
                ranked = r.ranking()  # once: prediction, stored ranking and scores all follow it
                scores, pooled = ranked_scores(r.errors, ranked, weights), {}
                if partner is not None:  # the pooled ranking and scores; the diffusion ones kept beside them
                    ranked, scores, pooled = partner.apply(scores, ranked, con[j])
                records.append({
                    "image_id": it.image_id, "order": i, "path": str(it.path), "label": y, "pred": ranked[0],
                    "ranking": ranked, "scores": scores, "n_calls": r.n_calls, "calls": r.calls,
                    "timesteps": r.timesteps, "errors": r.error_matrix(), **r.record, **pooled,
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
    if validated.choice is not None:
        result.notes.append(validated.choice.line())
        result.announced.append(validated.choice.line())
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


def check_scoring(backbone: Backbone, score: ScoreConfig, search: SearchConfig | AdaptiveConfig, weights=None) -> None:
    """Every refusal scoring would make, made up front: a scorer or weighting the model cannot score, a σ grid of
    an ε-model, more timesteps than the model has or than learned `weights` rank, at every level of `search`.
    Run before the run directory is made, so a refused setting never reaches run.json and the corrected command
    resumes the same --out."""
    if isinstance(search, AdaptiveConfig):
        search = from_adaptive(search)
    if not make_scorer(backbone, score).needs_noise:
        return  # a contrastive model: one score per candidate, no timesteps
    for c in search.walk():
        if not isinstance(c, GridConfig):
            continue
        check_sigma_grid(backbone, c.sigmas)
        for n in c.grid_sizes():  # the t-test takes at most what there is
            if weights is not None:
                weights.ordered_grid(n)
            else:
                dc_grid(backbone.num_train_timesteps, n)


def _timestep_weights(backbone: Backbone, score: ScoreConfig, learned: LearnedOrderConfig | None, ds: ImageDataset,
                      search: SearchConfig | None = None):  # fmt: skip
    """The run's learned timestep weights (None: the fixed schedules, also where the file's own held-out check
    found the plain even grid better at the run's budget: a warning says so), refused when fitted for another
    model or score, or on this very folder (they are fitted on training images, never on the images they
    classify)."""
    if learned is None:
        return None
    w = TimestepWeights.load(learned.weights)
    sigmas = next((c.sigmas for c in learned.walk() if isinstance(c, GridConfig)), "scheduler")
    w.check(backbone, score, sigmas, data=ds.root)
    return w if search is None else w.for_run(search)


def _learned_noise(backbone: Backbone, cfg: ClassifyConfig, search: SearchConfig, weights, ds: ImageDataset, cheap):
    """The run's learned noise (None: random draws), refused for another model or score, the folder it was fitted
    on, or a timestep of the run (a self shortlist's included) it has no noise for."""
    if not cfg.noise:
        return None
    extra = (cheap.settings.get("timesteps") or ()) if cheap is not None and cheap.kind == "self" else ()
    return load_for_run(cfg.noise, backbone, cfg.score, search, weights, data=ds.root, extra=extra)


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

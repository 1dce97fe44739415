"""Diffusion features as a task (Mukhopadhyay et al.): sweep (block, t), pick on validation, test once.

`sweep` extracts the pooled activations of every requested block at every timestep (T forwards per
image, cached), fits the same head on each cell using a validation split carved from the training data,
picks the best cell by validation accuracy only, and only then extracts and scores the test images, at that
one cell. `probe` scores a fixed cell or a fusion of cells; `compare` puts the same head on diffusion
features, raw pixels and a contrastive model's image embeddings.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..config import ConfigMixin
from ..data.labelled import LabelledImages
from ..errors import DiffdiscError
from ..features.cache import FeatureCache, cached_features, model_fingerprint
from ..features.heads import FittedHead, HeadConfig, fit_head, stratified_split
from ..features.pooling import keeps_tokens, parse_pooling
from ..features.taps import ExtractStats, check_timesteps, resolve_blocks
from ..results.feature_probe import FeatureProbeResult, ProbeScores
from ..results.sweep import SweepResult


@dataclass(frozen=True)
class FeatureConfig(ConfigMixin):
    """How features are read: pooling, condition (null | class:NAME | caption:TEXT), noise seed, batching."""

    config_label = "feature config"

    pooling: str = "gap"
    condition: str = "null"
    seed: int = 0
    batch_size: int = 64
    dtype: str = "fp32"
    val_fraction: float = 0.1

    def __post_init__(self):
        parse_pooling(self.pooling)


@dataclass(frozen=True)
class SweepConfig(ConfigMixin):
    """What `sweep` tries: every (block, t) of `blocks` x `timesteps`, features read as `features` says, the
    `head` fitted on each cell.

    Not saved as such: a sweep's details store `features` and `head` (each its `to_dict()`) and the grid."""

    config_label = "sweep config"

    blocks: tuple[str, ...]
    timesteps: tuple[int, ...]
    features: FeatureConfig = FeatureConfig()
    head: HeadConfig = HeadConfig()

    def __post_init__(self):
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "timesteps", tuple(self.timesteps))
        object.__setattr__(self, "features", self.features or FeatureConfig())  # None: the defaults, as before
        object.__setattr__(self, "head", self.head or HeadConfig())


@dataclass(frozen=True)
class CellConfig(ConfigMixin):
    """What `probe` and `compare` fit: one head on fixed (block, t) `cells` (several are fused by
    concatenation), features read as `features` says. `probe(out=DIR)` records it in DIR/run.json."""

    config_label = "cell config"

    cells: tuple[tuple[str, int], ...]
    features: FeatureConfig = FeatureConfig()
    head: HeadConfig = HeadConfig()

    def __post_init__(self):
        object.__setattr__(self, "cells", tuple((b, t) for b, t in self.cells))
        object.__setattr__(self, "features", self.features or FeatureConfig())  # None: the defaults, as before
        object.__setattr__(self, "head", self.head or HeadConfig())


# ---------------------------------------------------------------------- selection on features
def _n_classes(*ys) -> int:
    return int(max(int(np.max(y)) for y in ys if len(y))) + 1


def sweep_on_features(
    train_features: Callable[[str, int], torch.Tensor],
    y_train,
    blocks: Sequence[str],
    timesteps: Sequence[int],
    *,
    test_features: Callable[[str, int], torch.Tensor] | None = None,
    y_test=None,
    head: HeadConfig | None = None,
    val_fraction: float = 0.1,
    split_seed: int = 0,
    class_names: Sequence[str] = (),
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[np.ndarray, tuple[str, int], float | None, FittedHead, dict]:
    """The model-selection core, independent of where features come from.

    Returns (val_acc [blocks, timesteps], best (block, t), test accuracy or None, best head, per-cell decay).
    `test_features` is called once, for the chosen cell only: the test set cannot influence the choice.
    """
    head = head or HeadConfig()
    y = np.asarray(y_train)
    tr, va = stratified_split(y, val_fraction, split_seed, class_names)
    n_classes = max(len(class_names), _n_classes(y, *([np.asarray(y_test)] if y_test is not None else [])))
    grid = np.zeros((len(blocks), len(timesteps)))
    decays: dict[str, float] = {}
    best_head, best = None, None
    total = len(blocks) * len(timesteps)
    for i, b in enumerate(blocks):
        for j, t in enumerate(timesteps):
            f = train_features(b, t)
            h = fit_head([f[tr]], y[tr], [f[va]], y[va], n_classes, head)
            grid[i, j] = h.val_acc
            decays[f"{b}@{t}"] = h.weight_decay
            if best is None or h.val_acc > grid[best]:
                best, best_head = (i, j), h
            if progress:
                progress(i * len(timesteps) + j + 1, total, f"{b} t={t}: val {h.val_acc:.1%}")
    cell = (blocks[best[0]], int(timesteps[best[1]]))
    test_acc = None
    if test_features is not None and y_test is not None and len(y_test):
        test_acc = best_head.accuracy([test_features(*cell)], y_test)
    best_head.class_names = list(class_names)
    return grid, cell, test_acc, best_head, decays


# ---------------------------------------------------------------------- diffusion features
def _features_fn(backbone, images: LabelledImages, cfg: FeatureConfig, cache, stats: ExtractStats, progress=None):
    """(block, t) -> [N, ...] features of `images`, from the cache (or memory) once the grid is filled."""
    x = images.tensors(backbone.info.image_size, backbone.info.image_channels)
    kw = dict(cache=cache, condition=cfg.condition, seed=cfg.seed, batch_size=cfg.batch_size, dtype=cfg.dtype, stats=stats)
    memo: dict = {}

    def fill(blocks, timesteps, rank: int = 0, world_size: int = 1) -> bool:
        """Fill the grid (this process's share of it, of `world_size`); False while another share is missing."""
        got = cached_features(backbone, x, images.keys, blocks, timesteps, (cfg.pooling,), progress=progress,
                              load=cache is None, rank=rank, world_size=world_size, **kw)  # fmt: skip
        memo.update(got or {})
        return got is not None

    def get(block: str, t: int) -> torch.Tensor:
        k = (block, int(t), cfg.pooling)
        if k not in memo:
            if cache is None:
                fill([block], [t])
            else:
                return cached_features(backbone, x, images.keys, [block], [t], (cfg.pooling,), **kw)[k]
        return memo[k]

    return fill, get


def _progress(factory, description: str):
    """`progress_factory(description)`: a task with several phases (features, then heads) gives each its own
    progress context, which yields a `progress(done, total, info)` callback (`progress.step_progress`)."""
    return factory(description) if factory else contextlib.nullcontext(None)


def _check_data(train: LabelledImages, test: LabelledImages | None) -> None:
    train.require_labels("training data")
    if test is not None:
        test.require_labels("test data")
        if train.class_names and test.class_names and list(test.class_names) != list(train.class_names):
            raise DiffdiscError(f"test classes {test.class_names} differ from training classes {train.class_names}")


def sweep(
    backbone,
    train: LabelledImages,
    config: SweepConfig,
    *,
    test: LabelledImages | None = None,
    cache: FeatureCache | str | Path | None = None,
    out: str | Path | None = None,
    progress_factory=None,
    rank: int = 0,
    world_size: int = 1,
) -> SweepResult | None:
    """Block x timestep sweep; writes features_sweep.json / .png (+ details, best head) to `out` if given.

    Without `test` the sweep chooses on validation only (`score_test` scores it later). `rank` / `world_size`:
    one of several processes sharing the `cache`; each extracts its share of the grid (`cached_features`), and
    only the one that finds the grid complete fits the heads; the others return None."""
    cfg, head = config.features, config.head
    blocks = list(resolve_blocks(backbone, config.blocks))
    timesteps = check_timesteps(backbone, config.timesteps)
    _check_data(train, test)
    if head.kind == "attention" and not keeps_tokens(cfg.pooling):
        raise DiffdiscError(f"the attention head needs spatial tokens: pooling {cfg.pooling} keeps none (use avg2, avg4 or flat)")
    tr, va = stratified_split(train.labels, cfg.val_fraction, cfg.seed, train.class_names)  # fail before any forward
    stats, t0 = ExtractStats(), time.perf_counter()
    with _progress(progress_factory, f"features ({len(train)} train images x {len(timesteps)} t)") as cb:
        fill, get_train = _features_fn(backbone, train, cfg, cache, stats, cb)
        if not fill(blocks, timesteps, rank, world_size):  # every cell at once: T forwards per image
            return None  # another process's share is still running: the last one to finish fits the heads
    train_forwards = stats.forwards
    test_fn = None
    if test is not None and len(test):
        test_fn = _features_fn(backbone, test, cfg, cache, stats)[1]
    with _progress(progress_factory, f"{head.kind} heads ({len(blocks)} blocks x {len(timesteps)} t)") as cb:
        grid, cell, test_acc, best_head, decays = sweep_on_features(
            get_train, train.labels, blocks, timesteps, test_features=test_fn, y_test=test.labels if test is not None else None,
            head=head, val_fraction=cfg.val_fraction, split_seed=cfg.seed, class_names=train.class_names, progress=cb,
        )  # fmt: skip
    n_test = len(test) if test is not None else 0
    r = SweepResult(
        model=backbone.info.label, blocks=blocks, timesteps=timesteps, val_acc=grid.round(6).tolist(),
        best={"block": cell[0], "t": cell[1], "val_acc": float(grid[blocks.index(cell[0]), timesteps.index(cell[1])])},
        test_acc=test_acc, head=head.kind, pooling=cfg.pooling, n_train=len(tr), n_val=len(va), n_test=n_test,
        details={"fingerprint": model_fingerprint(backbone), "features": cfg.to_dict(), "head": head.to_dict(),
                 "weight_decay": decays, "unet_forwards_train": train_forwards,
                 "unet_forwards_test": stats.forwards - train_forwards, "cache": str(cache) if cache else None,
                 "cache_shards_read": stats.cache_hits, "stale_cache_cells": stats.stale, "seconds": round(time.perf_counter() - t0, 1),
                 "class_names": list(train.class_names), "train_data": train.source},
        best_head=best_head,
    )  # fmt: skip
    if out is not None:
        r.write(out)
    return r


def score_test(backbone, r: SweepResult, test: LabelledImages, *, features: FeatureConfig | None = None, cache=None,
               also_poolings: Sequence[str] = (), progress=None) -> SweepResult:  # fmt: skip
    """Score a validation-only sweep (`test=None`) on test images, once, at its chosen cell.

    For choosing among several sweeps (e.g. poolings) on validation before touching the test set;
    `also_poolings` fills the cache for other heads at that cell in the same forward pass."""
    cfg = features or FeatureConfig(pooling=r.pooling)
    if cfg.pooling != r.pooling or r.best_head is None:
        raise DiffdiscError(f"score_test needs the sweep's own pooling ({r.pooling}) and its fitted head")
    test.require_labels("test data")
    cell = (r.best["block"], int(r.best["t"]))
    poolings = tuple(dict.fromkeys((cfg.pooling, *also_poolings)))
    x = test.tensors(backbone.info.image_size, backbone.info.image_channels)
    stats = ExtractStats()
    got = cached_features(backbone, x, test.keys, [cell[0]], [cell[1]], poolings, cache=cache, condition=cfg.condition,
                          seed=cfg.seed, batch_size=cfg.batch_size, dtype=cfg.dtype, stats=stats, progress=progress)  # fmt: skip
    r.test_acc = r.best_head.accuracy([got[(*cell, cfg.pooling)]], test.labels)
    r.n_test = len(test)
    r.details["unet_forwards_test"] = r.details.get("unet_forwards_test", 0) + stats.forwards
    return r


# ---------------------------------------------------------------------- fixed cells, fusion, baselines
def probe_features(name: str, train_xs: Sequence[torch.Tensor], y_train, test_xs: Sequence[torch.Tensor] | None, y_test,
                   head: HeadConfig | None = None, val_fraction: float = 0.1, split_seed: int = 0,
                   class_names: Sequence[str] = ()) -> tuple[ProbeScores, FittedHead]:  # fmt: skip
    """Any representation: fit on the training part, choose on validation, score the test set once."""
    y = np.asarray(y_train)
    tr, va = stratified_split(y, val_fraction, split_seed, class_names)
    yt = np.asarray(y_test) if y_test is not None else np.zeros(0, dtype=np.int64)
    n_classes = max(len(class_names), _n_classes(y, yt))
    h = fit_head([x[tr] for x in train_xs], y[tr], [x[va] for x in train_xs], y[va], n_classes, head)
    test_acc = h.accuracy(list(test_xs), yt) if test_xs is not None and len(yt) else None
    dims = sum(int(np.prod(x.shape[1:])) for x in train_xs)
    return ProbeScores(name, dims, h.val_acc, test_acc, h.weight_decay, len(tr), len(va), len(yt)), h


def parse_cells(spec: str) -> list[tuple[str, int]]:
    """'mid@100,up.0@50' -> [('mid', 100), ('up.0', 50)]."""
    out = []
    for part in spec.split(","):
        b, sep, t = part.strip().rpartition("@")
        if not sep or not b or not t.strip().lstrip("-").isdigit():
            raise DiffdiscError(f"bad cell {part!r}: expected BLOCK@T, e.g. mid@100")
        out.append((b.strip(), int(t)))
    if not out:
        raise DiffdiscError("no cells given")
    return out


def diffusion_features(backbone, images: LabelledImages, cells: Sequence[tuple[str, int]], cfg: FeatureConfig | None = None,
                       cache=None, stats: ExtractStats | None = None, progress=None, rank: int = 0,
                       world_size: int = 1) -> list[torch.Tensor] | None:  # fmt: skip
    """Features of `images` at each (block, t) cell (fusion sources), one forward per image per distinct t;
    None while another process's share is missing (`cached_features`)."""
    cfg = cfg or FeatureConfig()
    blocks = list(dict.fromkeys(b for b, _ in cells))
    ts = list(dict.fromkeys(int(t) for _, t in cells))
    x = images.tensors(backbone.info.image_size, backbone.info.image_channels)
    got = cached_features(backbone, x, images.keys, blocks, ts, (cfg.pooling,), cache=cache, condition=cfg.condition,
                          seed=cfg.seed, batch_size=cfg.batch_size, dtype=cfg.dtype, stats=stats, progress=progress,
                          rank=rank, world_size=world_size)  # fmt: skip
    return None if got is None else [got[(b, int(t), cfg.pooling)] for b, t in cells]


def probe(backbone, train: LabelledImages, config: CellConfig, *, test: LabelledImages | None = None, cache=None,
          progress_factory=None, out: str | Path | None = None, rank: int = 0,
          world_size: int = 1) -> tuple[ProbeScores, FittedHead] | None:  # fmt: skip
    """One head on fixed cell(s): several cells are fused (concatenated features / tokens). With `out`, the result
    is also written there (run.json + features_probe.json), where `diffdisc report` finds it. `rank` /
    `world_size`: as `sweep`'s (the process that finds every feature cached fits the head; the others get None)."""
    cfg, head, cells = config.features, config.head, config.cells
    _check_data(train, test)
    if head.kind == "attention" and not keeps_tokens(cfg.pooling):
        raise DiffdiscError(f"the attention head needs spatial tokens: pooling {cfg.pooling} keeps none (use avg2, avg4 or flat)")
    stratified_split(train.labels, cfg.val_fraction, cfg.seed, train.class_names)
    with _progress(progress_factory, "features (train)") as cb:
        xs = diffusion_features(backbone, train, cells, cfg, cache, progress=cb, rank=rank, world_size=world_size)
    test_xs, pending = None, xs is None
    if test is not None and len(test):
        with _progress(progress_factory, "features (test)") as cb:
            test_xs = diffusion_features(backbone, test, cells, cfg, cache, progress=cb, rank=rank, world_size=world_size)
        pending = pending or test_xs is None
    if pending:
        return None  # another process's share is still running: the last one to finish fits the head
    name = "+".join(f"{b}@{t}" for b, t in cells) + f" ({cfg.pooling}, {head.kind})"
    r, fitted = probe_features(name, xs, train.labels, test_xs, test.labels if test is not None else None, head,
                               cfg.val_fraction, cfg.seed, train.class_names)  # fmt: skip
    if out is not None:
        test_src = test.source if test is not None else None
        settings = {"model": {"name": backbone.info.name, "fingerprint": model_fingerprint(backbone), "label": backbone.info.label},
                    "data": train.source, "test_data": test_src, "cells": [list(c) for c in cells], "features": cfg.to_dict(),
                    "head": head.to_dict(), "class_names": list(train.class_names)}  # fmt: skip
        FeatureProbeResult(**r.to_dict(), model=backbone.info.label, cells=[list(c) for c in cells], pooling=cfg.pooling,
                           head=head.kind, train_data=train.source, test_data=test_src).write(out, settings)  # fmt: skip
    return r, fitted


def pixel_features(images: LabelledImages, size: int, channels: int) -> torch.Tensor:
    """Raw pixels in [-1, 1] at a model's size: the no-model baseline."""
    return images.tensors(size, channels)


@torch.inference_mode()
def contrastive_view(images: LabelledImages) -> LabelledImages:
    """The images as the contrastive model was trained on them: the 28x28 item on a black 32x32 RGB canvas
    (a white one-item scene, `datasets.scenes.render`), same order and labels."""
    px = [np.repeat(np.pad(a, 2)[..., None], 3, axis=2) for a in images.pixels]
    return LabelledImages(px, images.labels, images.keys, images.class_names, images.source + ":clip")


def contrastive_features(model, images: LabelledImages, batch: int = 256) -> torch.Tensor:
    """A contrastive model's L2-normalised image embeddings (the CLIP baseline)."""
    x = images.tensors(model.info.image_size, model.info.image_channels)
    out = [model.encode(x[s : s + batch]).cpu() for s in range(0, len(x), batch)]
    return torch.cat(out).clone() if out else torch.empty(0)


def compare(backbone, train: LabelledImages, config: CellConfig, *, test: LabelledImages, contrastive=None,
            contrastive_train: LabelledImages | None = None, contrastive_test: LabelledImages | None = None,
            cache=None) -> list[ProbeScores]:  # fmt: skip
    """The same head on diffusion features (at `config.cells`), raw pixels and (optionally) contrastive embeddings.

    `contrastive_train/test` are the same images as the contrastive model expects them (e.g. padded RGB);
    they must be in the same order with the same labels."""
    cfg, head = config.features, config.head
    rows = [probe(backbone, train, config, test=test, cache=cache)[0]]
    size, ch = backbone.info.image_size, backbone.info.image_channels
    rows.append(probe_features(f"pixels {ch}x{size}x{size} ({head.kind})", [pixel_features(train, size, ch)], train.labels,
                               [pixel_features(test, size, ch)], test.labels, head, cfg.val_fraction, cfg.seed,
                               train.class_names)[0])  # fmt: skip
    if contrastive is not None:
        ctr, cte = contrastive_train or train, contrastive_test or test
        if not (np.array_equal(ctr.labels, train.labels) and np.array_equal(cte.labels, test.labels)):
            raise DiffdiscError("contrastive images must be the same images, in the same order, as the diffusion ones")
        rows.append(probe_features(f"{contrastive.info.name} image embedding ({head.kind})", [contrastive_features(contrastive, ctr)],
                                   train.labels, [contrastive_features(contrastive, cte)], test.labels, head, cfg.val_fraction,
                                   cfg.seed, train.class_names)[0])  # fmt: skip
    return rows

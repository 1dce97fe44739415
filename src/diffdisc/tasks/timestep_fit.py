"""Fitting timestep weights on a labelled calibration split of training images.

The images are scored exhaustively on a grid of candidate timesteps by an ordinary classify run (resumable and
shardable like any run; its directory is kept, and is itself a labelled run `diffdisc calibrate` can read), and
the weights are fitted on its errors (`scoring.timestep_weights.fit_weights`). Only training images belong
here: the weights are chosen on them, so accuracy measured on them would be optimistic.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..backbones.capabilities import Capability, require
from ..config import ConfigMixin, check_choice
from ..data.folders import ImageDataset, open_image_dataset, stratified_subset
from ..errors import DiffdiscError
from ..results import ClassificationResult
from ..scoring.calibrate import temperature_key
from ..scoring.config import AdaptiveConfig, ScoreConfig
from ..scoring.schedule import SIGMA_GRIDS
from ..scoring.timestep_weights import L2_GRID, TimestepWeights, fit_weights
from .candidates import build_candidates
from .classify import ClassifyConfig, classify


@dataclass(frozen=True)
class TimestepFitConfig(ConfigMixin):
    """What `fit_timesteps` does: score `max_images` calibration images (None: all; a stratified subset seeded by
    `seed`, which also deals the cross-validation folds) at `grid` evenly spaced timesteps (placed on σ by
    `sigmas`, as classify would), with `score`'s scorer / loss / weighting (its seed is the noise seed), then fit
    with `folds`-fold cross-validation over the `l2` penalties. `classes`, `templates`, `labels_csv`,
    `on_error` and `chunk_images` mean what they mean to classify."""

    config_label = "timestep fit config"

    grid: int = 50
    max_images: int | None = None
    seed: int = 0
    folds: int = 3
    l2: tuple[float, ...] = L2_GRID
    score: ScoreConfig = ScoreConfig()
    sigmas: str = "scheduler"
    classes: tuple[str, ...] | None = None
    templates: str | tuple[str, ...] | None = None
    labels_csv: str | Path | None = None
    on_error: str = "fail"
    chunk_images: int = 16

    def __post_init__(self):
        check_choice("sigmas", self.sigmas, SIGMA_GRIDS)
        if self.grid < 2:
            raise DiffdiscError(f"the timestep grid needs at least 2 timesteps, got {self.grid}")
        if self.folds < 2:
            raise DiffdiscError(f"folds must be >= 2, got {self.folds}")
        if self.max_images is not None and self.max_images < 2:
            raise DiffdiscError(f"max_images must be >= 2, got {self.max_images}")
        for name in ("classes", "templates", "l2"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                object.__setattr__(self, name, tuple(v))


def calibration_cost(backbone, data: str | Path | ImageDataset, config: TimestepFitConfig) -> dict:
    """What the calibration run will cost before it starts: images × conditions (classes × templates) × grid
    U-Net calls (the `--help` example once cost 100,000 calls without saying so)."""
    ds = data if isinstance(data, ImageDataset) else open_image_dataset(data, config.labels_csv)
    classes = config.classes or (ds.class_names if ds.class_names and backbone.info.conditioning == "text" else None)
    conds = len(build_candidates(backbone, classes, config.templates).keys)
    n = len(ds) if config.max_images is None else min(config.max_images, len(ds))
    return {"images": n, "conditions": conds, "grid": config.grid, "calls": n * conds * config.grid}


def fit_timesteps(backbone, data: str | Path | ImageDataset, config: TimestepFitConfig | None = None, *,
                  out: str | Path | None = None, run_dir: str | Path | None = None,
                  progress: Callable[[dict], None] | None = None, **overrides) -> TimestepWeights:  # fmt: skip
    """Score the labelled calibration images of `data` exhaustively into `run_dir` (a temp dir if None; a rerun
    resumes it) and fit timestep weights on them; saved to `out` (a directory gets timestep_weights.json) when
    given. `overrides` replace fields of `config`."""
    cfg = replace(config or TimestepFitConfig(), **overrides)
    require(backbone, Capability.DENOISE, "timestep weights (`diffdisc timesteps fit`)")
    run_dir = Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix="diffdisc-timesteps-"))
    ds = data if isinstance(data, ImageDataset) else open_image_dataset(data, cfg.labels_csv)
    adaptive = AdaptiveConfig(strategy="exhaustive", n_timesteps=cfg.grid, sigmas=cfg.sigmas)
    ccfg = ClassifyConfig(classes=cfg.classes, templates=cfg.templates, score=cfg.score, adaptive=adaptive,
                          labels_csv=cfg.labels_csv, on_error=cfg.on_error, chunk_images=cfg.chunk_images,
                          limit=cfg.max_images, limit_seed=cfg.seed)  # fmt: skip
    res = classify(backbone, ds, ccfg, out=run_dir, progress=progress)
    keep = None
    if cfg.max_images is not None and len(res) > cfg.max_images:  # a run dir that once held more images
        labels = ds.label_index(res.classes)
        keep = {ds.items[i].image_id for i in stratified_subset(labels, cfg.max_images, cfg.seed)}
    weights = fit_from_run(run_dir, folds=cfg.folds, l2=cfg.l2, seed=cfg.seed, image_ids=keep, backbone=backbone)
    if out is not None:
        weights.save(out)
    return weights


def fit_from_run(run_dir: str | Path, *, folds: int = 3, l2=L2_GRID, seed: int = 0, image_ids=None,
                 backbone=None) -> TimestepWeights:  # fmt: skip
    """Timestep weights from a labelled exhaustive classify run (every image, every candidate, the same
    timesteps): the calibration run `fit_timesteps` makes, or one made with `diffdisc classify --timesteps N` on
    training images. `image_ids` restricts it to those images; `backbone`, when given, must be the run's model."""
    res = ClassificationResult.load(run_dir)
    st = res.settings
    model = dict(st.get("model") or {})
    if backbone is not None and model.get("fingerprint") != backbone.info.fingerprint:
        raise DiffdiscError(f"{run_dir} was scored by model {model.get('name')} ({model.get('fingerprint')}), not "
                            f"{backbone.info.name} ({backbone.info.fingerprint})")  # fmt: skip
    adaptive = AdaptiveConfig.from_dict(st.get("adaptive") or {})
    if adaptive.strategy != "exhaustive" or res.contrastive:
        what = "a contrastive model (no timesteps)" if res.contrastive else f"strategy {adaptive.strategy}"
        raise DiffdiscError(f"{run_dir} was scored with {what}: fitting timestep weights needs an exhaustive run "
                            "(every candidate at every timestep of a grid)")  # fmt: skip
    idx = [i for i, k in enumerate(res.image_ids) if image_ids is None or k in image_ids]
    unlabelled = [res.image_ids[i] for i in idx if res.labels[i] < 0]
    if unlabelled:
        raise DiffdiscError(f"{len(unlabelled)} calibration image(s) have no label (first: {unlabelled[0]}): fitting "
                            "timestep weights needs labelled training images (an ImageFolder or a labels CSV)")  # fmt: skip
    if len(idx) < 2:
        raise DiffdiscError(f"{run_dir} has {len(idx)} finished image(s); fitting timestep weights needs at least 2")
    grid = sorted(res.timesteps[idx[0]])
    errors = np.empty((len(idx), len(res.classes), len(grid)))
    for row, i in enumerate(idx):
        ts, err = res.timesteps[i], res.errors[i]
        if sorted(ts) != grid or err is None or any(v is None for c in err for v in c):
            raise DiffdiscError(f"{run_dir}: image {res.image_ids[i]} was not scored at every timestep of the grid "
                                "for every candidate (not an exhaustive run)")  # fmt: skip
        col = {t: j for j, t in enumerate(ts)}
        errors[row] = np.asarray(err, dtype=np.float64)[:, [col[t] for t in grid]]
    score = ScoreConfig.from_dict(st.get("score") or {})
    weights = fit_weights(errors, res.labels[idx], grid, folds=folds, l2=l2, seed=seed,
                       model={k: model.get(k) for k in ("name", "label", "fingerprint")}, score=temperature_key(score),
                       sigmas=adaptive.sigmas, data=str(st.get("data")) if st.get("data") else None)  # fmt: skip
    weights.calibration["run"] = str(Path(run_dir).resolve())
    return weights

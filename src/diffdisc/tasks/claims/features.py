"""Mukhopadhyay et al.: with the right block, t and pooling, diffusion features beat comparable representations.

Test (docs/methods.md, `features`): per Fashion-MNIST test image, linear-probe correctness on the class-conditional
U-Net's features minus the same head's on the contrastive model's image embedding. The (pooling, block, t) is
chosen on a validation split of the *training* images only (`tasks.features.sweep`, one sweep per pooling, the
first pooling winning ties), and the test images are scored once, at that cell. Raw pixels get the same head
(details only). Whether the chosen block is a middle one and the chosen t above the grid's smallest are facts
in the details, not verdicts.

The contrastive model sees each grey 28x28 item centred on a black 32x32 RGB canvas (`contrastive_view`), as in
the documented comparison (docs/results.md, "Diffusion features"). Train and test images: stratified seeded
subsets of the shipped 1,000 of each split, or of the full Debian Fashion-MNIST when more are asked for.
U-Net features go through a feature cache in the stage directory, and each pooling's sweep (grid and chosen
head) is stored and reused, so an interrupted stage repeats no forward pass and no finished sweep.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ...data.labelled import LabelledImages
from ...datasets.fashion_mnist import CLASS_NAMES, fmnist_subset
from ...errors import DiffdiscError
from ...features.cache import FeatureCache, cached_features
from ...features.heads import FittedHead, HeadConfig
from ...results.sweep import SweepResult
from ...runs.io import atomic_write_text
from ..features import (
    FeatureConfig,
    SweepConfig,
    contrastive_features,
    contrastive_view,
    diffusion_features,
    pixel_features,
    probe_features,
    sweep,
)
from .base import Claim, ClaimContext, own_score, paired, verdict

IDS = ("features",)
ALL_BLOCKS = ["down.0", "down.1", "down.2", "mid", "up.0", "up.1", "up.2"]
MIDDLE = ("down.2", "mid", "up.0")
SIZES = {
    "tiny": {"n_train": 50, "n_test": 20, "blocks": ["mid", "up.2"], "timesteps": [5], "poolings": ["gap"]},
    "quick": {"n_train": 1000, "n_test": 300, "blocks": ["down.0", "down.2", "mid", "up.0", "up.2"], "timesteps": [5, 100],
              "poolings": ["avg2"]},
    "full": {"n_train": 10000, "n_test": 10000, "blocks": ALL_BLOCKS, "timesteps": [5, 25, 100, 300],
             "poolings": ["gap", "avg2", "avg4"]},
}  # fmt: skip
MARKER = "claim_settings.json"  # beside a stored sweep: the settings it was made with


def fmnist_images(split: str, n: int, seed: int = 0) -> LabelledImages:
    """`fmnist_subset` as labelled images keyed `<split><index in the split>`."""
    images, labels, index, source = fmnist_subset(split, n, seed)
    return LabelledImages.from_arrays(images, labels, CLASS_NAMES, [f"{split}{j}" for j in index], source)


def _digest(keys) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def _sweep_settings(bb, train: LabelledImages, config: SweepConfig) -> dict:
    return {"model": bb.info.fingerprint, "train": _digest(train.keys), "blocks": list(config.blocks),
            "timesteps": [int(t) for t in config.timesteps], "features": config.features.to_dict(),
            "head": config.head.to_dict()}  # fmt: skip


def _stored_sweep(out: Path, settings: dict) -> SweepResult | None:
    """The sweep (grid and chosen head) stored in `out` by an earlier run with the same settings, if any."""
    marker = out / MARKER
    if not marker.is_file() or not (out / "head" / "head.json").is_file():
        return None
    try:
        if json.loads(marker.read_text()) != settings:
            return None
        r = SweepResult.load(out)
        r.best_head = FittedHead.from_pretrained(out / "head")
        return r
    except (OSError, json.JSONDecodeError, DiffdiscError):
        return None  # torn or foreign: sweep again


def _pts(fraction: float) -> float:
    return round(float(fraction) * 100, 4)


def run(ctx: ClaimContext, knobs: dict) -> list[Claim]:
    bb, clip = ctx.load("classcond"), ctx.load("clip")
    blocks, ts, poolings = list(knobs["blocks"]), [int(t) for t in knobs["timesteps"]], list(knobs["poolings"])
    if not (blocks and ts and poolings):
        raise DiffdiscError("the features stage needs at least one block, timestep and pooling")
    train, test = fmnist_images("train", int(knobs["n_train"]), ctx.seed), fmnist_images("test", int(knobs["n_test"]), ctx.seed)
    fcfg, head = FeatureConfig(seed=ctx.seed), HeadConfig(seed=ctx.seed)
    cache = FeatureCache(ctx.sub("cache"), ctx.log)
    size, ch = bb.info.image_size, bb.info.image_channels

    # one extraction pass fills every (block, t, pooling) cell: T forwards per image, whatever the poolings
    ctx.log(f"features: {len(train)} train images x {len(ts)} t, {len(blocks)} blocks, {poolings}")
    cached_features(bb, train.tensors(size, ch), train.keys, blocks, ts, tuple(poolings), cache=cache, seed=fcfg.seed,
                    batch_size=fcfg.batch_size, dtype=fcfg.dtype, load=False)  # fmt: skip
    sweeps, fresh = {}, []
    for p in poolings:
        config = SweepConfig(blocks, ts, features=replace(fcfg, pooling=p), head=head)
        settings = _sweep_settings(bb, train, config)
        sweeps[p] = _stored_sweep(ctx.out / f"sweep-{p}", settings)
        if sweeps[p] is None:  # validation only: the test images are scored below, once, at the chosen cell
            sweeps[p] = sweep(bb, train, config, cache=cache)
            fresh.append((p, settings))
    pooling = max(poolings, key=lambda p: sweeps[p].best["val_acc"])  # the first of equals
    r = sweeps[pooling]
    block, t = r.best["block"], int(r.best["t"])

    # the test images, once, at the chosen cell; then the same head on the contrastive embedding and on pixels
    chosen = replace(fcfg, pooling=pooling)
    pred_d = r.best_head.predict(diffusion_features(bb, test, [(block, t)], chosen, cache))
    y = torch.as_tensor(test.labels).long()
    d = (pred_d == y).numpy().astype(np.float64)
    stored_acc = r.test_acc
    r.test_acc, r.n_test = float(d.mean()), len(test)
    for p, settings in fresh + ([] if pooling in dict(fresh) or stored_acc == r.test_acc else [(pooling, None)]):
        sweeps[p].write(ctx.sub(f"sweep-{p}"))
        if settings is not None:
            atomic_write_text(ctx.out / f"sweep-{p}" / MARKER, json.dumps(settings, indent=2))
    c_train, c_test = contrastive_features(clip, contrastive_view(train)), contrastive_features(clip, contrastive_view(test))
    c_res, c_head = probe_features(f"{clip.info.name} image embedding (linear)", [c_train], train.labels, [c_test],
                                   test.labels, head, fcfg.val_fraction, fcfg.seed, CLASS_NAMES)  # fmt: skip
    pred_c = c_head.predict([c_test])
    c = (pred_c == y).numpy().astype(np.float64)
    px_train, px_test = pixel_features(train, size, ch), pixel_features(test, size, ch)
    p_res, p_head = probe_features(f"pixels {ch}x{size}x{size} (linear)", [px_train], train.labels, [px_test], test.labels,
                                   head, fcfg.val_fraction, fcfg.seed, CLASS_NAMES)  # fmt: skip
    pred_p = p_head.predict([px_test])
    px = (pred_p == y).numpy().astype(np.float64)
    atomic_write_text(ctx.out / "predictions.json", json.dumps({
        "keys": test.keys, "labels": test.labels.tolist(), "diffusion": pred_d.tolist(), "contrastive": pred_c.tolist(),
        "pixels": pred_p.tolist()}))  # fmt: skip

    value, ci, n = paired(d, c)
    details = {
        "diffusion": own_score(d, representation=f"{block}@{t} {pooling}", val_acc=_pts(r.best["val_acc"])),
        "contrastive": own_score(c, representation=c_res.representation, val_acc=_pts(c_res.val_acc)),
        "pixels": own_score(px, representation=p_res.representation, val_acc=_pts(p_res.val_acc)),
        "chosen": {"block": block, "t": t, "pooling": pooling, "val_acc": _pts(r.best["val_acc"])},
        "val_acc_grid": {p: {"blocks": s.blocks, "timesteps": s.timesteps,
                             "val_acc": [[None if v is None else _pts(v) for v in row] for row in s.val_acc]}
                         for p, s in sweeps.items()},
        "facts": {"chosen_block_middle": block in MIDDLE, "chosen_t_above_smallest": t > min(ts)},
        "settings": {**knobs, "features": fcfg.to_dict(), "head": head.to_dict(), "train_data": train.source,
                     "test_data": test.source, "n_train_fit": r.n_train, "n_val": r.n_val,
                     "contrastive_input": "grey 28x28 item centred on a black 32x32 RGB canvas",
                     "own_scores": "test accuracy (points) with its bootstrap 95 % interval"},
        "run_dirs": {p: f"sweep-{p}" for p in poolings} | {"cache": "cache", "predictions": "predictions.json"},
    }  # fmt: skip
    note = "" if len(ts) > 1 else "one timestep in the grid: the t fact says nothing"
    return [Claim(
        "features", "With the right block, timestep and pooling, a diffusion model's features beat comparable "
        "pre-trained representations under a linear probe.", "Mukhopadhyay et al. 2023",
        "diffusion U-Net features, at the best block and t, above comparable pre-trained representations (linear probes)",
        "linear-probe accuracy on Fashion-MNIST test images, diffusion features − contrastive embedding (points)",
        value, ci, verdict(ci), n, details, note,
    )]  # fmt: skip


__all__ = ["IDS", "MIDDLE", "SIZES", "contrastive_view", "fmnist_images", "run"]

"""Image-text matching: a score for every (image, caption) pair of each group, Winoground and retrieval metrics.

Diffusion models score a pair by the mean denoising error over an evenly spaced timestep grid, with the
noise for (image, t) shared by every caption (Li et al.; Krojer et al.); the contrastive baseline by its
negated scaled cosine. Lower is better for both. All pairs of a chunk of groups go to the engine as one flat
work list, so small 2x2 groups still fill U-Net batches. Groups are stored as they finish (resumable).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..backbones.capabilities import Capability, require
from ..config import SPEED_ONLY, ConfigMixin
from ..data.groups import Group, groups_digest
from ..data.images import array_to_tensor, open_image, to_tensor
from ..errors import DiffdiscError
from ..results.match import MatchResult
from ..runs.io import atomic_write_text
from ..runs.store import RunStore, model_identity, read_records
from ..scoring.config import ScoreConfig
from ..scoring.engine import ScoringEngine, Work
from ..scoring.schedule import dc_grid
from ..scoring.scorers import make_scorer


@dataclass(frozen=True)
class MatchConfig(ConfigMixin):
    """`n_timesteps` of the evenly spaced grid every pair is scored at (ignored by contrastive models), and
    `chunk_groups` groups per engine call and per stored shard (speed and resume granularity, not scores).
    How one error is computed is the separate `ScoreConfig`."""

    config_label = "match config"

    n_timesteps: int = 20
    chunk_groups: int = field(default=16, metadata=SPEED_ONLY)

    def __post_init__(self):
        if self.chunk_groups < 1:  # n_timesteps is checked against the model's T by `dc_grid`
            raise DiffdiscError(f"chunk_groups must be >= 1, got {self.chunk_groups}")


def _image_tensor(img, size: int, channels: int) -> torch.Tensor:
    if isinstance(img, np.ndarray):
        return array_to_tensor(img, size, channels)
    return to_tensor(open_image(Path(img)), size, channels)


def score_chunk(backbone, groups: list[Group], score: ScoreConfig, timesteps: list[int],
                engine: ScoringEngine | None = None) -> list[np.ndarray]:  # fmt: skip
    """[n_images, n_captions] score matrix per group (lower = better match).

    Pass a run's one `engine` (made from `score`): a new engine per chunk re-ran the batch-size tuner and
    re-wrapped torch.compile for every chunk.
    """
    info = backbone.info
    imgs = []
    for g in groups:
        for im in g.images:
            try:
                imgs.append(_image_tensor(im, info.image_size, info.image_channels))
            except DiffdiscError as e:
                raise DiffdiscError(f"group {g.id}: {e}") from None
    x0 = backbone.encode(torch.stack(imgs))
    captions = list(dict.fromkeys(c for g in groups for c in g.captions))
    cidx = {c: i for i, c in enumerate(captions)}
    conds = backbone.conditions(captions)
    keys = [f"{g.id}/{i}" for g in groups for i in range(len(g.images))]
    with ScoringEngine(backbone, score) if engine is None else contextlib.nullcontext(engine) as eng:
        conds, _ = eng.candidates(conds, [[i] for i in range(len(captions))])  # every caption its own candidate
        timesteps = timesteps if eng.needs_timesteps else [0]
        im, ca, ts = [], [], []
        row = 0
        for g in groups:
            for i in range(len(g.images)):
                for c in g.captions:
                    for t in timesteps:
                        im.append(row + i)
                        ca.append(cidx[c])
                        ts.append(t)
            row += len(g.images)
        err = eng.run(x0, keys, conds, Work.from_lists(im, ca, ts))
    err = err.view(-1, len(timesteps)).mean(1).numpy()
    out, pos = [], 0
    for g in groups:
        n = len(g.images) * len(g.captions)
        out.append(err[pos : pos + n].reshape(len(g.images), len(g.captions)))
        pos += n
    return out


def match(
    backbone,
    groups: list[Group],
    config: MatchConfig | None = None,
    *,
    score: ScoreConfig | None = None,
    out: str | Path | None = None,
    progress: Callable[[dict], None] | None = None,
    benchmark: dict | None = None,
    rank: int = 0,
    world_size: int = 1,
    **overrides,
) -> MatchResult:
    """Score every group (resuming from `out`); returns the run's `MatchResult`, whose records {id, scores, tags,
    calls} are in group order (it reads as the list of them `match` returned before) and whose `metrics()`
    are metrics.json's.

    `benchmark` ({"name", "root"} of a benchmark read by name) goes into the run's identity, so a resume with
    another benchmark is refused even where group ids repeat. Groups tagged Object / Relation / Both
    (Winoground) add their per-tag scores to metrics.json as "by_tag".
    `rank` / `world_size`: this process's share of a multi-process run (group i goes to rank i % world_size);
    the process that finds every group scored writes metrics.json, the others return with `stored_metrics`
    None and the groups finished so far.
    `overrides` (n_timesteps=, chunk_groups=) replace fields of `config`: the keyword calls made before
    `MatchConfig` existed still work. Everything that can refuse the settings does so before `out` is made, so
    a corrected rerun into the same `out` starts clean; the content of the groups (`groups_digest`) is part of
    the run's settings, so groups edited under the same ids are refused, not answered with old scores."""
    cfg = replace(config or MatchConfig(), **overrides)
    n_timesteps, chunk_groups = cfg.n_timesteps, cfg.chunk_groups
    score = score or ScoreConfig()
    require(backbone, Capability.ENCODE_TEXT, "matching captions (`diffdisc match`)")
    # a scorer without timesteps (contrastive) records none, and no count of them
    needs_noise = make_scorer(backbone, score).needs_noise  # refuses what cannot score, before `out` exists
    ts = dc_grid(backbone.info.num_train_timesteps, n_timesteps) if needs_noise else []
    identity = {"model": model_identity(backbone.info), "groups": [g.id for g in groups],
                "groups_sha256": groups_digest(groups), "score": score, "timesteps": ts}  # fmt: skip
    if not needs_noise:
        identity["n_timesteps"] = None
    if benchmark:  # only then: a run without one has the settings it always had
        identity["benchmark"] = benchmark
    out = Path(out) if out else Path(tempfile.mkdtemp(prefix="diffdisc-match-"))
    # closed however the run ends: an interrupted match (a notebook's Ctrl-C) must not lock out its own retry
    with RunStore(out, "match", cfg, identity=identity, rank=rank) as store, ScoringEngine(backbone, score) as engine:
        done = store.done()
        todo = [g for i, g in enumerate(groups) if i % world_size == rank and g.id not in done]
        stats = {"done": len(done), "total": len(groups), "start": time.time(), "calls": 0, "images": 0,
                 "labelled": 0, "correct": 0}  # fmt: skip
        for s in range(0, len(todo), chunk_groups):
            chunk = todo[s : s + chunk_groups]
            mats = score_chunk(backbone, chunk, score, ts, engine)
            recs = []
            for g, m in zip(chunk, mats, strict=True):
                calls = int(m.size * len(ts)) * engine.calls_per_item
                recs.append({"image_id": g.id, "scores": m.tolist(), "tags": list(g.tags), "calls": calls})
                stats["calls"] += calls
                stats["images"] += 1
                k = min(m.shape)
                stats["labelled"] += 1
                stats["correct"] += int(all(m[i, i] < np.delete(m[i], i).min() for i in range(k)))
            store.append(recs)
            stats["done"] += len(chunk)
            if progress:
                progress(stats)
    by_id = {r["image_id"]: r for r in read_records(out / "shards")}
    result = MatchResult(store.stored or store.settings, [by_id[g.id] for g in groups if g.id in by_id], out)
    if len(result) < len(groups):  # other processes' groups are still running: the last one writes metrics.json
        return result
    text = json.dumps(result.metrics(), indent=2)
    atomic_write_text(out / "metrics.json", text)
    result.stored_metrics = json.loads(text)  # what the command line prints: the file, as read back
    return result

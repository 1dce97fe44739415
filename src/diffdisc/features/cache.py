"""On-disk feature cache: safetensors shards per (model, dataset, block, t, pooling, condition, seed, dtype).

A sweep fits dozens of heads on features that cost a U-Net forward each; the cache makes every rerun (a new
head, another pooling of the same forward) free. Layout:

    ROOT/<model>/<dataset hash>/<block>__t<t>__<pooling>__<condition>__s<seed>__<dtype>/chunk-00000.safetensors

Images are cut into fixed chunks of CHUNK images, one shard per chunk, so a killed extraction resumes at
the last finished chunk. Each shard's metadata records the full key and the model fingerprint; a shard
written by another version of the model (same name, different fingerprint) is stale: it is deleted and
recomputed, never silently reused. Cells whose shards are all present cost no U-Net call at all.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import torch

from ..backbones.base import update_digest
from ..errors import DiffdiscError
from ..runs.io import atomic_write
from .taps import ExtractStats, check_timesteps, extract, resolve_blocks

# extract's keyword options and their defaults, read from its signature (one place declares them)
_EXTRACT_OPTIONS = {k: p.default for k, p in inspect.signature(extract).parameters.items() if p.kind is p.KEYWORD_ONLY}

CHUNK = 1024
FORMAT = "diffdisc-features-1"


def default_cache_dir() -> Path:
    """Where the command line caches features unless `--cache` says otherwise: the user's cache folder
    ($XDG_CACHE_HOME/diffdisc/features, else ~/.cache/diffdisc/features), not a `runs/` folder under whatever
    directory a command happens to run in, so `sweep`, `probe` and `extract` reuse each other's features."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or "")
    return (base if base.is_absolute() else Path.home() / ".cache") / "diffdisc" / "features"  # the spec: relative = unset


def model_fingerprint(backbone) -> str:
    """The backbone's directory fingerprint plus the same content digest of its loaded weights.

    An adapter loaded in memory, or weights changed after loading, change no file; `update_digest`'s strided
    sample of every tensor sees them, cheaply even for SD.
    """
    h = hashlib.sha256(backbone.info.fingerprint.encode())
    update_digest(h, sorted(backbone.state_dict().items()))
    return h.hexdigest()[:16]


def dataset_hash(images: torch.Tensor, keys: list[str]) -> str:
    """Identity of the model-ready pixels and their keys (keys seed the noise)."""
    h = hashlib.sha256("\x00".join(keys).encode())
    h.update(str(tuple(images.shape)).encode())
    h.update(images.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _slug(s: str) -> str:
    clean = re.sub(r"[^0-9A-Za-z._-]+", "-", s).strip("-.")[:40] or "x"
    return clean if clean == s else f"{clean}-{hashlib.sha256(s.encode()).hexdigest()[:8]}"


@dataclass(frozen=True)
class CellKey:
    """Everything a cached feature depends on, except the model version (checked from shard metadata)."""

    model: str
    dataset: str
    block: str
    t: int
    pooling: str
    condition: str = "null"
    seed: int = 0
    dtype: str = "fp32"

    def dirname(self) -> Path:
        leaf = f"{self.block}__t{self.t}__{self.pooling}__{_slug(self.condition)}__s{self.seed}__{self.dtype}"
        return Path(_slug(self.model)) / self.dataset / leaf


class FeatureCache:
    """Shards of pooled features under `root`; `log` hears about stale shards."""

    def __init__(self, root: str | Path, log: Callable[[str], None] | None = None):
        self.root = Path(root)
        self.log = log or (lambda m: None)

    def _shard(self, key: CellKey, chunk: int) -> Path:
        return self.root / key.dirname() / f"chunk-{chunk:05d}.safetensors"

    def load(self, key: CellKey, chunk: int, start: int, stop: int, fingerprint: str,
             stats: ExtractStats | None = None) -> torch.Tensor | None:  # fmt: skip
        """The chunk's features, or None if absent, unreadable, of another shape or stale (then deleted)."""
        from safetensors import safe_open

        p = self._shard(key, chunk)
        if not p.is_file():
            return None
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                x = f.get_tensor("features")
        except Exception as e:  # a truncated or foreign file: recompute it
            self.log(f"unreadable cache shard {p} ({e}): recomputing")
            p.unlink(missing_ok=True)
            return None
        want = {"format": FORMAT, "key": json.dumps(asdict(key), sort_keys=True), "start": str(start), "stop": str(stop)}
        if any(meta.get(k) != v for k, v in want.items()) or x.shape[0] != stop - start:
            self.log(f"cache shard {p} does not match this request: recomputing")
            p.unlink(missing_ok=True)
            return None
        if meta.get("fingerprint") != fingerprint:
            self.log(f"cache {p.parent} was written by another version of {key.model} "
                     f"(fingerprint {meta.get('fingerprint')} != {fingerprint}): recomputing")  # fmt: skip
            if stats is not None:
                stats.stale += 1
            shutil.rmtree(p.parent, ignore_errors=True)  # every chunk of that cell is from the old model
            return None
        return x

    def save(self, key: CellKey, chunk: int, start: int, stop: int, fingerprint: str, x: torch.Tensor) -> Path:
        from safetensors.torch import save_file

        p = self._shard(key, chunk)
        p.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "key": json.dumps(asdict(key), sort_keys=True), "start": str(start), "stop": str(stop),
                "fingerprint": fingerprint}  # fmt: skip
        atomic_write(p, partial(save_file, {"features": x.contiguous()}, metadata=meta))
        return p


def cached_features(
    backbone, images: torch.Tensor, keys: list[str], blocks, timesteps, poolings=("gap",), *,
    cache: FeatureCache | str | Path | None = None, chunk: int = CHUNK, load: bool = True, rank: int = 0,
    world_size: int = 1, **options,
) -> dict[tuple[str, int, str], torch.Tensor] | None:
    """`extract(backbone, images, keys, blocks, timesteps, poolings, **options)`, through the cache: only
    (chunk, t) pairs with a missing cell run the U-Net. Without a cache everything is computed in memory.
    `load=False` only fills the cache (a sweep then reads one cell at a time, so memory holds one cell, not the
    whole grid). `options` are `extract`'s keyword options (condition, seed, batch_size, dtype, stats, progress).

    `rank` / `world_size`: one process of several sharing the cache (`runtime.launch_rank`). It computes its
    share of the (chunk, t) pairs (the k-th pair, chunk by chunk, is rank k % world_size's), then returns None
    while another share is missing; the process that finds every share cached goes on as a single one would."""
    unknown = sorted(set(options) - set(_EXTRACT_OPTIONS))
    if unknown:
        raise TypeError(f"cached_features() got unexpected keyword argument {unknown[0]!r}")
    kw = {**_EXTRACT_OPTIONS, **options}
    kw["stats"] = kw["stats"] if kw["stats"] is not None else ExtractStats()
    blocks = list(resolve_blocks(backbone, blocks))
    ts = check_timesteps(backbone, timesteps)
    args = (backbone, images, keys, blocks, ts, tuple(poolings))
    if cache is None:
        if world_size > 1:
            raise DiffdiscError("several processes share their features through the cache: give a cache directory")
        return extract(*args, **kw)
    if len(images) == 0:
        raise DiffdiscError("no images to extract features from")
    cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    if world_size > 1:
        _fill(*args, cache, chunk, False, (rank, world_size), kw)
        if not _complete(*args, cache, chunk, kw):
            return None
        if not load:
            return {}
    return _fill(*args, cache, chunk, load, None, kw)


def _cell_keys(backbone, images, keys, blocks, ts, poolings, kw) -> dict[tuple[str, int, str], CellKey]:
    ds = dataset_hash(images, keys)
    return {(b, t, p): CellKey(backbone.info.name, ds, b, t, p, kw["condition"], kw["seed"], kw["dtype"])
            for b in blocks for t in ts for p in poolings}  # fmt: skip


def _complete(backbone, images, keys, blocks, ts, poolings, cache: FeatureCache, chunk: int, kw) -> bool:
    """Whether every (cell, chunk) shard is in the cache (written whole by a rename, so present = finished)."""
    cell_key = _cell_keys(backbone, images, keys, blocks, ts, poolings, kw)
    return all(cache._shard(k, ci).is_file() for k in cell_key.values() for ci in range(-(-len(images) // chunk)))


def _fill(backbone, images, keys, blocks, ts, poolings, cache: FeatureCache, chunk: int, load: bool,
          share: tuple[int, int] | None, kw) -> dict:  # fmt: skip
    """`cached_features` on a cache: every (chunk, t) pair, or only those of `share` = (rank, world_size)."""
    kw = dict(kw)
    progress, stats = kw.pop("progress"), kw["stats"]
    fp, cell_key = model_fingerprint(backbone), _cell_keys(backbone, images, keys, blocks, ts, poolings, kw)
    parts: dict = {c: [] for c in cell_key}
    n = len(images)
    done = 0
    for ci, s in enumerate(range(0, n, chunk)):
        e = min(s + chunk, n)
        ts_here = [t for j, t in enumerate(ts) if share is None or (ci * len(ts) + j) % share[1] == share[0]]
        cells = [(b, t, p) for b in blocks for t in ts_here for p in poolings]
        have = {c: cache.load(cell_key[c], ci, s, e, fp, stats) for c in cells}
        todo_t = [t for t in ts_here if any(have[(b, t, p)] is None for b in blocks for p in poolings)]
        stats.cache_hits += sum(v is not None for v in have.values())
        stats.cache_misses += sum(v is None for v in have.values())
        if todo_t:  # one extract call: one encode per image, one forward per (image, t) still missing
            need_b = [b for b in blocks if any(have[(b, t, p)] is None for t in todo_t for p in poolings)]
            need_p = tuple(p for p in poolings if any(have[(b, t, p)] is None for b in need_b for t in todo_t))

            def sub(d, tot, info, _base=done):
                if progress:
                    progress(_base + d, n, info)

            got = extract(backbone, images[s:e], keys[s:e], need_b, todo_t, need_p, progress=sub, **kw)
            for c, x in got.items():
                if have[c] is None:
                    cache.save(cell_key[c], ci, s, e, fp, x)
                    have[c] = x
        if load:
            for c in cells:
                parts[c].append(have[c])
        done = e
        if progress:
            progress(done, n, f"chunk {ci + 1}: {len(todo_t)} timesteps computed, {len(ts_here) - len(todo_t)} cached")
    return {c: torch.cat(v) for c, v in parts.items()} if load else {}

"""Feature extraction cost (issue 6 targets): hooks + pooling vs the raw U-Net forward, forwards per image
for B blocks x T timesteps, and cache hits.

    .venv/bin/python bench/features_speed.py [--images 256] [--batch 64] [--threads 1]

Prints ratios measured in this one process on the shipped fmnist-classcond model (absolute times on a
shared machine are noise).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from diffdisc.backbones.registry import create_backbone
from diffdisc.features.cache import FeatureCache, cached_features
from diffdisc.features.taps import ExtractStats, block_modules, extract


def interleaved(fns: dict, repeats: int) -> dict:
    """Best time of each function over `repeats` rounds that run them in turn: load from other processes on a
    shared machine then hits every variant alike (sequential best-of-3 blocks drifted by +-10 % here)."""
    for f in fns.values():
        f()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fmnist-classcond")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    bb = create_backbone(a.model)
    net = bb.model if hasattr(bb, "model") else bb.unet
    all_blocks = list(block_modules(net))
    n, B = a.images, a.batch
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, bb.info.image_channels, bb.info.image_size, bb.info.image_size, generator=g) * 2 - 1
    keys = [f"img{i}" for i in range(n)]
    t = 100
    cond = bb.null_condition()
    xt = [bb.add_noise(x[s : s + B], torch.randn(x[s : s + B].shape, generator=g), torch.full((len(x[s : s + B]),), t))
          for s in range(0, n, B)]  # fmt: skip

    def raw():
        with torch.inference_mode():
            for xb in xt:
                bb.model_output(xb, torch.full((len(xb),), t), cond.expand(len(xb)))

    early = ["down.2", "mid"] if "mid" in all_blocks else all_blocks[:1]
    best = interleaved({
        "raw": raw,
        "all": lambda: extract(bb, x, keys, all_blocks, [t], ("gap", "avg2"), batch_size=B),
        "early": lambda: extract(bb, x, keys, early, [t], ("gap",), batch_size=B),
        "late": lambda: extract(bb, x, keys, early, [t], ("gap",), batch_size=B, stop_early=False),
    }, a.repeats)  # fmt: skip
    t_raw, t_all, t_early, t_late = best["raw"], best["all"], best["early"], best["late"]
    print(f"[1] {n} images, batch {B}, {torch.get_num_threads()} thread(s): raw U-Net forward {n / t_raw:.0f} img/s; extraction of all "
          f"{len(all_blocks)} blocks (gap+avg2, incl. noise and pooling) {n / t_all:.0f} img/s -> extraction/raw = {t_raw / t_all:.3f} "
          "(target >= 0.9)")  # fmt: skip
    print(f"[2] blocks {early} only: forward cut after the last tapped block -> extraction/raw = {t_raw / t_early:.3f} "
          f"(without the cut {t_raw / t_late:.3f})")  # fmt: skip

    ts, m = [25, 100, 250], min(n, 64)
    seen = []  # images through the U-Net, counted by a hook on the network itself (not by our own stats)
    h = net.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    extract(bb, x[:m], keys[:m], all_blocks, ts, ("gap",), batch_size=B)
    hooked, seen[:] = sum(seen), []
    for b in all_blocks:  # what a loop over cells would pay: one forward per (image, block, t)
        for tt in ts:
            extract(bb, x[:m], keys[:m], [b], [tt], ("gap",), batch_size=B, stop_early=False)
    naive = sum(seen)
    h.remove()
    print(f"[3] {len(all_blocks)} blocks x {len(ts)} timesteps on {m} images: hooked extraction {hooked} U-Net forwards "
          f"({hooked / m:.0f}/image = T); one cell at a time {naive} ({naive / m:.0f}/image = B x T)")  # fmt: skip

    with tempfile.TemporaryDirectory() as d:
        cache = FeatureCache(d)
        st1, t0 = ExtractStats(), time.perf_counter()
        cached_features(bb, x, keys, all_blocks, ts, ("gap", "avg2"), cache=cache, batch_size=B, stats=st1)
        t_cold = time.perf_counter() - t0
        st2, t0 = ExtractStats(), time.perf_counter()
        cached_features(bb, x, keys, all_blocks, ts, ("gap", "avg2"), cache=cache, batch_size=B, stats=st2)
        t_hit = time.perf_counter() - t0
    print(f"[4] cache ({n} images, {len(all_blocks) * len(ts) * 2} cells): cold {t_cold:.2f} s ({st1.forwards} forwards), "
          f"hit {t_hit:.3f} s ({st2.forwards} forwards, {st2.cache_hits} shards read) -> hit is {t_cold / max(t_hit, 1e-9):.0f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()

"""Engine vs raw U-Net forwards, and vs the one-prompt-at-a-time reference loop (issue 3 targets).

    .venv/bin/python bench/engine_overhead.py [--batch 64] [--items 512]

Prints ratios measured in this one process (absolute times on a shared machine are noise).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import best_of, make_fmnist_sized_classcond

from diffdisc.backbones.registry import create_backbone
from diffdisc.scoring.adaptive import evaluate
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.engine import ScoringEngine, Work


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--items", type=int, default=512)
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--timesteps", type=int, default=10)
    args = ap.parse_args()
    bb = create_backbone(make_fmnist_sized_classcond(Path(tempfile.mkdtemp()) / "m"))
    B, n = args.batch, args.items
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand((n + 9) // 10, 1, 32, 32, generator=g) * 2 - 1
    keys = [str(i) for i in range(len(x0))]
    conds = bb.conditions(list(range(10)))
    work = Work.from_lists(torch.arange(n) // 10, torch.arange(n) % 10, torch.randint(0, 1000, (n,), generator=g))
    engine = ScoringEngine(bb, ScoreConfig(batch_size=B))

    xs = torch.randn(B, 1, 32, 32)
    ts, ys = torch.randint(0, 1000, (B,)), torch.randint(0, 10, (B,))

    def raw():
        with torch.inference_mode():
            for _ in range(0, n, B):
                _ = bb.model(xs, ts, class_labels=ys).sample

    t_raw = best_of(raw)
    t_eng = best_of(lambda: engine.run(x0, keys, conds, work))
    print(f"U-Net calls/s: raw forward loop {n / t_raw:.0f}, engine {n / t_eng:.0f}  "
          f"-> engine/raw = {t_raw / t_eng:.3f} (target >= 0.9)  [batch {B}, {n} items]")  # fmt: skip

    # --batch-size 0: the auto-tuner picks the batch on the run's own shapes (tuning time excluded here)
    auto = ScoringEngine(bb, ScoreConfig(batch_size=0))
    auto.run(x0, keys, conds, work)
    t_auto = best_of(lambda: auto.run(x0, keys, conds, work))
    print(f"auto batch size: chose {auto.batch_size} -> {t_eng / t_auto:.2f}x the fixed batch {B}")

    # images/s vs one prompt and one t at a time (the paper's pseudo-code), same noise and timesteps
    cfg = AdaptiveConfig(n_timesteps=args.timesteps)
    imgs = x0[: args.images]
    ikeys = keys[: args.images]
    ts_grid = torch.tensor(range(1000 // args.timesteps // 2, 1000, 1000 // args.timesteps))

    def reference():
        out = torch.empty(len(imgs), 10, len(ts_grid))
        with torch.inference_mode():
            for i in range(len(imgs)):
                for c in range(10):
                    for j, t in enumerate(ts_grid.tolist()):
                        eps = engine.noise([ikeys[i]], [t], (1, 32, 32))
                        tt = torch.tensor([t])
                        x_t = bb.add_noise(imgs[i : i + 1], eps, tt)
                        pred = bb.model(x_t, tt, class_labels=conds[c : c + 1]).sample
                        out[i, c, j] = ((pred - eps) ** 2).mean()
        return out

    ref_scores = reference()
    ours = evaluate(engine, imgs, ikeys, conds, cfg)
    ours_scores = torch.tensor([r.scores for r in ours])
    same = torch.allclose(ours_scores, ref_scores.mean(-1), rtol=1e-4, atol=1e-6)
    t_ref = best_of(reference, 1)
    t_ours = best_of(lambda: evaluate(engine, imgs, ikeys, conds, cfg), 1)
    print(f"images/s: reference loop {len(imgs) / t_ref:.2f}, engine {len(imgs) / t_ours:.2f} -> {t_ref / t_ours:.1f}x "
          f"(target >= 3x); identical scores: {same}")  # fmt: skip


if __name__ == "__main__":
    main()

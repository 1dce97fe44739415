"""Matching speed (issue 5): pair-scores/s of `match` vs a per-pair loop, and attention-capture overhead.

    cd bench && ../.venv/bin/python match_speed.py [--groups 8] [--timesteps 10] [--batch 64]

Shipped `fmnist-scenes-text`; binding probe groups (2 images x 2 captions). The per-pair loop scores one
(image, caption) pair at a time over the timesteps (one U-Net batch of T per pair, the official code's shape);
`match` packs all pairs x timesteps of a chunk into full batches with noise shared across captions. Scores of
both are checked equal. Ratios from one process.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from common import best_of

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffdisc.backbones.registry import create_backbone  # noqa: E402
from diffdisc.datasets.probes import make_probe  # noqa: E402
from diffdisc.scoring.attention import CrossAttentionCapture  # noqa: E402
from diffdisc.scoring.config import ScoreConfig  # noqa: E402
from diffdisc.scoring.engine import ScoringEngine  # noqa: E402
from diffdisc.scoring.schedule import dc_grid  # noqa: E402
from diffdisc.tasks.match import _image_tensor, score_chunk  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--timesteps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    bb = create_backbone("fmnist-scenes-text")
    groups = make_probe("binding", args.groups, seed=0)
    ts = dc_grid(bb.num_train_timesteps, args.timesteps)
    cfg = ScoreConfig(batch_size=args.batch)
    eng = ScoringEngine(bb, cfg)
    pairs = sum(len(g.images) * len(g.captions) for g in groups)

    def per_pair():
        out = []
        with torch.inference_mode():
            for g in groups:
                m = np.zeros((len(g.images), len(g.captions)))
                for i, im in enumerate(g.images):
                    x0 = bb.encode(_image_tensor(im, 32, 3)[None])
                    eps = eng.noise([f"{g.id}/{i}"] * len(ts), ts, tuple(x0.shape[1:]))
                    tt = torch.tensor(ts)
                    for j, c in enumerate(g.captions):
                        cond = bb.conditions([c]).expand(len(ts), -1, -1)
                        m[i, j] = eng.errors(x0.expand(len(ts), -1, -1, -1), eps, tt, cond).mean().item()
                out.append(m)
        return out

    ref = per_pair()
    ours = score_chunk(bb, groups, cfg, ts)
    same = all(np.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(ref, ours, strict=True))
    t_ref, t_ours = best_of(per_pair, 1), best_of(lambda: score_chunk(bb, groups, cfg, ts), 1)
    print(f"pair-scores/s: per-pair loop {pairs / t_ref:.2f}, match {pairs / t_ours:.2f} -> {t_ref / t_ours:.2f}x "
          f"(target >= 3x); identical scores: {same}  [{pairs} pairs x {len(ts)} t, batch {args.batch}]")  # fmt: skip

    x = torch.randn(args.batch, 3, 32, 32)
    t = torch.randint(0, 1000, (args.batch,))
    c = bb.conditions([g.captions[0] for g in groups] * (args.batch // len(groups) + 1))[: args.batch]
    cap = CrossAttentionCapture(bb.unet)

    def plain():
        with torch.inference_mode():
            for _ in range(4):
                bb.predict_eps(x, t, c)

    def captured():
        with torch.inference_mode(), cap:
            for _ in range(4):
                bb.predict_eps(x, t, c)
                cap.score()

    t_plain, t_cap = best_of(plain), best_of(captured)
    print(f"attention capture overhead vs plain forward: {t_cap / t_plain - 1:+.1%} (target <= +15%)")


if __name__ == "__main__":
    main()

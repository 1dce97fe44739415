"""Accuracy of a class-conditional model on a fixed, seeded, stratified subset of the real Fashion-MNIST test set.

    .venv/bin/python bench/fmnist_accuracy.py --model fmnist-classcond --per-class 20 --out runs/acc
    .venv/bin/python bench/fmnist_accuracy.py --model fmnist-scenes-text --scenes --per-class 20

Uses the shipped 1,000-image subset (100 per class) or, with --full-test, the Debian dataset's 10,000.
`--scenes` renders each test image as a single-item scene in a seeded random palette colour (the text and
contrastive models' input; prompts from class names only). Strategies run on the same images with the same
noise; prints a table and writes summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffdisc.backbones.registry import create_backbone
from diffdisc.datasets.export import export_shipped_test
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig, parse_stages
from diffdisc.tasks.classify import ClassifyConfig, classify


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fmnist-classcond")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--subset-seed", type=int, default=0)
    ap.add_argument("--timesteps", type=int, default=20)
    ap.add_argument("--stages", default="10:3,20:1")
    ap.add_argument("--strategies", default="exhaustive,halving,ttest")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--out", default="runs/acc")
    ap.add_argument("--full-test", action="store_true", help="all 10,000 test images (Debian dataset)")
    ap.add_argument("--scenes", action="store_true", help="coloured single-item scenes (text / contrastive models)")
    ap.add_argument("--device", default=None)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    if args.full_test:
        args.per_class = None
    out = Path(args.out)
    tag = "full" if args.full_test else f"{args.per_class}-{args.subset_seed}"
    data = export_shipped_test(out / f"data-{tag}{'-scenes' if args.scenes else ''}", args.per_class,
                               args.subset_seed, scenes=args.scenes, full=args.full_test)  # fmt: skip
    bb = create_backbone(args.model, device=args.device)
    if getattr(bb, "is_contrastive", False):
        args.strategies = "exhaustive"  # one score per class: strategies do not apply
    configs = {
        "exhaustive": AdaptiveConfig(n_timesteps=args.timesteps),
        "halving": AdaptiveConfig(strategy="halving", stages=parse_stages(args.stages)),
        "ttest": AdaptiveConfig(strategy="ttest", min_scores=10, max_scores=args.timesteps, p_value=2e-2),
    }
    summary = {}
    for name in args.strategies.split(","):
        t0 = time.time()
        cfg = ClassifyConfig(adaptive=configs[name], score=ScoreConfig(batch_size=args.batch, dtype=args.dtype),
                             chunk_images=10 if args.device is None else 200)  # fmt: skip
        res = classify(bb, data, cfg, out=out / f"{args.model}-{name}-{tag}-{args.dtype}")
        m = res.metrics()
        m["wall_s"] = time.time() - t0
        summary[name] = m
        print(f"{name:10s} acc {m['accuracy']:.3f}  top5 {m['top5']:.3f}  per-class {m['mean_per_class_accuracy']:.3f}  "
              f"calls/img {m['unet_calls_per_image']:.0f}  ECE {m['ece']:.3f} (T {m['temperature']:.3g}: "
              f"{m['temperature_source'][:14]})  ECE(cross-fitted) {m['ece_temperature_scaled']:.3f}  "
              f"n {m['n_images']}  {m['wall_s']:.0f}s", flush=True)  # fmt: skip
    meta = bb.info.metadata
    summary["_model"] = {"name": args.model, "steps": meta.get("steps"), "fingerprint": bb.info.fingerprint}
    (out / f"summary-{tag}-{args.dtype}.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

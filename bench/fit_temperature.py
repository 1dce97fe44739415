"""Fit a shipped model's softmax temperature on Fashion-MNIST *training* images and store it in its metadata.

    .venv/bin/python bench/fit_temperature.py --model fmnist-classcond --per-class 20 --write

Images: a seeded stratified subset of the shipped 1,000 training images (scenes for text and contrastive
models, as their test inputs). They were seen in training, but they are never test images, so the
temperature is chosen without looking at the test set. Scores: the default scorer (l2, uniform; cosmap for flow models), exhaustive
over `--timesteps` evenly spaced t. `--write` stores {value, fitted_on, n} under the score kind's key in the
model's diffdisc.json, where `classify` finds it (`temperature_source` in metrics.json names it).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffdisc.backbones.registry import create_backbone, shipped_models_dir
from diffdisc.datasets.export import export_shipped_test
from diffdisc.runs.io import atomic_write_text
from diffdisc.scoring.calibrate import fit_temperature, temperature_key
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig, default_weighting
from diffdisc.tasks.classify import ClassifyConfig, classify


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fmnist-classcond")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--timesteps", type=int, default=20)
    ap.add_argument("--out", default="runs/temperature")
    ap.add_argument("--write", action="store_true", help="store the temperature in the shipped model's diffdisc.json")
    args = ap.parse_args()
    bb = create_backbone(args.model)
    contrastive = getattr(bb, "is_contrastive", False)
    scenes = contrastive or bb.info.conditioning == "text"
    out = Path(args.out) / args.model
    data = export_shipped_test(out / "data", args.per_class, seed=0, scenes=scenes, split="train")
    score = ScoreConfig(weighting=default_weighting(bb))  # what `classify` scores this model with by default
    res = classify(bb, data, ClassifyConfig(score=score, adaptive=AdaptiveConfig(n_timesteps=args.timesteps)), out=out / "run")
    T = fit_temperature(res.scores, res.labels)
    what = "contrastive scores" if contrastive else f"exhaustive {args.timesteps} t"
    entry = {"value": T, "n": len(res),
             "fitted_on": f"{len(res)} Fashion-MNIST train images ({args.per_class}/class of the shipped train subset, "
                          f"seed 0{', as scenes' if scenes else ''}; {what}; seen in training, never test images)"}  # fmt: skip
    print(json.dumps({"model": args.model, "key": temperature_key(score, contrastive), **entry}))
    if args.write:
        meta_path = shipped_models_dir() / args.model / "diffdisc.json"
        meta = json.loads(meta_path.read_text())
        meta.setdefault("temperature", {})[temperature_key(score, contrastive)] = entry
        atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Accuracy vs U-Net calls per image for every strategy (issue 8): one curve per strategy, one PNG.

    .venv/bin/python bench/calls_vs_accuracy.py --per-class 5 --out runs/calls

Shipped `fmnist-classcond` on a fixed subset of the shipped real test images (`export_shipped_test(per_class,
seed=7)`; the package ships no labelled training images, so this "validation" split is test data — the
settings reported elsewhere were not chosen on it). Errors are memoised per (image, candidate, t): noise is
seeded per (image, t), so a strategy that revisits a (candidate, t) gets exactly the number it would compute,
and every strategy is charged its own U-Net calls. Prints a table, writes calls_vs_accuracy.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import MemoEngine  # noqa: E402

from diffdisc.backbones.registry import create_backbone  # noqa: E402
from diffdisc.data.folders import open_image_dataset  # noqa: E402
from diffdisc.data.images import open_image, to_tensor  # noqa: E402
from diffdisc.datasets.export import export_shipped_test  # noqa: E402
from diffdisc.plotting import pyplot, save_figure  # noqa: E402
from diffdisc.scoring.adaptive import evaluate  # noqa: E402
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig  # noqa: E402

STRATEGIES = {
    "exhaustive": [AdaptiveConfig(n_timesteps=n) for n in (5, 10, 20)],
    "halving": [AdaptiveConfig(strategy="halving", stages=s) for s in
                (((5, 2), (20, 1)), ((5, 3), (20, 1)), ((10, 3), (20, 1)), ((5, 5), (10, 2), (20, 1)))],
    "halving + early exit (ours)": [AdaptiveConfig(strategy="halving", stages=((5, 5), (10, 2), (20, 1)), exit_z=z)
                                     for z in (1.0, 2.0, 3.0)] +
                                    [AdaptiveConfig(strategy="halving", stages=((10, 3), (20, 1)), exit_z=2.0)],
    "t-test": [AdaptiveConfig(strategy="ttest", min_scores=5, max_scores=20, p_value=p) for p in (0.1, 0.02)],
}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=5)
    ap.add_argument("--model", default="fmnist-classcond")
    ap.add_argument("--out", default="runs/calls")
    args = ap.parse_args()
    out = Path(args.out)
    data = open_image_dataset(export_shipped_test(out / "data", per_class=args.per_class, seed=7))
    bb = create_backbone(args.model)
    classes = list(bb.info.class_names)
    labels = torch.tensor(data.label_index(classes))
    x0 = bb.encode(torch.stack([to_tensor(open_image(it.path), bb.info.image_size, bb.info.image_channels) for it in data.items]))
    keys = [it.image_id for it in data.items]
    conds = bb.conditions(list(range(len(classes))))
    engine = MemoEngine(bb, ScoreConfig(batch_size=128))
    rows = []
    for name, cfgs in STRATEGIES.items():
        for cfg in cfgs:
            t0 = time.time()
            res = evaluate(engine, x0, keys, conds, cfg)
            acc = float((torch.tensor([r.prediction for r in res]) == labels).float().mean())
            calls = sum(r.calls for r in res) / len(res)
            setting = {k: v for k, v in cfg.to_dict().items() if k in ("n_timesteps", "stages", "exit_z", "p_value")}
            rows.append({"strategy": name, "accuracy": acc, "calls": calls, "setting": setting})
            print(f"{name:28s} acc {acc:.3f}  calls/img {calls:6.1f}  {setting}  ({time.time() - t0:.0f}s)", flush=True)
    (out / "calls_vs_accuracy.json").write_text(json.dumps({"n_images": len(keys), "rows": rows}, indent=2))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in STRATEGIES:
        pts = sorted((r["calls"], r["accuracy"]) for r in rows if r["strategy"] == name)
        ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax.set_xlabel("U-Net calls per image")
    ax.set_ylabel("top-1")
    ax.set_title(f"{args.model}, {len(keys)} real test images (seed 7)")
    ax.legend(fontsize=8)
    print(save_figure(fig, out / "calls_vs_accuracy.png"))


if __name__ == "__main__":
    main()

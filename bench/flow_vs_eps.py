"""The embedded flow-matching model beside its matched ε-model (issue 16): weightings × σ grids × strategies.

    OMP_NUM_THREADS=2 .venv/bin/python bench/flow_vs_eps.py --flow DIR/model --eps DIR/model --per-class 20 \
        --out runs/flow_vs_eps

Both models come from the same `diffdisc train` command (recipes fmnist-classcond-flow and fmnist-classcond, same
steps, batch and seed). Images: the shipped real test subset (`export_shipped_test(per_class, seed=7)`), the
same for every row, as is the noise (seeded per image and t). Each (image, class, t) error is computed once
(`MemoEngine`); for the flow model the raw number is the velocity error ‖v̂ - v‖², and every weighting is w(σ_t)
times it (the scorer's own `FlowProcess.weight`, checked against a direct engine run on the first images), so
the weightings are compared on identical forwards. Prints a table; writes flow_vs_eps.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import MemoEngine  # noqa: E402

from diffdisc.backbones.registry import create_backbone  # noqa: E402
from diffdisc.data.folders import open_image_dataset  # noqa: E402
from diffdisc.data.images import open_image, to_tensor  # noqa: E402
from diffdisc.datasets.export import export_shipped_test  # noqa: E402
from diffdisc.scoring.adaptive import evaluate  # noqa: E402
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig  # noqa: E402
from diffdisc.scoring.engine import ScoringEngine  # noqa: E402
from diffdisc.scoring.match_metrics import bootstrap_ci  # noqa: E402

FLOW_WEIGHTINGS = ("uniform", "velocity", "sigma_sqrt", "cosmap")
STRATEGIES = {"exhaustive 20 t": AdaptiveConfig(n_timesteps=20),
              "halving 10:3,20:1": AdaptiveConfig(strategy="halving", stages=((10, 3), (20, 1)))}  # fmt: skip


class Reweighted:
    """A MemoEngine's velocity errors as another weighting's: w(σ_t) × ‖v̂ - v‖² (calls charged as computed)."""

    def __init__(self, memo: MemoEngine, weighting: str):
        self.memo, self.weighting = memo, weighting

    def __getattr__(self, name):
        return getattr(self.memo, name)

    def run(self, x0, keys, conds, work):
        w = self.memo.backbone.process.weight(work.t.to(self.memo.backbone.device), self.weighting).float().cpu()
        return self.memo.run(x0, keys, conds, work) * w


def accuracy(res, labels) -> tuple[float, tuple[float, float], float]:
    correct = np.array([r.prediction == int(y) for r, y in zip(res, labels, strict=True)], dtype=float)
    calls = float(np.mean([r.calls for r in res]))
    return float(correct.mean()), bootstrap_ci(correct), calls


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flow", required=True)
    ap.add_argument("--eps", required=True)
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--sigmas", default="scheduler,logit_normal")
    ap.add_argument("--out", default="runs/flow_vs_eps")
    args = ap.parse_args()
    out = Path(args.out)
    data = open_image_dataset(export_shipped_test(out / "data", per_class=args.per_class, seed=7))
    rows = []
    for role, path in (("flow", args.flow), ("eps", args.eps)):
        bb = create_backbone(path)
        classes = list(bb.info.class_names)
        labels = torch.tensor(data.label_index(classes))
        x0 = bb.encode(torch.stack([to_tensor(open_image(it.path), bb.info.image_size, bb.info.image_channels) for it in data.items]))
        keys, conds = [it.image_id for it in data.items], bb.conditions(list(range(len(classes))))
        memo = MemoEngine(bb, ScoreConfig(weighting="velocity" if bb.is_flow else "uniform", batch_size=250))
        weightings = FLOW_WEIGHTINGS if bb.is_flow else ("uniform",)
        grids = args.sigmas.split(",") if bb.is_flow else ["scheduler"]
        if bb.is_flow:  # the reweighting is the scorer's own formula: check it on a few images
            for w in ("uniform", "cosmap"):
                direct = evaluate(ScoringEngine(bb, ScoreConfig(weighting=w, batch_size=250)), x0[:4], keys[:4], conds,
                                  AdaptiveConfig(n_timesteps=5))  # fmt: skip
                via = evaluate(Reweighted(memo, w), x0[:4], keys[:4], conds, AdaptiveConfig(n_timesteps=5))
                for a, b in zip(direct, via, strict=True):
                    assert np.allclose(a.means, b.means, rtol=1e-4), (w, a.means, b.means)
        for grid in grids:
            for sname, strat in STRATEGIES.items():
                for w in weightings:
                    t0 = time.time()
                    cfg = dataclasses.replace(strat, sigmas=grid)
                    eng = Reweighted(memo, w) if bb.is_flow else memo
                    res = evaluate(eng, x0, keys, conds, cfg)
                    acc, ci, calls = accuracy(res, labels)
                    rows.append({"model": role, "dir": str(path), "steps": bb.info.metadata.get("steps"),
                                 "sigmas": grid, "strategy": sname, "weighting": w, "accuracy": acc,
                                 "ci95": list(ci), "calls_per_image": calls, "n_images": len(keys),
                                 "seconds": round(time.time() - t0, 1)})  # fmt: skip
                    r = rows[-1]
                    print(f"{role:<5} {grid:<13} {sname:<18} {w:<11} {acc:6.1%} [{ci[0]:.1%}, {ci[1]:.1%}] "
                          f"{calls:6.0f} calls/img  ({r['seconds']} s)", flush=True)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    (out / "flow_vs_eps.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {out / 'flow_vs_eps.json'}")


if __name__ == "__main__":
    main()

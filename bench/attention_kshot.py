"""K-shot curve for Discffusion-style scoring on the embedded probes (issue 5).

    .venv/bin/python bench/attention_kshot.py --n 40 --timesteps 10 --shots 0,8,32,128 --out runs/kshot

Evaluation groups: binding + spatial probes, seed 0, on the shipped Fashion-MNIST test items (the ones
docs/results.md reports). Training groups for LoRA: `tuning_groups`, the same probes built from the shipped
*train* items (no item in common with evaluation), K split evenly between them. Rows: plain
denoising score, attention score (+ denoising bias), attention + LoRA trained on K groups. Text score is the
headline (image scores of generative scorers compare errors across images; see docs/methods.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffdisc.backbones.registry import create_backbone
from diffdisc.scoring.config import ScoreConfig
from diffdisc.tasks.attention import LoraConfig, tuning_groups
from diffdisc.tasks.claims.attention_lora import ensure_adapter, lora_backbone
from diffdisc.tasks.probe import ProbeConfig, run_probes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fmnist-scenes-text")
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--timesteps", type=int, default=10)
    ap.add_argument("--shots", default="0,8,32,128")
    ap.add_argument("--probes", default="binding,spatial")
    ap.add_argument("--out", default="runs/kshot")
    args = ap.parse_args()
    out, probes = Path(args.out), args.probes.split(",")
    rows = []

    def evaluate(bb, scorer: str, shots: int) -> None:
        t0 = time.time()
        cfg = ProbeConfig(n=args.n, seed=0, n_timesteps=args.timesteps, score=ScoreConfig(scorer=scorer))
        for r in run_probes([bb], probes, cfg, out=out / "eval"):
            row = {"shots": shots, "scorer": scorer, "probe": r["probe"], "text": r["text"], "image": r["image"],
                   "group": r["group"], "calls_per_group": r["calls_per_group"]}  # fmt: skip
            rows.append(row)
            print(f"K={shots:4d} {scorer:9s} {r['probe']:8s} text {r['text']['mean']:.3f} "
                  f"[{r['text']['ci95'][0]:.2f}, {r['text']['ci95'][1]:.2f}]  group {r['group']['mean']:.3f}  "
                  f"({time.time() - t0:.0f}s)", flush=True)  # fmt: skip
        (out / "kshot.json").write_text(json.dumps(rows, indent=2))

    out.mkdir(parents=True, exist_ok=True)
    bb = create_backbone(args.model)
    evaluate(bb, "denoise", 0)
    evaluate(bb, "attention", 0)
    for k in [int(s) for s in args.shots.split(",") if int(s) > 0]:
        t0 = time.time()  # reuses an adapter tuned on the same groups with the same settings, else tunes one
        adapter = ensure_adapter(args.model, tuning_groups(probes, k), LoraConfig(), out / f"lora-{k}",
                                 fingerprint=bb.info.fingerprint, log=lambda msg: print(msg, flush=True))  # fmt: skip
        print(f"K={k}: adapter ready in {time.time() - t0:.0f}s", flush=True)
        evaluate(lora_backbone(args.model, adapter), "attention", k)


if __name__ == "__main__":
    main()

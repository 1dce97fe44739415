"""Engine ÷ raw denoiser forward for the flow-matching families (issue 16 target ≥ 0.9), on the CPU.

    cd bench && OMP_NUM_THREADS=2 ../.venv/bin/python family_overhead.py [--batch 32] [--items 256]

Models: the tiny SD3 and FLUX pipelines of the tests (diffusers' test shapes, built by tests/family_fixtures.py),
and a random U-Net of the shipped fmnist-classcond size saved with a flow scheduler (the embedded flow model's
architecture). "Raw" calls the denoiser exactly as the backbone does (SD3: transformer(x, 1000σ, states,
pooled); FLUX: on packed latents with position ids and guidance; U-Net: unet(x, 1000σ, class)) on
ready-made inputs in a loop of the same batch size; "engine" is `ScoringEngine.run` on the same number of
(image, candidate, t) items, noise drawn and scores computed. Ratios in one process.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from common import best_of, make_fmnist_sized_classcond

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from diffdisc.backbones.registry import create_backbone  # noqa: E402
from diffdisc.scoring.config import ScoreConfig  # noqa: E402
from diffdisc.scoring.engine import ScoringEngine, Work  # noqa: E402
from family_fixtures import make_flux_dir, make_sd3_dir  # noqa: E402


def flow_classcond(root: Path) -> Path:
    from diffusers import FlowMatchEulerDiscreteScheduler

    make_fmnist_sized_classcond(root)
    (root / "scheduler" / "scheduler_config.json").unlink()
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0).save_pretrained(root / "scheduler")
    return root


def measure(name: str, bb, candidates: list, B: int, n: int, weighting: str) -> dict:
    g = torch.Generator().manual_seed(0)
    size, ch = bb.info.image_size, bb.info.image_channels
    x0 = bb.encode(torch.rand(max(1, n // (len(candidates) * 4)), ch, size, size, generator=g) * 2 - 1)
    keys = [str(i) for i in range(len(x0))]
    conds = bb.conditions(candidates)
    m = len(candidates)
    work = Work.from_lists(torch.arange(n) // (m * 4) % len(x0), torch.arange(n) % m, torch.randint(0, 1000, (n,), generator=g))
    engine = ScoringEngine(bb, ScoreConfig(batch_size=B, weighting=weighting))
    xs = torch.randn(B, *x0.shape[1:], generator=g)
    ts = torch.randint(0, 1000, (B,), generator=g)
    cs = conds[torch.arange(B) % m]

    def raw():
        with torch.inference_mode():
            for _ in range(0, n, B):
                bb.model_output(xs, ts, cs)

    t_raw, t_eng = best_of(raw), best_of(lambda: engine.run(x0, keys, conds, work))
    row = {"model": name, "batch": B, "items": n, "raw_calls_per_s": round(n / t_raw, 1),
           "engine_calls_per_s": round(n / t_eng, 1), "engine_over_raw": round(t_raw / t_eng, 3)}  # fmt: skip
    print(f"{name:<28} raw {row['raw_calls_per_s']:>8} calls/s  engine {row['engine_calls_per_s']:>8} calls/s  "
          f"engine/raw = {row['engine_over_raw']:.3f}  (target >= 0.9)", flush=True)  # fmt: skip
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--items", type=int, default=256)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    prompts = ["a photo of a cat", "a photo of a dog"]
    rows = [
        measure("sd3 (tiny test shapes)", create_backbone(make_sd3_dir(tmp / "sd3")), prompts, args.batch, args.items, "velocity"),
        measure("flux (tiny test shapes)", create_backbone(make_flux_dir(tmp / "flux"), image_size=16), prompts, args.batch,
                args.items, "velocity"),
        measure("flow U-Net (fmnist-classcond size)", create_backbone(flow_classcond(tmp / "flow")), list(range(10)),
                args.batch, args.items, "uniform"),
    ]  # fmt: skip
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

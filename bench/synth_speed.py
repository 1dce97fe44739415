"""Synthetic-data generation speed (issue 7): `synth generate` vs a one-image-at-a-time diffusers pipeline.

    .venv/bin/python bench/synth_speed.py [--images 64] [--steps 25] [--batch 64]

Baseline: `StableDiffusionPipeline` called once per image (the official repo's loop), DDIM, the same steps and
guidance, on a random SD-layout model (VAE included) built here. Ours: `diffdisc.tasks.synth.generate` end to
end (planning, batched CFG sampling, VAE decode, PNG writes, metadata) on the same model, then on the shipped
`fmnist-scenes-text` model at batch 1 vs `--batch` (what batching alone buys on the real model).
Prints ratios measured in this one process.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import make_sd_sized

from diffdisc.backbones.registry import create_backbone
from diffdisc.tasks.synth import SynthConfig, generate

CLASSES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ours(bb, n: int, steps: int, batch: int) -> float:
    out = Path(tempfile.mkdtemp())
    cfg = SynthConfig(per_class=max(1, n // len(CLASSES)), steps=steps, guidance=3.0, batch_size=batch)
    generate(bb, CLASSES[:1], SynthConfig(per_class=2, steps=2, batch_size=2), out=out / "warm")  # warm-up
    t = timed(lambda: generate(bb, CLASSES, cfg, out=out / "run"))
    shutil.rmtree(out)
    return cfg.per_class * len(CLASSES) / t


def pipeline_loop(bb, n: int, steps: int) -> float:
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=bb.vae, text_encoder=bb.text_encoder, tokenizer=bb.tokenizer, unet=bb.unet,
                                   scheduler=DDIMScheduler.from_config(bb.scheduler_config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    size = bb.info.image_size
    prompts = [f"a {CLASSES[i % len(CLASSES)]}" for i in range(max(1, n // len(CLASSES)) * len(CLASSES))]

    def run(ps):
        for i, p in enumerate(ps):
            pipe(p, height=size, width=size, num_inference_steps=steps, guidance_scale=3.0,
                 generator=torch.Generator().manual_seed(i), output_type="pil").images[0].save(Path(tempfile.gettempdir()) / "bench.png")  # fmt: skip

    run(prompts[:2])  # warm-up
    return len(prompts) / timed(lambda: run(prompts))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=60)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: no OpenMP spin-waits on a shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sd = create_backbone(make_sd_sized(Path(tempfile.mkdtemp()) / "sd", CLASSES))
    base = pipeline_loop(sd, args.images, args.steps)
    fast = ours(sd, args.images, args.steps, args.batch)
    print(f"SD-layout random model ({sum(p.numel() for p in sd.unet.parameters()) / 1e6:.1f}M U-Net, VAE, "
          f"{sd.info.image_size}px, DDIM {args.steps} steps, CFG 3): pipeline loop {base:.2f} img/s, "
          f"synth generate (batch {args.batch}) {fast:.2f} img/s -> {fast / base:.2f}x (target >= 2x)")  # fmt: skip
    text = create_backbone("fmnist-scenes-text")
    one = ours(text, args.images, args.steps, 1)
    many = ours(text, args.images, args.steps, args.batch)
    print(f"shipped fmnist-scenes-text: synth generate batch 1 {one:.2f} img/s, batch {args.batch} {many:.2f} img/s "
          f"-> {many / one:.2f}x")  # fmt: skip
    print(json.dumps({"pipeline_loop": base, "ours": fast, "text_b1": one, "text_batched": many}))


if __name__ == "__main__":
    main()

"""Do generated scenes have the real data's black background? Border pixels of N samples vs real test scenes.

    OMP_NUM_THREADS=1 .venv/bin/python bench/background.py --model fmnist-scenes-text --n 500 [--steps 25] [--out runs/bg]

Samples: `diffdisc.generation.sampler.sample` from class-name prompts (`a {class}`, the classes cycled, the model's
own template), DDIM, CFG 3, one seeded generator. Real: the first N of the shipped 1,000 test items shown as
one-item scenes (the zero-shot tables' images). "Border" = the outer `--frame` pixels of every side, all
channels, 0–255. Prints mean, sd, and the share of border pixels above 32 (visibly not black) for both, and
writes OUT/background.json and OUT/samples.png (the first 40 samples) when --out is given.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffdisc.backbones.registry import create_backbone  # noqa: E402
from diffdisc.data.templates import fill  # noqa: E402
from diffdisc.datasets.export import SCENE_COLOUR_SEED  # noqa: E402
from diffdisc.datasets.fashion_mnist import load_shipped_subset  # noqa: E402
from diffdisc.datasets.scenes import single_scenes  # noqa: E402
from diffdisc.generation.sampler import sample  # noqa: E402


def border(x: np.ndarray, frame: int) -> np.ndarray:
    """[N, H, W, C] uint8 -> the border pixels' values (outer `frame` rows and columns), flat."""
    mask = np.zeros(x.shape[1:3], bool)
    mask[:frame], mask[-frame:], mask[:, :frame], mask[:, -frame:] = True, True, True, True
    return x[:, mask].reshape(-1).astype(np.float64)


def stats(v: np.ndarray) -> dict:
    return {"mean": float(v.mean()), "sd": float(v.std()), "share_above_32": float((v > 32).mean())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fmnist-scenes-text")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--frame", type=int, default=2)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    bb = create_backbone(a.model)
    classes = list(bb.info.class_names)
    tpl = bb.info.metadata.get("templates", ["{}"])[0]
    prompts = [fill(tpl, classes[i % len(classes)]) for i in range(a.n)]
    g, imgs, t0 = torch.Generator().manual_seed(a.seed), [], time.time()
    for s in range(0, a.n, a.batch):
        conds = bb.conditions(prompts[s : s + a.batch])
        imgs.append(sample(bb, conds, guidance=a.guidance, steps=a.steps, scheduler="ddim", generator=g).cpu())
    fake = ((torch.cat(imgs) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images, labels, _ = load_shipped_subset("test")
    real = single_scenes(images[: a.n], labels[: a.n], seed=SCENE_COLOUR_SEED).images
    real = real if real.ndim == 4 else real[..., None]
    res = {"model": a.model, "fingerprint": bb.info.fingerprint, "n": a.n, "steps": a.steps, "guidance": a.guidance,
           "frame": a.frame, "samples": stats(border(fake, a.frame)), "real": stats(border(real, a.frame)),
           "sample_wall_s": round(time.time() - t0, 1)}  # fmt: skip
    print(json.dumps(res, indent=1))
    if a.out:
        from diffdisc.plotting import pyplot

        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "background.json").write_text(json.dumps(res, indent=1))
        plt = pyplot()
        fig, axes = plt.subplots(4, 10, figsize=(10, 4.2))
        for ax, im, pr in zip(axes.flat, fake, prompts, strict=False):
            ax.imshow(im.squeeze(), cmap="gray" if im.shape[-1] == 1 else None)
            ax.set_axis_off()
            ax.set_title(pr[:14], fontsize=6)
        fig.savefig(a.out / "samples.png", dpi=80)


if __name__ == "__main__":
    main()

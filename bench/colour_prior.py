"""Did a model learn class colours? The check to run before reading a cue-conflict shape bias.

A low shape bias means something only if the model tied colour to class names. For shipped test items of
each class, rendered in each of the 8 palette colours, this prints how often the colour the class-name
prompt ("a shirt") prefers is the class colour (`scenes.class_colour`); chance is 1/8:
  diffusion (text-conditional): the tint with the largest implicit-classifier score
    err(x | "") - err(x | prompt) (mean epsilon-error over 10 evenly spaced t, noise shared by the tints and
    both conditions), i.e. the tint under which the prompt explains the image best;
  contrastive: the tint whose image embedding is most similar to the prompt's.
(Samples drawn with the prompt were tried first: the small text model's samples follow even colour *words*
too loosely to read a colour prior from them.)

    .venv/bin/python bench/colour_prior.py --model fmnist-scenes-text --per-class 8
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffdisc.backbones.registry import create_backbone  # noqa: E402
from diffdisc.data.images import array_to_tensor  # noqa: E402
from diffdisc.datasets.fashion_mnist import CLASS_NAMES, load_shipped_subset  # noqa: E402
from diffdisc.datasets.scenes import COLOURS, Item, class_colour, describe, make_scene  # noqa: E402


def _tints(c: int, src: int, images: np.ndarray) -> list[np.ndarray]:
    return [make_scene([Item(c, CLASS_NAMES[c], col, "centre", src)], [images[src]]).image for col in COLOURS]


def diffusion_choices(bb, prompts: list[str], per: int, seed: int) -> list[list[str]]:
    from diffdisc.scoring.schedule import dc_grid

    images, labels, _ = load_shipped_subset()
    rng, g = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    size, n = bb.info.image_size, len(COLOURS)
    null, out = bb.null_condition()[None], []  # [1, tokens, width], like one row of conditions()
    ts = dc_grid(bb.info.num_train_timesteps, 10)
    for c in range(len(prompts)):
        cond = bb.conditions([prompts[c]])
        choice = []
        for src in rng.choice(np.flatnonzero(labels == c), per, replace=False):
            x0 = bb.encode(torch.stack([array_to_tensor(t, size, 3) for t in _tints(c, int(src), images)]))
            gain = torch.zeros(n)
            for t in ts:
                noise = torch.randn((1, *x0.shape[1:]), generator=g).expand_as(x0)
                tt = torch.full((2 * n,), t, dtype=torch.long)
                x_t = bb.add_noise(x0, noise, tt[:n]).repeat(2, 1, 1, 1)
                conds = torch.cat([cond.expand(n, *cond.shape[1:]), null.expand(n, *null.shape[1:])])
                err = (bb.predict_eps(x_t, tt, conds) - noise.repeat(2, 1, 1, 1)).pow(2).mean((1, 2, 3))
                gain += err[n:] - err[:n]
            choice.append(COLOURS[int(gain.argmax())])
        out.append(choice)
    return out


def contrastive_choices(bb, prompts: list[str], per: int, seed: int) -> list[list[str]]:
    images, labels, _ = load_shipped_subset()
    rng = np.random.default_rng(seed)
    text = bb.conditions(prompts)
    size, out = bb.info.image_size, []
    for c in range(len(prompts)):
        picks = rng.choice(np.flatnonzero(labels == c), per, replace=False)
        choice = []
        for src in picks:
            emb = bb.encode(torch.stack([array_to_tensor(t, size, 3) for t in _tints(c, int(src), images)]))
            choice.append(COLOURS[int((emb @ text[c]).argmax())])
        out.append(choice)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    bb = create_backbone(args.model)
    prompts = [describe([Item(c, n, COLOURS[0], "centre", 0)], colours=False) for c, n in enumerate(CLASS_NAMES)]
    how = contrastive_choices if getattr(bb, "is_contrastive", False) else diffusion_choices
    with torch.inference_mode():
        choices = how(bb, prompts, args.per_class, args.seed)
    shares = []  # per class: share of items whose preferred tint is the class colour
    for c, ch in enumerate(choices):
        shares.append(np.mean([h == class_colour(c) for h in ch]))
        print(f"{prompts[c]:15s} class colour {class_colour(c):7s} {shares[-1]:.2f}  {' '.join(ch)}")
    print(f"{args.model}: class colour chosen for {np.mean(shares):.1%} of {len(shares) * args.per_class} "
          f"prompts x items (chance {1 / len(COLOURS):.1%})")  # fmt: skip


if __name__ == "__main__":
    main()

"""Did a model learn class colours? The check to run before reading a cue-conflict shape bias.

For shipped test items of each class, rendered in each of the 8 palette colours, this prints how often the
colour the class-name prompt ("a shirt") prefers is the class colour (`scenes.class_colour`); chance is 1/8.
The measurement is `diffdisc.tasks.colour_prior` (its docstring says how each kind of model chooses); the
`shape_bias` stage of `diffdisc claims` runs it on its fine-tunes.

    .venv/bin/python bench/colour_prior.py --model fmnist-scenes-text --per-class 8
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from diffdisc.backbones.registry import create_backbone  # noqa: E402
from diffdisc.datasets.scenes import class_colour  # noqa: E402
from diffdisc.tasks.colour_prior import colour_prior  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timesteps", type=int, default=10, help="evenly spaced t (diffusion models)")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    r = colour_prior(create_backbone(args.model), args.per_class, args.seed, args.timesteps)
    for c, (prompt, ch) in enumerate(zip(r["prompts"], r["choices"], strict=True)):
        print(f"{prompt:15s} class colour {class_colour(c):7s} {r['per_class'][c]:.2f}  {' '.join(ch)}")
    print(f"{args.model}: class colour chosen for {r['share']:.1%} of {len(r['correct'])} prompts x items "
          f"(chance {r['chance']:.1%}; 95 % interval {r['ci95'][0]:.1%}-{r['ci95'][1]:.1%})")  # fmt: skip


if __name__ == "__main__":
    main()

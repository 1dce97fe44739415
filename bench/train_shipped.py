"""Train a shipped model in the background, logging to OUT/train.log; rerun the same command to resume.

    nohup .venv/bin/python bench/train_shipped.py RECIPE OUT STEPS [key=value ...] [--max-minutes M] >/dev/null 2>&1 &

e.g. `bench/train_shipped.py fmnist-classcond /work/ckpt/fmnist-classcond 6000`. `key=value` sets any option of
train_config.json (values are JSON when they parse: numbers, lists, true/false; else strings). Logs one line every
`DIFFDISC_PROGRESS_INTERVAL` seconds (default 30; set it lower for a finer loss curve) with step, mean loss, s/step. Stop it with `kill PID` (the pid is in OUT/train.lock); at most
`checkpoint_every` steps are lost; the latest checkpoint's EMA weights are always in OUT/model.
`bench/gpu_train.sh` runs the three shipped recipes this way on a GPU machine.
"""

import argparse
import json
import os
import time
from pathlib import Path

# Before torch starts OpenMP: on 2 shared cores, spin-waiting threads made steps ~2x slower when other
# jobs ran (measured: 13 s/step spinning vs 6 s/step passive at batch 128 beside another trainer).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffdisc.training.recipes import get_recipe  # noqa: E402
from diffdisc.training.train import train  # noqa: E402


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("recipe")
    p.add_argument("out", type=Path)
    p.add_argument("steps", type=int)
    p.add_argument("options", nargs="*", type=_option, metavar="key=value")
    p.add_argument("--max-minutes", type=float)
    args = p.parse_args()
    overrides = dict(args.options)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "train.log", "a", buffering=1) as f:

        def log(msg: str) -> None:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")

        log(f"start pid {os.getpid()} {args.recipe} steps={args.steps} {overrides} "
            f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")  # fmt: skip
        try:
            cfg = get_recipe(args.recipe, steps=args.steps, **overrides)
            train(cfg, args.out, max_minutes=args.max_minutes, log=log, quiet=True)
            log("done")
        except BaseException as e:
            log(f"stopped: {type(e).__name__}: {e}")
            raise


if __name__ == "__main__":
    main()

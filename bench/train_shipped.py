"""Train a shipped model in the background, logging to OUT/train.log; rerun the same command to resume.

    nohup .venv/bin/python bench/train_shipped.py RECIPE OUT STEPS [key=value ...] [--max-minutes M] >/dev/null 2>&1 &
    .venv/bin/python -m diffdisc.world.train export OUT     # latest checkpoint's EMA weights -> OUT/model

e.g. `bench/train_shipped.py fmnist-classcond /work/ckpt/fmnist-classcond 6000`. Logs one line per 20 steps
(step, mean loss, s/step). Stop it with `kill PID` (the pid is in OUT/train.lock); at most `checkpoint_every`
steps are lost. `bench/gpu_train.sh` runs the three shipped recipes this way on a GPU machine.
"""

import os
import sys
import time
from pathlib import Path

# Before torch starts OpenMP: on 2 shared cores, spin-waiting threads made steps ~2x slower when other
# jobs ran (measured: 13 s/step spinning vs 6 s/step passive at batch 128 beside another trainer).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffdisc.world.recipes import get_recipe  # noqa: E402
from diffdisc.world.train import parse_argv, train  # noqa: E402


def main() -> None:
    args, overrides, max_minutes, _ = parse_argv(sys.argv[1:])
    if len(args) < 3:
        sys.exit(__doc__)
    recipe, out, steps = args[0], Path(args[1]), int(args[2])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "a", buffering=1) as f:

        def log(msg: str) -> None:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")

        log(f"start pid {os.getpid()} {recipe} steps={steps} {overrides} OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
        try:
            cfg = get_recipe(recipe, steps=steps, **overrides)
            train(cfg, out, max_minutes=max_minutes, log=log, quiet=True)
            log("done")
        except BaseException as e:
            log(f"stopped: {type(e).__name__}: {e}")
            raise


if __name__ == "__main__":
    main()

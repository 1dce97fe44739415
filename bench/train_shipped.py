"""Train the shipped `fmnist-classcond` model in the background; rerun the same command to resume.

    nohup .venv/bin/python bench/train_shipped.py [OUT] [STEPS] >/dev/null 2>&1 &
    .venv/bin/python -m diffdisc.world.train export OUT     # latest checkpoint's EMA weights -> OUT/model

Logs one line per 20 steps (step, mean loss, s/step) to OUT/train.log. Stop it with `kill PID` (the pid is in
OUT/train.lock); at most `checkpoint_every` steps are lost.
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
from diffdisc.world.train import train  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/ckpt/fmnist-classcond")
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 6000
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "a", buffering=1) as f:

        def log(msg: str) -> None:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")

        log(f"start pid {os.getpid()} steps={steps} OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}")
        try:
            train(get_recipe("fmnist-classcond", steps=steps, checkpoint_every=100), out, log=log, quiet=True)
            log("done")
        except BaseException as e:
            log(f"stopped: {type(e).__name__}: {e}")
            raise


if __name__ == "__main__":
    main()

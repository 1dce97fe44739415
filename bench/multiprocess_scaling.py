"""Two processes vs one on this machine (issue 8): throughput ratio and identical results.

    .venv/bin/python bench/multiprocess_scaling.py [--images 100] [--timesteps 10]

Runs `diffdisc classify` on the shipped test images once as a single process and once as two shards
(RANK/WORLD_SIZE, as torchrun / accelerate launch set them), each process with one torch thread — the scaling
a 2-core machine can show — then `diffdisc merge`, and compares every prediction and score. Wall times include
process start-up (imports), as a user pays them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from diffdisc.datasets.export import export_shipped_test
from diffdisc.results import read_records

BIN = Path(sys.executable).parent / "diffdisc"


def classify(data: Path, out: Path, args, rank: int, world: int) -> subprocess.Popen:
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [str(BIN), "classify", "--model", args.model, "--data", str(data), "--strategy", "exhaustive",
           "--timesteps", str(args.timesteps), "--out", str(out), "--quiet", "--json"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)


def rows(out: Path) -> dict:
    return {r["image_id"]: r for r in read_records(out / "shards")}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fmnist-classcond")
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--timesteps", type=int, default=10)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    data = export_shipped_test(tmp / "data", per_class=max(1, args.images // 10))
    t0 = time.perf_counter()
    assert classify(data, tmp / "one", args, 0, 1).wait() == 0
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    procs = [classify(data, tmp / "two", args, r, 2) for r in range(2)]
    assert all(p.wait() == 0 for p in procs)
    t_two = time.perf_counter() - t0
    subprocess.run([str(BIN), "merge", str(tmp / "two")], check=True, stdout=subprocess.DEVNULL)
    a, b = rows(tmp / "one"), rows(tmp / "two")
    # Same noise and timesteps; a different batch composition may change float sums in the last bits only.
    same_ids = a.keys() == b.keys()
    same_pred = same_ids and all(a[k]["pred"] == b[k]["pred"] for k in a)
    dmax = max((abs(x - y) for k in a for x, y in zip(a[k]["scores"], b[k]["scores"], strict=True)), default=0.0)
    rel = dmax / max(abs(x) for k in a for x in a[k]["scores"])
    m1, m2 = (json.loads((tmp / d / "metrics.json").read_text()) for d in ("one", "two"))
    print(f"{len(a)} images x 10 classes x {args.timesteps} t, one torch thread per process: 1 process {t_one:.1f} s, "
          f"2 processes {t_two:.1f} s -> {t_one / t_two:.2f}x (target >= 1.6x); same images {same_ids}, "
          f"identical predictions {same_pred}, max |score difference| {dmax:.1e} ({rel:.1e} relative); "
          f"accuracy {m1.get('accuracy')} vs {m2.get('accuracy')}")  # fmt: skip


if __name__ == "__main__":
    main()

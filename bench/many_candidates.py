"""Peak memory and time-to-first-score of `diffdisc classify` with 10, 100 and 1,000 candidates (issue 17).

    cd bench && ../.venv/bin/python many_candidates.py

The shipped text model `fmnist-scenes-text` against the first N ImageNet class names from open_clip's metadata
(`IMAGENET_CLASSNAMES`, the two repeated names made distinct; its word-level tokenizer maps unknown words to <unk>, which changes no cost), on 2 random
images at 1 timestep, each N in a fresh process. Conditions are encoded once per candidate and the work is
streamed in fixed-size U-Net batches, so peak RSS should stay flat in N; "first score" is the wall time from
the process start to the engine's first U-Net batch (target: within 30 s at 1,000 candidates on the 2-core CPU).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CHILD = r"""
import json, resource, sys, time
t0 = time.time()
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from diffdisc.backbones.registry import create_backbone
from diffdisc.scoring import engine as eng
from diffdisc.tasks.classify import ClassifyConfig, classify
from diffdisc.scoring.config import AdaptiveConfig
first = {}
run = eng.ScoringEngine.run
def timed(self, *a, **k):
    first.setdefault("t", time.time() - t0)
    return run(self, *a, **k)
eng.ScoringEngine.run = timed
n, data, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
names, seen = [], set()
for c in IMAGENET_CLASSNAMES[:n]:  # two names repeat in the list (missile, sunglasses): make them distinct
    names.append(c if c not in seen else c + " 2")
    seen.add(c)
bb = create_backbone("fmnist-scenes-text")
res = classify(bb, data, ClassifyConfig(classes=names, adaptive=AdaptiveConfig(n_timesteps=1),
                                        chunk_images=2), out=out)
print(json.dumps({"candidates": n, "first_score_s": round(first["t"], 1), "total_s": round(time.time() - t0, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    (tmp / "data").mkdir()
    for i in range(2):
        Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8)).save(tmp / "data" / f"{i}.png")
    rows = []
    for n in (10, 100, 1000):
        p = subprocess.run([sys.executable, "-c", CHILD, str(n), str(tmp / "data"), str(tmp / f"run{n}")],
                           capture_output=True, text=True)  # fmt: skip
        if p.returncode:
            raise SystemExit(p.stderr[-2000:])
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    print(f"peak RSS 1,000 / 10 candidates: {rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.3f}")


if __name__ == "__main__":
    main()

"""Peak RSS of `diffdisc classify` on 200 vs 2,000 images (streaming: should be flat within 10%).

    .venv/bin/python bench/memory_flat.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import make_fmnist_sized_classcond
from PIL import Image


def make_folder(root: Path, n: int) -> Path:
    rng = np.random.default_rng(0)
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8)).save(root / f"c{i % 10}" / f"{i}.png")
    return root


def peak_rss_mb(model: Path, data: Path, out: Path) -> float:
    code = (
        "import resource, sys; from diffdisc.cli import main; sys.argv=sys.argv[1:]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    p = subprocess.run([sys.executable, "-c", code, "diffdisc", "classify", "--model", str(model), "--data", str(data),
                        "--timesteps", "1", "--classes", "t-shirt,trouser", "--quiet", "--out", str(out)],
                       capture_output=True, text=True, check=True)  # fmt: skip
    return int(p.stdout.split("RSS")[-1]) / 1024


def main():
    tmp = Path(tempfile.mkdtemp())
    model = make_fmnist_sized_classcond(tmp / "m")
    small = peak_rss_mb(model, make_folder(tmp / "d200", 200), tmp / "o200")
    large = peak_rss_mb(model, make_folder(tmp / "d2000", 2000), tmp / "o2000")
    print(f"peak RSS: 200 images {small:.0f} MB, 2,000 images {large:.0f} MB -> ratio {large / small:.3f} (target <= 1.10)")


if __name__ == "__main__":
    main()

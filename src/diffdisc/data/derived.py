"""Images a benchmark defines but does not store as files: ARO's VG crops (an image and a box), EqBen's `.npy`
frames. `match` scores files, so each is written once as a lossless PNG into a folder the caller names (a run's
own directory, or beside the data, as Winoground's unzip does); a rerun finds it and reads nothing else.

Names are derived from what the image is made of (source file and box), never from a row number, so an edited
annotation file can never pick up another row's stale crop.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from ..errors import DiffdiscError
from ..runs.io import atomic_write_bytes


def safe_name(*parts) -> str:
    """A file name from the parts that define an image (path separators and odd characters become '_')."""
    return re.sub(r"[^0-9A-Za-z.+-]+", "_", "-".join(str(p) for p in parts)).strip("._") or "image"


def derived_png(folder: Path, name: str, make: Callable[[], Image.Image], what: str) -> Path:
    """`folder/name.png`, made by `make()` the first time (atomically: a killed run leaves no half file)."""
    path = Path(folder) / f"{name}.png"
    if path.is_file():
        return path
    img = make()
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue())
    except OSError as e:
        raise DiffdiscError(f"{what}: cannot write {path} ({e.strerror or e}); give a writable folder for the "
                            "derived images (crops_dir / the suite's --out)") from None  # fmt: skip
    return path

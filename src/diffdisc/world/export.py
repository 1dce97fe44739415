"""Write the embedded data as ordinary files (ImageFolder), so users and the demo read what any dataset gives."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image


def folder_name(name: str) -> str:
    """'ankle boot' -> 'ankle_boot': safe on every filesystem; the mapping goes to classes.json."""
    return re.sub(r"[^0-9A-Za-z._-]+", "_", name).strip("._") or "class"


def export_imagefolder(images: np.ndarray, labels: np.ndarray, class_names, out_dir: str | Path, ids=None) -> Path:
    """PNG per image at out/<class>/<id>.png (lossless); existing files are kept, new ones written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mapping = {folder_name(n): n for n in class_names}
    (out / "classes.json").write_text(json.dumps(mapping, indent=2))
    ids = ids if ids is not None else range(len(images))
    for img, y, i in zip(images, labels, ids, strict=True):
        path = out / folder_name(class_names[int(y)]) / f"{int(i):05d}.png"
        if path.is_file():
            continue
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(np.asarray(img)).save(tmp, format="PNG")
        os.replace(tmp, path)
    return out


def export_shipped_test(out_dir: str | Path, per_class: int | None = None, seed: int = 0) -> Path:
    """The shipped Fashion-MNIST test images (ids = test-set indices), optionally a seeded stratified subset."""
    from .fashion_mnist import CLASS_NAMES, load_shipped_subset, stratified_indices

    images, labels, indices = load_shipped_subset()
    if per_class:
        keep = stratified_indices(labels, per_class, seed)
        images, labels, indices = images[keep], labels[keep], indices[keep]
    return export_imagefolder(images, labels, CLASS_NAMES, out_dir, ids=indices)


def export_scenes(scenes, sources: np.ndarray, out_dir: str | Path) -> Path:
    """Scenes as `images/<n>.png` + `captions.jsonl` (image, caption, items), the captions-file layout."""
    from .scenes import render

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for n, s in enumerate(scenes):
        path = out / "images" / f"{n:05d}.png"
        tmp = path.with_name(f".{path.name}.tmp")
        Image.fromarray(render(s, sources)).save(tmp, format="PNG")
        os.replace(tmp, path)
        items = [{"class": i.name, "colour": i.colour, "position": i.position} for i in s.items]
        lines.append(json.dumps({"image": f"images/{path.name}", "caption": s.caption, "items": items}))
    (out / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return out

"""Image-caption groups for matching: our JSONL/CSV layout, and Winoground's through `data.winoground`.

A group holds images and captions where image i matches caption i (a Winoground example is a 2x2 group;
a retrieval set is one N x N group). Images are paths or uint8 arrays (generated probes never touch disk).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DiffdiscError
from ..jsonfile import check_strings, jsonl_rows, read_json_text


@dataclass(frozen=True, eq=False)
class Group:
    id: str
    images: tuple  # paths or uint8 [H, W, 3] arrays
    captions: tuple[str, ...]
    tags: tuple[str, ...] = ()

    def __post_init__(self):
        if len(self.images) < 1 or len(self.captions) < 2:
            raise DiffdiscError(f"group {self.id}: need at least 1 image and 2 captions")
        bad = next((c for c in self.captions if not isinstance(c, str) or not c.strip()), None)
        if bad is not None:
            raise DiffdiscError(f"group {self.id}: captions must be non-empty text, got {json.dumps(bad)}")


def groups_digest(groups: list[Group]) -> str:
    """A content hash of the groups, in order: ids, captions, tags and every image's bytes (files read whole,
    arrays by dtype, shape and data). A match run keeps it, so a groups file edited under the same ids (other
    captions, other images at the same paths) is another run, never one whose old scores are reused."""
    h = hashlib.sha256()

    def part(b: bytes) -> None:  # length-prefixed: ("ab", "c") and ("a", "bc") differ
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)

    for g in groups:
        part(json.dumps([g.id, list(g.captions), list(g.tags), len(g.images)]).encode())
        for im in g.images:
            if isinstance(im, np.ndarray):
                part(f"{im.dtype.str}{im.shape}".encode())
                part(np.ascontiguousarray(im).tobytes())
                continue
            try:
                part(Path(im).read_bytes())
            except OSError as e:
                raise DiffdiscError(f"group {g.id}: cannot read image {im}: {e.strerror or e}") from None
    return h.hexdigest()


def _abs(root: Path, p: str) -> Path:
    q = Path(p)
    return q if q.is_absolute() else root / q


def load_groups(path: str | Path) -> list[Group]:
    """JSONL rows {"id", "images": [...], "captions": [...]}, a CSV with image_0.. / caption_0.. columns,
    or a Winoground folder as Hugging Face ships it (data/examples.jsonl + data/images.zip or images/; the
    data/ folder itself too), read by `open_winoground`."""
    path = Path(path)
    if path.is_dir():
        if any((d / "examples.jsonl").is_file() for d in (path, path / "data")):
            from .winoground import open_winoground  # it imports Group from here

            groups = open_winoground(path)
            _check_unique(groups, path)
            return groups
        cand = [path / "groups.jsonl", path / "groups.csv"]
        path = next((c for c in cand if c.is_file()), None)
        if path is None:
            raise DiffdiscError(f"{cand[0].parent}: no groups.jsonl, groups.csv or Winoground's data/examples.jsonl")
    if not path.is_file():
        raise DiffdiscError(f"groups file not found: {path}")
    root = path.parent
    groups: list[Group] = []
    if path.suffix == ".csv":
        text = read_json_text(path, "a groups CSV")  # UTF-8 whatever the locale; a bad byte is one line
        for n, row in enumerate(csv.DictReader(io.StringIO(text, newline=""))):
            imgs = [_abs(root, row[k]) for k in sorted(k for k in row if k and k.startswith("image_") and row[k])]
            caps = [row[k] for k in sorted(k for k in row if k and k.startswith("caption_") and row[k])]
            groups.append(Group(row.get("id") or str(n), tuple(imgs), tuple(caps)))
    else:
        for n, row in jsonl_rows(path):
            where = f"{path}:{n}"
            if not isinstance(row, dict) or not isinstance(row.get("images"), list) or not isinstance(row.get("captions"), list):
                raise DiffdiscError(f"{where}: need a JSON object with lists 'images' and 'captions'")
            check_strings(where, {f"images[{i}]": p for i, p in enumerate(row["images"])})
            check_strings(where, {f"captions[{i}]": c for i, c in enumerate(row["captions"])})
            groups.append(Group(str(row.get("id", n)), tuple(_abs(root, p) for p in row["images"]),
                                tuple(row["captions"]), tuple(str(t) for t in row.get("tags", ()))))  # fmt: skip
    _check_unique(groups, path)
    return groups


def _check_unique(groups: list[Group], where) -> None:
    ids = [g.id for g in groups]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DiffdiscError(f"{where}: duplicate group id {dup!r}")
    if not groups:
        raise DiffdiscError(f"{where}: no groups")


"""What every benchmark reader checks first: that ROOT holds the files its layout names (nothing is downloaded)
and that the annotation file is JSON of the expected kind, each refused in one line that says what goes where."""

from __future__ import annotations

from pathlib import Path

from ..errors import DiffdiscError
from ..jsonfile import parse_json, read_json_text


def require(name: str, layout: str, *paths: Path) -> None:
    """Each path must exist; `layout` says what ROOT must hold."""
    for p in paths:
        if not p.exists():
            raise DiffdiscError(f"{name}: nothing is downloaded, so {layout}; {p} is missing")


def read_annotation(path: Path, what: str, role: str, kind: type, expected: str):
    """`path` parsed as JSON (`what`: the file in words; `role`: its part in the benchmark) and checked to be a
    `kind` (`expected`: that in words)."""
    data = parse_json(read_json_text(path, what), str(path), role)
    if not isinstance(data, kind):
        raise DiffdiscError(f"{path}: expected {expected}, got {type(data).__name__}")
    return data


def image_file(path: Path, name: str, entry: str, layout: str) -> Path:
    """`path`, an image the annotations name for `entry` ("item 3", or "" where the image is the entry), which
    must be there."""
    if not path.is_file():
        raise DiffdiscError(f"{name}: image {path}{f' of {entry}' if entry else ''} is missing ({layout})")
    return path

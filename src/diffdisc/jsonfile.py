"""Reading users' JSON files: any failure (encoding, syntax, absurd nesting, a non-text caption) is one line
naming the file (and line), never a traceback. Below every layer, so readers in data/ and scoring/ share it."""

from __future__ import annotations

import json
from pathlib import Path

from .errors import DiffdiscError


def read_json_text(path: Path, what: str) -> str:
    """`path` decoded as UTF-8 (what JSON is), whatever the locale: a bad byte is one line naming file and line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DiffdiscError(f"cannot read {what} {path} ({e.strerror or e})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DiffdiscError(f"{path}:{line}: {what} is not UTF-8 (byte 0x{raw[e.start]:02x}); "
                            "save it as UTF-8") from None  # fmt: skip


def parse_json(text: str, where: str, what: str):
    """json.loads whose failures are user errors: bad syntax, and nesting deep enough to exhaust Python's stack
    (RecursionError, which json raises for a few thousand nested brackets)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DiffdiscError(f"{where}: {what} is not valid JSON ({e})") from None
    except RecursionError:
        raise DiffdiscError(f"{where}: {what} is nested too deeply for Python's JSON parser") from None


def check_strings(where: str, fields: dict) -> None:
    """Captions and image names are text: a `null` or `42` caption would be scored as the prompt "None" / "42"."""
    for k, v in fields.items():
        if not isinstance(v, str) or not v.strip():
            raise DiffdiscError(f"{where}: {k} must be a non-empty string, got {json.dumps(v)}")


def jsonl_rows(path: Path):
    """(line number, parsed object) of each non-blank line. Lines end at "\\n" only: `str.splitlines` would also
    split inside strings holding U+2028 and the other separators JSON allows raw."""
    text = read_json_text(path, "a JSON Lines file")
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield n, parse_json(line, f"{path}:{n}", "the line")

"""One base for every config dataclass: a JSON-native `to_dict`, a checked `from_dict`, `save` / `load`.

Configs are frozen dataclasses saved with every result (run.json, train_config.json, head.json, ...), and a
resume compares the saved dict with `to_dict()` of the new config, so `to_dict` must be stable: fields in
declaration order, tuples as lists (what JSON stores), nothing else changed. `from_dict` turns lists back
into tuples and refuses unknown keys, unless the class sets `ignore_unknown` (older run files that carry a
key a config has since dropped).
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import DiffdiscError
from .runs.io import atomic_write_text

C = TypeVar("C", bound="ConfigMixin")


def check_choice(name: str, value, allowed) -> None:
    """The one 'unknown X' message of every config: `unknown loss 'l3' (choose from l2, l1, huber)`."""
    if value not in allowed:
        raise DiffdiscError(f"unknown {name} {value!r} (choose from {', '.join(allowed)})")


def _lists(v):
    return [_lists(x) for x in v] if isinstance(v, (tuple, list)) else v


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


class ConfigMixin:
    """Mixed into `@dataclass(frozen=True)` configs; `config_label` names the config in error messages."""

    config_label: ClassVar[str] = "config"
    ignore_unknown: ClassVar[bool] = False
    # Fields added after run files of this config existed: left out of `to_dict` while at their default, so an
    # older run (which never had the option) still resumes, and a run that uses the option says so.
    added: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {k: _lists(v) for k, v in asdict(self).items()}
        for f in fields(self):
            if f.name in self.added and out[f.name] == f.default:
                del out[f.name]
        return out

    @classmethod
    def from_dict(cls: type[C], d: dict) -> C:
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown and not cls.ignore_unknown:
            known_text = ", ".join(sorted(known))
            raise DiffdiscError(f"unknown {cls.config_label} key {unknown[0]!r} (known: {known_text})")
        return cls(**{k: _tuples(v) for k, v in d.items() if k in known})

    def save(self, path: str | Path) -> Path:
        """Write `to_dict()` as indented JSON, through a temporary file, so a crash never leaves half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DiffdiscError(f"cannot read {cls.config_label} {path}: {e}") from None
        if not isinstance(d, dict):
            raise DiffdiscError(f"{path}: expected a JSON object, got {type(d).__name__}")
        return cls.from_dict(d)

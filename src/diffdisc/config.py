"""One base for every config dataclass: a JSON-native `to_dict`, a checked `from_dict`, `save` / `load`.

Configs are frozen dataclasses saved with every result (run.json, train_config.json, head.json, ...), and a
resume compares the saved dict with `to_dict()` of the new config, so `to_dict` must be stable: fields in
declaration order, tuples as lists (what JSON stores), paths as strings, a nested config as its own
`to_dict()`, nothing else changed. `from_dict` turns lists back into tuples, rebuilds nested configs from the
field types (`score: ScoreConfig`, `head: HeadConfig | None`), and refuses unknown keys, unless the class sets
`ignore_unknown` (older run files that carry a key a config has since dropped).

A field marked `speed_only` (`field(default=..., metadata=SPEED_ONLY)`) changes how fast a number is made,
never the number: `speed_only_keys` lists them for the run guard, so a resume may change them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from .errors import DiffdiscError
from .runs.io import atomic_write_text

C = TypeVar("C", bound="ConfigMixin")

SPEED_ONLY = {"speed_only": True}  # field metadata: a setting that changes speed, not results (see above)


def check_choice(name: str, value, allowed) -> None:
    """The one 'unknown X' message of every config: `unknown loss 'l3' (choose from l2, l1, huber)`."""
    if value not in allowed:
        raise DiffdiscError(f"unknown {name} {value!r} (choose from {', '.join(allowed)})")


def _lists(v):
    """The JSON form of a field value: nested configs by their own `to_dict`, tuples as lists, paths as text."""
    if isinstance(v, ConfigMixin):
        return v.to_dict()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: _lists(getattr(v, f.name)) for f in fields(v)}
    if isinstance(v, (tuple, list)):
        return [_lists(x) for x in v]
    if isinstance(v, dict):
        return {k: _lists(x) for k, x in v.items()}
    return str(v) if isinstance(v, Path) else v


def _tuples(v):
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


@functools.cache
def _field_types(cls) -> dict[str, Any]:
    """The resolved type of each field (annotations are strings here); one that cannot be resolved is left out."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # a name imported only for type checking: resolve field by field
        ns, out = vars(sys.modules[cls.__module__]), {}
        for f in fields(cls):
            try:
                out[f.name] = eval(f.type, ns) if isinstance(f.type, str) else f.type
            except Exception:
                continue
        return out


def _config_type(tp) -> type[ConfigMixin] | None:
    """The config class a field holds: `ScoreConfig`, or the one config of `ScoreConfig | None`; else None."""
    if isinstance(tp, type) and issubclass(tp, ConfigMixin):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if isinstance(a, type) and issubclass(a, ConfigMixin)]
        return found[0] if len(found) == 1 else None
    return None


class ConfigMixin:
    """Mixed into `@dataclass(frozen=True)` configs; `config_label` names the config in error messages."""

    config_label: ClassVar[str] = "config"
    ignore_unknown: ClassVar[bool] = False
    # Fields added after run files of this config existed: left out of `to_dict` while at their default, so an
    # older run (which never had the option) still resumes, and a run that uses the option says so.
    added: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: _lists(getattr(self, f.name)) for f in fields(self)}
        for f in fields(self):
            if f.name in self.added and out[f.name] == f.default:
                del out[f.name]
        return out

    @classmethod
    def from_dict(cls: type[C], d: dict) -> C:
        """The config of `to_dict()`'s form: lists back to tuples, nested configs rebuilt (so a config read back
        from a file is the config that was saved, not one holding plain dicts)."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown and not cls.ignore_unknown:
            known_text = ", ".join(sorted(known))
            raise DiffdiscError(f"unknown {cls.config_label} key {unknown[0]!r} (known: {known_text})")
        types_ = _field_types(cls)
        kw = {}
        for k, v in d.items():
            if k not in known:
                continue
            sub = _config_type(types_.get(k))
            if sub is not None and isinstance(v, dict):
                kw[k] = sub.from_dict(v)
            elif sub is not None and v is not None and not isinstance(v, ConfigMixin):
                raise DiffdiscError(f"{cls.config_label} key {k!r}: expected a {sub.config_label} (a JSON object), "
                                    f"got {type(v).__name__}")  # fmt: skip
            else:
                kw[k] = _tuples(v)
        return cls(**kw)

    @classmethod
    def speed_only_keys(cls, *prefixes: str) -> frozenset[str]:
        """Dotted settings paths ("score.compile") of the fields marked `SPEED_ONLY`, nested configs included,
        under each of `prefixes` (where a task's settings hold this config): what a resume may change."""
        types_ = _field_types(cls)
        out: set[str] = set()
        for p in prefixes:
            for f in fields(cls):
                key = f"{p}.{f.name}" if p else f.name
                if f.metadata.get("speed_only"):
                    out.add(key)
                elif (sub := _config_type(types_.get(f.name))) is not None:
                    out |= sub.speed_only_keys(key)
        return frozenset(out)

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

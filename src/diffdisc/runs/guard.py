"""The one settings guard: a rerun into an output directory resumes only with the settings that made it.

Each task names the keys a resume may change (speed, display, run length: `runtime_keys`); every other
difference is refused with one message that names the keys a user changes on purpose first.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from pathlib import Path

from ..errors import DiffdiscError

# The keys a user changes on purpose, named first when a resume is refused (then the rest, alphabetically).
MEANINGFUL_KEYS = ("model.name", "model.fingerprint", "data", "labels", "adaptive.strategy", "adaptive.n_timesteps",
                   "adaptive.stages", "score.scorer", "score.loss", "score.weighting", "score.seed", "score.dtype",
                   "classes", "prompts", "shortlist.keep", "shortlist.model.fingerprint", "tree", "timestep_weights",
                   "benchmark", "temperature", "model", "fingerprint", "recipe", "seed")  # fmt: skip


def setting_diffs(a, b, runtime_keys: Collection[str] = (), prefix: str = "") -> list[tuple[str, object, object]]:
    """Every differing key path ("score.seed") between two settings dicts, the meaningful ones first."""
    key = prefix.rstrip(".")
    if key in runtime_keys:
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        out = [d for k in sorted(set(a) | set(b)) for d in setting_diffs(a.get(k), b.get(k), runtime_keys, f"{prefix}{k}.")]
        if not prefix:
            rank = {k: i for i, k in enumerate(MEANINGFUL_KEYS)}
            out.sort(key=lambda d: (rank.get(d[0], len(rank)), d[0]))
        return out
    return [] if a == b else [(key, a, b)]


def _short(v, width: int = 40) -> str:
    text = json.dumps(v) if not isinstance(v, str) else v
    return text if len(text) <= width else text[: width - 3] + "..."


def describe_diffs(diffs: list[tuple[str, object, object]], n: int = 3) -> str:
    """'adaptive.n_timesteps: 20 -> 30, model.fingerprint: ab12... -> cd34...' (+ how many more)."""
    text = ", ".join(f"{k}: {_short(a)} -> {_short(b)}" for k, a, b in diffs[:n])
    return text + (f" (and {len(diffs) - n} more)" if len(diffs) > n else "")


def check_settings(path: str | Path, settings: dict, *, runtime_keys: Collection[str] = (), section: str | None = None,
                   where: str | Path | None = None, verb: str = "made", hint: str = "use another --out or delete it",
                   predates: Callable[[str, object], None] | None = None,
                   unversioned: Collection[str] = ()) -> dict | None:  # fmt: skip
    """Raise DiffdiscError if the JSON at `path` (its `section`, if given) holds other settings than `settings`.

    Returns the stored settings (None: no file yet, nothing to compare). `predates(key, value)`: settings may
    be older than an option; a top-level key missing from either side is then no difference, and each key new
    since is reported to it. `unversioned`: top-level keys a settings file without a "version" never held (the
    config fields run.json records since `RunStore` takes a config): skipped where such a file lacks them, so a
    run made before resumes with the same command. Writing the file is the caller's (some write once, some on
    every run).
    """
    path = Path(path)
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    if section is not None:
        stored = stored.get(section) or {}
    now = json.loads(json.dumps(settings))  # tuples -> lists, as stored
    if unversioned and "version" not in stored:
        now = {k: v for k, v in now.items() if k in stored or k not in unversioned}
    if predates is not None:
        for k in [k for k in now if k not in stored]:
            predates(k, now.pop(k))
        stored = {k: v for k, v in stored.items() if k in now}
    diffs = setting_diffs(stored, now, runtime_keys)
    if diffs:
        (k, a, b), where = diffs[0], where or path.parent
        raise DiffdiscError(f"{where} was {verb} with {k}={_short(a)}, now {k}={_short(b)}: other settings "
                            f"({describe_diffs(diffs)}); {hint}")  # fmt: skip
    return stored

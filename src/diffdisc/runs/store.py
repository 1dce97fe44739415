"""A run directory: its settings file and guard, the directory lock, per-rank append-only shards.

`run.json` holds every setting that changes the numbers. It is read-or-created under an exclusive lock, so two
processes started together on one directory cannot both write their own settings: the second sees the first's
and is refused if they differ. Each rank holds a lock on its own shard for as long as the store lives, so a
second process for the same rank (two identical commands, a forgotten RANK/WORLD_SIZE) is refused too. Close
the store (or use it as a context manager) when the run ends, interrupted or not: a second store of the same
rank in the same process is refused as well while the first is open. Lock files are removed by the process
that holds them, just before it lets go, so a finished run directory holds none; whoever locks a lock file
checks afterwards that it is still the one at its path (`_lock`), so a file removed meanwhile is never trusted.

A task hands the store its config object and the identities of its model and data (`RunStore(out, "match",
config, identity={"model": ..., "groups_sha256": ...})`): the store records `config.to_dict()` and the identities
(an identity replaces the config field of its name: the resolved form of what the config asked for), and a
resume may change the fields the config marks speed-only. Such a settings file carries `"version": 2`; one
without a version (written from a hand-built dict before) lacks the config fields it never recorded, and those
are skipped when it is compared, so the unchanged command still resumes it. A directory whose settings live in
a file of its own (synth.json, train_config.json, a checkpoint's state.json) also gets run.json holding the same
settings as a header (`task`, `version`, then config and identities), so every diffdisc output says what made it.

Shards are `shards/part-<rank>.jsonl`, one JSON line per finished item (written whole, flushed and fsynced). A
rerun skips finished items from every shard, so a killed job or another number of processes resumes without
losing or duplicating an item; a torn last line (kill during a write) is dropped and its item redone.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path

from ..errors import DiffdiscError
from .guard import check_settings
from .io import append_text, atomic_write_text, json_safe, remove_stale_temps, repair_jsonl

RUN_JSON = "run.json"
RUN_VERSION = 2  # settings recorded from a config object (every field); files without a version were hand-built
# Settings that change speed or display, not numbers (noise is keyed by (image, t)): a resume may change them
# (model.label is the model's display name, new in run.json: runs made before it still resume). A config's
# speed-only fields (`ConfigMixin.speed_only_keys`: score.compile, score.channels_last, ...) are added by the
# store; score.batch_size is also here for settings given as plain dicts, and "version" is a header, not a setting.
RUNTIME_KEYS = frozenset({"score.batch_size", "model.label", "version"})


class _Unused:
    def __repr__(self) -> str:
        return "UNUSED"


# An identity value: this run does not use the config field of that name (a tree's beam in a run without a tree),
# so its settings leave it out, as the hand-built settings of runs before did; changing it never refuses a resume.
UNUSED = _Unused()


def _is_config(v) -> bool:
    """A config object (`ConfigMixin`), told by its methods: this layer sits below `config` and cannot import it."""
    return hasattr(v, "to_dict") and hasattr(type(v), "speed_only_keys")


def run_settings(config, identity: dict | None = None, task: str | None = None) -> tuple[dict, frozenset, frozenset]:
    """(settings, speed-only keys, keys a version-less file never held) of a run of `config` on `identity`.

    The settings are the identities (a config among them by its own `to_dict`), then every config field they
    do not replace (`UNUSED` leaves one out), with `task` and `version` in front; what a resume may change is
    read from the fields' metadata (`SPEED_ONLY`), never listed by name."""
    identity = dict(identity or {})
    speed = {k for k in type(config).speed_only_keys("") if k.split(".", 1)[0] not in identity}
    for k, v in identity.items():
        if _is_config(v):
            speed |= type(v).speed_only_keys(k)
            identity[k] = v.to_dict()
    own = {k: v for k, v in config.to_dict().items() if k not in identity}
    identity = {k: v for k, v in identity.items() if v is not UNUSED}
    head = {"task": task} if task is not None else {}
    return {**head, "version": RUN_VERSION, **identity, **own}, frozenset(speed), frozenset(own)


def model_identity(info) -> dict:
    """A model as every run records it: its name, its content fingerprint (what the guard compares) and its
    display label (not compared: `RUNTIME_KEYS`), from a `BackboneInfo`."""
    return {"name": info.name, "fingerprint": info.fingerprint, "label": getattr(info, "label", None)}


def write_header(out: str | Path, task: str, settings: dict) -> Path:
    """run.json of a directory whose settings live elsewhere (a synthetic set, a baseline, claims): the same
    header as a scoring run's (`task`, `version`, then the settings), so any output says what made it."""
    path = Path(out) / RUN_JSON
    head = {"task": task, "version": RUN_VERSION, **{k: v for k, v in settings.items() if k not in ("task", "version")}}
    text = json.dumps(json_safe(head), indent=2, default=str)
    try:
        same = path.read_text() == text
    except (OSError, UnicodeDecodeError):
        same = False
    if not same:  # a rerun that changes nothing writes nothing (reruns are checked to touch no file)
        atomic_write_text(path, text)
    return path


def read_records(shards_dir: str | Path) -> Iterator[dict]:
    """All complete records from all shards (first occurrence of an image id wins; torn lines are skipped)."""
    seen = set()
    for shard in sorted(Path(shards_dir).glob("part-*.jsonl")):
        with open(shard, "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if rec["image_id"] not in seen:
                    seen.add(rec["image_id"])
                    yield rec


def run_task(run_dir: str | Path) -> str | None:
    """The task that made `run_dir` (run.json's "task"), None if it has no readable run.json."""
    try:
        d = json.loads((Path(run_dir) / RUN_JSON).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return d.get("task") if isinstance(d, dict) else None


class RunStore:
    """One task's output directory, guarded by its settings and locked per rank.

    `settings`: the task's config object, with `identity` (model, data, what the config resolved to; see the
    module docstring), or a plain dict of settings as callers made them before (then `runtime_keys`, default
    `RUNTIME_KEYS`, is all a resume may change). `task` is recorded in run.json (None: the settings say it, or
    the kind of run has none). Classify and match keep the defaults (run.json, written once, plus shards); a
    directory with its own settings file (synth.json, train_config.json) passes `settings_file`,
    `shards=False` and `rewrite=True` (the file then follows the runtime keys a resume changed), and its own
    `runtime_keys`, `verb` and `hint` for the guard; with a `task` it also gets the run.json header. `section`:
    the settings are that key of a file the task writes itself (a checkpoint's state.json): compared, never
    written here. `lock=False`: the caller holds its own lock on the directory for as long as the store lives
    (the trainer's, which names its pid), so no rank lock is taken.
    """

    def __init__(self, out: str | Path, task: str | None, settings, *, identity: dict | None = None, rank: int = 0,
                 runtime_keys: Collection[str] | None = None, settings_file: str = RUN_JSON, shards: bool = True,
                 rewrite: bool = False, sort_keys: bool = True, section: str | None = None, lock: bool = True,
                 verb: str = "made", hint: str = "use another --out or delete it",
                 predates: Callable[[str, object], None] | None = None):  # fmt: skip
        self.dir = Path(out)
        self.dir.mkdir(parents=True, exist_ok=True)
        runtime_keys = RUNTIME_KEYS if runtime_keys is None else frozenset(runtime_keys) | {"version"}
        own = task if settings_file == RUN_JSON else None  # elsewhere the task goes into the run.json header only
        unversioned: frozenset = frozenset()
        if _is_config(settings):
            settings, speed, unversioned = run_settings(settings, identity, own)
            runtime_keys |= speed
        elif identity:
            raise TypeError("identity= goes with a config object; a settings dict holds its identities itself")
        elif own is not None:
            settings = {**settings, "task": own}
        self.task = task
        self.settings = json.loads(json.dumps(json_safe(settings), default=str))  # paths as text, as stored
        guard = _lock(self.dir / ".run.lock", blocking=True)
        try:
            path = self.dir / settings_file
            self.stored = check_settings(path, self.settings, runtime_keys=runtime_keys, section=section,
                                         where=self.dir, verb=verb, hint=hint, predates=predates,
                                         unversioned=unversioned)  # fmt: skip
            # the rank lock before any write: a refused second process must not rewrite the running one's
            # settings file (`rewrite` with a changed runtime key, e.g. a second synth generate)
            self._lock = _lock(self.dir / f".rank-{rank:05d}.lock", blocking=False) if lock else None
            if lock and self._lock is None:
                msg = f"another process is already writing {self.dir} (rank {rank}); wait for it, or use another --out"
                if shards:
                    msg += (". To share one run across processes start them with torchrun or `accelerate launch` "
                            "(they set RANK/WORLD_SIZE)")  # fmt: skip
                raise DiffdiscError(msg)
            if section is None and (rewrite or self.stored is None):
                atomic_write_text(path, json.dumps(self.settings, indent=2, sort_keys=sort_keys))
            if task is not None and settings_file != RUN_JSON:
                write_header(self.dir, task, self.settings)
        except BaseException:
            self.close()
            raise
        finally:
            _unlock(guard)
        remove_stale_temps(self.dir)
        self.shards = self.dir / "shards"
        self.path = self.shards / f"part-{rank:05d}.jsonl"
        if shards:
            self.shards.mkdir(exist_ok=True)
            remove_stale_temps(self.shards)
            repair_jsonl(self.path)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release this rank's lock (and remove its file): a rerun, in this process or another, may write again."""
        if getattr(self, "_lock", None) is not None:
            _unlock(self._lock)
            self._lock = None

    def records(self) -> Iterator[dict]:
        return read_records(self.shards)

    def done(self) -> set[str]:
        return {r["image_id"] for r in self.records()}

    def append(self, records: Iterable[dict]) -> None:
        append_text(self.path, "".join(json.dumps(json_safe(r), separators=(",", ":")) + "\n" for r in records))


def _lock(path: Path, *, blocking: bool):
    """An open file holding an exclusive lock on `path`, or None if another holder has it (`blocking=False`).

    The file may be removed by its holder as it lets go (`_unlock`); one locked after that removal is no longer
    the file at `path`, so it is dropped and `path` locked afresh."""
    while True:
        f = open(path, "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            if blocking:
                raise
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return f
        f.close()


def _unlock(f) -> None:
    """Remove the lock file, then let go of it: while we hold it nobody else can, and a waiter that gets the
    removed file sees it is stale (`_lock`)."""
    try:
        os.unlink(f.name)
    except OSError:
        pass
    f.close()  # closing the file releases the lock

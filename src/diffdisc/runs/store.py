"""A run directory: its settings file and guard, the directory lock, per-rank append-only shards.

`run.json` holds every setting that changes the numbers. It is read-or-created under an exclusive lock, so two
processes started together on one directory cannot both write their own settings: the second sees the first's
and is refused if they differ. Each rank holds a lock on its own shard for as long as the store lives, so a
second process for the same rank (two identical commands, a forgotten RANK/WORLD_SIZE) is refused too. Close
the store (or use it as a context manager) when the run ends, interrupted or not: a second store of the same
rank in the same process is refused as well while the first is open. Lock files are removed by the process
that holds them, just before it lets go, so a finished run directory holds none; whoever locks a lock file
checks afterwards that it is still the one at its path (`_lock`), so a file removed meanwhile is never trusted.

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
# Settings that change speed or display, not numbers (noise is keyed by (image, t)): a resume may change them
# (model.label is the model's display name, new in run.json: runs made before it still resume). Tasks add
# their configs' speed-only fields (`ConfigMixin.speed_only_keys`: score.compile, score.channels_last, ...);
# score.batch_size is also here for settings given as plain dicts.
RUNTIME_KEYS = frozenset({"score.batch_size", "model.label"})


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

    `task` is recorded in the settings (None: the settings say it, or the kind of run has none). Classify and
    match keep the defaults (run.json, written once, plus shards); a directory with its own settings file
    (synth.json, train_config.json) passes `settings_file`, `shards=False` and `rewrite=True` (the file then
    follows the runtime keys a resume changed), and its own `runtime_keys`, `verb` and `hint` for the guard.
    `section`: the settings are that key of a file the task writes itself (a checkpoint's state.json): compared,
    never written here. `lock=False`: the caller holds its own lock on the directory for as long as the store
    lives (the trainer's, which names its pid), so no rank lock is taken.
    """

    def __init__(self, out: str | Path, task: str | None, settings: dict, *, rank: int = 0,
                 runtime_keys: Collection[str] = RUNTIME_KEYS, settings_file: str = RUN_JSON, shards: bool = True,
                 rewrite: bool = False, sort_keys: bool = True, section: str | None = None, lock: bool = True,
                 verb: str = "made", hint: str = "use another --out or delete it",
                 predates: Callable[[str, object], None] | None = None):  # fmt: skip
        self.dir = Path(out)
        self.dir.mkdir(parents=True, exist_ok=True)
        settings = {**settings, "task": task} if task is not None else settings
        self.settings = json.loads(json.dumps(json_safe(settings)))
        guard = _lock(self.dir / ".run.lock", blocking=True)
        try:
            path = self.dir / settings_file
            self.stored = check_settings(path, self.settings, runtime_keys=runtime_keys, section=section,
                                         where=self.dir, verb=verb, hint=hint, predates=predates)  # fmt: skip
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

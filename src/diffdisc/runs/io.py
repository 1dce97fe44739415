"""How run files are written: write-then-rename (readers see the old file or the new one), fsynced appends.

Every temporary file is `.<name>.tmp-<host>@<pid>` next to its target, so `remove_stale_temps` can tell a dead
writer's leftovers from a live one's, and leaves those of other machines sharing the folder (a multi-machine run
on a shared filesystem) alone: their pids mean nothing here. Binary writers (safetensors, matplotlib) write
through a callback.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

from ..errors import DiffdiscError

TMP_MARK = ".tmp-"
HOST = re.sub(r"[^0-9A-Za-z.-]", "_", socket.gethostname())[:64] or "host"


def temp_path(path: Path) -> Path:
    """Where `path` is written before its rename: hidden, same folder (a rename never crosses filesystems)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{HOST}@{os.getpid()}")


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` fills the temporary file, then it is renamed onto `path`; any failure removes it and re-raises."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> None:
    """Text, flushed and fsynced before the rename; an OSError becomes a DiffdiscError that says what is kept."""

    def write(tmp: Path) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    path = Path(path)
    try:
        atomic_write(path, write)
    except OSError as e:
        raise DiffdiscError(f"could not write {path} ({e.strerror or e}); earlier results in {path.parent} are kept") from e


def atomic_write_bytes(path: str | Path, data: bytes) -> bool:
    """Bytes (PNGs, small JSON); False (nothing written) if the file already holds them, so reruns keep mtimes.

    No fsync: these are many small files that a rerun rewrites if lost. OSError propagates (callers say which
    file and what a rerun does)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
    return True


def json_safe(v):
    """JSON has no inf/nan: store them as null (nested lists and dicts too)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, list):
        return [json_safe(x) for x in v]
    if isinstance(v, dict):
        return {k: json_safe(x) for k, x in v.items()}
    return v


def write_jsonl(path: str | Path, rows) -> None:
    """One JSON object per line, written atomically (merged run files: results.jsonl, predictions.jsonl)."""
    atomic_write_text(path, "".join(json.dumps(json_safe(r)) + "\n" for r in rows))


def append_text(path: str | Path, text: str, what: str = "results") -> None:
    """Append whole lines, flushed and fsynced (an append-only shard); a full disk is one line that says what is kept."""
    if not text:
        return
    try:
        with open(path, "a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        why = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
        raise DiffdiscError(f"could not append {what} to {path} ({why}); images finished before this chunk "
                            "are kept: free space and rerun the same command to resume") from e  # fmt: skip


def repair_jsonl(path: str | Path) -> None:
    """Cut a torn last line left by a kill mid-write (the intact rows stay), before appending again."""
    path = Path(path)
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: str | Path, pattern: str = f".*{TMP_MARK}*") -> None:
    """Delete temporary files or folders named `...-<pid>` (or `temp_path`'s `...-<host>@<pid>`) left by a
    process that died mid-write.

    A live writer's are kept, and so are another host's; our own pid's are from an earlier failed write in this
    process (writes here are sequential). `pattern` picks them: the default matches `temp_path`; checkpoint
    folders pass their own."""
    for tmp in Path(folder).glob(pattern):
        head, at, pid = tmp.name.rpartition("@")
        if at and not head.endswith(f"-{HOST}"):
            continue  # another machine's writer: its pid says nothing here
        pid = pid if at else tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not pid_alive(int(pid))):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)

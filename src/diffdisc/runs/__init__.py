"""What every task's output directory shares: the run store (settings guard, lock, shards) and atomic writes.

Sits just above `errors`: any layer may write through it, and it imports nothing of diffdisc but `errors`.
"""

from .guard import MEANINGFUL_KEYS, check_settings, describe_diffs, setting_diffs
from .io import (
    HOST,
    TMP_MARK,
    append_text,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    json_safe,
    pid_alive,
    remove_stale_temps,
    repair_jsonl,
    temp_path,
    write_jsonl,
)
from .store import (
    RUN_JSON,
    RUN_VERSION,
    RUNTIME_KEYS,
    UNUSED,
    RunStore,
    model_identity,
    read_records,
    run_settings,
    run_task,
    write_header,
)

__all__ = [
    "HOST", "MEANINGFUL_KEYS", "RUNTIME_KEYS", "RUN_JSON", "RUN_VERSION", "TMP_MARK", "UNUSED", "RunStore", "append_text",
    "atomic_write", "atomic_write_bytes", "atomic_write_text", "check_settings", "describe_diffs", "json_safe",
    "model_identity", "pid_alive", "read_records", "remove_stale_temps", "repair_jsonl", "run_settings", "run_task",
    "setting_diffs", "temp_path", "write_header", "write_jsonl",
]  # fmt: skip

"""What every task's output directory shares: atomic writes, stale-temp cleanup and the settings guard.

Sits just above `errors`: any layer may write through it, and it imports nothing of diffdisc but `errors`.
"""

from .guard import MEANINGFUL_KEYS, check_settings, describe_diffs, setting_diffs
from .io import (
    TMP_MARK,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    pid_alive,
    remove_stale_temps,
    temp_path,
)

__all__ = [
    "MEANINGFUL_KEYS", "TMP_MARK", "atomic_write", "atomic_write_bytes", "atomic_write_text", "check_settings",
    "describe_diffs", "pid_alive", "remove_stale_temps", "setting_diffs", "temp_path",
]  # fmt: skip

"""A `diffdisc train` output directory read back: train_config.json, its checkpoints, model/ and a log if kept.

The trainer resumes from `checkpoints` too, so a report and a resume agree on which steps are done.
"""

from __future__ import annotations

import re
from pathlib import Path

from .base import Result, load_object, optional_json

TRAIN_CONFIG = "train_config.json"
TRAIN_LOG = "train.log"  # written by bench/train_shipped.py; `diffdisc train` logs to stderr
_LOSS_LINE = re.compile(r"\bstep (\d+)/\d+ loss (\S+)")


def checkpoints(out: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary dirs of a killed save are never listed)."""
    d = Path(out) / "checkpoints"
    if not d.is_dir():
        return []
    done = [p for p in d.iterdir() if re.fullmatch(r"step-\d+", p.name) and (p / "step.json").is_file()]
    return sorted(done, key=lambda p: int(p.name[5:]))


def loss_curve(log: str) -> list[tuple[int, float]]:
    """(step, mean loss) of every periodic log line ("step 40/2000 loss 0.1234 ..."); a resumed run's log
    repeats steps after its last checkpoint, the later line wins."""
    curve: dict[int, float] = {}
    for m in _LOSS_LINE.finditer(log):
        try:
            curve[int(m.group(1))] = float(m.group(2))
        except ValueError:
            continue
    return sorted(curve.items())


class TrainResult(Result):
    """Config, latest checkpoint state (step, wall time), exported model metadata and logged loss curve."""

    marker = TRAIN_CONFIG

    def __init__(self, path: Path, config: dict, state: dict | None, model: dict | None,
                 losses: list[tuple[int, float]]):  # fmt: skip
        self.path, self.config, self.state, self.model, self.losses, self.problems = path, config, state, model, losses, []

    @classmethod
    def load(cls, run_dir: str | Path) -> TrainResult:
        path, problems = Path(run_dir), []
        config = load_object(path / TRAIN_CONFIG)
        ckpts = checkpoints(path)
        state = optional_json(ckpts[-1] / "step.json", problems) if ckpts else None
        model = optional_json(path / "model" / "diffdisc.json", problems)
        log = path / TRAIN_LOG
        losses = loss_curve(log.read_text(errors="replace")) if log.is_file() else []
        r = cls(path, config, state, model, losses)
        if not ckpts:
            problems.append(f"training run {path.name} has no checkpoint yet")
        r.problems = problems
        return r

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    def metrics(self) -> dict:
        """Steps done (of the configured total), wall time, and the loss curve's first / last / lowest values."""
        done = self.state or self.model or {}
        out = {"steps": int(done.get("step", done.get("steps", 0))), "total_steps": self.config.get("steps"),
               "wall_time_s": done.get("wall_time_s")}  # fmt: skip
        if self.losses:
            values = [v for _, v in self.losses]
            out["loss"] = {"first": values[0], "last": values[-1], "min": min(values), "points": len(values)}
        return out

"""A LoRA adapter directory (`diffdisc attention tune`) read back: peft's adapter config and what diffdisc
recorded beside it (the model it was trained for, the shots, the last epoch's mean hinge loss)."""

from __future__ import annotations

from pathlib import Path

from .base import PathResult, load_object

ADAPTER_CONFIG = "adapter_config.json"


class AdapterResult(PathResult):
    """`tune` returns one; it stands for the adapter's folder as the path returned before (`load_lora(bb, r)`)."""

    marker = ADAPTER_CONFIG

    def __init__(self, path: Path, config: dict):
        self.path, self.config, self.problems = Path(path), config, []

    @classmethod
    def load(cls, run_dir: str | Path) -> AdapterResult:
        return cls(Path(run_dir), load_object(Path(run_dir) / ADAPTER_CONFIG))

    def metrics(self) -> dict:
        meta = self.config.get("diffdisc") or {}
        return {"rank": self.config.get("r"), **{k: meta.get(k) for k in ("shots", "epochs", "loss")}}

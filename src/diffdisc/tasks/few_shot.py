"""Which groups few-shot LoRA tuning (`diffdisc attention tune`) trains on: the first K of the user's groups, or
K groups of the embedded probes built from Fashion-MNIST train items."""

from __future__ import annotations

from pathlib import Path

from ..data.groups import Group, load_groups
from ..errors import DiffdiscError

DEFAULT_PROBES = ("binding", "spatial")


def few_shot_groups(shots: int, groups: str | Path | None = None, probes: list[str] | None = None,
                    seed: int = 0) -> list[Group]:  # fmt: skip
    """`shots` training groups: from the `groups` file (groups.jsonl / Winoground dir) when given, else drawn
    evenly from `probes` (default binding and spatial) with seed 1000 + `seed`, disjoint from evaluation's."""
    if shots < 1:
        raise DiffdiscError("--shots must be >= 1 (K = 0 is the untuned model)")
    if groups:
        return load_groups(groups)[:shots]
    from .attention import tuning_groups

    return tuning_groups(list(probes or DEFAULT_PROBES), shots, seed)

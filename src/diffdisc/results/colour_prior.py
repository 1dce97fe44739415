"""A colour-prior measurement (`tasks.colour_prior`) as its task returns it: how often a class-name prompt
prefers the class colour, with the items behind it."""

from __future__ import annotations

from .base import DictResult


class ColourPriorResult(DictResult):
    """{"share", "ci95", "per_class", "choices", "correct", "prompts", "chance"} (the dict `colour_prior` always
    returned); `metrics()` keeps the numbers, not the per-item choices."""

    def metrics(self) -> dict:
        return {k: self[k] for k in ("share", "ci95", "per_class", "chance")} | {"n": len(self["correct"])}

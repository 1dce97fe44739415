"""The compositional matching benchmarks added to Winoground and SugarCrepe: ARO, EqBen and CLEVR, by name.

`open_match_benchmark` (data.winoground) dispatches here; `METRICS` says how each is scored as its paper
reports it (the suite computes the numbers: `tasks.suite.metrics`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DiffdiscError
from .aro import ARO_BENCHMARKS, open_aro
from .clevr import ALIASES as CLEVR_ALIASES
from .clevr import CLEVR_BENCHMARKS, open_clevr
from .eqben import EQBEN_BENCHMARKS, open_eqben
from .groups import Group

COMPOSITIONAL_BENCHMARKS = (*ARO_BENCHMARKS, *EQBEN_BENCHMARKS, *CLEVR_BENCHMARKS)
ALIASES = {**CLEVR_ALIASES, **{n.removeprefix("aro/"): n for n in ARO_BENCHMARKS}}  # "vg_relation", ...


def canonical(name: str) -> str:
    key = str(name).strip().lower()
    return ALIASES.get(key, key)


def open_compositional(name: str, root: str | Path, split: str = "test", **kwargs) -> list[Group]:
    """ARO / EqBen / CLEVR groups by name; `kwargs` go to the reader (limit, subset_seed, crops_dir, ...)."""
    key = canonical(name)
    if key.startswith("aro/"):
        return open_aro(key, root, split, **kwargs)
    if key.startswith("eqben"):
        kwargs["images_dir"] = kwargs.pop("crops_dir", None)
        return open_eqben(key, root, split, **kwargs)
    if key.startswith("clevr/"):
        kwargs.pop("crops_dir", None)
        return open_clevr(key, root, split, **kwargs)
    raise DiffdiscError(f"unknown compositional benchmark {name!r}; known: {', '.join(COMPOSITIONAL_BENCHMARKS)}")

"""The family table behind `create_backbone`, timm-style: each family module registers itself here.

A family is a `detect(root) -> bool` on a model directory's layout and a `load(root, name)` that builds the
backbone. `create_backbone` asks the families in priority order (highest first, then registration order) and
loads with the first that claims the directory, so a new model family is one new module calling
`register_family` and no edit of `create_backbone`. This module imports no family, so families can import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .base import read_config


@dataclass(frozen=True)
class Family:
    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., object]  # (root, name=...) -> Backbone-like module
    priority: int = 0
    expects: str = ""  # the layout in words, for the "not a recognised model directory" message
    pipelines: tuple[str, ...] = ()  # model_index.json `_class_name`s it loads, for the "unsupported pipeline" message
    loading: bool = False  # whether `load` takes `spec=` (`loading.LoadSpec`: weights dtype, quantization, placement)


_FAMILIES: dict[str, Family] = {}


def register_family(name: str, detect: Callable[[Path], bool], load: Callable[..., object], *, priority: int = 0,
                    expects: str = "", pipelines: tuple[str, ...] = (), loading: bool = False) -> Family:  # fmt: skip
    """Add (or replace) a family; higher `priority` is asked first, ties in registration order. `loading`: its
    `load` takes `spec=` (a `loading.LoadSpec`); without it, options other than fp32 weights are refused."""
    _FAMILIES.pop(name, None)
    fam = _FAMILIES[name] = Family(name, detect, load, priority, expects, tuple(pipelines), loading)
    return fam


def families() -> list[Family]:
    """Registered families in the order `create_backbone` asks them."""
    return sorted(_FAMILIES.values(), key=lambda f: -f.priority)


def expected_layouts() -> str:
    """The registered layouts in words, in registration order: "a, b, or c"."""
    layouts = [f.expects for f in _FAMILIES.values() if f.expects]
    return ", ".join(layouts[:-1]) + f", or {layouts[-1]}" if len(layouts) > 1 else "".join(layouts)


def supported_pipelines() -> list[str]:
    """Every pipeline class a registered family loads."""
    return [p for f in _FAMILIES.values() for p in f.pipelines]


def config_class(root: Path) -> str:
    """`_class_name` of unet/config.json (or config.json when there is no unet/); "" when there is none."""
    cfg = root / "unet" / "config.json" if (root / "unet").is_dir() else root / "config.json"
    return read_config(cfg).get("_class_name", "") if cfg.is_file() else ""


def pipeline_class(root: Path) -> str:
    """`_class_name` of model_index.json (the diffusers pipeline the directory was saved from); "" without one."""
    mi = root / "model_index.json"
    return str(read_config(mi).get("_class_name", "")) if mi.is_file() else ""

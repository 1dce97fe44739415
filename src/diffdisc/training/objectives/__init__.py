"""What each model kind trains: one objective per kind (its data, module, loss and saved layout).

`make_objective(cfg)` picks the one `cfg.kind` names; the loop in `training/train.py` is shared.
"""

from __future__ import annotations

from ...config import check_choice
from ..config import TrainConfig
from .base import DATA_ORDER, init_dir, resize_note
from .captions import Captioned
from .classcond import ClassCondObjective
from .contrastive import ContrastiveObjective
from .text import TextObjective

OBJECTIVES = {"classcond": ClassCondObjective, "text": TextObjective, "clip": ContrastiveObjective}

__all__ = ["DATA_ORDER", "OBJECTIVES", "Captioned", "init_dir", "make_objective", "resize_note"]


def make_objective(cfg: TrainConfig):
    check_choice("model kind", cfg.kind, OBJECTIVES)
    return OBJECTIVES[cfg.kind](cfg)

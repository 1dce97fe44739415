"""A classify run's contrastive partner (`classify --ensemble MODEL`): its prompts for the run's candidates, its
scores per chunk, and the log-linear pooling (`scoring.ensemble`) that turns the diffusion search's scores and
its own into the run's ranking and scores. The weight is fitted on validation images (`tasks.auto_strategy`) or
given; the pooling is applied after whatever search ran, so after a cascade it is the cascade's final stage."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from ..backbones.capabilities import Capability, require
from ..errors import DiffdiscError
from ..runs.store import model_identity
from ..scoring import ensemble as pooling
from ..scoring.calibrate import model_temperature, temperature_key
from ..scoring.config import ScoreConfig
from ..scoring.engine import ScoringEngine
from ..scoring.search import ExhaustiveConfig, Inputs
from .candidates import Candidates, build_candidates
from .shortlist import _check_prompts


@dataclass
class Ensemble:
    """The partner model with its candidates (`keys`, `groups`: the run's classes as its prompts), and once fitted
    or given, the pooling (`fit`). `open` it inside the run; `scores(pixels)` is one table per chunk."""

    model: object
    keys: list
    groups: list[list[int]]
    batch_size: int = 64
    fit: pooling.EnsembleFit | None = None
    how: str = ""
    engine: ScoringEngine | None = None
    conds: torch.Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.model.info.image_size, self.model.info.image_channels

    def open(self, stack: contextlib.ExitStack) -> Ensemble:
        if self.engine is None:
            self.engine = stack.enter_context(ScoringEngine(self.model, ScoreConfig(batch_size=self.batch_size)))
            self.conds = self.model.conditions(self.keys)
        return self

    def scores(self, pixels: torch.Tensor, keys: list[str]) -> np.ndarray:
        """[images, candidates] contrastive scores (lower is better) of `pixels` read at `shape`."""
        res = ExhaustiveConfig().build()(Inputs(self.engine, self.model.encode(pixels), self.conds, self.groups), keys)
        return np.array([r.means for r in res], dtype=np.float64)

    def model_temperature(self) -> float | None:
        t = model_temperature(self.model.info.metadata, temperature_key(None, contrastive=True))
        return t and t["value"]

    def apply(self, diff_scores: list[float], ranking: list[int], con: np.ndarray) -> tuple[list[int], list[float], dict]:
        """(ranking, scores, what the record adds) of one image after pooling its diffusion scores with `con`."""
        f = self.fit
        pooled = pooling.pooled_scores(np.asarray(diff_scores)[None], con[None], f.weight, f.t_diff, f.t_con)[0]
        extra = {"diffusion_ranking": ranking, "diffusion_scores": diff_scores, "contrastive_scores": con.tolist(),
                 "ensemble_forwards": 1}  # fmt: skip
        return pooling.ranking(pooled, ranking), pooled.tolist(), extra

    def settings(self) -> dict:
        """run.json's `ensemble`: the model, its prompts, the weight, both temperatures and how they were chosen."""
        f = self.fit
        return {"model": model_identity(self.model.info), "prompts": [str(k) for k in self.keys], "weight": f.weight,
                "chosen_by": self.how, "temperatures": {"diffusion": f.t_diff, "contrastive": f.t_con, "how": f.temperatures},
                "fit": f.record() if f.table else None}  # fmt: skip


def ensemble_partner(backbone, cand: Candidates, templates, model, batch_size: int = 64) -> Ensemble:
    """The run's partner, refused in one line unless it is a contrastive model that reads the run's candidates
    (the same classes, as its own prompts) and the deciding model denoises."""
    require(backbone, Capability.DENOISE, "--ensemble (the diffusion side of the pooling)")
    require(model, Capability.MATCH, "--ensemble (log-linear pooling with a contrastive model's scores)")
    mine = build_candidates(model, cand.classes, templates)
    if len(mine.groups) != len(cand.groups):
        raise DiffdiscError(f"ensemble model {model.info.name} gives {len(mine.groups)} candidates for the run's "
                            f"{len(cand.groups)}: both must score the same candidates")  # fmt: skip
    _check_prompts(model, mine.keys)
    return Ensemble(model, mine.keys, mine.groups, batch_size=batch_size)


def fixed_fit(ens: Ensemble, weight: float, diffusion_temperature: float | None) -> pooling.EnsembleFit:
    """A given weight at the two models' own stored temperatures (refused where either has none: without a
    temperature the weight would weigh score scales, not evidence; `--validation` fits them instead)."""
    t_con = ens.model_temperature()
    missing = [n for n, t in (("the diffusion model", diffusion_temperature), (ens.model.info.name, t_con)) if not t]
    if missing:
        raise DiffdiscError(f"--ensemble-weight {weight} needs each model's softmax temperature and {' and '.join(missing)} "
                            "records none for these scores: give --validation DIR to fit them")  # fmt: skip
    return pooling.EnsembleFit(float(weight), float(diffusion_temperature), float(t_con), "the models' metadata",
                               "given", 0, ())  # fmt: skip

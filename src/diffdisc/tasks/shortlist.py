"""The cheap stage of a cascade (`classify`'s `shortlist`, a `CascadeConfig` in its search): the same model at a
few timesteps, a contrastive model, another diffusion model, or a fitted features head, checked against the
candidates before the run starts and handed to the cascade with each chunk (`Inputs.cheap`)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace

import torch

from ..backbones.base import Backbone
from ..backbones.capabilities import Capability, require
from ..errors import DiffdiscError
from ..features.cache import model_fingerprint
from ..features.shortlist import FeatureHead, HeadStage
from ..scoring.config import ScoreConfig
from ..scoring.engine import ScoringEngine
from ..scoring.schedule import dc_grid, sigma_rows, stage_subset
from ..scoring.search import Bound, CascadeConfig, ExhaustiveConfig, Inputs, Search, SearchConfig
from ..scoring.search.base import GridConfig
from ..scoring.search.cascade import own_bound
from ..scoring.timestep_weights import TimestepWeights
from .candidates import Candidates, build_candidates

log = logging.getLogger("diffdisc")


@dataclass
class Shortlist:
    """A run's cheap stage: checked and described (`settings`) before the run starts, `open`ed once inside it,
    then one `stage` per chunk. `kind`: self | diffusion | contrastive | head. `shape`: the (size, channels)
    its images are read at when they are not the deciding model's."""

    keep: int
    kind: str
    model: Backbone | FeatureHead
    settings: dict
    keys: list | None = None  # its condition keys (prompts / class ids) and their groups, when its own
    groups: list[list[int]] | None = None
    columns: list[int] | None = None  # head: its class index of each candidate
    search: SearchConfig | None = None  # how it searches the candidates (not a head: it scores once)
    score: ScoreConfig | None = None
    shape: tuple[int, int] | None = None
    engine: ScoringEngine | None = None
    conds: torch.Tensor | None = None
    decider: Backbone | None = None
    own: Search | None = None  # self: the cascade's own stage (on the decider's grid where it has one)
    weights: TimestepWeights | None = None  # self: the run's learned timestep weights

    def open(self, engine: ScoringEngine, conds: torch.Tensor, stack: contextlib.ExitStack) -> None:
        """The engine and conditions it scores with: the deciding engine's own for `self`."""
        self.decider = engine.backbone
        if self.kind == "self":
            self.engine, self.conds = engine, conds
        elif self.kind != "head":
            self.engine = stack.enter_context(ScoringEngine(self.model, self.score))
            self.conds = self.model.conditions(self.keys)

    def stage(self, x0: torch.Tensor, pixels: torch.Tensor) -> Bound | HeadStage:
        """The cheap scorer for one chunk: `x0` the deciding model's encoding, `pixels` the images at `shape`
        (`self`: bound to the deciding inputs, so a grid decider reuses its errors)."""
        if self.kind == "head":
            return HeadStage(self.model, self.decider, pixels, self.columns)
        if self.kind == "self":
            return own_bound(self.own, Inputs(self.engine, x0, self.conds, self.groups, self.weights))
        return Bound(Inputs(self.engine, self.model.encode(pixels), self.conds, self.groups), self.search.build())


def make_shortlist(backbone: Backbone, cand: Candidates, cfg, model, weights=None) -> Shortlist | None:
    """The run's cheap stage (None: no cascade in `cfg`'s search, a `ClassifyConfig`), refused when it cannot
    score these candidates. `weights`: the run's learned timestep weights (a self stage on the decider's grid)."""
    cascade = cfg.search_config().find(CascadeConfig)
    if cascade is None:
        if model is not None and not (isinstance(model, str) and model == "self"):
            raise DiffdiscError("a shortlist model was given without a shortlist size (--shortlist K)")
        return None
    require(backbone, Capability.DENOISE, "a shortlist (--shortlist cuts the candidates a model denoises; a "
            "contrastive model scores them all in one table, so it saves nothing)")  # fmt: skip
    K, search, M = cascade.keep, cascade.shortlist, len(cand.classes)
    if model is None or (isinstance(model, str) and model == "self"):
        sl = Shortlist(K, "self", backbone, {}, keys=cand.keys, groups=cand.groups, search=search, score=cfg.score,
                       own=cascade.own_stage(), weights=weights)  # fmt: skip
        grid = cascade.decider_grid()
        ts = _timesteps(backbone, search) if grid is None else _decider_timesteps(backbone, grid, search.n_timesteps, weights)
        sl.settings = {"keep": K, "scorer": "self", "model": _identity(backbone), **ts}
    elif isinstance(model, str):
        raise DiffdiscError(f"shortlist model {model!r}: pass 'self', a loaded backbone or a FeatureHead")
    elif isinstance(model, FeatureHead):
        sl = _head_shortlist(backbone, cand, model, K)
    elif Capability.MATCH in model.capabilities:
        mine = build_candidates(model, cand.classes, cfg.templates)
        _check_prompts(model, mine.keys)
        sl = Shortlist(K, "contrastive", model, {}, keys=mine.keys, groups=mine.groups, search=search,
                        score=ScoreConfig(batch_size=cfg.score.batch_size),
                        shape=(model.info.image_size, model.info.image_channels))  # fmt: skip
        sl.settings = {"keep": K, "scorer": "contrastive", "model": _identity(model), "prompts": [str(k) for k in mine.keys]}
    else:  # another diffusion model at a few timesteps, on its own σ table (the decider's placement is the decider's)
        if model.info.conditioning == "class":
            _check_class_names(model.info.name, model.info.class_names, cand.classes)
        mine = build_candidates(model, cand.classes, cfg.templates if model.info.conditioning == "text" else None)
        if model.info.conditioning == "text":
            _check_prompts(model, mine.keys)
        score = replace(cfg.score, scorer="denoise")
        search = replace(search, sigmas="scheduler") if isinstance(search, GridConfig) else search
        sl = Shortlist(K, "diffusion", model, {}, keys=mine.keys, groups=mine.groups, search=search,
                        score=score, shape=(model.info.image_size, model.info.image_channels))  # fmt: skip
        sl.settings = {"keep": K, "scorer": "diffusion", "model": _identity(model), **_timesteps(model, search),
                       "prompts": [str(k) for k in mine.keys], "score": score.to_dict()}  # fmt: skip
    if K >= M:
        log.warning("shortlist %d >= the %d candidates: every candidate would pass; running without the cascade", K, M)
        return None
    return sl


def _head_shortlist(backbone: Backbone, cand: Candidates, head: FeatureHead, K: int) -> Shortlist:
    if model_fingerprint(backbone) != head.model_fingerprint:
        raise DiffdiscError(f"the features head in {head.path} was fitted on features of {head.model_label}, not of "
                            f"{backbone.info.label}: it shortlists only for the model it read")  # fmt: skip
    _check_class_names(str(head.path), head.class_names, cand.classes)
    names = [c.lower() for c in head.class_names]
    settings = {"keep": K, "scorer": "head", "model": {"name": str(head.path), "fingerprint": head.fingerprint},
                "cell": {"block": head.block, "t": head.t, "pooling": head.pooling, "condition": head.condition,
                         "seed": head.seed, "dtype": head.dtype}}  # fmt: skip
    return Shortlist(K, "head", head, settings, columns=[names.index(c.lower()) for c in cand.classes])


def _identity(bb: Backbone) -> dict:
    return {"name": bb.info.name, "fingerprint": bb.info.fingerprint}


def _timesteps(bb: Backbone, search: SearchConfig) -> dict:
    """The cheap stage's search for the run settings: its timesteps when it is exhaustive on the even grid (every
    run made before searches nested), else its config."""
    if not (isinstance(search, ExhaustiveConfig) and search.timesteps == "even"):
        return {"search": search.to_dict()}
    return {"timesteps": _place(bb, dc_grid(bb.num_train_timesteps, search.n_timesteps), search.sigmas)}


def _decider_timesteps(bb: Backbone, grid: GridConfig, n: int, weights) -> dict:
    """A self stage's timesteps on the decider's grid (`search.cascade.DeciderStage`), for the run settings: the
    `grid` key tells them from the own-grid ones of runs before (those resume only as they were)."""
    if weights is not None:
        return {"grid": "decider", "timesteps": weights.ordered_grid(n)}
    if getattr(grid, "timesteps", "even") == "stratified":  # each image's own: only how many is fixed
        return {"grid": "decider", "timesteps": "stratified", "n_timesteps": n}
    big = _place(bb, dc_grid(bb.num_train_timesteps, max(grid.grid_sizes())), grid.sigmas)
    return {"grid": "decider", "timesteps": stage_subset(big, n)}


def _place(bb: Backbone, ts: list[int], sigmas: str) -> list[int]:
    return ts if sigmas == "scheduler" else sigma_rows(bb.process.sigmas, ts, sigmas)


def _check_class_names(who: str, names, candidates: list[str]) -> None:
    """A class-conditional cheap scorer (or head) knows only its own classes: every candidate must be one."""
    known = {str(c).lower() for c in names}
    missing = [c for c in candidates if c.lower() not in known]
    if missing:
        raise DiffdiscError(f"shortlist model {who} has no class {', '.join(map(repr, missing[:5]))}"
                            f"{' ...' if len(missing) > 5 else ''} (its classes: {', '.join(list(names)[:12]) or 'none recorded'}): "
                            "it cannot shortlist these candidates")  # fmt: skip


def _check_prompts(model, prompts: list) -> None:
    """A text cheap scorer must read the candidates' prompts: a word its tokenizer maps to <unk> is refused."""
    tok = getattr(model, "tokenizer", None)
    hf = getattr(tok, "tokenizer", tok)  # open_clip's HFTokenizer wraps a transformers tokenizer
    unk = getattr(hf, "unk_token_id", None)
    if unk is None or not callable(hf):
        return
    eos = getattr(hf, "eos_token_id", None)
    if unk == eos:  # CLIP's BPE: <|endoftext|> doubles as unk and no word maps to it
        return
    words = dict.fromkeys(w for p in prompts for w in str(p).split())
    bad = [w for w in words if unk in hf(w, add_special_tokens=False)["input_ids"]]
    if bad:
        first = next(str(p) for p in prompts if bad[0] in str(p).split())
        raise DiffdiscError(f"shortlist model {model.info.name} cannot read the candidates' prompts: its tokenizer does "
                            f"not know {', '.join(map(repr, bad[:5]))} (in {first!r}, ...)")  # fmt: skip

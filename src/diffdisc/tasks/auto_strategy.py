"""Validation, not test, picks settings: `classify --validation DIR` (labelled images, never the ones classified)
fits what a run would otherwise have to guess, and `--strategy auto` picks the search itself.

`candidate_settings` is one small fixed list (exhaustive at n/4, n/2, n timesteps; halving stage sets, one with
the early exit; the t-test at two p; a self-shortlist cascade; with learned timestep weights, their top-n
variants; with a `--shortlist-model`, its cascades: at hundreds of candidates the only cheap settings). `score_validation` scores every setting on the validation images through one memoising engine
(`scoring.memo`): an (image, candidate, t) two settings share costs one U-Net call, while each setting is
charged its own. `choose` keeps the cheapest setting within `tolerance` of the best validation accuracy (with an
ensemble model, each setting pooled at its own validation-fitted weight). The run then classifies its own
images with the choice; run.json records the choice, the table it was made from and the validation images'
identity. Validation folders that share an image (by content) with the data are refused.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..data.folders import ImageDataset, open_image_dataset
from ..data.images import to_tensor
from ..errors import DiffdiscError
from ..scoring import ensemble as pooling
from ..scoring.config import AdaptiveConfig, ScoreConfig
from ..scoring.memo import MemoEngine
from ..scoring.search import (
    CascadeConfig,
    ExhaustiveConfig,
    HalvingConfig,
    Inputs,
    LearnedOrderConfig,
    SearchConfig,
    SearchContext,
    TTestConfig,
)
from .candidates import Candidates, build_candidates
from .ensemble import Ensemble, ensemble_partner, fixed_fit
from .shortlist import make_shortlist

TOLERANCE = 0.005  # 0.5 points of accuracy


@dataclass
class ValidationSet:
    """Labelled validation images for the run's candidates, with their identity for run.json."""

    ds: ImageDataset
    labels: np.ndarray
    identity: dict


def _digests(paths) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def open_validation(path: str | Path, cand: Candidates, data: ImageDataset | None = None) -> ValidationSet:
    """The validation folder, refused in one line when an image is unlabelled or (by content) one of `data`'s."""
    ds = open_image_dataset(path)
    try:
        labels = ds.label_index(cand.classes)
    except DiffdiscError as e:
        raise DiffdiscError(f"--validation {path}: {e}") from None
    if any(y is None for y in labels):
        raise DiffdiscError(f"--validation {path}: every image needs a label among the candidates (an ImageFolder, "
                            f"or --labels for a flat folder); {labels.count(None)} have none")  # fmt: skip
    mine = _digests(it.path for it in ds.items)
    if data is not None:
        if Path(data.root).resolve() == Path(ds.root).resolve():
            raise DiffdiscError(f"--validation {path} is the --data folder: settings are fitted on other images than the ones classified")
        sizes = {p.stat().st_size for p in mine}
        theirs = [it.path for it in data.items if isinstance(it.path, Path) and it.path.is_file()]
        same = set(mine.values()) & set(_digests(p for p in theirs if p.stat().st_size in sizes).values())
        if same:
            first = next(p for p, d in mine.items() if d in same)
            raise DiffdiscError(f"--validation {path} shares {len(same)} image(s) with --data {data.root} (same content, e.g. "
                                f"{first.name}): settings are fitted on other images than the ones classified")  # fmt: skip
    joint = hashlib.sha256("".join(f"{it.image_id}:{y}:{mine[it.path]}\n" for it, y in zip(ds.items, labels, strict=True)).encode())
    identity = {"path": str(Path(ds.root).resolve()), "images": len(ds), "sha256": joint.hexdigest()[:16]}
    return ValidationSet(ds, np.asarray(labels, dtype=np.int64), identity)


def _stages_name(stages) -> str:
    return ",".join(f"{n}:{k}" for n, k in stages)


def candidate_settings(n: int = 20, n_classes: int = 10, sigmas: str = "scheduler",
                       timestep_weights: str | None = None) -> dict[str, SearchConfig]:  # fmt: skip
    """The fixed list `--strategy auto` chooses from, scaled to `n` timesteps (the run's `--timesteps`), by name."""
    q, h = max(1, n // 4), max(1, n // 2)
    out: dict[str, SearchConfig] = {}

    def add(name: str, make) -> None:
        with contextlib.suppress(DiffdiscError):  # a setting `n` is too small for (repeated stage sizes)
            cfg = make()
            if cfg not in out.values():
                out[name] = cfg

    for k in sorted({q, h, n}):
        add(f"exhaustive {k}", lambda k=k: ExhaustiveConfig(n_timesteps=k, sigmas=sigmas))
    for st in (((q, 3), (n, 1)), ((h, 3), (n, 1)), ((q, 5), (h, 2), (n, 1))):
        add(f"halving {_stages_name(st)}", lambda st=st: HalvingConfig(stages=st, sigmas=sigmas))
    st = ((q, 5), (h, 2), (n, 1))
    add(f"halving {_stages_name(st)} + early exit z 2", lambda: HalvingConfig(stages=st, exit_z=2.0, sigmas=sigmas))
    for p in (0.1, 0.02):
        add(f"t-test p {p}", lambda p=p: TTestConfig(min_scores=max(2, q), max_scores=n, p_value=p, sigmas=sigmas))
    if n_classes > 3:
        cheap = ExhaustiveConfig(n_timesteps=max(1, n // 10), sigmas=sigmas)
        add(f"shortlist self {cheap.n_timesteps} t top 3 → exhaustive {n}",
            lambda: CascadeConfig(keep=3, shortlist=cheap, decide=ExhaustiveConfig(n_timesteps=n, sigmas=sigmas)))
    if timestep_weights:
        for name in (f"exhaustive {h}", f"exhaustive {n}", f"halving {_stages_name(((q, 3), (n, 1)))}"):
            if name in out:
                add(f"learned t: {name}", lambda name=name: LearnedOrderConfig(weights=str(timestep_weights), inner=out[name]))
    return out


def shortlist_settings(n: int, n_classes: int, label: str) -> dict[str, SearchConfig]:
    """The cascades a given cheap model (`classify --shortlist-model`, named `label`) adds to the list: it keeps
    each image's top 3, 5 or 10 candidates (fewer than there are) for exhaustive n, or for halving n/4:3,n:1
    (top 5 and 10). Those are the only settings that cost less per image than n/4 timesteps of every candidate:
    at hundreds of candidates, the cheap ones. Scored with that model's stage (`score_validation`'s
    `cheap_for`); a self shortlist of the same shape is another setting of the same config."""
    q = max(1, n // 4)
    out: dict[str, SearchConfig] = {}
    for k in (3, 5, 10):
        if k >= n_classes:
            continue
        out[f"shortlist {label} top {k} → exhaustive {n}"] = CascadeConfig(keep=k, decide=ExhaustiveConfig(n_timesteps=n))
        if k > 3 and q < n:
            st = ((q, 3), (n, 1))
            out[f"shortlist {label} top {k} → halving {_stages_name(st)}"] = CascadeConfig(keep=k, decide=HalvingConfig(stages=st))
    return out


@dataclass
class Scored:
    """One setting on the validation images: scores [N, M] (agreeing with its rankings), rankings, calls [N]."""

    scores: np.ndarray
    rankings: np.ndarray
    calls: np.ndarray


@dataclass
class Validation:
    labels: np.ndarray
    scored: dict[str, Scored]
    contrastive: np.ndarray | None = None  # [N, M] the ensemble model's scores
    forwards: int = 0  # U-Net calls made for all settings together


def score_validation(backbone, val: ValidationSet, cand: Candidates, score: ScoreConfig, searches: dict[str, SearchConfig],
                     *, ensemble: Ensemble | None = None, weights=None, noise=None, cheap=None, cheap_for=None,
                     chunk: int = 16, engine: MemoEngine | None = None, on_chunk=None) -> Validation:  # fmt: skip
    """Every setting of `searches` on the validation images, through one memoising engine (`engine`: one to
    share, e.g. a bench's, kept open). `weights`, `noise`, `cheap`: the run's learned timestep weights, learned
    noise and cascade stage, for scoring the run's own search (the auto list brings its own); `cheap_for`: the
    names of the settings the cascade stage is for (None: all; the others' cascades use their own stage).
    `on_chunk(done)` after each chunk (a bench saves its memo there)."""
    ctx = SearchContext(backbone, cand.classes, cand.keys, cand.groups)
    built = {name: s.build(ctx) for name, s in searches.items()}
    shapes = [(backbone.info.image_size, backbone.info.image_channels)]
    shapes += [cheap.shape] if cheap is not None and cheap.shape else []
    shapes += [ensemble.shape] if ensemble is not None else []
    rows: dict[str, list] = {name: [] for name in searches}
    con = []
    with contextlib.ExitStack() as stack:
        if engine is None:
            engine = stack.enter_context(MemoEngine(backbone, score, noise=noise))
        if cheap is not None:
            cheap.open(engine, ctx.conds, stack)
        if ensemble is not None:
            ensemble.open(stack)
        items = val.ds.items
        for s in range(0, len(items), chunk):
            part = items[s : s + chunk]
            ims = [val.ds.open(it) for it in part]
            px = [torch.stack([to_tensor(im, size, ch) for im in ims]) for size, ch in shapes]
            keys = [it.image_id for it in part]
            x0 = backbone.encode(px[0])
            stage = cheap.stage(x0, px[1] if cheap.shape else px[0]) if cheap is not None else None
            for name, search in built.items():
                mine = stage if cheap_for is None or name in cheap_for else None
                for r in search(Inputs(engine, x0, ctx.conds, cand.groups, weights, cheap=mine), keys):
                    ranked = r.ranking()
                    rows[name].append((r.scores, ranked, r.calls))
            if ensemble is not None:
                con.append(ensemble.scores(px[-1], keys))
            if on_chunk is not None:
                on_chunk(s + len(part))
    scored = {n: Scored(np.array([a for a, _, _ in v], np.float64), np.array([b for _, b, _ in v]), np.array([c for *_, c in v], np.float64))
              for n, v in rows.items()}  # fmt: skip
    return Validation(val.labels, scored, np.concatenate(con) if con else None, engine.forwards)


def pooled_predictions(s: Scored, con: np.ndarray, fit: pooling.EnsembleFit) -> np.ndarray:
    pooled = pooling.pooled_scores(s.scores, con, fit.weight, fit.t_diff, fit.t_con)
    return np.array([pooling.ranking(p, list(r))[0] for p, r in zip(pooled, s.rankings, strict=True)])


def fit_pooling(s: Scored, con: np.ndarray, labels: np.ndarray, weight: float | str) -> pooling.EnsembleFit:
    """The pooling of one setting's validation scores with the contrastive ones: `weight` "auto" fitted on the
    grid, a number kept (both temperatures fitted on the validation images either way)."""
    grid = pooling.WEIGHT_GRID if weight == "auto" else (float(weight),)
    return pooling.fit_weight(s.scores, con, labels, grid=grid)


@dataclass(frozen=True)
class Choice:
    """What `--strategy auto` chose: the setting's `name` and `search`, the ensemble pooling (`fit`) if any, and
    the validation `table` (every setting's accuracy, calls per image, ensemble weight) it was chosen from."""

    name: str
    search: SearchConfig
    tolerance: float
    images: int
    table: tuple = ()
    fit: dict | None = None
    forwards: int = 0

    def record(self) -> dict:
        return {"chosen": self.name, "search": self.search.to_dict(), "tolerance": self.tolerance,
                "validation_images": self.images, "validation_forwards": self.forwards, "table": list(self.table)}  # fmt: skip

    def row(self) -> dict:
        return next(r for r in self.table if r["name"] == self.name)

    def line(self) -> str:
        r, best = self.row(), max(r["accuracy"] for r in self.table)
        w = f", ensemble weight {r['weight']:g}" if r.get("weight") is not None else ""
        return (f"--strategy auto chose {self.name}{w}: validation accuracy {100 * r['accuracy']:.1f} % at "
                f"{r['calls']:.1f} U-Net calls/image (best {100 * best:.1f} %, tolerance {100 * self.tolerance:g} "
                f"points, {self.images} validation images, {len(self.table)} settings)")  # fmt: skip


def choose(val: Validation, searches: dict[str, SearchConfig], tolerance: float = TOLERANCE,
           ensemble_weight: float | str | None = None) -> tuple[Choice, pooling.EnsembleFit | None]:  # fmt: skip
    """The cheapest setting within `tolerance` of the best validation accuracy (ties: more accurate, then listed
    first), and its pooling when the validation carries contrastive scores."""
    table, fits = [], {}
    for name, s in val.scored.items():
        if val.contrastive is not None:
            fits[name] = fit_pooling(s, val.contrastive, val.labels, ensemble_weight if ensemble_weight is not None else "auto")
            pred = pooled_predictions(s, val.contrastive, fits[name])
        else:
            pred = s.rankings[:, 0]
        row = {"name": name, "accuracy": float((pred == val.labels).mean()), "calls": float(s.calls.mean())}
        if name in fits:
            row |= {"weight": fits[name].weight, "accuracy_alone": float((s.rankings[:, 0] == val.labels).mean())}
        table.append(row)
    best = max(r["accuracy"] for r in table)
    ok = [(r["calls"], -r["accuracy"], i) for i, r in enumerate(table) if r["accuracy"] >= best - tolerance - 1e-12]
    name = table[min(ok)[2]]["name"]
    fit = fits.get(name)
    choice = Choice(name, searches[name], tolerance, len(val.labels), tuple(table), fit.record() if fit else None, val.forwards)
    return choice, fit


def auto_settings(cfg, cand: Candidates, shortlist_label: str | None = None) -> tuple[dict[str, SearchConfig], set[str]]:
    """The candidate list for a classify config (`--timesteps` as n, its σ grid and learned weights), with the
    cascades of a given cheap model (`shortlist_label`: its name), and the names of those."""
    a = cfg.adaptive
    out = candidate_settings(a.n_timesteps, len(cand.classes), a.sigmas, a.timestep_weights)
    extra = shortlist_settings(a.n_timesteps, len(cand.classes), shortlist_label) if shortlist_label else {}
    return out | extra, set(extra)


def shortlist_label(model) -> str | None:
    """How the auto list names a `--shortlist-model` (None: none given, or the deciding model itself)."""
    if model is None or (isinstance(model, str) and model == "self"):
        return None
    info = getattr(model, "info", None)
    return info.name if info is not None else "head"


def choose_setting(backbone, validation: str | Path, *, data: str | Path | ImageDataset | None = None, classes=None,
                   templates=None, score: ScoreConfig | None = None, n_timesteps: int = 20, sigmas: str = "scheduler",
                   timestep_weights: str | None = None, ensemble_model=None, ensemble_weight: float | str = "auto",
                   shortlist_model=None, tolerance: float = TOLERANCE, chunk: int = 16) -> Choice:  # fmt: skip
    """`--strategy auto`'s choice as a function: the setting `classify` would run on `data` (which, when given,
    must share no image with `validation`), without classifying anything."""
    from .classify import ClassifyConfig  # here: classify builds on this module

    ds = data if isinstance(data, ImageDataset) or data is None else open_image_dataset(data)
    cand = build_candidates(backbone, classes or (ds.class_names if ds is not None and backbone.info.conditioning == "text" else None), templates)
    cfg = ClassifyConfig(templates=templates, score=score or ScoreConfig(), auto=True, auto_tolerance=tolerance,
                         adaptive=AdaptiveConfig(n_timesteps=n_timesteps, sigmas=sigmas, timestep_weights=timestep_weights),
                         validation=str(validation), ensemble_weight=ensemble_weight if ensemble_model is not None else None,
                         chunk_images=chunk)  # fmt: skip
    return plan(backbone, ds, cand, cfg, ensemble_model, shortlist_model).choice


@dataclass
class Plan:
    """What validation decides for a classify run: the validation images, the chosen search (auto), the ensemble."""

    validation: ValidationSet | None = None
    choice: Choice | None = None
    partner: Ensemble | None = None
    uses_shortlist_model: bool = False  # auto chose a cascade of the given --shortlist-model

    def identity(self) -> dict:
        """run.json's entries for it: `validation` and `auto` in place of the config fields of those names, the
        `ensemble` record, and the temperature the pooled scores are read at (1: they are log-probabilities)."""
        out = {}
        if self.validation is not None:
            out["validation"] = self.validation.identity
        if self.choice is not None:
            out["auto"] = self.choice.record()
        if self.partner is not None:
            out["ensemble"] = self.partner.settings()
            out["model_temperature"] = {"value": 1.0, "source": "ensemble: pooled log-probabilities (each model at its "
                                        "own temperature, run.json's ensemble)"}  # fmt: skip
        return out


def plan(backbone, ds: ImageDataset, cand: Candidates, cfg, ensemble_model=None, shortlist_model=None) -> Plan:
    """The refusals of `validation` / `auto` / `ensemble_weight` (one line each, before any run directory), then
    `--strategy auto`'s choice, scored on the validation images (with a `shortlist_model`, its cascades join the
    list). A fixed-search ensemble is fitted later (`fit_ensemble`), once the run's search, weights and cascade
    stage are final."""
    if cfg.auto:
        if cfg.search is not None or cfg.tree or cfg.shortlist is not None:
            raise DiffdiscError("--strategy auto picks the whole search on the validation images: drop --tree / "
                                "--shortlist K (a --shortlist-model alone adds its cascades to the list)")  # fmt: skip
        if cfg.noise:
            raise DiffdiscError("--strategy auto scores settings on timesteps a learned --noise file may not cover: give one or the other")
        if not cfg.validation:
            raise DiffdiscError("--strategy auto picks the setting on labelled validation images: give --validation DIR "
                                "(never the images classified)")  # fmt: skip
    if (cfg.ensemble_weight is None) != (ensemble_model is None):
        raise DiffdiscError("--ensemble MODEL and its weight go together (--ensemble-weight W in [0, 1], or auto)")
    if cfg.ensemble_weight == "auto" and not cfg.validation:
        raise DiffdiscError("--ensemble-weight auto fits the weight on labelled validation images: give --validation DIR "
                            "(never the images classified), or a fixed --ensemble-weight W")  # fmt: skip
    if cfg.validation and not (cfg.auto or ensemble_model is not None):
        raise DiffdiscError("--validation is read by --strategy auto and --ensemble; give one of them (or drop it)")
    val = open_validation(cfg.validation, cand, ds) if cfg.validation else None
    partner = ensemble_partner(backbone, cand, cfg.templates, ensemble_model, cfg.score.batch_size) if ensemble_model is not None else None
    out = Plan(val, None, partner)
    if cfg.auto:
        label = shortlist_label(shortlist_model)
        searches, with_model = auto_settings(cfg, cand, label)
        cheap = None
        if with_model:  # the model's stage, checked against the candidates as a run of one of its cascades
            one = replace(cfg, auto=False, search=searches[next(iter(with_model))], adaptive=type(cfg.adaptive)())
            cheap = make_shortlist(backbone, cand, one, shortlist_model)
        scored = score_validation(backbone, val, cand, cfg.score, searches, ensemble=partner, cheap=cheap,
                                  cheap_for=with_model, chunk=cfg.chunk_images)  # fmt: skip
        out.choice, fit = choose(scored, searches, cfg.auto_tolerance, cfg.ensemble_weight)
        out.uses_shortlist_model = out.choice.name in with_model
        if partner is not None:
            partner.fit, partner.how = fit, f"--strategy auto: with the chosen setting, {_how(cfg.ensemble_weight, val)}"
    return out


def _how(weight, val: ValidationSet) -> str:
    n = f"{len(val.labels)} validation images"
    if weight == "auto":
        return f"the weight of lowest NLL on the grid 0, 0.05, ..., 1 over {n}"
    return f"weight given, both temperatures fitted on {n}"


def fit_ensemble(p: Plan, backbone, cand: Candidates, cfg, search: SearchConfig, *, weights=None, noise=None, cheap=None,
                 diffusion_temperature: float | None = None) -> None:  # fmt: skip
    """The pooling of a run whose search is fixed: fitted on the validation images scored by the run's own search
    (its weights, noise and cascade stage), or, without validation, the given weight at the models' stored
    temperatures."""
    e = p.partner
    if e is None or e.fit is not None:
        return
    if p.validation is None:
        e.fit, e.how = fixed_fit(e, cfg.ensemble_weight, diffusion_temperature), "weight given, temperatures from the models' metadata"
        return
    scored = score_validation(backbone, p.validation, cand, cfg.score, {"run": search}, ensemble=e, weights=weights,
                              noise=noise, cheap=cheap, chunk=cfg.chunk_images)  # fmt: skip
    e.fit = fit_pooling(scored.scored["run"], scored.contrastive, scored.labels, cfg.ensemble_weight)
    e.how = _how(cfg.ensemble_weight, p.validation)

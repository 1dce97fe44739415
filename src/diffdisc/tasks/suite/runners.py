"""One suite task on every model: open its data once, run `match` or `classify` per model into its own resumable
run directory, and summarise each run as its paper reports it (`metrics`)."""

from __future__ import annotations

from pathlib import Path

from ...data import aro
from ...data.benchmarks import open_benchmark
from ...data.compositional import open_compositional
from ...data.folders import stratified_subset
from ...data.winoground import COLLAPSED_TAGS, open_sugar_crepe, open_winoground
from ...datasets.export import coloured_classes, export_coloured_test, export_shipped_test
from ...datasets.probes import make_probe
from ...errors import DiffdiscError
from ...scoring.config import AdaptiveConfig
from ..classify import ClassifyConfig, classify
from ..match import MatchConfig, match
from .base import EMBEDDED_SIZES, Skip, SuiteContext, TaskSpec, applicable, slug
from .catalogue import TaskInfo
from .metrics import classify_summary, match_summary


def run_task(ctx: SuiteContext, spec: TaskSpec, info: TaskInfo, root: Path | None) -> tuple[dict, int]:
    """{model label: cell} and the items scored, for one task (cells: done | n/a | error, with metrics)."""
    cfg = ctx.config
    limit = spec.limit or cfg.limit or EMBEDDED_SIZES.get(info.name)
    n_t = spec.timesteps or cfg.timesteps
    base = ctx.out / slug(info.name)
    size = base / f"{spec.split}-t{n_t}-n{limit or 'all'}-s{cfg.seed}"  # what changes the groups or the scores
    if info.family == "match":
        groups, bench = _groups(ctx, spec, info, root, limit, base)
        runner = lambda m, run_dir, cb: _match(ctx, m, groups, bench, n_t, run_dir, cb)  # noqa: E731
        summarise = lambda res: match_summary(info.name, info.metric, res)  # noqa: E731
    else:
        data = _classify_data(ctx, spec, info, root)
        runner = lambda m, run_dir, cb: _classify(ctx, m, spec, info, data, n_t, limit, run_dir, cb)  # noqa: E731
        summarise = classify_summary
    cells = {}
    for m in ctx.models:
        why = applicable(info, m)
        if why:
            cells[m.label] = {"status": "n/a", "reason": why}
            continue
        run_dir = size / m.folder
        try:
            with ctx.track(f"{info.name} / {m.label}") as cb:
                res = runner(m, run_dir, cb)
            cells[m.label] = {"status": "done", **summarise(res), "run": run_dir.relative_to(ctx.out).as_posix()}
        except DiffdiscError as e:
            cells[m.label] = {"status": "error", "reason": str(e)}
    n = max((c.get("n", 0) for c in cells.values()), default=0)
    return cells, n


def _subset(groups: list, limit: int | None, by_tag: int | None = None) -> list:
    """A seeded subset (seed 0, as classify's --limit: every noise seed scores the same items), stratified over
    the groups' `by_tag`-th tag when given."""
    if limit is None or limit >= len(groups):
        return groups
    kinds = [g.tags[by_tag] if by_tag is not None and len(g.tags) > by_tag else "" for g in groups]
    index = {k: i for i, k in enumerate(sorted(set(kinds)))}
    return [groups[i] for i in stratified_subset([index[k] for k in kinds], limit, 0)]


def _groups(ctx: SuiteContext, spec: TaskSpec, info: TaskInfo, root: Path | None, limit: int | None, base: Path):
    """The task's groups and the benchmark identity its runs record (None for the embedded probes)."""
    name = info.name
    if info.embedded:
        return make_probe(name.partition("/")[2], limit, ctx.config.seed), None
    bench = {"name": name, "root": str(root.resolve())}
    if name == "winoground":
        groups = open_winoground(root, extract_to=base)  # an archive is unpacked here, never into the data
        kinds = [next((t for t in g.tags if t in COLLAPSED_TAGS), "") for g in groups]
        order = {k: i for i, k in enumerate(sorted(set(kinds)))}
        keep = stratified_subset([order[k] for k in kinds], limit, 0)
        return [groups[i] for i in keep], bench
    if name.startswith("sugar_crepe/"):
        return _subset(open_sugar_crepe(root, name), limit), bench
    kwargs = {"limit": limit, "subset_seed": 0}
    if name.startswith("aro/") or name.startswith("eqben"):
        kwargs["crops_dir"] = base / "images"  # VG crops, EqBen frames: written into the suite's folder
    if name in ("aro/coco_order", "aro/flickr30k_order"):
        try:
            kwargs["tagger"] = aro.pos_tagger()
        except DiffdiscError as e:
            raise Skip(f"needs a part-of-speech tagger: {e}") from None
    return open_compositional(name, root, spec.split, **kwargs), bench


def _match(ctx: SuiteContext, m, groups, bench, n_t: int, run_dir: Path, cb):
    return match(m.backbone, groups, MatchConfig(n_timesteps=n_t), score=ctx.score(m), out=run_dir, progress=cb,
                 benchmark=bench)  # fmt: skip


def _classify_data(ctx: SuiteContext, spec: TaskSpec, info: TaskInfo, root: Path | None) -> dict:
    """What each model classifies: {"dataset", "classes", "templates"} (per model kind for embedded tasks)."""
    if info.name == "embedded/classification":
        n = spec.limit or ctx.config.limit or EMBEDDED_SIZES[info.name]
        per_class = -(-n // 10) if n < 1000 else None  # the shipped 1,000 hold 100 per class

        def folder(scenes: bool):  # scene-rendered for text models (as `claims zero_shot`), plain for class ones
            d = ctx.out / "data" / f"fmnist-test-{'scenes' if scenes else 'plain'}-{per_class or 100}"
            return export_shipped_test(d, per_class, seed=0, scenes=scenes)

        return {"per_model": folder, "classes": None, "templates": None}
    if info.name == "embedded/80-way":
        n = spec.limit or ctx.config.limit or EMBEDDED_SIZES[info.name]
        d = export_coloured_test(ctx.out / "data" / f"fmnist-coloured-test-n{n}", n=n)
        return {"dataset": d, "classes": tuple(coloured_classes()), "templates": None, "limited": True}
    ds, classes, tpl = open_benchmark(info.name, root, spec.split, templates=spec.templates,
                                      image_column=spec.image_column, label_column=spec.label_column)  # fmt: skip
    return {"dataset": ds, "classes": tuple(classes), "templates": tuple(tpl) or None}


def _classify(ctx: SuiteContext, m, spec: TaskSpec, info: TaskInfo, data: dict, n_t: int, limit: int | None,
              run_dir: Path, cb):  # fmt: skip
    if "per_model" in data:
        dataset = data["per_model"](m.backbone.info.conditioning == "text")
    else:
        dataset = data["dataset"]
    adaptive = AdaptiveConfig.from_dict({"n_timesteps": n_t, **(spec.adaptive or {})})
    cfg = ClassifyConfig(classes=data["classes"], templates=data["templates"], score=ctx.score(m), adaptive=adaptive,
                         limit=None if data.get("limited") else limit, limit_seed=0)  # fmt: skip
    return classify(m.backbone, dataset, cfg, out=run_dir, progress=cb)

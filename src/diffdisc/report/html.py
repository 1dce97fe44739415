"""`diffdisc report`: run directories -> one self-contained HTML page (jinja2, autoescaped; figures inline).

Each section is a row of run columns; a section appears when at least one run has its data, and a run
without it says so in its column. Classes of different runs are aligned by name. Apart from the
`generated` timestamp the page is a pure function of the run directories.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from ..results import model_label
from ..results.classification import bootstrap_intervals, calls_text, pct, with_ci
from ..runs.io import atomic_write_text
from . import figures, stats
from .load import Classification, Run, load_runs

MAX_CURVES = 4
MAX_MISTAKES = 8


def environment():
    """The package's templates, HTML-escaped everywhere (class names and captions are user text)."""
    import jinja2

    return jinja2.Environment(loader=jinja2.PackageLoader("diffdisc.report", "templates"),
                              autoescape=True, keep_trailing_newline=True)  # fmt: skip


def _num(v, fmt="{:.3f}") -> str:
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else fmt.format(v)


# ------------------------------------------------------------------ classification sections
def _calls(c: Classification) -> str:
    """U-Net calls per image, split as the command line splits them: a cascade's shortlist and decider, a label
    tree's coarse nodes."""
    if not len(c):
        return "–"
    total = calls_text(float(c.calls.mean()))
    if c.shortlisted:
        m = c.shortlist_metrics()
        total += f" = {calls_text(m['shortlist_calls_per_image'])} shortlist + {calls_text(m['decider_calls_per_image'])} decider"
        if m["contrastive_forwards_per_image"]:
            total += f" (and {calls_text(m['contrastive_forwards_per_image'])} contrastive forwards)"
    elif (node := c.node_calls) is not None:
        total += f" ({calls_text(node)} on the tree's coarse nodes)"
    return total


def _search_note(c: Classification) -> str | None:
    """What the pruning section says of a run it draws no trace for: what its search did instead."""
    if c.contrastive:
        return "contrastive model: no U-Net calls, nothing to prune"
    if not c.n_calls.any():
        return None
    if (node := c.node_calls) is not None:
        tree = c.settings["tree"]
        return (f"label tree, beam {tree.get('beam', '?')}: the coarse nodes are scored first ({calls_text(node)} "
                f"U-Net calls/image), then only the best branches' classes ({c.strategy})")  # fmt: skip
    learned = ("; learned timesteps: the most informative t, weighted (" + Path(str(
        (c.settings.get("timestep_weights") or {}).get("path", "?"))).name + ")") if c.learned_timesteps else ""
    return f"{c.strategy}: every class gets every timestep (no pruning){learned}"


def _classification(run: Run, c: Classification) -> dict:
    cal = stats.calibration(c)
    lab = c.labels >= 0
    out = {
        "summary": {"run": run.name, "model": c.model, "strategy": c.search, "images": len(c), "labelled": int(lab.sum()),
                    "accuracy": with_ci(cal.accuracy, cal.accuracy_ci) if cal else "–", "top5": pct(stats.top5(c)),
                    "ece": with_ci(cal.ece, cal.ece_ci) if cal else "–", "calibration": cal.how if cal else "–",
                    "calibration_title": cal.source if cal else "no labelled images", "calls": _calls(c)},  # fmt: skip
        "per_class": stats.per_class_accuracy(c) if lab.any() else None,
        "notes": [],
    }
    if not len(c):
        return out
    if not lab.any():
        out["notes"].append("no labelled images: accuracy, confusion matrix, calibration and mistakes need labels")
    else:
        title = run.name if c.model in run.name else f"{run.name}: {c.model}"
        out["confusion"] = figures.confusion_png(c.labels, c.preds, c.classes, title)
        if cal.ece is not None:
            conf, correct = stats.reliability(cal)
            out["reliability"] = figures.reliability_png(conf, correct, stats.N_BINS, f"{title} ({cal.how})")
        out["mistakes"] = [
            {"img": figures.image_png(c.image_path(i)), "path": c.paths[i], "id": c.image_ids[i],
             "true": c.classes[c.labels[i]], "pred": c.classes[c.preds[i]], "prob": pct(p)}
            for i, p in stats.hardest_mistakes(c, cal, MAX_MISTAKES)
        ]  # fmt: skip
    if c.contrastive:
        out["timestep_note"] = "contrastive model: one score per class, no timesteps"
    elif not stats.has_timestep_errors(c):
        out["timestep_note"] = "this run did not store per-timestep errors (made before they were kept)"
    else:
        items = [{"title": f"{c.image_ids[i]}" + ("" if c.labels[i] < 0 else f" (true {c.classes[c.labels[i]]})"),
                  "timesteps": c.timesteps[i], "errors": c.errors[i], "classes": c.classes,
                  "label": int(c.labels[i]), "pred": int(c.preds[i])} for i in stats.curve_images(c, MAX_CURVES)]  # fmt: skip
        out["curves"] = figures.timestep_curves_png(items)
        out["curve_ids"] = [it["title"] for it in items]
        st = stats.single_t_accuracy(c)
        if st is not None:
            out["single_t"] = figures.single_t_png(*st, 1 / len(c.classes), f"{run.name}: which t discriminates")
    pruned = c.strategy in ("halving", "ttest") or c.shortlisted  # a cascade prunes to its shortlist
    if pruned and c.n_calls.any() and c.node_calls is None:
        out["pruning"] = figures.pruning_png(c.n_calls, f"{run.name} ({c.search})")
    elif note := _search_note(c):
        out["pruning_note"] = note
    return out


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in sorted(d.items()):
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            s = json.dumps(v, ensure_ascii=False)
            if isinstance(v, list) and len(s) > 90:
                s = f"{len(v)} items: " + ", ".join(map(str, v[:4])) + (", …" if len(v) > 4 else "")
            out[key] = s
    return out


def _unused(key: str, s: dict, contrastive: bool) -> bool:
    """Whether a recorded setting is one the run never read: every run stores every field of its configs, but
    `n_timesteps` means nothing to halving, `stages` nothing to exhaustive, a class-conditional model's
    "prompts" are its class ids, and a contrastive model has no timesteps or denoising loss at all."""
    if contrastive and key.startswith(("adaptive.", "score.")):
        return True
    strategy, sc = (s.get("adaptive") or {}).get("strategy"), s.get("score") or {}
    used_when = {
        "adaptive.n_timesteps": strategy == "exhaustive",
        "adaptive.timesteps": strategy in ("exhaustive", "halving"),  # ttest draws its own order
        "adaptive.stages": strategy == "halving", "adaptive.exit_z": strategy == "halving",
        "adaptive.min_scores": strategy == "ttest", "adaptive.max_scores": strategy == "ttest",
        "adaptive.p_value": strategy == "ttest",
        "score.min_snr_gamma": sc.get("weighting") == "min_snr", "score.clark_rate": sc.get("weighting") == "clark",
        "score.attention_bias": sc.get("scorer") == "attention",
    }  # fmt: skip
    if key in used_when:
        return not used_when[key]
    classes, prompts = s.get("classes") or [], [str(p) for p in s.get("prompts") or []]
    if key == "prompts":  # class ids (class-conditional), or the class names themselves
        ids = len(prompts) == len(classes) and all(p.isdigit() for p in prompts)
        return ids or prompts == [str(c) for c in classes]
    return key == "candidates" and s.get("candidates") == classes


def _settings_table(runs: list[Run]) -> dict | None:
    """Settings compared across runs: a setting a run did not use is left out of the comparison, so only
    settings that changed a number count as differing (settings no run used are dropped).

    `rows` is the comparison, one row per setting; the page shows it so that it fits however many runs there
    are: once, what every run used alike (`shared`), then one line per run with only its own (`per_run`)."""
    cols = [(r.name, r.classification) for r in runs if r.classification]
    if not cols:
        return None
    flat = [_flatten(c.settings) for _, c in cols]
    used = [{k for k in f if not _unused(k, c.settings, c.contrastive)} for f, (_, c) in zip(flat, cols, strict=True)]
    rows = []
    for k in sorted(set().union(*used)):
        cells = [{"text": f.get(k, "—"), "used": k in u} for f, u in zip(flat, used, strict=True)]
        vals = {f.get(k) for f, u in zip(flat, used, strict=True) if k in u}
        rows.append({"key": k, "cells": cells, "differs": len(vals) > 1, "all": all(c["used"] for c in cells)})
    shared = [(r["key"], r["cells"][0]["text"]) for r in rows if r["all"] and not r["differs"]]
    own = [r for r in rows if r["differs"] or not r["all"]]
    per_run = [{"run": n, "kv": [(r["key"], r["cells"][i]["text"]) for r in own if r["cells"][i]["used"]]}
               for i, (n, _) in enumerate(cols)]  # fmt: skip
    return {"runs": [n for n, _ in cols], "rows": rows, "shared": shared, "per_run": per_run if len(cols) > 1 else []}


def _aligned_classes(cols: list[tuple[str, dict]]) -> dict | None:
    """Per-class accuracy with classes aligned by name across runs (and baselines); a class a run lacks is marked."""
    if not cols:
        return None
    names = list(dict.fromkeys(n for _, pc in cols for n in pc))
    rows = []
    for n in names:
        cells = []
        for _, pc in cols:
            if n not in pc:
                cells.append({"text": "not in this run", "missing": True})
            else:
                k, tot = pc[n]
                cells.append({"text": f"{k}/{tot} ({pct(k / tot)})" if tot else "no images", "missing": False})
        rows.append({"name": n, "cells": cells, "partial": any(c["missing"] for c in cells)})
    return {"runs": [n for n, _ in cols], "rows": rows}


# ------------------------------------------------------------------ other sections
def _probe_rows(run: Run) -> list[dict]:
    from ..scoring.match_metrics import match_metrics

    rows = []
    for m in run.matchings:
        met = match_metrics(m.score_mats)
        cell = {k: with_ci(v["mean"], v["ci95"]) for k, v in met.items() if isinstance(v, dict) and "mean" in v}
        headline = next((met[k]["mean"] for k in ("group", "text", "text_R@1") if k in met), None)
        chance = ", ".join(f"{k} {pct(v)}" for k, v in met.get("chance", {}).items())
        rows.append({"probe": m.probe, "model": m.model, "kind": m.kind, "n": met["n_groups"], "cells": cell,
                     "group": headline, "chance": chance or "–", "calls": f"{np.mean(m.calls):.0f}",
                     "path": str(m.path)})  # fmt: skip
    rows.sort(key=lambda r: (r["probe"], r["kind"], r["model"]))
    scored: dict[str, list[float]] = {}
    for r in rows:
        if r["group"] is not None:
            scored.setdefault(r["probe"], []).append(r["group"])
    for r in rows:  # bold the best model of each probe (group score, else text score)
        vals = scored.get(r["probe"], [])
        r["best"] = r["group"] is not None and len(vals) > 1 and r["group"] == max(vals)
    return rows


def _probe_columns(rows: list[dict]) -> list[str]:
    order = ["text", "image", "group", "text_R@1", "image_R@1", "text_R@5", "image_R@5"]
    have = {k for r in rows for k in r["cells"]}
    return [k for k in order if k in have]


def _sweeps(run: Run) -> list[dict]:
    out = []
    for s in run.sweeps:
        best = s.best or {}
        out.append({"img": figures.sweep_png(s.blocks, s.timesteps, s.val_acc, best, f"{s.model}"),
                    "model": s.model, "path": str(s.path),
                    "best": f"{best.get('block', '?')} at t={best.get('t', '?')}: val {pct(best.get('val_acc'))}"
                    if best else "not recorded",
                    "extra": [(k, pct(v) if k == "test_acc" else str(v)) for k, v in s.extra.items()]})  # fmt: skip
    return out


def _synth(run: Run) -> list[dict]:
    out = []
    for s in run.synth:
        st = s.settings
        tricks = ", ".join(st.get("tricks", [])) or "none"
        line = (f"model {model_label(st.get('model'))}; tricks: {tricks}; steps {st.get('steps', '?')}, "
                f"scheduler {st.get('scheduler', '?')}, seed {st.get('seed', '?')}")  # fmt: skip
        samples = []
        for x in s.samples:
            img = figures.image_png(x.path, 80)
            if img:
                samples.append({"img": img, "cls": x.class_name, "prompt": x.prompt or x.class_name,
                                "guidance": _num(x.guidance, "{:.2f}")})  # fmt: skip
        want = st.get("per_class")
        counts = [(k, v, want) for k, v in s.counts.items()]
        out.append({"path": str(s.path), "line": line, "counts": counts, "samples": samples,
                    "classes": list(dict.fromkeys(x["cls"] for x in samples))})  # fmt: skip
    return out


def _baseline_evals(run: Run) -> list[dict]:
    """A run's supervised baselines, one entry per recorded test folder, named as their metrics-table row: the
    same predictions feed that row, the per-class table and a confusion matrix."""
    out = []
    for b in run.baselines:
        classes = b.meta.get("classes")
        for e in b.evaluations:
            name = run.name if b.path == run.path else f"{run.name}/{b.path.name}"
            if len(b.evaluations) > 1:
                name += f" on {Path(e.data).name}"
            n = int(max(e.labels.max(initial=-1), e.preds.max(initial=-1))) + 1
            names = [str(x) for x in classes] if isinstance(classes, list) and len(classes) >= n else [str(i) for i in range(n)]
            out.append({"name": name, "baseline": b, "eval": e, "classes": names})
    return out


def _baseline_rows(run: Run) -> list[dict]:
    """Metrics-table rows for a run's supervised baselines: accuracy and ECE of the classifier's own softmax
    (trained on other images, so not fitted on these) with the same bootstrap intervals as the diffusion rows."""
    rows = []
    for v in _baseline_evals(run):
        b, e = v["baseline"], v["eval"]
        trained = b.meta.get("n_train")
        acc = ece = (None, None)
        if len(e.labels):
            acc, ece = bootstrap_intervals((e.preds == e.labels).astype(np.float64), e.confidence)
        rows.append({"run": v["name"], "model": b.model + (f" ({trained} training images)" if trained else ""),
                     "strategy": "supervised baseline", "images": len(e.labels), "labelled": len(e.labels),
                     "accuracy": with_ci(*acc), "top5": pct(e.top5), "ece": with_ci(*ece), "calibration": "own softmax",
                     "calibration_title": "the classifier's own softmax (T = 1), trained on other images", "calls": "–",
                     "title": f"{b.path} tested on {e.data}"})  # fmt: skip
    return rows


def _baseline_per_class(v: dict) -> dict[str, tuple[int, int]]:
    e = v["eval"]
    return {n: (int((e.preds[e.labels == i] == i).sum()), int((e.labels == i).sum())) for i, n in enumerate(v["classes"])}


def _feature_probes(run: Run) -> list[dict]:
    """`features probe --out` results: the numbers its printed line gave, as a table row."""
    return [{"representation": f.representation, "model": f.model, "dims": f.dims, "val": pct(f.val_acc),
             "test": pct(f.test_acc), "n": f"{f.n_train} / {f.n_val} / {f.n_test}", "decay": f"{f.weight_decay:g}",
             "path": str(f.path.parent if f.path else "?")} for f in run.feature_probes]  # fmt: skip


def _claims(run: Run) -> dict | None:
    """The claims table of a `diffdisc claims` directory, and its effective-robustness plot."""
    from ..results.claims import fmt_value

    c = run.claims
    if c is None:
        return None
    rows = [{**r, "ours": fmt_value(r)} for r in c.rows]  # the template reads the row's own fields
    points = c.robustness_points()
    return {"size": c.size, "rows": rows, "path": str(c.path),
            "plot": figures.robustness_png(points, "clean vs shifted accuracy") if points else None}


def _suite(run: Run) -> dict | None:
    """The table of a `diffdisc suite` directory: a column per model (values as the Markdown table has them)."""
    s = run.suite
    if s is None:
        return None
    return {"labels": s.labels, "rows": s.rows(), "skipped": s.skipped, "errors": s.errors, "path": str(s.path),
            "suite": s.table.get("suite"), "settings": s.table.get("settings", {}), "command": s.table.get("command"),
            "models": s.models}  # fmt: skip


def _glyph_note(runs: list[Run]) -> str | None:
    """Said once on the page when figures must draw some class names' characters as boxes (no installed font
    has them; the tables, drawn by the browser, show them)."""
    texts = [r.name for r in runs] + [x for r in runs if r.classification for x in r.classification.classes]
    missing = figures.undrawable(texts)
    if not missing:
        return None
    return (f"No installed font has the characters {missing[:12]}{'…' if len(missing) > 12 else ''}: figures draw "
            "them as boxes (tables show them). Install a font that has them (e.g. Noto Sans CJK, `fonts-noto-cjk`), "
            "delete matplotlib's font cache (~/.cache/matplotlib/fontlist-*.json) and run `diffdisc report` again.")


# ------------------------------------------------------------------ page
def build_context(runs: list[Run], title: str, generated: str | None = None) -> dict:
    from .. import __version__

    per_run = [_classification(r, r.classification) if r.classification else None for r in runs]
    probes = [_probe_rows(r) for r in runs]
    evals = [_baseline_evals(r) for r in runs]
    confusion = []  # per run: its classification's matrix, then one per baseline evaluation
    for r, d, ev in zip(runs, per_run, evals, strict=True):
        figs = [{"title": r.name, "img": d["confusion"]}] if d and d.get("confusion") else []
        figs += [{"title": v["name"] + " (supervised baseline)",
                  "img": figures.confusion_png(v["eval"].labels, v["eval"].preds, v["classes"], v["name"])}
                 for v in ev if len(v["eval"].labels)]  # fmt: skip
        confusion.append(figs or None)
    per_class = []
    for r, d, ev in zip(runs, per_run, evals, strict=True):
        if d and d.get("per_class"):
            per_class.append((r.name, d["per_class"]))
        per_class += [(v["name"], _baseline_per_class(v)) for v in ev if len(v["eval"].labels)]
    cols = {  # section -> one entry per run (None: the run lacks it)
        "confusion": confusion,
        "reliability": [d.get("reliability") if d else None for d in per_run],
        "timesteps": [d if d and (d.get("curves") or d.get("timestep_note")) else None for d in per_run],
        "pruning": [d if d and (d.get("pruning") or d.get("pruning_note")) else None for d in per_run],
        "mistakes": [d.get("mistakes") if d and "mistakes" in d else None for d in per_run],
        "probes": [rows or None for rows in probes],
        "sweeps": [_sweeps(r) or None for r in runs],
        "feature_probes": [_feature_probes(r) or None for r in runs],
        "attention": [[{"img": figures.png_b64(o.png), "caption": o.caption, "file": o.path.name} for o in r.overlays] or None
                      for r in runs],
        "synth": [_synth(r) or None for r in runs],
        "claims": [_claims(r) for r in runs],
        "suite": [_suite(r) for r in runs],
    }  # fmt: skip
    if not any(d and d.get("pruning") for d in per_run):
        cols["pruning"] = [None] * len(runs)  # only exhaustive runs: nothing to trace
    sections = [
        ("confusion", "Confusion matrices"),
        ("reliability", "Reliability diagrams (calibration)"),
        ("timesteps", "Per-timestep errors"),
        ("pruning", "Pruning traces: candidates left vs U-Net calls"),
        ("mistakes", "Hardest mistakes"),
        ("probes", "Probes: diffusion vs contrastive"),
        ("sweeps", "Diffusion features: sweeps over block × t"),
        ("feature_probes", "Diffusion features: probes of fixed cells"),
        ("attention", "Cross-attention overlays"),
        ("synth", "Synthetic samples"),
        ("claims", "The papers' claims, tested"),
        ("suite", "Benchmark suite"),
    ]
    present = [(k, t) for k, t in sections if any(v is not None for v in cols[k])]
    return {
        "title": title,
        "generated": generated or datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "version": __version__,
        "runs": [{"name": r.name, "path": str(r.path), "problems": r.problems, "absent": r.absent, "empty": r.empty}
                 for r in runs],  # fmt: skip
        "names": [r.name for r in runs],
        "metrics": [m for r, d in zip(runs, per_run, strict=True) for m in ([d["summary"]] if d else []) + _baseline_rows(r)],
        "notes": {r.name: d["notes"] for r, d in zip(runs, per_run, strict=True) if d and d["notes"]},
        "settings": _settings_table(runs),
        "per_class": _aligned_classes(per_class),
        "sections": present,
        "cols": cols,
        "glyph_note": _glyph_note(runs),
        "probe_columns": _probe_columns([x for rows in probes for x in rows]),
        "n_bins": stats.N_BINS,
        "n_boot": stats.N_BOOT,
    }


def render(runs: list[Run], title: str = "diffdisc report", generated: str | None = None) -> str:
    return environment().get_template("report.html.j2").render(**build_context(runs, title, generated))


def write_report(run_dirs: list[str | Path], out: str | Path, title: str = "diffdisc report",
                 generated: str | None = None) -> Path:  # fmt: skip
    """Read `run_dirs` and write one self-contained page to `out` (no network, no other files)."""
    return write_runs(load_runs(run_dirs), out, title, generated)


def write_runs(runs: list[Run], out: str | Path, title: str = "diffdisc report", generated: str | None = None) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, render(runs, title, generated))
    return out

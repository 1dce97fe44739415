"""Effective robustness (Taori et al. 2020; Li et al. 2023, "Your diffusion model is secretly a zero-shot
classifier"): do diffusion classifiers lose less under distribution shift than their clean accuracy predicts?

    OMP_NUM_THREADS=1 .venv/bin/python bench/effective_robustness.py --per-class 2 --timesteps 5 \
        --shifts gaussian_noise@1,gaussian_noise@3,contrast@1,contrast@3,unseen_colour,position@4,scale@0.75 \
        --baseline-per-class 400,1000,2000 --baseline-epochs 1 --out runs/effective-robustness-small

Models: the shipped `fmnist-classcond` (on grey items), `fmnist-scenes-text` and the contrastive
`fmnist-scenes-clip` (on one-item coloured scenes), and timm CNNs trained from scratch on real Fashion-MNIST
*train* images of the same kind (one per `--baseline-per-class`, cached in OUT/baselines: a rerun reuses them).
Every model of a kind sees the same images for every shift (`diffdisc.datasets.shifts.export_shifted`, the
seeded subset `export_shipped_test` picks). Diffusion and contrastive models run `diffdisc.tasks.classify`
(exhaustive, `--timesteps` evenly spaced t; the contrastive model scores once), the CNNs their own
`evaluate_classifier`. Intervals: 95 % percentile bootstrap over images (`match_metrics.bootstrap_ci`); the
drop's is paired (the same images clean and shifted).

The fit is Taori et al.'s: per kind and shift, a least-squares line in probit-probit space through the
baseline points (`--fit`: the CNNs and the contrastive model, or the CNNs only), drawn where at least two
baseline clean accuracies differ; a model's effective robustness is its shifted accuracy minus the line's value
at its clean accuracy. The CNNs' spread of clean accuracy comes from their training-set sizes.

Writes OUT/effective_robustness.json, OUT/effective_robustness.md (the tables) and
OUT/effective_robustness.png (clean accuracy on x, shifted on y, one point per model and shift, y = x).
Everything is resumable: classify runs, baselines and exported folders are reused on a rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffdisc.datasets.shifts import CLEAN, SHIFTS, parse_shift  # noqa: E402
from diffdisc.tasks import robustness as R  # noqa: E402
from diffdisc.tasks.robustness import FIT_ROLES, add_effective_robustness, fit_lines, predicted, rows_of  # noqa: E402

DEFAULT_MODELS = "fmnist-classcond,fmnist-scenes-text,fmnist-scenes-clip"
KIND_LABEL = {"classcond": "grey items (28×28)", "scenes": "coloured scenes (32×32)"}


def _log(msg: str) -> None:
    print(msg, flush=True)


def diffusion_correct(bb, name: str, sets: dict[str, Path], out: Path, args) -> tuple[dict, dict]:
    """{shift: {image_id: 0/1}} of one diffusion or contrastive model, via classify (resumable)."""
    from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
    from diffdisc.tasks.classify import ClassifyConfig

    cfg = ClassifyConfig(adaptive=AdaptiveConfig(n_timesteps=args.timesteps),
                         score=ScoreConfig(batch_size=args.batch, seed=args.noise_seed))  # fmt: skip
    tag = Path(name).name
    return R.diffusion_correct(bb, sets, out / "runs" / tag, cfg, name=tag, log=_log)


def baseline_correct(kind: str, per_class: int, sets: dict[str, Path], out: Path, args) -> tuple[dict, dict]:
    """Train (or reuse) one CNN on real train images of `kind`, then its per-image correctness on every set."""
    cfg = R.ClassifierConfig(model=args.baseline_model, epochs=args.baseline_epochs, seed=args.seed)
    return R.baseline_correct(kind, per_class, sets, cfg, models=out / "baselines", data=out / "data", log=_log)


def _cell(r: dict) -> str:
    lo, hi = r["ci95"]
    return f"{100 * r['accuracy']:.0f} [{100 * lo:.0f}, {100 * hi:.0f}]"


def tables(rows: list[dict], shifts: list[str], fits: dict) -> str:
    """Markdown: accuracy [95 % CI] per model x shift (%), then effective robustness where a fit exists."""
    cols = [CLEAN] + shifts
    head = "| model | test images | " + " | ".join(cols) + " | mean drop [95 % CI] |"
    lines = [head, "|" + "---|" * (len(cols) + 3)]
    models = list(dict.fromkeys((r["model"], r["kind"]) for r in rows))
    for model, kind in models:
        mine = {r["shift"]: r for r in rows if (r["model"], r["kind"]) == (model, kind)}
        cells = [_cell(mine[s]) if s in mine else "–" for s in cols]
        c = mine[CLEAN]
        drop = f"{100 * c['mean_drop']:.0f} [{100 * c['mean_drop_ci95'][0]:.0f}, {100 * c['mean_drop_ci95'][1]:.0f}]" if "mean_drop" in c else "–"
        lines.append(f"| {model} | {KIND_LABEL[kind]} | " + " | ".join(cells) + f" | {drop} |")
    if fits:
        lines += ["", "Effective robustness (points): shifted accuracy minus the baseline fit at the model's clean accuracy.", "",
                  "| model | test images | " + " | ".join(shifts) + " |", "|" + "---|" * (len(shifts) + 2)]  # fmt: skip
        for model, kind in models:
            mine = {r["shift"]: r for r in rows if (r["model"], r["kind"]) == (model, kind)}
            cells = [f"{100 * mine[s]['effective_robustness']:+.0f}" if s in mine and "effective_robustness" in mine[s]
                     else "–" for s in shifts]  # fmt: skip
            lines.append(f"| {model} | {KIND_LABEL[kind]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], fits: dict, path: Path) -> None:
    from diffdisc.plotting import pyplot, save_figure

    plt = pyplot()
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    shifts = list(dict.fromkeys(r["shift"] for r in rows if r["shift"] != CLEAN))
    models = list(dict.fromkeys(r["model"] for r in rows))
    colours = {s: plt.cm.tab10(i % 10) for i, s in enumerate(shifts)}
    markers = dict(zip(models, "os^DvP*Xph", strict=False))
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(5 * len(kinds) + 2.5, 5), squeeze=False,
                             width_ratios=[5] * len(kinds) + [2.5])  # fmt: skip
    grid = np.linspace(0.005, 0.995, 100)
    for ax, kind in zip(axes[0][:-1], kinds, strict=True):
        ax.plot([0, 1], [0, 1], color="grey", lw=1, label="y = x")
        for r in rows:
            if r["kind"] == kind and r["shift"] != CLEAN:
                ax.scatter(r["clean"], r["accuracy"], color=colours[r["shift"]], marker=markers[r["model"]], s=40,
                           edgecolor="black" if r["role"] == "diffusion" else "none", linewidth=0.6)  # fmt: skip
        for shift in shifts:
            fit = fits.get(f"{kind}/{shift}")
            if fit:
                ax.plot(grid, [predicted(fit, g, n=10**6) for g in grid], color=colours[shift], lw=0.8, ls="--")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="clean accuracy", ylabel="shifted accuracy", title=KIND_LABEL[kind])
        ax.set_aspect("equal")
    handles = [plt.Line2D([], [], ls="", marker=markers[m], color="black", label=m) for m in models]
    handles += [plt.Line2D([], [], ls="", marker="o", color=colours[s], label=s) for s in shifts]
    handles += [plt.Line2D([], [], color="grey", ls="--", label="baseline fit (probit), per shift")]
    axes[0][-1].axis("off")  # the legend's own panel: tight_layout keeps it inside the figure
    axes[0][-1].legend(handles=handles, loc="center left", fontsize=8, frameon=False,
                       title="black edge: diffusion classifier")  # fmt: skip
    save_figure(fig, path, dpi=120, metadata={"Title": "effective robustness: clean vs shifted accuracy"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=DEFAULT_MODELS, help="diffusion / contrastive models (names or dirs)")
    ap.add_argument("--shifts", default=",".join(SHIFTS), help="comma-separated names of diffdisc.datasets.shifts.SHIFTS")
    ap.add_argument("--per-class", type=int, default=20, help="test images per class (of the shipped 100)")
    ap.add_argument("--seed", type=int, default=0, help="test subset, shifts' randomness and baseline training")
    ap.add_argument("--noise-seed", type=int, default=0, help="the diffusion scores' noise")
    ap.add_argument("--timesteps", type=int, default=5, help="evenly spaced t per candidate (exhaustive)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--baseline-model", default="resnet18", help="timm model, trained from scratch")
    ap.add_argument("--baseline-per-class", default="100,400,1000,6000", help="train images per class, one CNN each ('' for none)")
    ap.add_argument("--baseline-epochs", type=int, default=15)
    ap.add_argument("--fit", choices=sorted(FIT_ROLES), default="baselines", help="the points the fit goes through")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", type=Path, default=Path("runs/effective-robustness"))
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    shifts = [s for s in args.shifts.split(",") if s]
    for s in shifts:  # a bad name fails before any model loads
        parse_shift(s)
    t_start = time.time()
    from diffdisc.backbones.registry import create_backbone
    from diffdisc.scoring.scorers import is_contrastive

    backbones = {name: create_backbone(name, device=args.device) for name in args.models.split(",") if name}
    kinds_of = {name: "classcond" if bb.info.image_channels == 1 else "scenes" for name, bb in backbones.items()}
    kinds = list(dict.fromkeys(kinds_of.values()))
    sets = {k: R.export_sets(k, shifts, args.out / "data", args.per_class, args.seed) for k in kinds}
    rows, seconds = [], {}
    for name, kind in kinds_of.items():
        contrastive = is_contrastive(backbones[name])
        correct, secs = diffusion_correct(backbones[name], name, sets[kind], args.out, args)
        label = Path(name).name + (" (contrastive)" if contrastive else "")
        rows += rows_of(label, kind, correct, "contrastive" if contrastive else "diffusion")
        seconds[label] = secs
    for kind in kinds:
        for n in [int(v) for v in args.baseline_per_class.split(",") if v]:
            correct, secs = baseline_correct(kind, n, sets[kind], args.out, args)
            label = f"{args.baseline_model} CNN ({n}/class, {args.baseline_epochs} ep)"
            rows += rows_of(label, kind, correct, "cnn")
            seconds[f"{label} {kind}"] = secs
    fits = fit_lines(rows, FIT_ROLES[args.fit])
    add_effective_robustness(rows, fits)
    table = tables(rows, shifts, fits)
    wall = time.time() - t_start
    summary = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
               "machine": f"{os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads, "
                          f"cuda {torch.cuda.is_available()}", "settings": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "wall_s": wall,
        "rows": rows, "fits": fits, "seconds": seconds}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "effective_robustness.json").write_text(json.dumps(summary, indent=2))
    (args.out / "effective_robustness.md").write_text(table)
    plot(rows, fits, args.out / "effective_robustness.png")
    print(table)
    print(f"wall {wall / 60:.1f} min; wrote {args.out}/effective_robustness.{{json,md,png}}")


if __name__ == "__main__":
    main()

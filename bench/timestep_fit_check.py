"""Why learned timestep weights lost to the even grid (issue 27, item 3), and whether the fix holds.

Stage `score`: exhaustive errors E[image, class, t] of the shipped `fmnist-classcond` on shipped *training*
images (never test images) at a grid of evenly spaced t, saved chunk by chunk to `--out/errors.npz` (a rerun
resumes). Stage `analyse`: the images are split (stratified, seeded) into a fitting half and a held-out half;
weights are fitted on the first and every budget n is scored on the second: the learned top n vs the even grid
at n (centred strata of the grid, as `timesteps fit` compares them).

    OMP_NUM_THREADS=1 .venv/bin/python bench/timestep_fit_check.py score --n 200 --grid 20 --out runs/ts-check
    OMP_NUM_THREADS=1 .venv/bin/python bench/timestep_fit_check.py analyse --out runs/ts-check
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def score(args) -> None:
    from diffdisc.backbones.registry import create_backbone
    from diffdisc.data.images import array_to_tensor
    from diffdisc.datasets.fashion_mnist import fmnist_subset
    from diffdisc.scoring.config import ScoreConfig
    from diffdisc.scoring.engine import ScoringEngine
    from diffdisc.scoring.schedule import dc_grid

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "errors.npz"
    images, labels, index, source = fmnist_subset("train", args.n, seed=args.seed)
    bb = create_backbone(args.model, "cpu")
    grid = dc_grid(bb.num_train_timesteps, args.grid)
    keys = [f"{source}-{i}" for i in index]
    done = 0
    errors = np.full((len(images), 10, len(grid)), np.nan)
    if path.exists():
        z = np.load(path)
        assert list(z["grid"]) == grid and list(z["index"]) == list(index)
        errors, done = z["errors"], int(z["done"])
    with ScoringEngine(bb, ScoreConfig(batch_size=64, seed=args.seed)) as eng:
        conds = bb.conditions(list(range(10)))
        while done < len(images):
            t0 = time.time()
            sl = slice(done, min(done + args.chunk, len(images)))
            x0 = bb.encode(torch.stack([array_to_tensor(a, bb.info.image_size, bb.info.image_channels) for a in images[sl]]))
            errors[sl] = eng.exhaustive(x0, keys[sl], conds, grid).numpy()
            done = sl.stop
            np.savez(path, errors=errors, labels=labels, index=index, grid=np.array(grid), done=done, source=source)
            print(f"{done}/{len(images)} images, {time.time() - t0:.0f} s", flush=True)


def analyse(args) -> None:
    from diffdisc.scoring.timestep_weights import fit_weights, margins, stage_subset, stratified_folds

    z = np.load(Path(args.out) / "errors.npz")
    done = int(z["done"])
    e, y, grid = z["errors"][:done], z["labels"][:done], [int(t) for t in z["grid"]]
    half = stratified_folds(y, 2, args.seed) == 0
    w = fit_weights(e[half], y[half], grid, seed=args.seed)
    held, yh = e[~half], y[~half]
    col = {t: j for j, t in enumerate(grid)}
    rows = []
    for n in [1, 2, 3, 5, 10, len(grid)]:
        if n > len(grid):
            continue
        even = stage_subset(list(range(len(grid))), n)
        acc_even = float((margins(held[..., even].mean(2), yh) > 0).mean())
        ts = w.ordered_grid(n)
        f = np.array([w.factor(t) for t in ts])
        sc = (held[..., [col[t] for t in ts]] * f).sum(2) / f.sum()
        acc_l = float((margins(sc, yh) > 0).mean())
        rows.append({"n": n, "learned_t": ts, "learned": acc_l, "even": acc_even})
        print(f"n={n:2d} learned {acc_l:.3f} even {acc_even:.3f}  t={ts}")
    print(json.dumps({k: w.calibration[k] for k in ("l2", "accuracy")}), "weights", dict(zip(w.order, np.round(w.weights, 3), strict=True)))


def _old_greedy(z, labels, w):
    """The order `timesteps fit` shipped before issue 27: greedy by the prefix's accuracy (ties: mean margin)."""
    from diffdisc.scoring.timestep_weights import margins

    n, m, g = z.shape
    chosen, rest = [], [k for k in range(g) if w[k] > 0]
    total, wsum = np.zeros((n, m)), 0.0
    while rest:
        cand = (total[..., None] + z[..., rest] * w[rest]) / (wsum + w[rest])
        mg = margins(cand, labels)
        j = int(np.lexsort((np.arange(len(rest)), -mg.mean(0), -(mg > 0).mean(0)))[0])
        k = rest.pop(j)
        chosen.append(k)
        total, wsum = total + w[k] * z[..., k], wsum + w[k]
    return chosen + [k for k in range(g) if w[k] <= 0]


def _nll_greedy(z, labels, w):
    """Tried for issue 27 and not kept: greedy by the fitted logistic model's NLL of the prefix, softmax(-Σ w_t Z_t)
    with the weights on their logit scale."""
    from scipy.special import logsumexp

    n, m, g = z.shape
    chosen, rest, total, rows = [], [k for k in range(g) if w[k] > 0], np.zeros((n, m)), np.arange(n)
    while rest:
        logits = -(total[..., None] + z[..., rest] * w[rest])
        k = rest.pop(int(np.argmin((logsumexp(logits, axis=1) - logits[rows, labels]).mean(0))))
        chosen.append(k)
        total = total + w[k] * z[..., k]
    return chosen + [k for k in range(g) if w[k] <= 0]


def diagnose(args) -> None:
    """Repeated seeded splits: fit on part of the training images, score the rest, at each budget n: the even
    grid, the order `timesteps fit` used before (greedy by accuracy), the new order (greedy by NLL), the even
    grid's t with the learned weights, and the new file as classify uses it (its per-budget plan)."""
    from diffdisc.scoring.timestep_weights import (
        fit_weights,
        margins,
        normalise,
        stage_subset,
        stratified_folds,
    )

    z = np.load(Path(args.out) / "errors.npz")
    done = int(z["done"])
    e, y, grid = z["errors"][:done], z["labels"][:done], [int(t) for t in z["grid"]]
    G = len(grid)
    budgets = [n for n in (1, 2, 3, 5, 10) if n < G]
    res: dict = {}
    for split in range(args.splits):
        half = stratified_folds(y, 2, 100 + split) == 0
        if args.fit_size:  # a smaller fitting set, stratified
            keep = np.flatnonzero(half)[np.argsort(stratified_folds(y[half], len(y[half]) // 10, split), kind="stable")]
            half = np.zeros_like(half)
            half[keep[: args.fit_size]] = True
        held_mask = stratified_folds(y, 2, 100 + split) != 0
        w = fit_weights(e[half], y[half], grid, seed=split, z_min=args.z_min)
        zf, _ = normalise(e[half])
        wv = np.array([dict(zip(w.order, w.weights, strict=True))[t] for t in grid])
        old = [grid[k] for k in _old_greedy(zf, y[half], wv)]
        from diffdisc.scoring.timestep_weights import _logistic

        nll = [grid[k] for k in _nll_greedy(zf, y[half], _logistic(zf, y[half], w.calibration["l2"]))]
        held, yh = e[held_mask], y[held_mask]
        col = {t: j for j, t in enumerate(grid)}
        f = {t: w.factor(t) for t in grid}

        def acc(ts, weighted=True, f=f, held=held, col=col, yh=yh):
            ff = np.array([f[t] if weighted else 1.0 for t in ts])
            ff = ff if ff.sum() > 0 else np.ones(len(ts))
            return (margins((held[..., [col[t] for t in ts]] * ff).sum(2), yh) > 0).mean()

        for n in budgets:
            ev = [grid[c] for c in stage_subset(list(range(G)), n)]
            row = {"even grid": acc(ev, False), "learned first n (the order, before and now)": acc(old[:n]),
                   "tried: greedy by NLL, weighted": acc(nll[:n]), "even grid's t, learned weights": acc(ev),
                   "new file as classify uses it (plan per n)": acc(ev, False) if w.plan(n) == "even" else acc(w.ordered_grid(n))}
            for k, v in row.items():
                res.setdefault((k, n), []).append(v)
            res.setdefault(("plan", n), []).append(w.plan(n))
        res.setdefault("l2", []).append(w.calibration["l2"])
    names = list(row)
    print(f"{args.splits} seeded splits of {done} shipped training images: fit on {int(half.sum())}, score "
          f"{int(held_mask.sum())} held out; grid {G} (accuracy, mean over splits)")
    print("| variant | " + " | ".join(f"n={n}" for n in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for name in names:
        print(f"| {name} | " + " | ".join(f"{np.mean(res[(name, n)]):.3f}" for n in budgets) + " |")
    for name in names[1:]:
        d = {n: np.array(res[(name, n)]) - np.array(res[("even grid", n)]) for n in budgets}
        print(f"| {name} vs even: splits lost/tied/won | " + " | ".join(
            f"{(d[n] < 0).sum()}/{(d[n] == 0).sum()}/{(d[n] > 0).sum()}" for n in budgets) + " |")  # fmt: skip
    from collections import Counter

    print("plans chosen: " + "; ".join(f"n={n}: {dict(Counter(res[('plan', n)]))}" for n in budgets))
    print(f"L2 penalty chosen: {dict(Counter(res['l2']))}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("score", "analyse", "diagnose"))
    p.add_argument("--splits", type=int, default=10)
    p.add_argument("--fit-size", type=int, default=0)
    p.add_argument("--z-min", type=float, default=0.0)
    p.add_argument("--model", default="fmnist-classcond")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--grid", type=int, default=20)
    p.add_argument("--chunk", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/ts-check")
    a = p.parse_args()
    {"score": score, "analyse": analyse, "diagnose": diagnose}[a.stage](a)

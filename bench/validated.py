"""Validation, not test, picks settings (issue 27 items 2 and 4): `--strategy auto`'s choice and the diffusion ×
contrastive ensemble, chosen on shipped *training* images and measured once on test images.

    OMP_NUM_THREADS=1 nohup .venv/bin/python bench/validated.py --n-val 100 --n-test 1000 --out runs/validated \
        > runs/validated.log 2>&1 &

Shipped `fmnist-classcond` (10-way, grey images). Validation: `--n-val` shipped train images (stratified, seed 1);
every setting of `tasks.auto_strategy.candidate_settings(20, 10)` is scored on them through one memoising engine
and `choose` keeps the cheapest within `--tolerance` of the best validation accuracy — alone, and pooled with the
contrastive `--ensemble` model (`fmnist-scenes-clip` reading the same grey images) at each setting's
validation-fitted weight. Test: the shipped test images in a fixed stratified order (`stratified_subset`, seed 0:
every prefix is stratified), in blocks of `--block`; on them only exhaustive 20 (the reference), the two chosen
settings, the contrastive model alone and the pooled exhaustive 20. Both memos are saved after every chunk
(`memo-val.npz`, `memo-test.npz`: test and train ids repeat, so never one memo), so a killed run resumes where
it stopped; `results.json` is rewritten after every block with 95 % bootstrap intervals.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from diffdisc.backbones.registry import create_backbone  # noqa: E402
from diffdisc.data.folders import ImageDataset, open_image_dataset, stratified_subset  # noqa: E402
from diffdisc.datasets.export import (  # noqa: E402
    coloured_classes,
    export_coloured_test,
    export_imagefolder,
    export_shipped_test,
)
from diffdisc.scoring.config import ScoreConfig  # noqa: E402
from diffdisc.scoring.memo import MemoEngine  # noqa: E402
from diffdisc.scoring.search import ExhaustiveConfig  # noqa: E402
from diffdisc.tasks.auto_strategy import (  # noqa: E402
    Scored,
    ValidationSet,
    candidate_settings,
    choose,
    fit_pooling,
    open_validation,
    pooled_predictions,
    score_validation,
    shortlist_settings,
)
from diffdisc.tasks.candidates import build_candidates  # noqa: E402
from diffdisc.tasks.classify import ClassifyConfig  # noqa: E402
from diffdisc.tasks.ensemble import ensemble_partner  # noqa: E402
from diffdisc.tasks.shortlist import make_shortlist  # noqa: E402

REFERENCE = "exhaustive 20"


def interval(x: np.ndarray, seed: int = 0, n: int = 2000) -> list[float]:
    """95 % percentile bootstrap interval of the mean of `x` (per-image 0/1, or paired differences)."""
    idx = np.random.default_rng(seed).integers(0, len(x), (n, len(x)))
    return [float(v) for v in np.percentile(x[idx].mean(1), [2.5, 97.5])]


def row(name: str, correct: np.ndarray, calls: float, ref: np.ndarray | None = None, **extra) -> dict:
    out = {"name": name, "accuracy": float(correct.mean()), "ci": interval(correct.astype(float)), "calls": calls, **extra}
    if ref is not None:
        d = correct.astype(float) - ref.astype(float)
        out |= {"minus_reference": float(d.mean()), "minus_reference_ci": interval(d)}
    return out


def concat(parts: list[Scored]) -> Scored:
    return Scored(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Scored)))


def saver(engine: MemoEngine, path: Path, meta: dict, what: str, t_start: float):
    """`on_chunk` for `score_validation`: save the memo, say how far it got."""

    def save(done: int) -> None:
        engine.save(path, meta)
        print(f"[{time.time() - t_start:6.0f}s] {what}: {done} images, {engine.forwards} new forwards", flush=True)

    return save


@dataclasses.dataclass
class Chosen:
    """What the validation images decided: auto's choice alone and pooled with the contrastive model, the pooling
    of the reference, and the report of it all."""

    alone: object
    pooled: object
    fit: object
    ref_fit: object
    report: dict


def choose_all(V, searches: dict, tolerance: float) -> Chosen:
    alone, _ = choose(dataclasses.replace(V, contrastive=None), searches, tolerance)
    pooled, fit = choose(V, searches, tolerance, "auto")
    ref_fit = fit_pooling(V.scored[REFERENCE], V.contrastive, V.labels, "auto")
    print(alone.line(), "\n", pooled.line(), flush=True)
    report = {"images": len(V.labels), "forwards": V.forwards, "alone": alone.record(), "ensemble": pooled.record(),
              "ensemble_fit": fit.record() if fit else None, "reference_fit": ref_fit.record(),
              "contrastive_accuracy": float((V.contrastive.argmin(1) == V.labels).mean())}  # fmt: skip
    return Chosen(alone, pooled, fit, ref_fit, report)


def test_rows(S: dict, y: np.ndarray, con: np.ndarray, c: Chosen, ensemble: str) -> list[dict]:
    """The test table: the reference, auto's choice, the contrastive model alone, both pooled."""
    ref = S[REFERENCE].rankings[:, 0] == y
    return [row(f"{REFERENCE} (reference)", ref, float(S[REFERENCE].calls.mean())),
            row(f"auto: {c.alone.name}", S[c.alone.name].rankings[:, 0] == y, float(S[c.alone.name].calls.mean()), ref),
            row(f"contrastive {ensemble} alone", con.argmin(1) == y, 0.0, ref),
            row(f"ensemble: {REFERENCE} + contrastive, w {c.ref_fit.weight:g}",
                pooled_predictions(S[REFERENCE], con, c.ref_fit) == y, float(S[REFERENCE].calls.mean()), ref),
            row(f"auto with ensemble: {c.pooled.name}, w {c.fit.weight:g}",
                pooled_predictions(S[c.pooled.name], con, c.fit) == y, float(S[c.pooled.name].calls.mean()), ref)]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=["grey10", "coloured80"], default="grey10",
                    help="grey10: shipped fmnist-classcond, 10-way; coloured80: fmnist-scenes-text among 80 coloured labels")
    ap.add_argument("--part", choices=["all", "reference", "val"], default="all",
                    help="coloured80: reference = only exhaustive 20 on --slice of the test order (other processes fill "
                         "the test memo); val = only the validation pass and its choice; all = both, then the test "
                         "images whose reference the memos hold")
    ap.add_argument("--slice", default="0:200", help="a:b of the stratified test order, for --part reference")
    ap.add_argument("--plot", default="docs/validated80.png", help="coloured80: the calls-vs-accuracy plot")
    ap.add_argument("--model", default="fmnist-classcond")
    ap.add_argument("--ensemble", default="fmnist-scenes-clip")
    ap.add_argument("--n-val", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--block", type=int, default=50)
    ap.add_argument("--tolerance", type=float, default=0.005)
    ap.add_argument("--out", default="runs/validated")
    args = ap.parse_args()
    if args.task == "coloured80":
        return coloured80(args)
    out = Path(args.out)
    t_start = time.time()
    bb, clip = create_backbone(args.model), create_backbone(args.ensemble)
    score = ScoreConfig(batch_size=128)
    meta = {"model": bb.info.fingerprint, "score": score.to_dict()}
    test_dir = export_shipped_test(out / "test")
    val_dir = export_shipped_test(out / "val", per_class=args.n_val // 10, seed=1, split="train")
    cand = build_candidates(bb, None)
    test_ds = open_image_dataset(test_dir)
    val = open_validation(val_dir, cand, test_ds)  # refuses an image shared with the test folder
    partner = ensemble_partner(bb, cand, None, clip, score.batch_size)
    searches = candidate_settings(20, len(cand.classes))

    veng = MemoEngine(bb, score)
    print("validation memo loaded:", veng.load(out / "memo-val.npz", meta), flush=True)
    V = score_validation(bb, val, cand, score, searches, ensemble=partner, engine=veng,
                         on_chunk=saver(veng, out / "memo-val.npz", meta, "validation", t_start))  # fmt: skip
    c = choose_all(V, searches, args.tolerance)
    alone, pooled, val_report = c.alone, c.pooled, c.report

    labels_all = np.asarray(test_ds.label_index(cand.classes))
    test_searches = {n: searches[n] for n in dict.fromkeys([REFERENCE, alone.name, pooled.name])}
    teng = MemoEngine(bb, score)
    print("test memo loaded:", teng.load(out / "memo-test.npz", meta), flush=True)
    done: list[int] = []
    parts: dict[str, list[Scored]] = {n: [] for n in test_searches}
    con_parts, lab_parts = [], []
    for n in range(args.block, args.n_test + args.block, args.block):
        keep = [i for i in stratified_subset(labels_all.tolist(), min(n, args.n_test), 0) if i not in set(done)]
        if not keep:
            break
        block = ValidationSet(ImageDataset(test_ds.root, [test_ds.items[i] for i in keep], test_ds.class_names),
                              labels_all[keep], {})  # fmt: skip
        T = score_validation(bb, block, cand, score, test_searches, ensemble=partner, engine=teng,
                             on_chunk=saver(teng, out / "memo-test.npz", meta, f"test block to {n}", t_start))  # fmt: skip
        done += keep
        for name in test_searches:
            parts[name].append(T.scored[name])
        con_parts.append(T.contrastive)
        lab_parts.append(T.labels)
        y, con = np.concatenate(lab_parts), np.concatenate(con_parts)
        S = {name: concat(p) for name, p in parts.items()}
        rows = test_rows(S, y, con, c, args.ensemble)
        res = {"test_images": len(y), "test_forwards": teng.forwards, "wall_s": time.time() - t_start,
               "validation": val_report, "test": rows}  # fmt: skip
        (out / "results.json").write_text(json.dumps(res, indent=2))
        print(json.dumps({"test_images": len(y), "rows": [(r["name"], round(r["accuracy"], 4), round(r["calls"], 1)) for r in rows]}), flush=True)


def coloured_folders(out: Path, n_val: int, n_test: int) -> tuple[Path, Path]:
    """The 80-way test folder (`export_coloured_test`: shipped test items in seeded colours) and a validation
    folder of coloured *training* items (`large_labels.coloured_train`, seed 1: other colours than the test's)."""
    test_dir = export_coloured_test(out / "test", n=n_test)
    val_dir = out / "val"
    if not (val_dir / "classes.json").is_file():
        from large_labels import coloured_train

        tr = coloured_train(n_val, seed=1)
        export_imagefolder(np.stack(tr.pixels), tr.labels, tr.class_names, val_dir, ids=[int(k.split("-")[1]) for k in tr.keys])
    return test_dir, val_dir


def test_order(test_ds: ImageDataset, cand, n: int) -> tuple[list[int], np.ndarray]:
    """The test images in a fixed stratified order (every prefix stratified), and all their labels."""
    labels = np.asarray(test_ds.label_index(cand.classes))
    return stratified_subset(labels.tolist(), n, 0), labels


def coloured80(args) -> None:
    out = Path(args.out)
    t_start = time.time()
    bb = create_backbone("fmnist-scenes-text")
    score = ScoreConfig(batch_size=64)  # fastest on the CPU
    meta = {"model": bb.info.fingerprint, "score": score.to_dict()}
    test_dir, val_dir = coloured_folders(out, args.n_val, args.n_test)
    test_ds = open_image_dataset(test_dir)
    cand = build_candidates(bb, coloured_classes())  # all 80, whichever a small test folder holds
    order, labels_all = test_order(test_ds, cand, args.n_test)
    if args.part == "reference":
        a, b = (int(v) for v in args.slice.split(":"))
        keep = order[a:b]
        block = ValidationSet(ImageDataset(test_ds.root, [test_ds.items[i] for i in keep], test_ds.class_names), labels_all[keep], {})
        path = out / f"memo-test-{a}-{b}.npz"
        eng = MemoEngine(bb, score)
        print("memo loaded:", eng.load(path, meta), flush=True)
        save = saver(eng, path, meta, f"reference {a}:{b}", t_start)
        T = score_validation(bb, block, cand, score, {REFERENCE: ExhaustiveConfig(n_timesteps=20)}, engine=eng, on_chunk=save, chunk=4)
        print("reference accuracy on the slice:", float((T.scored[REFERENCE].rankings[:, 0] == T.labels).mean()), flush=True)
        return
    clip = create_backbone(args.ensemble)
    searches = coloured_settings(args.ensemble)
    with_model = {n for n in searches if n.startswith(f"shortlist {args.ensemble} ")}
    one = ClassifyConfig(search=searches[next(iter(with_model))], score=score)
    cheap = make_shortlist(bb, cand, one, clip)
    partner = ensemble_partner(bb, cand, None, clip, score.batch_size)
    val = open_validation(val_dir, cand, test_ds)  # refuses an image shared with the test folder
    veng = MemoEngine(bb, score)
    print("validation memo loaded:", veng.load(out / "memo-val.npz", meta), flush=True)

    V = score_validation(bb, val, cand, score, searches, ensemble=partner, cheap=cheap, cheap_for=with_model, engine=veng,
                         on_chunk=saver(veng, out / "memo-val.npz", meta, "validation", t_start), chunk=4)  # fmt: skip
    c = choose_all(V, searches, args.tolerance)
    val_report = c.report
    if args.part == "val":
        (out / "validation.json").write_text(json.dumps(val_report, indent=2))
        return
    teng = MemoEngine(bb, score)
    print("test memos loaded:", [teng.load(m, meta) for m in sorted(out.glob("memo-test-*.npz"))], flush=True)
    have: dict[str, int] = {}
    for k, _, _ in teng.memo:
        have[k] = have.get(k, 0) + 1
    full = len(cand.keys) * 20
    keep = [i for i in order if have.get(test_ds.items[i].image_id, 0) >= full]  # the test images the reference has
    print(f"{len(keep)} test images with the whole reference in the memos", flush=True)
    block = ValidationSet(ImageDataset(test_ds.root, [test_ds.items[i] for i in keep], test_ds.class_names), labels_all[keep], {})
    T = score_validation(bb, block, cand, score, searches, ensemble=partner, cheap=cheap, cheap_for=with_model,
                         engine=teng, chunk=8)  # fmt: skip
    y, con = T.labels, T.contrastive
    S = T.scored
    ref = S[REFERENCE].rankings[:, 0] == y
    rows = test_rows(S, y, con, c, args.ensemble)
    # every listed setting on test, for the record only (the choice above was made on validation)
    every = [row(name, S[name].rankings[:, 0] == y, float(S[name].calls.mean()), ref) for name in searches]
    res = {"test_images": len(y), "test_forwards": teng.forwards, "wall_s": time.time() - t_start, "settings": list(searches),
           "excluded": EXCLUDED_80, "validation": val_report, "test": rows, "every_setting_on_test": every}  # fmt: skip
    (out / "results.json").write_text(json.dumps(res, indent=2))
    print(json.dumps({"test_images": len(y), "rows": [(r["name"], round(r["accuracy"], 4), round(r["calls"], 1)) for r in rows]}), flush=True)
    print("plot:", plot80(res, Path(args.plot)), flush=True)


def plot80(res: dict, path: Path) -> Path:
    """Every listed setting's calls and accuracy, on validation (where the choice is made) and on test (where it is
    only measured), the chosen one marked, the reference's 0.5-point band and the 20x line."""
    from diffdisc.plotting import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    val = {r["name"]: r for r in res["validation"]["alone"]["table"]}
    chosen = res["validation"]["alone"]["chosen"]
    for ax, (title, rows) in zip(axes, [(f"validation ({res['validation']['images']} coloured training items): the choice",
                                         list(val.values())),
                                        (f"test ({res['test_images']} images): measured once", res["every_setting_on_test"])], strict=True):  # fmt: skip
        for r in rows:
            ok = r["name"] == chosen
            ax.errorbar(r["calls"], r["accuracy"], yerr=None if "ci" not in r else
                        [[r["accuracy"] - r["ci"][0]], [r["ci"][1] - r["accuracy"]]],
                        marker="*" if ok else "o", markersize=12 if ok else 5, color="tab:red" if ok else
                        ("tab:blue" if r["name"].startswith("shortlist fmnist") else "tab:gray"), alpha=0.8)  # fmt: skip
            if ok:
                ax.annotate(f"auto: {r['name']}", (r["calls"], r["accuracy"]), fontsize=7, xytext=(5, -12),
                            textcoords="offset points")  # fmt: skip
        ref = next(r for r in rows if r["name"] == REFERENCE)
        ax.axhspan(ref["accuracy"] - 0.005, ref["accuracy"], color="k", alpha=0.1, label="exhaustive 20 − 0.5 points")
        ax.axvline(ref["calls"] / 20, color="tab:red", linestyle=":", linewidth=0.8, label="20x fewer calls")
        ax.set(xscale="log", xlabel="U-Net calls per image (blue: contrastive cascades)", title=title)
        ax.title.set_fontsize(9)
    axes[0].set_ylabel("top-1 accuracy, 80-way")
    axes[0].legend(fontsize=7)
    return save_figure(fig, path)


# The 2-core CPU plan of the 80-way task: settings of the auto list whose t are off the 20-t grid the reference
# scores (the t-test's random t; the even 5- and 10-t grids) cost up to 1,600 more forwards per validation image
# each, and none of them can reach the target (they score every candidate at >= 5 t: >= 400 calls, <= 4x).
EXCLUDED_80 = ("exhaustive 5", "exhaustive 10", "t-test p 0.1", "t-test p 0.02")


def coloured_settings(model: str) -> dict:
    """`--strategy auto --shortlist-model MODEL`'s list at 20 t and 80 candidates, less `EXCLUDED_80`."""
    s = candidate_settings(20, 80) | shortlist_settings(20, 80, model)
    return {n: c for n, c in s.items() if n not in EXCLUDED_80}


if __name__ == "__main__":
    main()

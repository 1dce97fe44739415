"""Calls vs accuracy on the 80-way coloured task of the embedded world (issue 17): every strategy, one table, one PNG.

    OMP_NUM_THREADS=2 .venv/bin/python bench/large_labels.py --n 200 --n-train 100 --out runs/large_labels
    OMP_NUM_THREADS=1 .venv/bin/python bench/large_labels.py --quick --out /tmp/large_labels   # smoke test

Test images: real shipped Fashion-MNIST test items as one-item scenes in seeded colours, `--n` of them stratified
over the 80 "{colour} {item}" labels (`export_coloured_test`), classified by the shipped text-conditional
`fmnist-scenes-text` among all 80 prompts "a {colour} {item}" (the shipped contrastive `fmnist-scenes-clip` is
the cheap scorer, and a row of its own). Training images, for the learned timesteps (`fit_weights` on
exhaustive errors of `--n-train` of them) and the features head (a `features sweep` on `--head-per-class` per
label): the same construction from the Fashion-MNIST *train* split with another colour seed. Every schedule
below was fixed before the run; nothing is chosen on the test images, except which cascade and which tree
the candidate-count sweep shows (the cheapest within 0.5 points of the reference, said so in the output).

Every row scores the same images under the same noise (seeded per (image, t)); errors are memoised per
(image, condition, t) (`SharedMemoEngine`, kept in --out between runs), so rows share forwards, and every row
is charged its own U-Net calls. A contrastive model's forwards (its image encoder, once per image) are counted
beside them; `forwards` in the JSON counts the U-Net forwards this process computed (a rerun that finds the
memo computes only what is new). Writes large_labels.json and large_labels.png (accuracy vs U-Net calls per
image, and calls per image vs the number of candidates) to --out and prints the table.

Cost (distinct forwards, the default plan): ~4,400 per test image (exhaustive 20 / 10 / 5 t on disjoint grids
= 2,800, the t-test's random t up to 1,600, the self shortlist's 2 t, the trees' coarse nodes; halving,
early exit, learned t and the deciders reuse the 20-t grid) plus 1,600 per training image and 1,600 for the
features head: ~1.1 M at --n 200, ~20 ms each on one busy CPU thread at batch 64.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import SharedMemoEngine  # noqa: E402

from diffdisc.backbones.registry import create_backbone  # noqa: E402
from diffdisc.data.folders import stratified_subset  # noqa: E402
from diffdisc.data.labelled import LabelledImages  # noqa: E402
from diffdisc.datasets.export import coloured_classes, coloured_tree, export_coloured_test  # noqa: E402
from diffdisc.errors import DiffdiscError  # noqa: E402
from diffdisc.features.shortlist import FeatureHead  # noqa: E402
from diffdisc.plotting import pyplot, save_figure  # noqa: E402
from diffdisc.scoring.adaptive import evaluate  # noqa: E402
from diffdisc.scoring.calibrate import temperature_key  # noqa: E402
from diffdisc.scoring.cascade import Cascade, Stage  # noqa: E402
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig  # noqa: E402
from diffdisc.scoring.engine import ScoringEngine  # noqa: E402
from diffdisc.scoring.hierarchy import tree_search  # noqa: E402
from diffdisc.scoring.label_tree import LabelTree, load_tree  # noqa: E402
from diffdisc.scoring.match_metrics import bootstrap_ci  # noqa: E402
from diffdisc.scoring.schedule import dc_grid  # noqa: E402
from diffdisc.tasks.candidates import Candidates, build_candidates  # noqa: E402
from diffdisc.tasks.classify import ClassifyConfig  # noqa: E402
from diffdisc.tasks.shortlist import make_shortlist  # noqa: E402

TRAIN_COLOUR_SEED = 54321  # training scenes' colours: not the test images' (SCENE_COLOUR_SEED)
TRAIN_POOL = 8000  # training items coloured before the stratified pick (~100 per label)


@dataclass(frozen=True)
class Plan:
    """Every schedule the bench tries; `quick` shrinks the grids so a smoke run takes minutes."""

    ref: int = 20  # the reference: exhaustive at `ref` evenly spaced t
    fewer: tuple[int, ...] = (5, 10)
    halving: tuple = (((5, 10), (20, 1)), ((2, 20), (5, 5), (20, 1)), ((5, 5), (20, 1)), ((2, 10), (5, 3), (20, 1)))
    early_exit: tuple = ((((5, 10), (20, 1)), 2.0), (((5, 10), (20, 1)), 3.0),
                         (((2, 20), (5, 5), (20, 1)), 2.0), (((2, 20), (5, 5), (20, 1)), 3.0))  # fmt: skip
    ttest_min: int = 5
    ttest_max: int = 20
    ttest_p: tuple[float, ...] = (0.1, 0.02)
    learned_n: tuple[int, ...] = (2, 5, 10, 20)
    learned_halving: tuple = (((2, 20), (5, 5), (10, 1)), ((5, 10), (20, 1)), ((2, 10), (5, 1)))
    shortlist_k: tuple[int, ...] = (5, 10, 20)
    self_t: int = 2  # the diffusion model as its own cheap scorer, at this many t
    decide_halving: tuple = ((5, 3), (20, 1))  # deciding stage of a cascade / each level of a tree
    decide_learned: int = 10  # ... or exhaustive at the top n learned t
    beams: tuple[int, ...] = (1, 2)
    auto_branching: int = 8
    auto_top: int = 10
    head_blocks: tuple[str, ...] = ("down.2", "mid", "up.0")
    head_t: tuple[int, ...] = (100, 300)
    sizes: tuple = ((5, 2), (5, 4), (10, 4), (10, 8))  # (items, colours) of the candidate-count sweep


QUICK = Plan(
    ref=4, fewer=(1,), halving=(((2, 10), (4, 1)),), early_exit=((((2, 10), (4, 1)), 2.0),), ttest_min=2, ttest_max=3,
    ttest_p=(0.1,), learned_n=(2, 4), learned_halving=(((2, 10), (4, 1)),), shortlist_k=(5, 10), self_t=1,
    decide_halving=((2, 3), (4, 1)), decide_learned=2, head_blocks=("mid",), head_t=(300,),
)  # fmt: skip
# What the 2-core CPU affords in an hour: no t-test (its random t are off the shared grid: 1,600 more forwards
# per image), one smaller exhaustive grid, one features cell.
CPU = Plan(fewer=(5,), ttest_p=(), head_blocks=("mid",), head_t=(300,))


def stages_label(stages) -> str:
    return ",".join(f"{n}:{k}" for n, k in stages)


# ---------------------------------------------------------------------- data
def coloured_train(n: int, seed: int) -> LabelledImages:
    """`n` training scenes stratified over the 80 labels: Fashion-MNIST *train* items (the Debian dataset; the
    shipped 1,000 training items when it is not installed) in seeded palette colours, as `export_coloured_test`
    builds the test images."""
    from diffdisc.datasets.fashion_mnist import load_fashion_mnist, load_shipped_subset
    from diffdisc.datasets.scenes import COLOURS, single_scenes

    try:
        images, labels = load_fashion_mnist("train")
        indices, source = np.arange(len(labels)), "Fashion-MNIST train split"
    except DiffdiscError:
        images, labels, indices = load_shipped_subset("train")
        source = "shipped 1,000 Fashion-MNIST training items"
    pool = np.sort(np.random.default_rng(seed).permutation(len(labels))[:TRAIN_POOL])
    scenes = single_scenes(images[pool], labels[pool], seed=TRAIN_COLOUR_SEED)
    y = np.array([int(s.items[0].class_id) * len(COLOURS) + COLOURS.index(s.items[0].colour) for s in scenes.scenes])
    keep = sorted(stratified_subset(y.tolist(), n, seed))
    return LabelledImages.from_arrays(scenes.images[keep], y[keep], coloured_classes(),
                                      keys=[f"train-{int(indices[pool[k]])}" for k in keep],
                                      source=f"{source} [{len(keep)}, colour seed {TRAIN_COLOUR_SEED}]")  # fmt: skip


def natural_tree(classes: list[str]) -> dict:
    """`coloured_tree` restricted to `classes` (the candidate-count sweep's subsets)."""
    keep = set(classes)
    tree = coloured_tree()
    kids = [{**node, "children": [c for c in node["children"] if c in keep]} for node in tree["children"]]
    return {**tree, "children": [k for k in kids if k["children"]]}


@dataclass
class Problem:
    """One candidate set and the test images whose label is in it."""

    classes: list[str]
    cand: Candidates
    conds: torch.Tensor
    images: LabelledImages
    x0: torch.Tensor
    trees: dict = field(default_factory=dict)
    cheap: dict = field(default_factory=dict)

    @property
    def labels(self) -> np.ndarray:
        return self.images.labels


@dataclass
class Row:
    family: str
    label: str
    setting: dict
    run: Callable  # (Problem, image indices) -> [(prediction, U-Net calls, contrastive forwards)]


class Bench:
    def __init__(self, args, plan: Plan):
        self.args, self.plan = args, plan
        self.stack = contextlib.ExitStack()
        self.bb = create_backbone("fmnist-scenes-text", device=args.device)
        self.clip = create_backbone("fmnist-scenes-clip", device=args.device)
        self.score = ScoreConfig(batch_size=args.batch_size, seed=args.seed)
        self.engine = self.stack.enter_context(SharedMemoEngine(self.bb, self.score))
        self.clip_engine = self.stack.enter_context(ScoringEngine(self.clip, ScoreConfig(batch_size=args.batch_size)))
        self.weights = None
        self.head = None
        self.notes: list[str] = []
        self.head_forwards = 0
        self.memo_path = Path(args.out) / "large_labels_memo.npz"
        self.memo_meta = {"model": self.bb.info.fingerprint, "score": self.score.to_dict(), "device": self.bb.device.type}

    def problem(self, classes: list[str], images: LabelledImages) -> Problem:
        cand = build_candidates(self.bb, classes)
        x0 = self.bb.encode(images.tensors(self.bb.info.image_size, self.bb.info.image_channels))
        return Problem(classes, cand, self.bb.conditions(cand.keys), images, x0)

    def save_memo(self) -> None:
        if not self.args.no_memo:
            self.engine.save(self.memo_path, self.memo_meta)

    # ------------------------------------------------------------------ training-split fits
    def fit_timesteps(self, train: Problem) -> dict:
        from diffdisc.scoring.timestep_weights import fit_weights

        grid = dc_grid(self.bb.num_train_timesteps, self.plan.ref)
        before, t0 = self.engine.forwards, time.time()
        res = self.chunked(lambda idx: evaluate(self.engine, train.x0[idx], [train.images.keys[i] for i in idx], train.conds,
                                                AdaptiveConfig(n_timesteps=self.plan.ref), train.cand.groups), len(train.labels))  # fmt: skip
        errors = np.array([[[r.errors[c][t] for t in grid] for c in range(len(train.classes))] for r in res])
        model = {"name": self.bb.info.name, "label": self.bb.info.label, "fingerprint": self.bb.info.fingerprint}
        self.weights = fit_weights(errors, train.labels, grid, seed=self.args.seed, model=model,
                                   score=temperature_key(self.score), data="bench training split")  # fmt: skip
        acc = float((errors.mean(2).argmin(1) == train.labels).mean())
        info = {"images": len(res), "forwards": self.engine.forwards - before, "seconds": round(time.time() - t0, 1),
                "train_accuracy_exhaustive": acc, "order": self.weights.order, "weights": self.weights.weights,
                "calibration": self.weights.calibration}  # fmt: skip
        cal = self.weights.calibration["accuracy"]
        print(f"timestep weights on {len(res)} training images: cv accuracy fitted {cal['fitted']:.3f} vs even "
              f"{cal['even']:.3f}; order {self.weights.order[:8]}... ({info['seconds']:.0f}s)", flush=True)  # fmt: skip
        return info

    def fit_head(self) -> dict:
        """A features head (linear probe on pooled U-Net activations, `features sweep`) on the training split."""
        from diffdisc.tasks.features import SweepConfig, sweep

        n = self.args.head_per_class * 80
        data = coloured_train(n, self.args.seed)
        counts = np.bincount(data.labels, minlength=80)
        if counts.min() < 2:
            note = (f"features-head shortlist missing: its training split has {counts.min()} image(s) of some label "
                    "(a validation split needs 2 per label; raise --head-per-class)")  # fmt: skip
            self.notes.append(note)
            print(note, flush=True)
            return {"missing": note}
        t0 = time.time()
        out = Path(self.args.out) / "head_sweep"
        r = sweep(self.bb, data, SweepConfig(blocks=self.plan.head_blocks, timesteps=self.plan.head_t), out=out)
        self.head = FeatureHead.from_dir(out)
        self.head_forwards += int(r.details["unet_forwards_train"])
        info = {"images": len(data), "best": r.best, "val_acc": r.val_acc, "forwards": int(r.details["unet_forwards_train"]),
                "seconds": round(time.time() - t0, 1), "dir": str(out)}  # fmt: skip
        print(f"features head on {len(data)} training images: {r.best} ({info['seconds']:.0f}s)", flush=True)
        return info

    # ------------------------------------------------------------------ strategies
    def chunked(self, fn, n: int) -> list:
        out = []
        for s in range(0, n, self.args.chunk):
            out += fn(list(range(s, min(s + self.args.chunk, n))))
        return out

    def flat(self, cfg: AdaptiveConfig, learned: bool = False):
        def run(p: Problem, idx):
            res = evaluate(self.engine, p.x0[idx], [p.images.keys[i] for i in idx], p.conds, cfg, p.cand.groups,
                           weights=self.weights if learned else None)  # fmt: skip
            return [(r.prediction, r.calls, 0) for r in res]

        return run

    def contrastive_alone(self, p: Problem, idx):
        cand = build_candidates(self.clip, p.classes)
        pix = p.images.tensors(self.clip.info.image_size, self.clip.info.image_channels)[idx]
        res = evaluate(self.clip_engine, self.clip.encode(pix), [p.images.keys[i] for i in idx],
                       self.clip.conditions(cand.keys), AdaptiveConfig(), cand.groups)  # fmt: skip
        return [(r.prediction, 0, 1) for r in res]

    def tree_of(self, p: Problem, kind: str) -> LabelTree:
        if kind not in p.trees:
            if kind == "natural":
                p.trees[kind] = LabelTree.from_dict(natural_tree(p.classes), p.classes, source="natural tree")
            else:
                p.trees[kind] = load_tree("auto", p.classes, self.bb, p.conds, p.cand.groups,
                                          branching=self.plan.auto_branching, top=self.plan.auto_top)  # fmt: skip
        return p.trees[kind]

    def tree(self, kind: str, beam: int, cfg: AdaptiveConfig, learned: bool = False):
        def run(p: Problem, idx):
            res = tree_search(self.engine, p.x0[idx], [p.images.keys[i] for i in idx], p.conds, self.tree_of(p, kind), cfg,
                              beam, p.cand.groups, weights=self.weights if learned else None)  # fmt: skip
            return [(r.prediction, r.calls, 0) for r in res]

        return run

    def shortlist_of(self, p: Problem, kind: str, k: int):
        """classify's own cheap stage (`make_shortlist`): None when k >= the candidates (classify then runs flat)."""
        if (kind, k) not in p.cheap:
            model = {"contrastive": self.clip, "self": "self", "head": self.head}[kind]
            cfg = ClassifyConfig(classes=tuple(p.classes), score=self.score, shortlist=k, shortlist_timesteps=self.plan.self_t)
            sl = make_shortlist(self.bb, p.cand, cfg, model)
            if sl is not None:
                sl.open(self.engine, p.conds, self.stack)
            p.cheap[(kind, k)] = sl
        return p.cheap[(kind, k)]

    def cascade(self, kind: str, k: int, cfg: AdaptiveConfig, learned: bool = False):
        def run(p: Problem, idx):
            keys = [p.images.keys[i] for i in idx]
            decide = Stage(self.engine, p.x0[idx], p.conds, p.cand.groups, cfg, self.weights if learned else None)
            sl = self.shortlist_of(p, kind, k)
            if sl is None:  # k >= candidates: no cascade, as classify
                return [(r.prediction, r.calls, 0) for r in decide.evaluate(keys)]
            shape = sl.shape or (self.bb.info.image_size, self.bb.info.image_channels)
            got = Cascade(sl.stage(p.x0[idx], p.images.tensors(*shape)[idx]), decide, k).run(keys)
            if kind == "head":
                self.head_forwards += len(idx)
            return [(c.scores.prediction, c.calls, c.cheap_forwards) for c in got]

        return run

    def rows(self) -> list[Row]:
        P, ref = self.plan, self.plan.ref
        rows = [Row("exhaustive", f"exhaustive {ref} t (reference)", {"n_timesteps": ref}, self.flat(AdaptiveConfig(n_timesteps=ref)))]
        rows += [Row("exhaustive", f"exhaustive {n} t", {"n_timesteps": n}, self.flat(AdaptiveConfig(n_timesteps=n))) for n in P.fewer]
        rows += [Row("contrastive alone", "fmnist-scenes-clip", {}, self.contrastive_alone)]
        rows += [Row("halving", f"halving {stages_label(s)}", {"stages": s},
                     self.flat(AdaptiveConfig(strategy="halving", stages=s))) for s in P.halving]  # fmt: skip
        rows += [Row("halving + early exit", f"halving {stages_label(s)} exit z {z:g}", {"stages": s, "exit_z": z},
                     self.flat(AdaptiveConfig(strategy="halving", stages=s, exit_z=z))) for s, z in P.early_exit]  # fmt: skip
        rows += [Row("t-test", f"t-test p {p:g}", {"min_scores": P.ttest_min, "max_scores": P.ttest_max, "p_value": p},
                     self.flat(AdaptiveConfig(strategy="ttest", min_scores=P.ttest_min, max_scores=P.ttest_max, p_value=p)))
                 for p in P.ttest_p]  # fmt: skip
        rows += [Row("learned timesteps", f"exhaustive top {n} learned t", {"n_timesteps": n, "weights": "learned"},
                     self.flat(AdaptiveConfig(n_timesteps=n), learned=True)) for n in P.learned_n]  # fmt: skip
        rows += [Row("learned timesteps", f"halving {stages_label(s)} on learned t", {"stages": s, "weights": "learned"},
                     self.flat(AdaptiveConfig(strategy="halving", stages=s), learned=True)) for s in P.learned_halving]  # fmt: skip
        deciders = [(f"exhaustive {ref}", AdaptiveConfig(n_timesteps=ref), False),
                    (f"halving {stages_label(P.decide_halving)}", AdaptiveConfig(strategy="halving", stages=P.decide_halving), False),
                    (f"top {P.decide_learned} learned t", AdaptiveConfig(n_timesteps=P.decide_learned), True)]  # fmt: skip
        cheap = [("contrastive", "contrastive"), ("self", f"self {P.self_t} t")] + ([("head", "features head")] if self.head else [])
        for kind, name in cheap:
            for k in P.shortlist_k:
                for dname, cfg, learned in deciders:
                    rows.append(Row("shortlist", f"{name} top {k} -> {dname}",
                                    {"cheap": kind, "keep": k, "decide": dname, "self_t": P.self_t if kind == "self" else None},
                                    self.cascade(kind, k, cfg, learned)))  # fmt: skip
        for kind in ("natural", "auto"):
            for beam in P.beams:
                for dname, cfg, learned in deciders:
                    setting = {"tree": kind, "beam": beam, "per_level": dname}
                    if kind == "auto":
                        setting.update(branching=P.auto_branching, top=P.auto_top)
                    rows.append(Row("tree", f"{kind} tree beam {beam}, {dname} per level", setting,
                                    self.tree(kind, beam, cfg, learned)))  # fmt: skip
        return rows

    # ------------------------------------------------------------------ measuring
    def measure(self, row: Row, p: Problem, verbose: bool = True) -> dict:
        before, t0 = self.engine.forwards, time.time()
        got = self.chunked(lambda idx: row.run(p, idx), len(p.labels))
        if not got:
            return {"family": row.family, "strategy": row.label, "setting": row.setting, "n_images": 0}
        pred = np.array([g[0] for g in got])
        correct = (pred == p.labels).astype(np.float64)
        lo, hi = bootstrap_ci(correct, seed=self.args.seed)
        out = {"family": row.family, "strategy": row.label, "setting": row.setting, "n_images": len(got),
               "accuracy": float(correct.mean()), "ci95": [lo, hi], "calls": float(np.mean([g[1] for g in got])),
               "contrastive_forwards": float(np.mean([g[2] for g in got])), "new_forwards": self.engine.forwards - before,
               "seconds": round(time.time() - t0, 1), "predictions": pred.tolist()}  # fmt: skip
        if verbose:
            print(f"{row.label:52s} acc {out['accuracy']:.3f} [{lo:.3f}, {hi:.3f}]  calls/img {out['calls']:7.1f}  "
                  f"clip fwd/img {out['contrastive_forwards']:.0f}  new fwd {out['new_forwards']:7d}  ({out['seconds']:.0f}s)", flush=True)  # fmt: skip
        return out


def pick(rows: list[dict], family: str, ref: dict) -> dict | None:
    """The family's cheapest row within 0.5 points of the reference; else its most accurate."""
    cands = [r for r in rows if r["family"] == family and r.get("n_images")]
    if not cands:
        return None
    within = [r for r in cands if r["accuracy"] >= ref["accuracy"] - 0.005]
    return min(within, key=lambda r: r["calls"]) if within else max(cands, key=lambda r: (r["accuracy"], -r["calls"]))


def table(rows: list[dict], ref: dict) -> str:
    head = f"{'strategy':14s} {'setting':52s} {'accuracy [95% CI]':24s} {'U-Net/img':>10s} {'clip/img':>8s} {'x fewer':>8s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        if not r.get("n_images"):
            lines.append(f"{r['family'][:14]:14s} {r['strategy'][:52]:52s} (no images)")
            continue
        ratio = f"{ref['calls'] / r['calls']:.1f}" if r["calls"] > 0 else "-"
        acc = f"{r['accuracy']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
        lines.append(f"{r['family'][:14]:14s} {r['strategy'][:52]:52s} {acc:24s} {r['calls']:10.1f} "
                     f"{r['contrastive_forwards']:8.0f} {ratio:>8s}")  # fmt: skip
    return "\n".join(lines)


def group(r: dict) -> str:
    """The plot's series of a row: its family, shortlists by cheap scorer, trees by tree."""
    if r["family"] == "shortlist":
        return f"shortlist ({r['setting']['cheap']})"
    if r["family"] == "tree":
        return f"{r['setting']['tree']} tree"
    return r["family"]


def plot(rows: list[dict], scaling: list[dict], ref: dict, title: str, path: Path) -> Path:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
    groups: dict[str, list] = {}
    for r in rows:
        if r.get("n_images") and r["calls"] > 0:
            groups.setdefault(group(r), []).append((r["calls"], r["accuracy"]))
    for (name, pts), m in zip(groups.items(), "osD^vPX*<>ph", strict=False):
        ax.plot(*zip(*sorted(pts), strict=True), marker=m, linestyle="-" if name in ("exhaustive", "halving") else "none",
                label=name, alpha=0.8)  # fmt: skip
    ax.axhline(ref["accuracy"], color="k", linestyle="--", linewidth=0.8, label=f"reference ({ref['strategy']})")
    ax.axhspan(ref["accuracy"] - 0.005, ref["accuracy"], color="k", alpha=0.08)
    clip = next((r for r in rows if r["family"] == "contrastive alone" and r.get("n_images")), None)
    if clip:
        ax.axhline(clip["accuracy"], color="tab:gray", linestyle=":", label="contrastive alone (0 U-Net calls)")
    ax.axvline(ref["calls"] / 10, color="tab:red", linestyle=":", linewidth=0.8, label="10x fewer calls")
    ax.set_xscale("log")
    ax.set_xlabel("U-Net calls per image")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    for name in dict.fromkeys(s["series"] for s in scaling):
        pts = sorted((s["candidates"], s["calls"]) for s in scaling if s["series"] == name and s.get("n_images"))
        if pts:
            bx.plot(*zip(*pts, strict=True), marker="o", label=name)
    bx.set_xscale("log")
    bx.set_yscale("log")
    bx.set_xlabel("candidates")
    bx.set_ylabel("U-Net calls per image")
    bx.set_title("cost vs number of candidates", fontsize=9)
    bx.legend(fontsize=7)
    return save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="test images (stratified over the 80 labels)")
    ap.add_argument("--n-train", type=int, default=100, help="training images the timestep weights are fitted on")
    ap.add_argument("--head-per-class", type=int, default=10, help="training images per label for the features head")
    ap.add_argument("--seed", type=int, default=0, help="image subsets and noise")
    ap.add_argument("--out", default="runs/large_labels")
    ap.add_argument("--batch-size", type=int, default=64, help="U-Net batch (64 is fastest on CPU; larger on a GPU)")
    ap.add_argument("--chunk", type=int, default=50, help="test images scored together")
    ap.add_argument("--device", default=None, help="cuda to score on a GPU (default: where the models load, the CPU)")
    ap.add_argument("--no-memo", action="store_true", help="do not read or write the error memo in --out")
    ap.add_argument("--cpu", action="store_true", help="the CPU plan: no t-test rows, one smaller grid, one features cell")
    ap.add_argument("--quick", action="store_true", help="a tiny setting (8 test, 4 training images, 2-4 t grids)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.n_train, args.head_per_class = min(args.n, 8), min(args.n_train, 4), min(args.head_per_class, 2)
    plan = QUICK if args.quick else CPU if args.cpu else Plan()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    b = Bench(args, plan)
    if not args.no_memo and b.engine.load(b.memo_path, b.memo_meta):
        print(f"memo: {len(b.engine.memo)} errors from {b.memo_path}", flush=True)
    classes = coloured_classes()
    test = LabelledImages.from_folder(export_coloured_test(out / "data" / f"test-n{args.n}-s{args.seed}", args.n, args.seed), classes)
    full = b.problem(classes, test)
    info = {"timesteps": b.fit_timesteps(b.problem(classes, coloured_train(args.n_train, args.seed)))}
    b.save_memo()
    info["head"] = b.fit_head()
    rows, family = [], None
    for row in b.rows():
        if row.family != family:  # a checkpoint per family: a killed run resumes from the memo
            b.save_memo()
            family = row.family
        rows.append(b.measure(row, full))
    b.save_memo()
    ref = rows[0]

    # cost vs candidates: subsets (items x colours) of the 80, on the test images whose label is in them
    from diffdisc.datasets.fashion_mnist import CLASS_NAMES
    from diffdisc.datasets.scenes import COLOURS

    series = {"exhaustive": b.rows()[0]}
    chosen = {}
    for fam, name in (("shortlist", "best cascade"), ("tree", "best tree")):
        best = pick(rows, fam, ref)
        if best is not None:
            chosen[name] = best["strategy"]
            series[f"{name}: {best['strategy']}"] = next(r for r in b.rows() if r.label == best["strategy"])
    scaling = []
    for items, colours in plan.sizes:
        sub = [f"{c} {it}" for it in CLASS_NAMES[:items] for c in COLOURS[:colours]]
        sub = [c for c in classes if c in sub]  # item-major, as the 80
        keep = [i for i, y in enumerate(test.labels) if classes[y] in sub]
        imgs = test.subset(keep)
        imgs = LabelledImages(imgs.pixels, np.array([sub.index(classes[y]) for y in imgs.labels]), imgs.keys, sub, imgs.source)
        p = b.problem(sub, imgs) if len(keep) else None
        for name, row in series.items():
            r = b.measure(row, p, verbose=False) if p is not None else {"n_images": 0}
            scaling.append({"series": name, "candidates": len(sub), "items": items, "colours": colours, "n_images": len(keep),
                            **{k: r[k] for k in ("accuracy", "ci95", "calls", "contrastive_forwards") if k in r}})  # fmt: skip
            calls = f"{r['calls']:7.1f}" if "calls" in r else "      -"
            print(f"{len(sub):3d} candidates ({len(keep):3d} images)  {name[:60]:60s} calls/img {calls}", flush=True)
    b.save_memo()

    within = [r for r in rows[1:] if r.get("n_images") and r["calls"] > 0 and r["accuracy"] >= ref["accuracy"] - 0.005]
    best = min(within, key=lambda r: r["calls"]) if within else None
    summary = ({"strategy": best["strategy"], "accuracy": best["accuracy"], "calls": best["calls"],
                "ratio": ref["calls"] / best["calls"]} if best else None)  # fmt: skip
    forwards = {"unet_total": b.engine.forwards, "memo_errors": len(b.engine.memo), "features_head": b.head_forwards, "per_test_image_all_rows": None,
                "calibration": info["timesteps"]["forwards"]}  # fmt: skip
    main_fwd = sum(r.get("new_forwards", 0) for r in rows)
    forwards["per_test_image_all_rows"] = main_fwd / max(len(test.labels), 1)
    title = (f"fmnist-scenes-text, 80-way coloured task, {len(test.labels)} test images (seed {args.seed}){' [quick]' if args.quick else ''}\n"
             f"learned timesteps and features head fitted on training images")  # fmt: skip
    result = {"n_images": len(test.labels), "n_train": args.n_train, "seed": args.seed, "quick": args.quick, "cpu_plan": args.cpu,
              "plan": {k: getattr(plan, k) for k in plan.__dataclass_fields__}, "image_keys": test.keys,
              "labels": test.labels.tolist(), "classes": classes, "reference": {k: ref[k] for k in ("strategy", "accuracy", "ci95", "calls")},
              "best_within_half_point": summary, "scaling_series": chosen, "fits": info, "forwards": forwards,
              "notes": b.notes + ["scaling: the cascade and tree shown are the cheapest of their family within 0.5 points "
                                  "of the reference on these test images (else the most accurate)"],
              "rows": rows, "scaling": scaling, "seconds": round(time.time() - t_start, 1)}  # fmt: skip
    (out / "large_labels.json").write_text(json.dumps(result, indent=2))
    print()
    print(table(rows, ref))
    for note in result["notes"]:
        print("note:", note)
    if summary:
        print(f"best within 0.5 points of the reference: {summary['strategy']} at {summary['calls']:.1f} calls/image "
              f"({summary['ratio']:.1f}x fewer), accuracy {summary['accuracy']:.3f} vs {ref['accuracy']:.3f}")  # fmt: skip
    else:
        print("no strategy within 0.5 points of the reference")
    print(f"U-Net forwards computed: {b.engine.forwards} (+{b.head_forwards} features head); "
          f"{forwards['per_test_image_all_rows']:.0f} per test image over all rows; {result['seconds']:.0f}s")  # fmt: skip
    print(plot(rows, scaling, ref, title, out / "large_labels.png"))
    b.stack.close()


if __name__ == "__main__":
    main()

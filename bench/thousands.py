"""A label space of thousands (issue 27 item 5): calls per image and accuracy at 80 / 800 / 6,400 candidates.

    OMP_NUM_THREADS=1 nohup .venv/bin/python bench/thousands.py --out runs/thousands > runs/thousands.log 2>&1 &
    OMP_NUM_THREADS=1 .venv/bin/python bench/thousands.py --fit-noise --out runs/thousands   # then rerun: + noise rows
    .venv/bin/python bench/thousands.py --table --out runs/thousands          # table, JSON and PNG of what is done
    OMP_NUM_THREADS=1 .venv/bin/python bench/thousands.py --quick --out /tmp/thousands   # smoke test (1 t)

Tasks (shipped `fmnist-scenes-text`, prompts "{a} {}" of the class names): 80-way, one real test item per scene
in a seeded colour among all "{colour} {item}" (`export_coloured_test`); 6,400-way, `--n` seeded two-item
scenes of real test items among all 80 x 80 "a {c1} {item1} to the left of a {c2} {item2}" (`export_pair_test`);
800-way, the same scenes without the right item's colour ("a red shirt to the left of a bag"). Every strategy
scores at the `--timesteps` (5) even t; trees are the exported natural trees (`tree.json`: left item -> its
colour -> right item (-> its colour); 80-way: item -> colour) or auto trees (clustering the conditions); the
cheap stage of a cascade is the shipped contrastive `fmnist-scenes-clip` (no U-Net calls). The exhaustive
reference costs 5 x candidates calls per image (32,000 at 6,400): it runs on the first `--n-ref` images only,
one image at a time, after the cheaper rows.

Errors are memoised per (image, condition content, t) (`SharedMemoEngine`): rows share forwards, and every row
is charged its own calls. Each (row, image) is written to results.json as it finishes, so a killed run resumes
where it stopped (the memo is not kept: a resumed row recomputes what it needs). `--fit-noise` fits a learned
noise (`scoring.learned_noise.fit_noise`) at the same t on two-item *training* scenes (see `fit_noise_file`);
with `noise.safetensors` in --out, the noise rows run too. Writes thousands.json (summary) and thousands.png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import SharedMemoEngine  # noqa: E402

from diffdisc.backbones.registry import create_backbone  # noqa: E402
from diffdisc.data.labelled import LabelledImages  # noqa: E402
from diffdisc.datasets.export import (  # noqa: E402
    coloured_classes,
    coloured_tree,
    export_coloured_test,
    export_pair_test,
    pair_classes,
)
from diffdisc.runs.io import atomic_write_text  # noqa: E402
from diffdisc.scoring.config import ScoreConfig  # noqa: E402
from diffdisc.scoring.engine import ScoringEngine  # noqa: E402
from diffdisc.scoring.label_tree import LabelTree, load_tree  # noqa: E402
from diffdisc.scoring.schedule import dc_grid  # noqa: E402
from diffdisc.scoring.search import Bound, Cascade, ExhaustiveConfig, HalvingConfig, Inputs, Tree  # noqa: E402
from diffdisc.tasks.candidates import build_candidates  # noqa: E402

SIZES = (6400, 800, 80)
PARTS = {  # (attribute, divisor, modulus) of a class index, in the order the natural trees choose them
    6400: (("left item", 640, 10), ("left colour", 80, 8), ("right item", 8, 10), ("right colour", 1, 8)),
    800: (("left item", 80, 10), ("left colour", 10, 8), ("right item", 1, 10)),
    80: (("item", 8, 10), ("colour", 1, 8)),
}
AUTO = {"branching": 8, "top": 10}
HALVING = ((2, 3), (5, 1))  # per tree level, on the 5-t grid


@dataclass
class Task:
    size: int
    classes: list[str]
    images: LabelledImages
    data: Path
    x0: torch.Tensor = None
    conds: torch.Tensor = None
    groups: list = None
    clip_x0: torch.Tensor = None
    clip_conds: torch.Tensor = None
    clip_groups: list = None
    trees: dict = field(default_factory=dict)
    tree_builds: dict = field(default_factory=dict)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.bb = create_backbone("fmnist-scenes-text", device="cpu")
        self.clip = create_backbone("fmnist-scenes-clip", device="cpu")
        self.score = ScoreConfig(batch_size=args.batch_size, dtype=args.dtype, seed=args.seed)
        self.engine = SharedMemoEngine(self.bb, self.score).__enter__()
        self.clip_engine = ScoringEngine(self.clip, ScoreConfig(batch_size=args.batch_size)).__enter__()
        self.noise_engine = None
        if (self.out / "noise.safetensors").is_file():
            from diffdisc.scoring.learned_noise import LearnedNoise

            noise = LearnedNoise.load(self.out / "noise.safetensors")
            self.noise_engine = SharedMemoEngine(self.bb, self.score, noise=noise).__enter__()
        self.grid = dc_grid(self.bb.num_train_timesteps, args.timesteps)
        self.path = self.out / f"results{'-' + args.part if args.part else ''}.json"
        self.results = json.loads(self.path.read_text()) if self.path.is_file() else {"rows": {}, "trees": {}}
        self.tasks: dict[int, Task] = {}

    # ------------------------------------------------------------------ tasks
    def task(self, size: int) -> Task:
        if size in self.tasks:
            return self.tasks[size]
        n = self.args.n
        if size == 80:
            data = export_coloured_test(self.out / "data" / f"coloured-n{n}", n, self.args.seed)
            classes = coloured_classes()
        else:
            data = export_pair_test(self.out / "data" / f"pairs{size}-n{n}", n, right_colour=size == 6400)
            classes = pair_classes(size == 6400)
        images = LabelledImages.from_folder(data, classes)
        if size != 80:  # the scenes in generation order (the folders sort them by caption)
            images = images.subset(np.argsort([k.split("/")[1] for k in images.keys], kind="stable"))
        t = Task(size, classes, images, data)
        t0 = time.time()
        cand = build_candidates(self.bb, classes)
        t.x0 = self.bb.encode(images.tensors(self.bb.info.image_size, self.bb.info.image_channels))
        t.conds, t.groups = self.bb.conditions(cand.keys), cand.groups
        clip_cand = build_candidates(self.clip, classes)
        t.clip_x0 = self.clip.encode(images.tensors(self.clip.info.image_size, self.clip.info.image_channels))
        t.clip_conds, t.clip_groups = self.clip.conditions(clip_cand.keys), clip_cand.groups
        print(
            f"{size}-way: {len(images)} images, conditions in {time.time() - t0:.0f}s; prompt 0: {cand.keys[0]!r}",
            flush=True,
        )
        self.tasks[size] = t
        return t

    def tree(self, t: Task, kind: str) -> LabelTree:
        if kind not in t.trees:
            t0, before = time.time(), rss_mb()
            if kind == "natural":
                tree = (LabelTree.from_dict(coloured_tree(), t.classes, source="natural tree") if t.size == 80
                        else LabelTree.from_json(t.data / "tree.json", t.classes))  # fmt: skip
            else:
                tree = load_tree("auto", t.classes, self.bb, t.conds, t.groups, **AUTO)
            info = {"seconds": round(time.time() - t0, 2), "peak_rss_growth_mb": round(rss_mb() - before, 1),
                    "depth": tree.depth, "internal_nodes": len(tree.internal), "root_children": len(tree.root.children)}  # fmt: skip
            self.results["trees"][f"{t.size} {kind}"] = info
            print(f"{t.size}-way {kind} tree: {info}", flush=True)
            t.trees[kind] = tree
        return t.trees[kind]

    # ------------------------------------------------------------------ rows
    def rows(self, size: int) -> dict:
        """name -> (search builder, engine, needs the contrastive cheap stage)."""
        n = self.args.timesteps
        ex = ExhaustiveConfig(n_timesteps=n)
        halving = HalvingConfig(stages=tuple((min(a, n), k) for a, k in HALVING)) if n >= 2 else ex

        def tree(kind, beam=1, inner=ex):
            return lambda t: Tree(self.tree(t, kind), beam, inner.build())

        rows = {
            "contrastive alone": (lambda t: ExhaustiveConfig().build(), self.clip_engine, False),
            "tree natural, beam 1": (tree("natural"), self.engine, False),
            "tree natural, beam 2": (tree("natural", 2), self.engine, False),
            "tree natural, beam 1, halving per level": (tree("natural", 1, halving), self.engine, False),
            f"tree auto (top {AUTO['top']}, branching {AUTO['branching']}), beam 1": (tree("auto"), self.engine, False),
            "cascade: contrastive top 10 -> exhaustive": (lambda t: Cascade(10, None, ex.build()), self.engine, True),
            "cascade: contrastive top 50 -> exhaustive": (lambda t: Cascade(50, None, ex.build()), self.engine, True),
            "cascade: contrastive top 50 -> tree natural, beam 1": (
                lambda t: Cascade(50, None, tree("natural")(t)), self.engine, True),
        }  # fmt: skip
        if self.noise_engine is not None:
            rows["learned noise + tree natural, beam 1"] = (tree("natural"), self.noise_engine, False)
            rows["learned noise + cascade: contrastive top 10 -> exhaustive"] = (
                lambda t: Cascade(10, None, ex.build()),
                self.noise_engine,
                True,
            )
        rows[f"exhaustive {n} t"] = (lambda t: ex.build(), self.engine, False)
        return rows

    def measure(self, size: int, name: str, count: int, chunk: int, start: int = 0) -> None:
        build, engine, cheap = self.rows(size)[name]
        key = f"{size} | {name}"
        done = self.results["rows"].setdefault(key, {"size": size, "row": name, "images": {}})["images"]
        t = self.task(size)
        todo = [i for i in range(start, min(count, len(t.images))) if t.images.keys[i] not in done]
        if not todo:
            return
        search, t0, before = build(t), time.time(), getattr(engine, "forwards", 0)
        for s in range(0, len(todo), chunk):
            idx = todo[s : s + chunk]
            keys = [t.images.keys[i] for i in idx]
            if engine is self.clip_engine:
                inputs = Inputs(engine, t.clip_x0[idx], t.clip_conds, t.clip_groups)
            else:
                stage = Bound(
                    Inputs(self.clip_engine, t.clip_x0[idx], t.clip_conds, t.clip_groups),
                    ExhaustiveConfig().build(),
                )
                inputs = Inputs(engine, t.x0[idx], t.conds, t.groups, cheap=stage if cheap else None)
            c0 = time.time()
            for i, r in zip(idx, search(inputs, keys), strict=True):
                done[t.images.keys[i]] = {"pred": int(r.prediction), "label": int(t.images.labels[i]), "calls": int(r.calls),
                                          "forwards": int(r.forwards or r.record.get("contrastive_forwards", 0))}  # fmt: skip
            self.results["rows"][key]["seconds"] = (
                self.results["rows"][key].get("seconds", 0) + time.time() - c0
            )
            self.save()
        rows = [done[k] for k in t.images.keys[start : min(count, len(t.images))]]
        acc = np.mean([r["pred"] == r["label"] for r in rows])
        print(f"{size:5d}-way {name:58s} {len(rows):3d} img  acc {acc:.3f}  calls/img {np.mean([r['calls'] for r in rows]):8.1f}  "
              f"new fwd {getattr(engine, 'forwards', 0) - before:7d}  ({time.time() - t0:.0f}s, rss {rss_mb():.0f} MB)", flush=True)  # fmt: skip

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.results))


# ---------------------------------------------------------------------- learned noise
def fit_noise_file(args) -> Path:
    """One learned noise per t of the grid, fitted on two-item *training* scenes (shipped train items, their own
    seed): each scene's candidates are its own caption and the 4 captions that change one of its 4 attributes
    (left item, its colour, right item, its colour: the choices a tree level makes), all 5 x n_train stacked as
    one candidate set (a scene's loss runs over all of them, so every caption of another scene is a negative too)."""
    from diffdisc.datasets.export import pair_label
    from diffdisc.datasets.fashion_mnist import load_shipped_subset
    from diffdisc.datasets.scenes import generate_scenes
    from diffdisc.scoring.calibrate import temperature_key
    from diffdisc.scoring.engine import derive_seed
    from diffdisc.scoring.learned_noise import LearnedNoise, fit_noise, noise_stats
    from diffdisc.scoring.scorers import make_scorer

    torch.set_num_threads(1)
    out = Path(args.out)
    bb = create_backbone("fmnist-scenes-text", device="cpu")
    images, labels, _ = load_shipped_subset("train")
    scenes = generate_scenes(images, labels, args.n_train, "pair", seed=args.seed + 27)
    classes = pair_classes(True)
    rng = np.random.default_rng(args.seed)
    cand, y = [], []
    for s in scenes:
        lab = pair_label(s)
        digits = [lab // 640, lab // 80 % 8, lab // 8 % 10, lab % 8]
        y.append(len(cand))
        cand.append(lab)
        for pos, base in enumerate((10, 8, 10, 8)):
            d = list(digits)
            d[pos] = (d[pos] + 1 + int(rng.integers(base - 1))) % base
            cand.append(((d[0] * 8 + d[1]) * 10 + d[2]) * 8 + d[3])
    keys = build_candidates(bb, [classes[c] for c in cand], allow_duplicates=True).keys
    conds = bb.conditions(keys)
    x0 = bb.encode(
        LabelledImages.from_arrays(scenes.images, y, [classes[c] for c in cand]).tensors(
            bb.info.image_size, bb.info.image_channels
        )
    )
    score = ScoreConfig(batch_size=args.batch_size, dtype=args.dtype, seed=args.seed)
    ts = dc_grid(bb.num_train_timesteps, args.timesteps)
    init = torch.stack([torch.randn(tuple(x0.shape[1:]), generator=torch.Generator().manual_seed(derive_seed(args.seed, "", t)))
                        for t in ts])  # fmt: skip
    t0 = time.time()
    with torch.enable_grad():
        eps, hist = fit_noise(make_scorer(bb, score), x0, torch.tensor(y), conds, [[c] for c in range(len(cand))], ts, init,
                              steps=args.noise_steps, batch_images=args.noise_batch, micro_batch=args.batch_size,
                              seed=args.seed, report_images=min(args.n_train, 8),
                              progress=lambda p: print(p, flush=True))  # fmt: skip
    model = {"name": bb.info.name, "label": bb.info.label, "fingerprint": bb.info.fingerprint}
    fit = {"data": f"{args.n_train} two-item scenes of shipped Fashion-MNIST train items (seed {args.seed + 27})",
           "candidates": "own caption + one per attribute changed", "steps": args.noise_steps, "batch_images": args.noise_batch,
           "history": hist, "stats": noise_stats(eps), "seconds": round(time.time() - t0, 1)}  # fmt: skip
    path = LearnedNoise(model, temperature_key(score), "scheduler", ts, eps, fit).save(
        out / "noise.safetensors"
    )
    print(json.dumps({k: v for k, v in fit.items() if k != "stats"}, indent=1), flush=True)
    return path


# ---------------------------------------------------------------------- summary
def wilson(k: int, n: int) -> list[float]:
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(0.95, method="wilson")
    return [float(ci.low), float(ci.high)]


def summarise(results: dict, timesteps: int) -> list[dict]:
    out = []
    refs = {r["size"]: r["images"] for r in results["rows"].values() if r["row"].startswith("exhaustive")}
    for r in results["rows"].values():
        imgs = r["images"]
        if not imgs:
            continue
        ok = [v["pred"] == v["label"] for v in imgs.values()]
        calls = float(np.mean([v["calls"] for v in imgs.values()]))
        row = {"size": r["size"], "row": r["row"], "n_images": len(ok), "accuracy": float(np.mean(ok)),
               "wilson95": wilson(int(sum(ok)), len(ok)), "calls": calls,
               "share_of_exhaustive_calls": calls / (timesteps * r["size"]),
               "contrastive_forwards": float(np.mean([v["forwards"] for v in imgs.values()])),
               "seconds_per_image": r.get("seconds", 0) / len(ok)}  # fmt: skip
        parts = PARTS[r["size"]]
        row["attributes_right"] = {  # share of images whose prediction gets each attribute right
            name: float(np.mean([v["pred"] // div % mod == v["label"] // div % mod for v in imgs.values()]))
            for name, div, mod in parts
        }  # fmt: skip
        ref = refs.get(r["size"], {})
        shared = [k for k in imgs if k in ref]
        if shared:  # on the reference's images: same answer as exhaustive, and both accuracies
            row["on_reference_images"] = {"n": len(shared),
                                          "agree_with_exhaustive": float(np.mean([imgs[k]["pred"] == ref[k]["pred"] for k in shared])),
                                          "accuracy": float(np.mean([imgs[k]["pred"] == imgs[k]["label"] for k in shared])),
                                          "exhaustive_accuracy": float(np.mean([ref[k]["pred"] == ref[k]["label"] for k in shared]))}  # fmt: skip
        out.append(row)
    return sorted(out, key=lambda r: (-r["size"], r["row"]))


def table(rows: list[dict]) -> str:
    head = f"{'cands':>5s}  {'strategy':58s} {'n':>3s}  {'accuracy [Wilson 95%]':24s} {'calls/img':>9s} {'% of exh.':>9s}  {'attributes right':24s} on ref imgs: agree / acc vs exh."
    lines = [head, "-" * len(head)]
    for r in rows:
        o = r.get("on_reference_images")
        attrs = " ".join(f"{v:.2f}" for v in r["attributes_right"].values())
        ref = (
            f"{o['n']:2d}: {o['agree_with_exhaustive']:.2f} / {o['accuracy']:.2f} vs {o['exhaustive_accuracy']:.2f}"
            if o
            else ""
        )
        lines.append(f"{r['size']:5d}  {r['row'][:58]:58s} {r['n_images']:3d}  {r['accuracy']:.3f} [{r['wilson95'][0]:.3f}, "
                     f"{r['wilson95'][1]:.3f}]   {r['calls']:9.1f} {100 * r['share_of_exhaustive_calls']:8.2f}%  {attrs:24s} {ref}")  # fmt: skip
    return "\n".join(lines)


def plot(rows: list[dict], timesteps: int, path: Path) -> Path:
    """Left: U-Net calls per image vs candidates (log-log); right: accuracy with Wilson intervals."""
    from diffdisc.plotting import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplot_mosaic(
        [["calls", "acc"], ["legend", "legend"]], figsize=(12, 8), height_ratios=[3, 1]
    )
    ax, bx = axes["calls"], axes["acc"]
    colours = plt.get_cmap("tab20").colors
    sizes = np.array(SIZES[::-1])
    ax.plot(sizes, timesteps * sizes, "k--", label=f"exhaustive ({timesteps} t x candidates)")
    ax.plot(sizes, 0.01 * timesteps * sizes, "r:", label="1 % of exhaustive (the target at 6,400)")
    names = list(dict.fromkeys(r["row"] for r in rows))
    for k, name in enumerate(names):
        mine = sorted((r for r in rows if r["row"] == name), key=lambda r: r["size"])
        x = np.array([r["size"] for r in mine]) * (1 + 0.03 * (k - len(names) / 2))  # dodge the error bars
        acc = np.array([r["accuracy"] for r in mine])
        err = np.abs(np.array([r["wilson95"] for r in mine]).T - acc)
        line = bx.errorbar(
            x,
            acc,
            yerr=err,
            marker="o",
            capsize=2,
            color=colours[k % len(colours)],
            label=f"{name} (n = {'/'.join(str(r['n_images']) for r in mine)})",
        )
        if name.startswith("exhaustive") or all(r["calls"] == 0 for r in mine):
            continue
        ax.plot(
            [r["size"] for r in mine], [r["calls"] for r in mine], marker="o", color=line.lines[0].get_color()
        )
    for a in (ax, bx):
        a.set_xscale("log")
        a.set_xlabel("candidates")
    ax.set_yscale("log")
    ax.set_ylabel("U-Net calls per image")
    ax.legend(fontsize=7, loc="upper left")
    bx.set_ylabel("top-1 accuracy (Wilson 95 %)")
    bx.set_ylim(0, 1)
    axes["legend"].axis("off")
    axes["legend"].legend(*bx.get_legend_handles_labels(), fontsize=8, loc="center", ncol=2)
    fig.suptitle(
        f"fmnist-scenes-text, {timesteps} t: cost and accuracy vs number of candidates (issue 27 item 5)",
        fontsize=10,
    )
    return save_figure(fig, path)


def report(args, show: bool = True) -> None:
    out = Path(args.out)
    results = {"rows": {}, "trees": {}}
    for path in sorted(out.glob("results*.json")):  # the parts of runs made side by side (--part)
        part = json.loads(path.read_text())
        results["trees"] |= part["trees"]
        for k, row in part["rows"].items():  # a row's images from every part
            merged = results["rows"].setdefault(k, {**row, "images": {}, "seconds": 0})
            merged["images"] |= row["images"]
            merged["seconds"] += row.get("seconds", 0)
        results.setdefault("runs", {})[path.name] = part.get("args")
    rows = summarise(results, args.timesteps)
    atomic_write_text(out / "thousands.json", json.dumps({"timesteps": args.timesteps, "trees": results["trees"],
                                                           "runs": results.get("runs"), "rows": rows}, indent=2))  # fmt: skip
    path = plot(rows, args.timesteps, out / "thousands.png")
    if show:
        print(table(rows))
        print(path, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=30, help="test images per task (the cheaper rows)")
    ap.add_argument(
        "--n-ref", default="80=30,800=8,6400=3", help="images of the exhaustive reference per task"
    )
    ap.add_argument("--timesteps", type=int, default=5)
    ap.add_argument("--sizes", default="6400,800,80")
    ap.add_argument("--seed", type=int, default=0, help="noise (and the 80-way subset)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument(
        "--dtype", default="bf16", help="U-Net dtype (bf16: about 2x faster than fp32 on this CPU)"
    )
    ap.add_argument("--chunk", type=int, default=10)
    ap.add_argument("--out", default="runs/thousands")
    ap.add_argument("--table", action="store_true", help="only summarise results.json")
    ap.add_argument("--fit-noise", action="store_true", help="fit noise.safetensors in --out and stop")
    ap.add_argument("--n-train", type=int, default=16, help="training scenes the noise is fitted on")
    ap.add_argument("--noise-steps", type=int, default=8)
    ap.add_argument("--noise-batch", type=int, default=4)
    ap.add_argument(
        "--ref-start", type=int, default=0, help="the reference's images start here (a --part beside another)"
    )
    ap.add_argument(
        "--rows", default="", help="only the cheaper rows whose name contains one of these (comma-separated)"
    )
    ap.add_argument(
        "--part", default="", help="write results-PART.json: a second run beside the first (disjoint rows)"
    )
    ap.add_argument("--quick", action="store_true", help="2 images, 1 t, no 6,400-way reference")
    args = ap.parse_args()
    if args.quick:
        args.n, args.n_ref, args.timesteps = 2, "80=2,800=1,6400=0", 1
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.table:
        return report(args)
    if args.fit_noise:
        fit_noise_file(args)
        return
    torch.set_num_threads(1)
    b = Bench(args)
    b.results["args"] = vars(args)
    n_ref = {int(k): int(v) for k, v in (p.split("=") for p in args.n_ref.split(","))}
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:  # cheap rows first (all sizes), then the references
        for name in b.rows(size):
            if not name.startswith("exhaustive") and (
                not args.rows or any(w in name for w in args.rows.split(","))
            ):
                b.measure(size, name, args.n, args.chunk)
        report(args, show=False)
    for size in sorted(
        sizes, key=lambda s: (s != 80, s != 6400)
    ):  # 80 (cheap), then the target's 6,400, then 800
        b.measure(size, f"exhaustive {args.timesteps} t", n_ref.get(size, 0), 1, args.ref_start)
        report(args, show=False)
    report(args)


if __name__ == "__main__":
    main()

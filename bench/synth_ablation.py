"""Diversity-trick ablation (issue 7, Shipard et al.): a timm classifier trained only on synthetic images.

    .venv/bin/python bench/synth_ablation.py [--per-class 100] [--steps 10] [--seeds 0,1,2] [--out runs/synth-ablation]

One set per trick configuration (none, template, domain, guidance, all), the same image budget each, generated
by the shipped `fmnist-scenes-text` model with `diffdisc.tasks.synth.generate`; a ResNet-18 (timm, from
scratch) trained on each with `train_classifier` (model selection on synthetic validation images only), once
per seed; tested on the 1,000 shipped real Fashion-MNIST test images shown as one-item coloured scenes — the
same images the zero-shot rows of docs/results.md use. Everything is resumable: rerun to continue.
`--real-reference` adds a row trained on as many real train images (same colouring): the recipe's ceiling here.
Prints a markdown table (mean ± sd over seeds, and the bootstrap 95 % interval of the pooled predictions).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from diffdisc.backbones.registry import create_backbone
from diffdisc.datasets.export import export_shipped_test
from diffdisc.scoring.match_metrics import bootstrap_ci
from diffdisc.tasks.synth import SynthConfig, generate
from diffdisc.tasks.synth_train import ClassifierConfig, evaluate_classifier, train_classifier

SETS = {"none": (), "template": ("template",), "domain": ("domain",), "guidance": ("guidance",),
        "all": ("template", "domain", "guidance")}  # fmt: skip


def real_train_scenes(out: Path, per_class: int) -> None:
    """`per_class` real Fashion-MNIST *train* images per class as one-item coloured scenes (Debian dataset)."""
    from diffdisc.datasets.export import export_imagefolder
    from diffdisc.datasets.fashion_mnist import CLASS_NAMES, load_fashion_mnist, stratified_indices
    from diffdisc.datasets.scenes import single_scenes

    images, labels = load_fashion_mnist("train")
    keep = stratified_indices(labels, per_class, 0)
    export_imagefolder(single_scenes(images[keep], labels[keep], seed=1).images, labels[keep], CLASS_NAMES, out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="fmnist-scenes-text")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--scheduler", default="dpm")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--classifier", default="resnet18")
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--real-reference", action="store_true",
                    help="also train on the same number of REAL train images (same colouring): the synthetic-to-real gap")
    ap.add_argument("--out", type=Path, default=Path("runs/synth-ablation"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    test = args.out / "real-test"
    if not (test / "t-shirt").is_dir():
        export_shipped_test(test, scenes=True)
    bb = create_backbone(args.model)
    classes = list(bb.info.class_names)
    results = {}
    names = args.sets.split(",") + (["real (reference)"] if args.real_reference else [])
    for name in names:
        data = args.out / "sets" / name.split()[0]
        if name in SETS:
            cfg = SynthConfig(per_class=args.per_class, tricks=SETS[name], steps=args.steps, scheduler=args.scheduler)
            generate(bb, classes, cfg, out=data, progress=lambda d, n, name=name: print(f"[{name}] {d}/{n} images", flush=True))
        elif not (data / "bag").is_dir():
            real_train_scenes(data, args.per_class)
        for seed in map(int, args.seeds.split(",")):
            run = args.out / "clf" / f"{name.split()[0]}-s{seed}"
            done = run / "test.json"
            if not done.is_file():
                ccfg = ClassifierConfig(model=args.classifier, epochs=args.epochs, seed=seed)
                train_classifier(data, ccfg, out=run, log=lambda m, name=name, seed=seed: print(f"[{name} s{seed}] {m}", flush=True))
                done.write_text(json.dumps(evaluate_classifier(run, test, per_image=True)))
            results.setdefault(name, []).append(json.loads(done.read_text()))
    print(f"\n{args.classifier} from scratch on {args.per_class}/class synthetic images ({args.model}, "
          f"{args.scheduler} {args.steps} steps), tested on 1,000 real images; seeds {args.seeds}\n")  # fmt: skip
    print("| tricks | real test top-1, mean ± sd | pooled bootstrap 95 % | val acc (synthetic) |\n|---|---|---|---|")
    for name, rows in results.items():
        accs = np.array([r["accuracy"] for r in rows])
        correct = np.concatenate([np.array(r["correct"], dtype=float) for r in rows])
        lo, hi = bootstrap_ci(correct)
        val = np.mean([json.loads((args.out / "clf" / f"{name.split()[0]}-s{s}" / "classifier.json").read_text())["val_acc_synthetic"]
                       for s in map(int, args.seeds.split(","))])  # fmt: skip
        print(f"| {name} | {accs.mean():.1%} ± {accs.std():.1%} | [{lo:.1%}, {hi:.1%}] | {val:.1%} |")  # fmt: skip


if __name__ == "__main__":
    main()

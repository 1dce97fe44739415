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
from pathlib import Path

import torch

from diffdisc.backbones.registry import create_backbone
from diffdisc.datasets.export import export_shipped_test
from diffdisc.tasks.claims.diversity import SETS, set_summary, synth_config, trained_and_tested
from diffdisc.tasks.synth import generate
from diffdisc.tasks.synth_train import ClassifierConfig


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
            cfg = synth_config(name, args.per_class, args.steps, args.scheduler)
            generate(bb, classes, cfg, out=data, progress=lambda d, n, name=name: print(f"[{name}] {d}/{n} images", flush=True))
        elif not (data / "bag").is_dir():
            real_train_scenes(data, args.per_class)
        for seed in map(int, args.seeds.split(",")):
            run = args.out / "clf" / f"{name.split()[0]}-s{seed}"
            ccfg = ClassifierConfig(model=args.classifier, epochs=args.epochs, seed=seed)
            log = lambda m, name=name, seed=seed: print(f"[{name} s{seed}] {m}", flush=True)  # noqa: E731
            results.setdefault(name, []).append((trained_and_tested(data, test, run, ccfg, log=log), run))
    print(f"\n{args.classifier} from scratch on {args.per_class}/class synthetic images ({args.model}, "
          f"{args.scheduler} {args.steps} steps), tested on 1,000 real images; seeds {args.seeds}\n")  # fmt: skip
    print("| tricks | real test top-1, mean ± sd | pooled bootstrap 95 % | val acc (synthetic) |\n|---|---|---|---|")
    for name, done in results.items():
        r = set_summary([e for e, _ in done], [run for _, run in done])  # points
        lo, hi = r["ci95"]
        print(f"| {name} | {r['accuracy']:.1f}% ± {r['sd']:.1f}% | [{lo:.1f}%, {hi:.1f}%] | {r['val_acc_synthetic']:.1f}% |")


if __name__ == "__main__":
    main()

"""What `diffdisc doctor` and `diffdisc models` report: installation checks and the shipped models."""

from __future__ import annotations

from ..errors import DiffdiscError

PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "accelerate", "open_clip_torch", "safetensors",
            "torchmetrics", "peft", "timm")  # fmt: skip


def installation_checks() -> list[tuple[str, str, bool]]:
    """(name, what was found, ok) for library versions, the device, the Fashion-MNIST files and every shipped
    model loading. Missing Fashion-MNIST files are not a failure: the shipped 1,000 test images still work."""
    import importlib.metadata as md

    import torch

    from ..backbones import registry
    from ..datasets.fashion_mnist import DEFAULT_DIR, FILES, INSTALL_HINT

    checks = []
    for pkg in PACKAGES:
        try:
            checks.append((pkg, md.version(pkg), True))
        except md.PackageNotFoundError:
            checks.append((pkg, "MISSING", False))
    dev = f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    checks.append(("device", dev, True))
    missing = [f for fs in FILES.values() for f in fs if not (DEFAULT_DIR / f).is_file()]
    checks.append(("fashion-mnist", f"{DEFAULT_DIR}" if not missing else
                   f"not found ({INSTALL_HINT}); the shipped 1,000 test images still work", True))  # fmt: skip
    for name in registry.list_backbones():
        try:
            bb = registry.create_backbone(name)
            checks.append((name, f"loads ({bb.info.family}, {bb.info.metadata.get('steps', '?')} steps)", True))
        except DiffdiscError as e:
            checks.append((name, f"FAILS: {e}", False))
    return checks


def shipped_models() -> list[dict]:
    """{name, recipe, steps} of every shipped model, from its diffdisc.json (steps None when not recorded)."""
    from ..backbones.base import read_metadata
    from ..backbones.registry import list_backbones, shipped_models_dir

    rows = []
    for n in list_backbones():
        meta = read_metadata(shipped_models_dir() / n)
        rows.append({"name": n, "recipe": meta.get("recipe", ""), "steps": meta.get("steps")})
    return rows

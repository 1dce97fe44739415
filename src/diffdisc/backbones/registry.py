"""`create_backbone(name_or_path)` / `list_backbones()`, timm-style.

Shipped models live in the package (`world/assets/models/<name>`); anything else is a local diffusers
directory or a hub id already in the local cache (no downloads: the machines this runs on are offline).
"""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path

from ..errors import DiffdiscError
from .base import Backbone, read_config


def shipped_models_dir() -> Path:
    return Path(str(resources.files("diffdisc") / "world" / "assets" / "models"))


def list_backbones(pattern: str = "*") -> list[str]:
    """Names of the shipped models (those whose weights are present)."""
    import fnmatch

    root = shipped_models_dir()
    if not root.is_dir():
        return []
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.rglob("*.safetensors")))
    return [n for n in names if fnmatch.fnmatch(n, pattern)]


def resolve_model_dir(name_or_path: str | os.PathLike) -> Path:
    """Shipped name, directory or cached hub id -> model directory. A `diffdisc train --out DIR` directory
    (train_config.json beside model/) stands for its export DIR/model, said in one line on stderr."""
    s = str(name_or_path)
    shipped = shipped_models_dir() / s
    if "/" not in s and shipped.is_dir():
        return shipped
    p = Path(s).expanduser()
    if p.is_dir() and (p / "model").is_dir() and (p / "train_config.json").is_file() and not _is_model_dir(p):
        logging.getLogger("diffdisc").warning("%s is a training directory: using its exported model %s", p, p / "model")
        return p / "model"
    if p.is_dir():
        return p
    if p.exists():
        raise DiffdiscError(f"model path {s} is a file; give a diffusers model directory")
    try:  # a hub id already in the local cache
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(s, local_files_only=True))
    except Exception:
        known = ", ".join(list_backbones()) or "none installed"
        raise DiffdiscError(f"unknown model {s!r}: not a shipped model ({known}), a directory, or a cached hub id") from None


def _is_model_dir(root: Path) -> bool:
    try:
        detect_family(root)
    except DiffdiscError:
        return False
    return True


def detect_family(root: Path) -> str:
    """'sd' (text-conditional, SD layout), 'classcond' (UNet2DModel with class embeddings, or DiT) or 'clip'
    (an open_clip `local-dir:` model: the contrastive baseline)."""
    if (root / "open_clip_config.json").is_file():
        return "clip"
    if (root / "unet").is_dir() and (root / "text_encoder").is_dir():
        return "sd"
    if (root / "transformer").is_dir():
        return "classcond"
    cfg = root / "unet" / "config.json" if (root / "unet").is_dir() else root / "config.json"
    if cfg.is_file():
        cls = read_config(cfg).get("_class_name", "")
        if cls == "UNet2DModel":
            return "classcond"
        if cls == "UNet2DConditionModel":
            return "sd"
    hint = f"; did you mean {root / 'model'}?" if (root / "model").is_dir() else ""
    if not hint and (root / "train_config.json").is_file():
        hint = "; it is a training directory with no export yet (model/ appears at the first checkpoint)"
    raise DiffdiscError(
        f"{root} is not a recognised model directory (expected unet/+text_encoder/ (Stable Diffusion), "
        f"unet/ or config.json of a UNet2DModel, transformer/ (DiT), or open_clip_config.json (open_clip)){hint}"
    )


def create_backbone(name_or_path: str | os.PathLike, device: str | None = None) -> Backbone:
    """Load a backbone by shipped name, local directory, or cached hub id."""
    root = resolve_model_dir(name_or_path)
    family = detect_family(root)
    name = str(name_or_path) if (shipped_models_dir() / str(name_or_path)).is_dir() else root.name
    try:
        if family == "sd":
            from .sd import SDBackbone

            bb = SDBackbone.from_pretrained(root, name=name)
        elif family == "clip":
            from .contrastive import ContrastiveModel

            bb = ContrastiveModel.from_pretrained(root, name=name)
        else:
            from .classcond import ClassCondBackbone

            bb = ClassCondBackbone.from_pretrained(root, name=name)
    except DiffdiscError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise DiffdiscError(f"cannot load model from {root}: {str(e).splitlines()[0]}") from e
    return bb.to(device) if device else bb

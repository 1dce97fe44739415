"""`create_backbone(name_or_path)` / `list_backbones()`, timm-style.

Shipped models live in the package (`assets/models/<name>`); anything else is a local diffusers
directory or a hub id already in the local cache (no downloads: the machines this runs on are offline).
Which family loads a directory is up to the families registered in `families.py` (`list_families()`).
"""

from __future__ import annotations

import logging
import os
import pkgutil
from importlib import import_module, resources
from importlib.metadata import entry_points
from pathlib import Path

from ..errors import DiffdiscError
from .base import Backbone
from .families import Family, expected_layouts, families, pipeline_class, supported_pipelines


def _discover_families() -> None:
    """Import every module of this package, and every `diffdisc.families` entry point of installed packages:
    a family module registers itself on import (`families.register_family`), so a new family is one new file
    (or one installed package) and this list is never edited. Module names are imported in sorted order, the
    order the "not a recognised model directory" message lists their layouts in."""
    for info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if info.name != "registry":
            import_module(f".{info.name}", __package__)
    for ep in entry_points(group="diffdisc.families"):
        ep.load()


_discover_families()


def shipped_models_dir() -> Path:
    return Path(str(resources.files("diffdisc") / "assets" / "models"))


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


def list_families() -> list[str]:
    """Registered family names, in the order `create_backbone` asks them to claim a directory."""
    return [f.name for f in families()]


def detect_family(root: Path) -> str:
    """Name of the family that claims `root` ('sd', 'classcond' (UNet2DModel or DiT), 'clip' (open_clip), ...)."""
    return _claim(root).name


def _claim(root: Path) -> Family:
    for fam in families():
        if fam.detect(root):
            return fam
    pipe = pipeline_class(root)
    if pipe:
        raise DiffdiscError(f"{root} holds a {pipe}, which diffdisc does not score; supported pipelines: "
                            f"{', '.join(supported_pipelines())}")  # fmt: skip
    hint = f"; did you mean {root / 'model'}?" if (root / "model").is_dir() else ""
    if not hint and (root / "train_config.json").is_file():
        hint = "; it is a training directory with no export yet (model/ appears at the first checkpoint)"
    raise DiffdiscError(f"{root} is not a recognised model directory (expected {expected_layouts()}){hint}")


def create_backbone(name_or_path: str | os.PathLike, device: str | None = None, *, weights_dtype: str = "auto",
                    vae_dtype: str | None = None, quantize: str = "none", offload: str = "none",
                    device_map: str | None = None, condition_cache: str | os.PathLike | None = "auto",
                    **options) -> Backbone:  # fmt: skip
    """Load a backbone by shipped name, local directory, or cached hub id; `options` go to the family's
    loader (SD3's `no_t5`, FLUX's `guidance`), which refuses the ones it does not take.

    Loading (`loading.LoadSpec`): `weights_dtype` auto | fp32 | bf16 | fp16 (auto: bf16 on an accelerator that
    has it, fp16 on one without, fp32 on the CPU), `vae_dtype` (None: the VAE's config decides), `quantize`
    none | int8 | nf4 | fp8, `offload` none | model | group, `device_map` "balanced" (several GPUs).
    `condition_cache`: "auto" (encoded prompts of models with large text encoders kept in
    ~/.cache/diffdisc/conditions), a directory, or None / "off" (`condcache`).
    """
    from .condcache import store_for
    from .loading import LoadSpec, describe, held_modules, place, quiet_backends

    quiet_backends()
    root = resolve_model_dir(name_or_path)
    family = _claim(root)
    name = str(name_or_path) if (shipped_models_dir() / str(name_or_path)).is_dir() else root.name
    if device is None and device_map:
        device = "cuda:0"  # the split denoiser's inputs, the VAE and the schedule live on the first GPU
    if not family.loading:  # auto means what the family always loaded in; anything asked for is refused
        asked = {"--weights-dtype": weights_dtype not in ("auto", "fp32"), "--vae-dtype": vae_dtype is not None,
                 "--quantize": quantize != "none", "--offload": offload != "none", "--device-map": device_map is not None}  # fmt: skip
        flag = next((f for f, given in asked.items() if given), None)
        if flag:
            raise DiffdiscError(f"{family.name} models take no {flag} (they load their own weights in fp32)")
        spec = LoadSpec()
    else:
        spec = LoadSpec.resolve(device, weights_dtype, vae_dtype, quantize, offload, device_map)
    try:
        bb = family.load(root, name=name, spec=spec, **options) if family.loading else family.load(root, name=name, **options)
    except DiffdiscError:
        raise
    except (OSError, ValueError, KeyError) as e:
        raise DiffdiscError(f"cannot load model from {root}: {str(e).splitlines()[0]}") from e
    if family.loading:
        mark_loading(bb, spec)
        bb.held = held_modules(bb, spec)
    bb = bb.to(device) if device else bb
    if spec.offload != "none":
        place(bb, spec, device)
    if family.loading:
        bb.info.metadata["loading"] = describe(spec)
    store = store_for(bb, condition_cache)
    if store is not None:
        bb.condition_store = store
    return bb


def mark_loading(bb: Backbone, spec) -> None:
    """The weights dtype and quantization change every score: they join the fingerprint (`LoadSpec.tag`), so a bf16
    run never resumes as fp32, and the feature and condition caches keep them apart."""
    import dataclasses

    tag = spec.tag()
    if tag:
        text = ",".join(f"{k}={v}" for k, v in tag.items())
        bb.info = dataclasses.replace(bb.info, fingerprint=f"{bb.info.fingerprint}@{text}")

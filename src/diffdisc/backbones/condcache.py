"""Encoded prompts on disk, reused across runs: a second run on the same candidates runs no text encoder.

1,000 ImageNet class prompts through T5-XXL on the CPU take minutes each run, and every run of the same model
with the same options makes the same rows. `Backbone.conditions` asks the store before encoding and gives it
what it encoded. Layout:

    ROOT/<sha of the model fingerprint>/<sha of the candidate>.safetensors     (one condition row each)

The key is the model fingerprint, which already holds the loader options that change conditions (image
size, `--no-t5`, the weights dtype, quantization, a LoRA: `PipelineBackbone.mark_options`, `loading.LoadSpec.tag`,
`lora.mark_lora`), and the candidate's text. A row is stored in bf16 or fp16 when that holds it exactly
(conditions of a bf16 encoder), else in fp32; files are written whole and renamed into place, so concurrent
ranks never read half a file, and a file that does not read back is ignored (encoded again and rewritten).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

FORMAT = "diffdisc-conditions-1"
# `auto`: a model whose text encoders together have fewer parameters than this encodes faster than it reads
# files back (every shipped and test model): no store.
AUTO_MIN_ENCODER_PARAMS = 50_000_000


def default_dir() -> Path:
    """$XDG_CACHE_HOME/diffdisc/conditions, else ~/.cache/diffdisc/conditions (beside the feature cache)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or "")
    return (base if base.is_absolute() else Path.home() / ".cache") / "diffdisc" / "conditions"


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()[:32]


def _key(candidate) -> str:
    """The text a candidate is stored under; a tuple (the null condition's key) never equals a prompt's."""
    return "\x01" + "\x00".join(map(str, candidate)) if isinstance(candidate, tuple) else str(candidate)


class ConditionStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        self.hits = self.writes = 0

    def _path(self, fingerprint: str, candidate) -> Path:
        return self.root / _sha(fingerprint) / f"{_sha(_key(candidate))}.safetensors"

    def get(self, fingerprint: str, candidates: list) -> dict:
        """{candidate: row (float32, CPU)} for the candidates stored under `fingerprint`."""
        from safetensors import SafetensorError, safe_open

        out = {}
        for c in candidates:
            p = self._path(fingerprint, c)
            if not p.is_file():
                continue
            try:
                with safe_open(str(p), framework="pt") as f:
                    meta = f.metadata() or {}
                    if meta.get("candidate") != _key(c) or meta.get("fingerprint") != fingerprint:
                        continue  # a hash collision or another format: encode it
                    out[c] = f.get_tensor("row").float()
            except (OSError, SafetensorError, KeyError):
                continue
        self.hits += len(out)
        return out

    def put(self, fingerprint: str, rows: dict) -> None:
        """Store {candidate: row}; an unwritable store is skipped (the run goes on, it just re-encodes next time)."""
        from safetensors.torch import save_file

        for c, row in rows.items():
            p = self._path(fingerprint, c)
            row = row.detach().float().cpu().contiguous()
            small = next((row.to(d) for d in (torch.bfloat16, torch.float16) if torch.equal(row.to(d).float(), row)), row)
            tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                index = p.parent / "model.json"
                if not index.is_file():
                    index.write_text(json.dumps({"fingerprint": fingerprint, "format": FORMAT}))
                save_file({"row": small}, str(tmp), metadata={"candidate": _key(c), "fingerprint": fingerprint,
                                                               "format": FORMAT})  # fmt: skip
                os.replace(tmp, p)
                self.writes += 1
            except OSError:
                tmp.unlink(missing_ok=True)
                return


def encoder_parameters(backbone) -> int:
    """Parameters of the backbone's text encoders (the modules its conditions come from)."""
    names = backbone.offloaded or (("text_encoder",) if getattr(backbone, "text_encoder", None) is not None else ())
    return sum(p.numel() for n in names if getattr(backbone, n, None) is not None for p in getattr(backbone, n).parameters())


def store_for(backbone, setting) -> ConditionStore | None:
    """The store `setting` asks for: None / "off": none; "auto": the default folder for a text model whose
    encoders have AUTO_MIN_ENCODER_PARAMS or more; a path: that folder, for any text model."""
    info = getattr(backbone, "info", None)  # a registered family may load any module
    if setting is None or str(setting) == "off" or info is None or info.conditioning != "text":
        return None
    if info.fingerprint == "in-memory" or getattr(backbone, "_condition_batch", None) is None:
        return None
    if str(setting) == "auto":
        return ConditionStore(default_dir()) if encoder_parameters(backbone) >= AUTO_MIN_ENCODER_PARAMS else None
    return ConditionStore(setting)

"""Synthetic training sets from class names (Shipard et al., "Diversity is Definitely Needed").

`generate` plans every image up front — class, prompt, seed, guidance, trick — from the run seed alone, then
renders the plan in batches with classifier-free guidance and a diffusers scheduler. Each image is written
under a temporary name and renamed, and its metadata row is appended only after that, so a killed run (or a
full disk) never counts a half-written image; rerunning the same command renders only what is missing.

Diversity tricks (each switchable):
  template   - templated prompts instead of the bare class name ("{a} {}" sets; `--templates`);
  domain     - multi-domain prompts "{a} {domain} {}" over a domain list (the embedded world knows colours);
  guidance   - guidance scale drawn uniformly from a range **per image** (the original code drew one per run);
and `merge` combines sets generated with different tricks into one ImageFolder.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..backbones.capabilities import Capability, require
from ..config import SPEED_ONLY, ConfigMixin
from ..data.templates import fill
from ..datasets.export import folder_name, png_bytes
from ..errors import DiffdiscError
from ..generation.sampler import sample
from ..results.synth import CLASSES_JSON, METADATA, SYNTH_JSON, SynthResult, done_files, metadata_rows
from ..runs.io import append_text, repair_jsonl
from ..runs.io import atomic_write_bytes as write_atomic
from ..runs.store import RunStore
from ..scoring.engine import derive_seed

TRICKS = ("template", "domain", "guidance")
DEFAULT_TEMPLATES = ("{a} {}", "an image of {a} {}", "{a} {} on black")


@dataclass(frozen=True)
class SynthConfig(ConfigMixin):
    """How `generate` renders a set: `per_class` images per class with the diversity `tricks`, fixed
    `guidance` or a per-image draw from `guidance_range`, `steps` of `scheduler`, all from `seed`;
    `batch_size` images per call (speed only: every image's noise comes from its own seed)."""

    config_label = "synth config"

    per_class: int = 100
    tricks: tuple[str, ...] = ()
    guidance: float = 3.0  # used when the `guidance` trick is off
    guidance_range: tuple[float, float] = (1.5, 6.0)
    steps: int = 25
    scheduler: str = "ddim"
    seed: int = 0
    batch_size: int = field(default=64, metadata=SPEED_ONLY)
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    domains: tuple[str, ...] = ()  # default: the model's `domains` metadata, else the embedded palette

    def __post_init__(self):
        bad = [t for t in self.tricks if t not in TRICKS]
        if bad:
            raise DiffdiscError(f"unknown trick {bad[0]!r} (known: {', '.join(TRICKS)})")
        if self.per_class < 1:
            raise DiffdiscError(f"images per class must be >= 1, got {self.per_class}")
        lo, hi = self.guidance_range
        if lo > hi:
            raise DiffdiscError(f"guidance range is reversed: {lo} > {hi}")
        if lo < 0 or self.guidance < 0:
            raise DiffdiscError("guidance scales must be >= 0")


RUNTIME_KEYS = tuple(sorted(SynthConfig.speed_only_keys("")))  # what a resume may change ("batch_size")


@dataclass
class Job:
    index: int
    class_id: int
    class_name: str
    condition: str | int  # prompt (text models) or class id (class-conditional)
    seed: int
    guidance: float
    tricks: list[str] = field(default_factory=list)

    @property
    def file(self) -> str:
        return f"{folder_name(self.class_name)}/{self.index:06d}.png"


def plan(backbone, classes: list[str], cfg: SynthConfig) -> list[Job]:
    """Every image's condition, seed and guidance, from (run seed, class, k): independent of batching."""
    text = backbone.info.conditioning == "text"
    if not text and {"template", "domain"} & set(cfg.tricks):
        raise DiffdiscError("prompt tricks (template, domain) need a text-conditional model")
    domains = cfg.domains or tuple(backbone.info.metadata.get("domains", ())) or _palette()
    jobs = []
    for c, name in enumerate(classes):
        cond_id = None if text else backbone.class_id(name)
        for k in range(cfg.per_class):
            rng = random.Random(derive_seed(cfg.seed, name, k, "synth"))
            tpl = rng.choice(cfg.templates) if "template" in cfg.tricks else "{a} {}"
            noun = f"{rng.choice(domains)} {name}" if "domain" in cfg.tricks else name
            prompt = fill(tpl, noun)  # the article follows the domain word: "an orange sneaker"
            g = rng.uniform(*cfg.guidance_range) if "guidance" in cfg.tricks else cfg.guidance
            jobs.append(Job(c * cfg.per_class + k, c, name, prompt if text else cond_id, derive_seed(cfg.seed, name, k, "noise"),
                            round(g, 4), list(cfg.tricks)))  # fmt: skip
    return jobs


def _palette() -> tuple[str, ...]:
    from ..datasets.scenes import COLOURS

    return COLOURS


def generate(backbone, classes: list[str], cfg: SynthConfig, *, out: str | Path,
             progress: Callable[[int, int], None] | None = None) -> SynthResult:  # fmt: skip
    """Render the plan into `out` (ImageFolder + classes.json + metadata.jsonl + synth.json, and the run.json
    header); resumable. Returns the set read back, which stands for its folder as the path returned before did."""
    require(backbone, Capability.SAMPLE, "`diffdisc synth generate`")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    identity = {"model": backbone.info.name, "fingerprint": backbone.info.fingerprint, "classes": list(classes)}
    # synth.json is rewritten on every run: it follows the batch size a resume changed
    with RunStore(out, "synth", cfg, identity=identity, settings_file=SYNTH_JSON, shards=False, rewrite=True,
                  sort_keys=False, runtime_keys=(), verb="generated", hint="use another --out"):  # fmt: skip
        _render(backbone, classes, out, cfg, progress)
    return SynthResult.load(out)


def _render(backbone, classes: list[str], out: Path, cfg: SynthConfig, progress) -> None:
    """What `generate` renders while it holds the directory: the images of the plan not yet on disk."""
    write_atomic(out / CLASSES_JSON, json.dumps({folder_name(c): c for c in classes}, indent=2).encode())
    jobs = plan(backbone, classes, cfg)
    meta_path = out / METADATA
    repair_jsonl(meta_path)
    done = done_files(out)
    todo = [j for j in jobs if j.file not in done]
    if progress:
        progress(len(jobs) - len(todo), len(jobs))
    for s in range(0, len(todo), cfg.batch_size):
        batch = todo[s : s + cfg.batch_size]
        conds = backbone.conditions([j.condition for j in batch])
        noise_g = torch.Generator().manual_seed(batch[0].seed)  # per-batch stream; per-image noise below
        imgs = sample(backbone, conds, guidance=torch.tensor([j.guidance for j in batch]), steps=cfg.steps,
                      scheduler=cfg.scheduler, generator=noise_g, init_noise=_init_noise(backbone, batch))  # fmt: skip
        u8 = ((imgs.cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        rows = []
        for j, a in zip(batch, u8, strict=True):
            try:
                write_atomic(out / j.file, png_bytes(a[..., 0] if a.shape[-1] == 1 else a))
            except OSError as e:
                raise DiffdiscError(f"cannot write {out / j.file}: {e.strerror or e}; images already written are "
                                    "kept, rerun the same command to continue") from e  # fmt: skip
            rows.append(json.dumps({"file": j.file, "class": j.class_name, "class_id": j.class_id,
                                    "prompt": j.condition if isinstance(j.condition, str) else None, "seed": j.seed,
                                    "guidance": j.guidance, "tricks": j.tricks}) + "\n")  # fmt: skip
        append_text(meta_path, "".join(rows), what="image metadata")
        if progress:
            progress(len(jobs) - len(todo) + s + len(batch), len(jobs))


def _init_noise(backbone, batch: list[Job]) -> torch.Tensor:
    """x_T per image from its own seed: an image does not depend on which batch it was rendered in."""
    shape = backbone.encode(torch.zeros(1, backbone.info.image_channels, backbone.info.image_size, backbone.info.image_size)).shape[1:]
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(j.seed)) for j in batch])


def merge(sources: list[str | Path], out: str | Path) -> Path:
    """One ImageFolder from several generated sets (files prefixed by their set; metadata concatenated)."""
    import shutil

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    classes: dict[str, str] = {}
    rows = []
    for n, src in enumerate(map(Path, sources)):
        if not (src / METADATA).is_file():
            raise DiffdiscError(f"{src} is not a generated set (no metadata.jsonl)")
        classes.update(json.loads((src / CLASSES_JSON).read_text()))
        for row in metadata_rows(src):
            if not (src / row["file"]).is_file():
                continue
            folder, name = row["file"].split("/")
            new = f"{folder}/s{n}-{name}"
            (out / folder).mkdir(exist_ok=True)
            shutil.copyfile(src / row["file"], out / new)
            rows.append(json.dumps({**row, "file": new, "source": str(src)}) + "\n")
    write_atomic(out / CLASSES_JSON, json.dumps(classes, indent=2).encode())
    write_atomic(out / METADATA, "".join(rows).encode())
    return out

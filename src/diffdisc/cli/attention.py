"""`diffdisc attention tune | heatmap`: few-shot LoRA for the Discffusion attention scorer, and token heat maps."""

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import DiffdiscError
from . import group
from .options import (
    Device,
    LoadOptions,
    json_flag,
    load,
    quiet_flag,
)

attention_app = group("attention", "Discffusion cross- and joint-attention scoring: few-shot LoRA tuning and heat maps.")
TextModel = Annotated[str, typer.Option(help="Text-conditional diffusion model.")]


@attention_app.command("tune", epilog="Example: diffdisc attention tune --model fmnist-scenes-text --shots 32 "
                                      "--probe binding --probe spatial --out runs/lora-32")
def attention_tune(
    out: Annotated[Path, typer.Option(help="Adapter directory to write (safetensors + adapter_config.json).")],
    model: TextModel = "fmnist-scenes-text",
    shots: Annotated[int, typer.Option(help="Training groups (K).")] = 32,
    probe: Annotated[list[str] | None, typer.Option(help="Embedded probes to draw training groups from (Fashion-MNIST train items; evaluation uses test items).")] = None,
    groups: Annotated[Path | None, typer.Option(help="Or: your groups.jsonl / Winoground dir.")] = None,
    seed: Annotated[int, typer.Option(help="Training seed; embedded training groups use seed 1000+seed.")] = 0,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 4,
    margin: Annotated[float, typer.Option(help="Hinge margin.")] = 0.1,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    epochs: Annotated[int, typer.Option(help="Passes over the K groups.")] = 1,
    no_bias: Annotated[bool, typer.Option("--no-bias", help="Attention score only (no denoising bias).")] = False,
    device: Device = None,
    loading: LoadOptions = LoadOptions(),
    json_out: json_flag("Print {adapter, shots} as JSON only.") = False,
    quiet: quiet_flag("No per-step loss lines.") = False,
):
    """Few-shot prompt learning: LoRA on the U-Net's attention, hinge loss on matching vs other captions."""
    from ..progress import console
    from ..tasks.attention import LoraConfig, tune
    from ..tasks.few_shot import few_shot_groups

    train = few_shot_groups(shots, groups, probe, seed)
    bb = load(model, device, **loading.kwargs())
    show = not (quiet or json_out)
    cfg = LoraConfig(rank=rank, margin=margin, lr=lr, epochs=epochs, bias=not no_bias, seed=seed)
    path = tune(bb, train, cfg, out=out,
                progress=lambda s, n, loss: console.print(f"step {s}/{n} loss {loss:.4f}") if show and (s % 8 == 0 or s == n) else None)  # fmt: skip
    typer.echo(json.dumps({"adapter": str(path), "shots": len(train)}) if json_out else f"adapter saved to {path}")


@attention_app.command("heatmap", epilog="Example: diffdisc attention heatmap --image x.png --caption 'a red bag'")
def attention_heatmap(
    image: Annotated[Path, typer.Option(help="Image file.")],
    caption: Annotated[str, typer.Option(help="Caption whose tokens are mapped.")],
    model: TextModel = "fmnist-scenes-text",
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("heatmap.png"),
    t: Annotated[int, typer.Option(help="Timestep.")] = 300,
    lora: Annotated[Path | None, typer.Option(help="LoRA adapter dir.")] = None,
):
    """Per-token cross-attention heat maps over the image (last down/mid/up cross-attention layers averaged; SD3 / FLUX: every joint-attention block)."""
    from ..tasks.attention import attention_heatmaps

    bb = load(model, None, lora)
    if not 0 <= t < bb.num_train_timesteps:
        raise DiffdiscError(f"timestep {t} out of range 0..{bb.num_train_timesteps - 1}")
    typer.echo(f"wrote {attention_heatmaps(bb, image, caption, out, t=t)}")

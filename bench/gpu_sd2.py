"""GPU check (issue 8): U-Net calls/s of the scoring engine on an SD-2-sized U-Net vs raw forward loops.

    python bench/gpu_sd2.py [--batch 32] [--items 1024] [--size 64]

The U-Net has stable-diffusion-2-base's config (865M params, random weights: no hub access); latents
4x64x64 (512 px) and 77 text tokens of width 1024. Baselines, all bf16 at the same batch, same process:
raw autocast loop, raw compiled loop (fp32 weights + autocast, `torch.compile`), raw pure-bf16 weights.
Engine runs use the same U-Net through `ScoringEngine` (noise bank, indexing, error reduction included).
Prints ratios; needs a CUDA device.
"""

from __future__ import annotations

import argparse
import time

import torch

SD2_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, use_linear_projection=True,
)  # fmt: skip


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats: int = 3) -> float:
    fn()
    _sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffdisc.backbones.sd import SDBackbone
    from diffdisc.scoring.config import ScoreConfig
    from diffdisc.scoring.engine import ScoringEngine, Work
    from diffdisc.training.tokenizer import build_word_tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--items", type=int, default=1024)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny U-Net on the CPU: checks the script runs")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = torch.device("cpu" if args.smoke else "cuda")
    torch.manual_seed(0)
    cfg = {**SD2_UNET, "sample_size": args.size}
    if args.smoke:
        cfg.update(block_out_channels=(32, 32, 32, 32), attention_head_dim=(2, 2, 2, 2), norm_num_groups=8)
    unet = UNet2DConditionModel(**cfg)
    tok = build_word_tokenizer([f"class{i}" for i in range(10)] + ["a", "photo", "of"], max_length=77)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=1024, num_hidden_layers=1,
                                        num_attention_heads=16, intermediate_size=1024, max_position_embeddings=77))  # fmt: skip
    sched = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    bb = SDBackbone(unet, text, tok, sched, name="sd2-random").eval().requires_grad_(False).to(dev)
    params = sum(p.numel() for p in unet.parameters()) / 1e6
    B, n, S = args.batch, args.items, args.size
    name = "cpu (smoke)" if args.smoke else torch.cuda.get_device_name()
    print(f"device {name}; U-Net {params:.0f}M params, latents 4x{S}x{S}, batch {B}, {n} items")

    conds = bb.conditions([f"a photo of a class{i}" for i in range(10)])
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn((n + 9) // 10, 4, S, S, generator=g)
    keys = [str(i) for i in range(len(x0))]
    work = Work.from_lists(torch.arange(n) // 10, torch.arange(n) % 10, torch.randint(0, 1000, (n,), generator=g))
    xs = torch.randn(B, 4, S, S, device=dev)
    ts = torch.randint(0, 1000, (B,), device=dev)
    enc = conds[torch.arange(B) % 10].to(dev)

    def raw_loop(model, cast=True):
        def go():
            with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cast):
                for _ in range(0, n, B):
                    model(xs if cast else xs.bfloat16(), ts, encoder_hidden_states=enc if cast else enc.bfloat16())
        return go

    res = {}
    res["raw autocast bf16"] = timed(raw_loop(bb.unet))
    res["engine bf16"] = timed(lambda: ScoringEngine(bb, ScoreConfig(batch_size=B, dtype="bf16")).run(x0, keys, conds, work))
    for k, v in res.items():
        print(f"{k:30s} {n / v:8.1f} U-Net calls/s", flush=True)
    print(f"engine/raw (autocast): {res['raw autocast bf16'] / res['engine bf16']:.3f}", flush=True)
    if args.no_compile:
        return
    compiled = torch.compile(bb.unet, dynamic=False)
    res["raw autocast bf16 compiled"] = timed(raw_loop(compiled))
    eng_c = ScoringEngine(bb, ScoreConfig(batch_size=B, dtype="bf16", compile=True))
    res["engine bf16 compiled"] = timed(lambda: eng_c.run(x0, keys, conds, work))
    torch._dynamo.reset()
    unet16 = bb.unet.to(torch.bfloat16)
    res["raw pure-bf16 weights"] = timed(raw_loop(unet16, cast=False))
    for k, v in res.items():
        print(f"{k:30s} {n / v:8.1f} U-Net calls/s")
    r1 = res["raw autocast bf16"] / res["engine bf16"]
    r2 = res["raw autocast bf16 compiled"] / res["engine bf16 compiled"]
    r3 = res["raw autocast bf16 compiled"] / res["engine bf16"]
    print(f"engine/raw (autocast): {r1:.3f}; engine compiled / raw compiled: {r2:.3f} (target >= 0.8); "
          f"engine (not compiled) / raw compiled: {r3:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()

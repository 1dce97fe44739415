"""The whole SDXL-base pipeline at real width through diffdisc's own loader (issue 26 items 5 and 6).

    OMP_NUM_THREADS=1 .venv/bin/python bench/real_pipeline.py --dtypes fp32,bf16 --out runs/real_pipeline.json

`bench/real_size.py` measures denoisers and text encoders one at a time with diffusers' `from_pretrained`; this
measures what a user runs: a random SDXL-base pipeline (U-Net, both text encoders, VAE; configs under
`bench/configs/sdxl-base` and `bench/configs/text-encoders`) saved in the weights dtype, then per row in one fresh
process: `create_backbone(dir, weights_dtype=...)` (load s, RSS), ten prompts encoded (s), one image through the
VAE (its config's `force_upcast` keeps it fp32), the first scoring-engine batch (time from process start to the
first U-Net batch), then seconds per call of the engine (noise, add_noise, forward, error) against the raw
denoiser forward (`backbone.model_output`) on the same inputs, and the process's peak RSS (VmHWM, imports
included). Word-level tokenizers (the real vocabularies are not stored here): token ids differ, shapes do not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

START = time.perf_counter()
HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
GB = 1024**3
PROMPTS = [f"a photo of a {w}" for w in ("cat", "dog", "red car", "blue bag", "shirt", "tree", "house", "bird", "boat", "shoe")]
SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                 prediction_type="epsilon", steps_offset=1, timestep_spacing="leading")  # SDXL-base's scheduler_config  # fmt: skip


def peak_gb() -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS"):
            out[k] = round(int(v.split()[0]) * 1024 / GB, 3)
    return out


def make(root: Path, dtype_name: str) -> None:
    """Build the pipeline directly in the weights dtype (random init, no fp32 copy) and save it (safetensors)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from diffdisc.training.tokenizer import build_word_tokenizer

    torch.set_default_dtype({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name])
    read = lambda p: {k: v for k, v in json.loads((CONFIGS / p).read_text()).items() if not k.startswith("_")}  # noqa: E731
    words = sorted({w for p in PROMPTS for w in p.split()})
    parts = dict(
        unet=UNet2DConditionModel.from_config(read("sdxl-base/unet.json")),
        vae=AutoencoderKL.from_config(read("sdxl-base/vae.json")),
        text_encoder=CLIPTextModel(CLIPTextConfig(**read("text-encoders/clip-l.json"))),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**read("text-encoders/openclip-bigg.json"))),
        tokenizer=build_word_tokenizer(words, 77), tokenizer_2=build_word_tokenizer(words, 77),
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
    )  # fmt: skip
    StableDiffusionXLPipeline(**parts, add_watermarker=False).save_pretrained(root, safe_serialization=True)


def measure(root: Path, weights_dtype: str, batches: list[int], res: int) -> dict:
    import torch

    from diffdisc.backbones.registry import create_backbone
    from diffdisc.scoring.config import ScoreConfig
    from diffdisc.scoring.engine import ScoringEngine, Work

    torch.manual_seed(0)
    row: dict = {"weights_dtype": weights_dtype, "res": res, "imports_s": round(time.perf_counter() - START, 2)}
    row["rss_imports_gb"] = peak_gb()["VmRSS"]
    t = time.perf_counter()
    bb = create_backbone(root, weights_dtype=weights_dtype, condition_cache=None)
    row["load_s"] = round(time.perf_counter() - t, 2)
    row["rss_loaded_gb"] = peak_gb()["VmRSS"]
    row["params_b"] = round(sum(p.numel() for p in bb.parameters()) / 1e9, 3)
    t = time.perf_counter()
    conds = bb.conditions(PROMPTS)
    row["encode_10_prompts_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    x0 = bb.encode(torch.rand(1, 3, res, res) * 2 - 1)
    row["vae_encode_s"] = round(time.perf_counter() - t, 2)
    for b in batches:
        engine = ScoringEngine(bb, ScoreConfig(batch_size=b))
        work = Work.from_lists([0] * b, [i % len(PROMPTS) for i in range(b)], [500] * b)
        t = time.perf_counter()
        engine.run(x0, ["img"], conds, work)  # first batch: kernels, page-ins
        if "first_unet_batch_s" not in row:
            row["first_unet_batch_s"] = round(time.perf_counter() - START, 2)
        row[f"first_call_b{b}_s"] = round(time.perf_counter() - t, 2)
        eng = _time(lambda e=engine, w=work: e.run(x0, ["img"], conds, w))
        x_t = torch.randn(b, *x0.shape[1:])
        ts = torch.full((b,), 500)
        cond = conds[work.candidate]
        with torch.inference_mode():
            raw = _time(lambda x=x_t, s=ts, c=cond: bb.model_output(x, s, c))
        row[f"engine_b{b}_s"], row[f"raw_b{b}_s"] = round(eng, 3), round(raw, 3)
        row[f"raw_over_engine_b{b}"] = round(raw / eng, 3)
    row.update({f"peak_{k}": v for k, v in peak_gb().items() if k == "VmHWM"})
    return row


def _time(fn, reps: int = 2) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--work", default="runs/real_pipeline")
    ap.add_argument("--out", default="runs/real_pipeline.json")
    ap.add_argument("--role", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work)
    if args.role == "make":
        make(work / args.dtype, args.dtype)
        return
    if args.role == "measure":
        row = measure(work / args.dtype, args.dtype, [int(b) for b in args.batches.split(",")], args.res)
        print("ROW " + json.dumps(row), flush=True)
        return
    rows = []
    for dt in args.dtypes.split(","):
        if not (work / dt / "model_index.json").is_file():  # one process per step: peaks do not mix
            subprocess.run([sys.executable, __file__, "--role", "make", "--dtype", dt, "--work", str(work)], check=True)
        p = subprocess.run([sys.executable, __file__, "--role", "measure", "--dtype", dt, "--work", str(work),
                            "--batches", args.batches, "--res", str(args.res)], check=True, capture_output=True, text=True)  # fmt: skip
        row = json.loads(next(ln[4:] for ln in p.stdout.splitlines() if ln.startswith("ROW ")))
        print(json.dumps(row), flush=True)
        rows.append(row)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))
    if len(rows) == 2:
        print(f"peak RSS {rows[1]['weights_dtype']} / {rows[0]['weights_dtype']}: "
              f"{rows[1]['peak_VmHWM'] / rows[0]['peak_VmHWM']:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()

"""Real-width benchmark (issue 26): the published configs of the denoisers people use, random-initialised.

    OMP_NUM_THREADS=1 .venv/bin/python bench/real_size.py --models sd15,sdxl --dtypes fp32,bf16 --depth 2 \
        --out runs/real_size/cpu.json
    python3 bench/real_size.py --device cuda --models all --dtypes bf16 --out $OUT/gpu.json   # on a GPU

Configs: bench/configs/<model>/*.json (public config.json files of the hub repositories, provenance in
bench/configs/README.md); no weights exist anywhere here, so every model is random.

CPU (default): one row per (model, weights dtype, depth). Each row runs in two fresh subprocesses so peaks do
not mix: a *maker* builds the model from its config directly in the weights dtype (random init; no fp32 copy)
and saves it with safetensors, then a *measurer* loads it the users' way, `Model.from_pretrained(dir,
torch_dtype=..., low_cpu_mem_usage=True)` (int8: weight-only through diffusers' `TorchAoConfig`, from the bf16
file), and runs a forward at batch 1 and batch 4 at `--res` px (default 256) with the conditioning each family
needs at its native text length. Measured: parameters, build time, load time (warm page cache), peak RSS of
the load and of the forwards (VmHWM of the measurer), seconds per forward.

`--depth N` (or per model: `--depth 4,flux=2,pixart=full`) measures real width at depth 1 and N (transformer
blocks; FLUX: N double + 2N single blocks; U-Nets: `layers_per_block` and `transformer_layers_per_block` capped
at N) and *computes* the full-depth row by a straight line in the parameter count (the full model's count is
exact: it is built on the meta device); rows are marked `computed` (peaks: see PEAK_HELD). `--depth full`
measures full depth, refused (with the reason) for a row whose weights would not fit `--max-rss-gb`.
`--report a.json,b.json` recomputes the computed rows of saved runs and prints the tables.

GPU (`--device cuda`): each model built at full depth directly on the device in the weights dtype; per
resolution (512 and the native one): calls/s of the raw denoiser forward for batch 1, 2, 4, ... (the best
is the autotuned batch), peak accelerator memory at batch 1 and at the tuned batch, then `torch.compile` at
the tuned batch (compile time and calls/s) unless `--no-compile`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CONFIGS = Path(__file__).resolve().parent / "configs"
DTYPES = ("fp32", "bf16", "fp16", "int8")
GB = 1e9


@dataclass(frozen=True)
class Spec:
    name: str
    config: str  # path under bench/configs
    cls: str  # diffusers / transformers class name
    family: str  # unet | sdxl | sd3 | flux | pixart | clip | t5
    native: int  # native resolution in px (encoders: 0)
    text_len: int  # conditioning sequence length the pipeline uses by default
    label: str


MODELS = {s.name: s for s in [
    Spec("sd15", "sd15/unet.json", "UNet2DConditionModel", "unet", 512, 77, "SD 1.5 U-Net"),
    Spec("sd2", "sd2-base/unet.json", "UNet2DConditionModel", "unet", 512, 77, "SD 2-base U-Net"),
    Spec("sdxl", "sdxl-base/unet.json", "UNet2DConditionModel", "sdxl", 1024, 77, "SDXL-base U-Net"),
    Spec("sd35m", "sd35-medium/transformer.json", "SD3Transformer2DModel", "sd3", 1024, 333, "SD3.5-medium MMDiT"),
    Spec("sd35l", "sd35-large/transformer.json", "SD3Transformer2DModel", "sd3", 1024, 333, "SD3.5-large MMDiT"),
    Spec("flux", "flux1-dev/transformer.json", "FluxTransformer2DModel", "flux", 1024, 512, "FLUX.1-dev"),
    Spec("pixart", "pixart-sigma/transformer.json", "PixArtTransformer2DModel", "pixart", 1024, 300, "PixArt-Σ"),
    Spec("clip-l", "text-encoders/clip-l.json", "CLIPTextModel", "clip", 0, 77, "CLIP-L text"),
    Spec("clip-g", "text-encoders/openclip-bigg.json", "CLIPTextModelWithProjection", "clip", 0, 77,
         "OpenCLIP-bigG text"),
    Spec("t5xxl", "text-encoders/t5-xxl.json", "T5EncoderModel", "t5", 0, 512, "T5-XXL encoder"),
]}  # fmt: skip
DENOISERS = ["sd15", "sd2", "sdxl", "sd35m", "sd35l", "flux", "pixart"]


# ---------------------------------------------------------------------------------------------- configs
def load_config(spec: Spec) -> dict:
    return json.loads((CONFIGS / spec.config).read_text())


def full_depth(spec: Spec, cfg: dict) -> int:
    if spec.family in ("unet", "sdxl"):
        tl = cfg.get("transformer_layers_per_block", 1)
        return max([cfg["layers_per_block"]] + (list(tl) if isinstance(tl, list) else [tl]))
    if spec.family == "clip":
        return cfg["num_hidden_layers"]
    return cfg["num_layers"]


def at_depth(spec: Spec, cfg: dict, n: int) -> dict:
    """The config at real width with `n` depth units (n = full depth gives the published config back)."""
    cfg = dict(cfg)
    if spec.family in ("unet", "sdxl"):
        tl = cfg.get("transformer_layers_per_block", 1)
        cfg["layers_per_block"] = min(cfg["layers_per_block"], n)
        if isinstance(tl, list):
            cfg["transformer_layers_per_block"] = [min(t, n) for t in tl]
    elif spec.family == "clip":
        cfg["num_hidden_layers"] = n
    elif spec.family == "flux":  # one unit = one double-stream block + two single-stream blocks (19 + 38)
        cfg["num_single_layers"] = round(cfg["num_single_layers"] * n / cfg["num_layers"])
        cfg["num_layers"] = n
    else:
        if spec.family == "sd3" and cfg.get("dual_attention_layers"):
            cfg["dual_attention_layers"] = [i for i in cfg["dual_attention_layers"] if i < n]
        cfg["num_layers"] = n
    return cfg


def model_class(spec: Spec):
    if spec.family in ("clip", "t5"):
        import transformers

        return getattr(transformers, spec.cls)
    import diffusers

    return getattr(diffusers, spec.cls)


def build(spec: Spec, cfg: dict):
    """Random model from a config, in the current default dtype and device."""
    cls = model_class(spec)
    if spec.family in ("clip", "t5"):
        import transformers

        conf_cls = transformers.CLIPTextConfig if spec.family == "clip" else transformers.T5Config
        return cls(conf_cls.from_dict(cfg))
    return cls.from_config(cfg)


def tensor_bytes(t) -> int:
    """Bytes of a tensor, including torchao's quantized tensor subclasses (their inner tensors)."""
    if hasattr(t, "__tensor_flatten__") and type(t).__name__ not in ("Tensor", "Parameter"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def count(model) -> tuple[int, int]:
    """(elements, bytes) of parameters and buffers."""
    ts = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() for t in ts), sum(tensor_bytes(t) for t in ts)


def meta_elements(spec: Spec, cfg: dict) -> int:
    import torch

    with torch.device("meta"):
        return count(build(spec, cfg))[0]


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.bfloat16}[
        name
    ]


# ---------------------------------------------------------------------------------------------- inputs
def inputs(spec: Spec, cfg: dict, batch: int, res: int, dtype, device, text_len: int | None = None) -> dict:
    """Keyword arguments of one denoiser (or text encoder) call, shaped as the family's pipeline calls it."""
    import torch

    g = torch.Generator().manual_seed(0)
    L = text_len or spec.text_len

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    if spec.family in ("clip", "t5"):
        return {"input_ids": torch.randint(0, cfg["vocab_size"], (batch, L), generator=g).to(device)}
    h = w = res // 8
    if spec.family in ("unet", "sdxl"):
        kw = {"sample": rnd(batch, cfg["in_channels"], h, w), "timestep": torch.full((batch,), 500, device=device),
              "encoder_hidden_states": rnd(batch, L, cfg["cross_attention_dim"])}  # fmt: skip
        if spec.family == "sdxl":
            time_ids = torch.tensor([res, res, 0, 0, res, res], dtype=dtype, device=device).repeat(batch, 1)
            kw["added_cond_kwargs"] = {"text_embeds": rnd(batch, 1280), "time_ids": time_ids}
        return kw
    if spec.family == "sd3":
        return {"hidden_states": rnd(batch, cfg["in_channels"], h, w), "timestep": torch.full((batch,), 500.0, device=device),
                "encoder_hidden_states": rnd(batch, L, cfg["joint_attention_dim"]),
                "pooled_projections": rnd(batch, cfg["pooled_projection_dim"])}  # fmt: skip
    if spec.family == "flux":  # packed 2×2 latent patches of 16 channels, as FluxPipeline calls it
        hp, wp = h // 2, w // 2
        ids = torch.zeros(hp, wp, 3)
        ids[..., 1] = torch.arange(hp)[:, None]
        ids[..., 2] = torch.arange(wp)[None, :]
        kw = {"hidden_states": rnd(batch, hp * wp, cfg["in_channels"]), "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),
              "encoder_hidden_states": rnd(batch, L, cfg["joint_attention_dim"]),
              "pooled_projections": rnd(batch, cfg["pooled_projection_dim"]),
              "img_ids": ids.reshape(-1, 3).to(device=device, dtype=dtype), "txt_ids": torch.zeros(L, 3, device=device, dtype=dtype),
              "guidance": torch.full((batch,), 3.5, device=device, dtype=torch.float32) if cfg.get("guidance_embeds") else None}  # fmt: skip
        return kw
    if spec.family == "pixart":
        return {"hidden_states": rnd(batch, cfg["in_channels"], h, w), "timestep": torch.full((batch,), 500, device=device),
                "encoder_hidden_states": rnd(batch, L, cfg["caption_channels"]),
                "encoder_attention_mask": torch.ones(batch, L, device=device, dtype=dtype),
                "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}  # fmt: skip
    raise ValueError(spec.family)


def call(model, kw: dict):
    out = model(**kw, return_dict=False)
    return out[0]


# ---------------------------------------------------------------------------------------------- memory
def proc_status() -> dict:
    """VmHWM (peak RSS), VmRSS, RssAnon, RssFile of this process in GB (Linux)."""
    out = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                out[k] = int(v.split()[0]) * 1024 / GB
    except OSError:  # not Linux: resource's peak only
        import resource

        out["VmHWM"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB
    return out


def reset_peak() -> dict:
    """Reset VmHWM to the current RSS (Linux `clear_refs` 5), so a later peak excludes the import transients."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return proc_status()


# ---------------------------------------------------------------------------------------------- CPU rows
def child_make(job: dict) -> dict:
    """Build the model in the file dtype (random init under that default dtype: no fp32 copy) and save it."""
    import torch

    spec, cfg = MODELS[job["model"]], job["cfg"]
    torch.manual_seed(0)
    torch.set_default_dtype(torch_dtype(job["file_dtype"]))
    model_class(spec)  # the lazy import stays out of the timing
    t0 = time.perf_counter()
    model = build(spec, cfg).eval()
    build_s = time.perf_counter() - t0
    elements, nbytes = count(model)
    t0 = time.perf_counter()
    if spec.family in ("clip", "t5"):
        model.save_pretrained(job["dir"])  # transformers 5: always safetensors
    else:
        model.save_pretrained(job["dir"], safe_serialization=True)
    return {
        "build_s": build_s,
        "save_s": time.perf_counter() - t0,
        "elements": elements,
        "file_bytes": nbytes,
    }


def child_measure(job: dict) -> dict:
    import torch

    torch.set_flush_denormal(True)
    spec, cfg = MODELS[job["model"]], job["cfg"]
    cls = model_class(spec)
    if spec.family in ("clip", "t5"):  # transformers 5 names it `dtype` and always loads without a copy
        kwargs = {"dtype": torch_dtype(job["dtype"])}
    else:
        kwargs = {"torch_dtype": torch_dtype(job["dtype"]), "low_cpu_mem_usage": True}
    if job["dtype"] == "int8":
        from torchao.quantization import Int8WeightOnlyConfig

        if spec.family in ("clip", "t5"):
            from transformers import TorchAoConfig
        else:
            from diffusers import TorchAoConfig
        kwargs["quantization_config"] = TorchAoConfig(Int8WeightOnlyConfig())
    rss_import = reset_peak()  # every import done: the peak from here on is the load's
    anon = AnonPeak()
    t0 = time.perf_counter()
    model = cls.from_pretrained(job["dir"], **kwargs).eval()
    load_s = time.perf_counter() - t0
    after_load = proc_status()
    elements, nbytes = count(model)
    row = {"load_s": load_s, "elements": elements, "weights_gb": nbytes / GB, "rss_import_gb": rss_import["VmRSS"],
           "anon_import_gb": rss_import.get("RssAnon"), "peak_load_gb": after_load["VmHWM"],
           "peak_anon_load_gb": anon.peak(), "rss_anon_loaded_gb": after_load.get("RssAnon"),
           "rss_file_loaded_gb": after_load.get("RssFile")}  # fmt: skip
    dt = torch_dtype(job["dtype"])
    with torch.inference_mode():
        for i, b in enumerate(job["batches"]):
            kw = inputs(spec, cfg, b, job["res"], dt, "cpu", job.get("text_len"))
            if i == 0:  # the first call also reads the weights in (safetensors are memory-mapped)
                t0 = time.perf_counter()
                out = call(model, kw)
                row["first_call_s"] = time.perf_counter() - t0
            times = []
            for _ in range(job["repeats"]):  # CPU kernels need no per-shape warm-up beyond the first call
                t0 = time.perf_counter()
                out = call(model, kw)
                times.append(time.perf_counter() - t0)
            row[f"fwd_b{b}_s"] = min(times)
            row["finite"] = bool(torch.isfinite(out.float()).all())
    after = proc_status()
    row.update(peak_fwd_gb=after["VmHWM"], peak_anon_fwd_gb=anon.stop(), rss_anon_fwd_gb=after.get("RssAnon"),
               rss_file_fwd_gb=after.get("RssFile"), load_avg_1min=os.getloadavg()[0])  # fmt: skip
    return row


class AnonPeak:
    """Peak anonymous RSS (the process's own memory, not page-cache-backed mapped files), sampled every 10 ms."""

    def __init__(self):
        import threading

        self.max = proc_status().get("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.01):
            v = proc_status().get("RssAnon")
            if v is not None and (self.max is None or v > self.max):
                self.max = v

    def peak(self) -> float | None:
        return self.max

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        return self.max


def run_child(role: str, job: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", role, json.dumps(job)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
    raise RuntimeError(f"{role} failed (rc {p.returncode}): {' | '.join(tail)}")


def cpu_row(spec: Spec, dtype: str, depth: int, args) -> dict:
    cfg = at_depth(spec, load_config(spec), depth)
    file_dtype = "bf16" if dtype == "int8" else (args.ckpt_dtype if args.ckpt_dtype != "same" else dtype)
    with tempfile.TemporaryDirectory(prefix="real_size_", dir=args.tmp) as d:
        job = {"model": spec.name, "cfg": cfg, "dir": d, "file_dtype": file_dtype}
        made = run_child("make", job, args.timeout)
        job.update(
            dtype=dtype, res=args.res, batches=args.batches, repeats=args.repeats, text_len=args.text_len
        )
        row = run_child("measure", job, args.timeout)
    row.update(model=spec.name, label=spec.label, dtype=dtype, file_dtype=file_dtype, depth=depth, source="measured",
               build_s=made["build_s"], res=args.res)  # fmt: skip
    return row


LINEAR = ["weights_gb", "build_s", "load_s", "first_call_s", "peak_load_gb", "peak_fwd_gb", "peak_anon_load_gb",
          "peak_anon_fwd_gb", "rss_anon_loaded_gb", "rss_file_loaded_gb", "rss_anon_fwd_gb", "rss_file_fwd_gb"]  # fmt: skip


# Every computed figure is at least its value at the larger measured depth. A peak is the larger of a depth-independent transient (e.g. SD3's float64 position table built in __init__)
# and the memory held at the end of the phase; only the latter grows with depth. So a computed peak is the
# largest of: its own straight line, the straight line of the memory held at the end, the peak at the larger
# measured depth, and (peak RSS after the forwards, when every weight has been read) the full model's weight
# bytes plus the larger non-weight memory of the two measured depths (activations vary run to run).
PEAK_HELD = {"peak_load_gb": ("rss_anon_loaded_gb", "rss_file_loaded_gb"), "peak_anon_load_gb": ("rss_anon_loaded_gb",),
             "peak_fwd_gb": ("rss_anon_fwd_gb", "rss_file_fwd_gb"), "peak_anon_fwd_gb": ("rss_anon_fwd_gb",)}  # fmt: skip


def extrapolate(rows: list[dict], elements_full: int, depth_full: int) -> dict:
    """Full-depth row from two measured depths: each figure on a straight line in the element count (peaks:
    see PEAK_HELD)."""
    a, b = sorted(rows, key=lambda r: r["elements"])
    out = {k: v for k, v in b.items() if k not in LINEAR and not k.startswith("fwd_")}
    span = b["elements"] - a["elements"]

    def line(va, vb):
        return vb + (vb - va) / span * (elements_full - b["elements"])

    for k in LINEAR + [k for k in b if k.startswith("fwd_")]:
        if a.get(k) is None or b.get(k) is None:
            continue
        out[k] = max(line(a[k], b[k]), b[k])  # no figure shrinks with depth (noise in a small difference)
        held = PEAK_HELD.get(k)
        if held and all(a.get(h) is not None and b.get(h) is not None for h in held):
            out[k] = max(out[k], line(sum(a[h] for h in held), sum(b[h] for h in held)))
        if k == "peak_fwd_gb":  # after a forward every weight is resident: weights + the larger other memory
            out[k] = max(out[k], out["weights_gb"] + max(_fwd_overhead(a), _fwd_overhead(b)))
    out.update(
        elements=elements_full, depth=depth_full, source=f"computed from depths {a['depth']},{b['depth']}"
    )
    return out


def _fwd_overhead(r: dict) -> float:
    """Memory besides the weights at the forwards' peak; when the peak was the load's transient (it did not rise
    during the forwards), the memory held after them instead."""
    if r["peak_fwd_gb"] > r["peak_load_gb"] + 0.01 or r.get("rss_file_fwd_gb") is None:
        return r["peak_fwd_gb"] - r["weights_gb"]
    return r["rss_anon_fwd_gb"] + r["rss_file_fwd_gb"] - r["weights_gb"]


def recompute(rows: list[dict]) -> list[dict]:
    """Rows of saved JSON files with their computed rows made again: for each (model, weights, file dtype), from
    the smallest and largest measured depths below full depth (a measured full-depth row stays beside it)."""
    measured = [r for r in rows if not r.get("source", "").startswith("computed")]
    out = []
    for r in measured:
        out.append(r)
        if r.get("source") != "measured":
            continue
        spec = MODELS[r["model"]]
        cfg = load_config(spec)
        D = full_depth(spec, cfg)
        same = [m for m in measured if m.get("source") == "measured" and m["depth"] < D and
                (m["model"], m["dtype"], m.get("file_dtype")) == (r["model"], r["dtype"], r.get("file_dtype"))]  # fmt: skip
        pair = [min(same, key=lambda m: m["depth"]), max(same, key=lambda m: m["depth"])] if same else []
        if len(same) >= 2 and pair[0]["depth"] < pair[1]["depth"] and r is pair[1]:
            out.append(extrapolate(pair, meta_elements(spec, cfg), D))
    return out


def cpu_main(args, names: list[str]) -> list[dict]:
    rows = []
    for name in names:
        spec = MODELS[name]
        cfg = load_config(spec)
        D = full_depth(spec, cfg)
        n_full = meta_elements(spec, cfg)
        for dtype in args.dtypes:
            if dtype == "int8" and not _has_torchao():
                rows.append({"model": name, "label": spec.label, "dtype": dtype, "depth": D,
                             "source": "skipped: torchao not installed (pip install torchao)"})  # fmt: skip
                continue
            d = args.depth.get(name, args.depth["*"])
            want = D if d == "full" else min(int(d), D)
            depths = [want] if want == D else sorted({1, want})
            if len(depths) == 1 and want != D:
                raise SystemExit(
                    "--depth 1 cannot compute full depth (two depths needed): use --depth 2 or more"
                )
            est = n_full * {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 2}[dtype] / GB * 1.15 + 1.0
            if want == D and est > args.max_rss_gb:
                rows.append({"model": name, "label": spec.label, "dtype": dtype, "depth": D, "elements": n_full,
                             "source": f"skipped: ≈{est:.0f} GB > --max-rss-gb {args.max_rss_gb:g}; use --depth N"})  # fmt: skip
                continue
            measured = []
            for depth in depths:
                try:
                    r = cpu_row(spec, dtype, depth, args)
                except Exception as e:  # one failing row must not lose the others
                    r = {"model": name, "label": spec.label, "dtype": dtype, "depth": depth,
                         "source": f"failed: {str(e)[:200]}"}  # fmt: skip
                print(json.dumps(r), flush=True)
                rows.append(r)
                measured.append(r)
                _save(args.out, rows)
            ok = [r for r in measured if r["source"] == "measured"]
            if want != D and len(ok) == 2:
                rows.append(extrapolate(ok, n_full, D))
                _save(args.out, rows)
    return rows


def _has_torchao() -> bool:
    try:
        import torchao  # noqa: F401
    except Exception:
        return False
    return True


# ---------------------------------------------------------------------------------------------- GPU rows
def gpu_main(args, names: list[str]) -> list[dict]:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    dev = torch.device(args.device)
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{dev.type} (throughput smoke)"
    rows = []
    for name in names:
        spec = MODELS[name]
        if spec.family in ("clip", "t5"):
            continue  # text encoders run on the CPU in diffdisc
        for dtype in args.dtypes:
            cfg = load_config(spec)
            d = args.depth.get(name, args.depth["*"])
            if d != "full":
                cfg = at_depth(spec, cfg, int(d))
            base = {
                "model": name,
                "label": spec.label,
                "dtype": dtype,
                "device": device_name,
                "depth": d,
            }
            try:
                rows += gpu_model(spec, cfg, dtype, dev, args, base)
            except Exception as e:
                rows.append({**base, "source": f"failed: {type(e).__name__}: {str(e)[:200]}"})
            print(json.dumps(rows[-1]), flush=True)
            _save(args.out, rows)
            gc.collect()
            _empty(dev)
    return rows


def gpu_model(spec: Spec, cfg: dict, dtype: str, dev, args, base: dict) -> list[dict]:
    import torch

    torch.manual_seed(0)
    _reset_peak(dev)
    t0 = time.perf_counter()
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype(dtype))
    try:
        with torch.device(
            dev
        ):  # float32 buffers (position tables) follow the weights, as from_pretrained does
            model = build(spec, cfg).eval().requires_grad_(False).to(torch_dtype(dtype))
    finally:
        torch.set_default_dtype(prev)
    if dtype == "int8":
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        quantize_(model, Int8WeightOnlyConfig())
    _sync(dev)
    build_s = time.perf_counter() - t0
    elements, nbytes = count(model)
    weights_alloc = _allocated(dev)
    dt = torch_dtype(dtype)
    rows = []
    resolutions = sorted({spec.native if r == "native" else int(r) for r in args.gpu_res.split(",")})
    for res in resolutions:
        row = {**base, "res": res, "elements": elements, "weights_gb": nbytes / GB, "build_s": build_s,
               "weights_alloc_gb": weights_alloc, "source": "measured", "calls_per_s": {}}  # fmt: skip
        best_b, best = None, 0.0
        b = 1
        while b <= args.max_batch:
            _reset_peak(dev)
            try:
                kw = inputs(spec, cfg, b, res, dt, dev, args.text_len)
                cps = b / _gpu_time(lambda kw=kw: call(model, kw), args.seconds, dev)
            except torch.OutOfMemoryError:
                row["oom_at_batch"] = b
                break
            finally:
                gc.collect()
                _empty(dev)
            row["calls_per_s"][b] = round(cps, 2)
            peak = _peak(dev)
            if b == 1:
                row["peak_b1_gb"] = peak
            if cps > best * 1.05:
                best_b, best = b, cps
                row["peak_tuned_gb"] = peak
            elif b >= 4 * best_b:  # no gain for two doublings: the batch is tuned
                break
            b *= 2
        row.update(tuned_batch=best_b, eager_calls_per_s=round(best, 2))
        compile_here = args.compile_res == "all" or (args.compile_res == "native" and res == resolutions[-1])
        if compile_here and not args.no_compile and best_b:
            try:
                compiled = torch.compile(model, dynamic=False)
                kw = inputs(spec, cfg, best_b, res, dt, dev, args.text_len)
                t0 = time.perf_counter()
                with torch.inference_mode():
                    call(compiled, kw)
                _sync(dev)
                row["compile_s"] = round(time.perf_counter() - t0, 1)
                fwd = (lambda m, k: lambda: call(m, k))(compiled, kw)
                row["compiled_calls_per_s"] = round(best_b / _gpu_time(fwd, args.seconds, dev), 2)
                row["compiled_over_eager"] = round(row["compiled_calls_per_s"] / best, 3)
            except Exception as e:
                row["compile"] = f"failed: {type(e).__name__}: {str(e)[:150]}"
            torch._dynamo.reset()
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _gpu_time(fn, seconds: float, dev) -> float:
    """Seconds per call: warm-up, then as many calls as fit `seconds` (at least 3)."""
    import torch

    with torch.inference_mode():
        fn()
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        one = max(time.perf_counter() - t0, 1e-4)
        n = max(3, int(seconds / one))
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(dev)
    return (time.perf_counter() - t0) / n


def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _empty(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.empty_cache()


def _reset_peak(dev) -> None:
    """Accelerator peak memory (the CPU smoke run: the process's peak RSS)."""
    import torch

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    else:
        reset_peak()


def _peak(dev) -> float:
    import torch

    return torch.cuda.max_memory_allocated(dev) / GB if dev.type == "cuda" else proc_status()["VmHWM"]


def _allocated(dev) -> float:
    import torch

    return torch.cuda.memory_allocated(dev) / GB if dev.type == "cuda" else proc_status()["VmRSS"]


# ---------------------------------------------------------------------------------------------- output
def _save(path: str | None, rows: list[dict]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(rows, indent=1))


def _f(v, fmt="{:.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def _oom(r: dict) -> str:
    return f"OOM at batch {r['oom_at_batch']}" if r.get("oom_at_batch") else ""


def markdown(rows: list[dict], batches: list[int]) -> str:
    if any("calls_per_s" in r for r in rows):
        head = ("| model | weights | px | params (B) | weights GB | eager calls/s (tuned batch) | "
                "peak GB b1 / tuned | compiled calls/s (×eager, compile s) | note |\n|" + "---|" * 9)  # fmt: skip
        lines = [head]
        for r in rows:
            if "calls_per_s" not in r:
                lines.append(f"| {r['label']} | {r['dtype']} | | | | | | | {r['source']} |")
                continue
            comp = r.get("compile") or (f"{r['compiled_calls_per_s']} (×{r['compiled_over_eager']}, {r['compile_s']} s)"
                                        if "compiled_calls_per_s" in r else "–")  # fmt: skip
            lines.append(f"| {r['label']} | {r['dtype']} | {r['res']} | {r['elements'] / 1e9:.2f} | {r['weights_gb']:.1f} | "
                         f"{r['eager_calls_per_s']} ({r['tuned_batch']}) | {_f(r.get('peak_b1_gb'), '{:.1f}')} / "
                         f"{_f(r.get('peak_tuned_gb'), '{:.1f}')} | {comp} | {_oom(r)} |")  # fmt: skip
        return "\n".join(lines)
    fwd = " | ".join(f"s/fwd b{b}" for b in batches)
    lines = [f"| model | weights (file) | depth | params (B) | weights GB | load s | first call s | peak RSS load GB "
             f"(anon) | peak RSS after fwd GB (anon) | {fwd} | row |", "|" + "---|" * (10 + len(batches))]  # fmt: skip
    for r in rows:
        wt = (
            r["dtype"]
            if r.get("file_dtype", r["dtype"]) == r["dtype"]
            else f"{r['dtype']} ({r['file_dtype']})"
        )
        if not r["source"].startswith(("measured", "computed")):
            lines.append(
                f"| {r['label']} | {wt} | {r['depth']} |" + " |" * (6 + len(batches)) + f" {r['source']} |"
            )
            continue
        fw = " | ".join(_f(r.get(f"fwd_b{b}_s")) for b in batches)
        lines.append(f"| {r['label']} | {wt} | {r['depth']} | {r['elements'] / 1e9:.3f} | {r['weights_gb']:.2f} | "
                     f"{_f(r.get('load_s'))} | {_f(r.get('first_call_s'))} | {r['peak_load_gb']:.2f} "
                     f"({_f(r.get('peak_anon_load_gb'))}) | {r['peak_fwd_gb']:.2f} ({_f(r.get('peak_anon_fwd_gb'))}) | "
                     f"{fw} | {r['source']} |")  # fmt: skip
    return "\n".join(lines)


def ratios(rows: list[dict]) -> str:
    """bf16 ÷ fp32 peak RSS per model and depth (issue 26 target for the load: ≤ 0.55)."""
    got = {}
    for r in rows:
        if r.get("peak_load_gb") is not None:
            got[(r["label"], r["depth"], r["source"][:8], r["dtype"], r.get("file_dtype"))] = r
    out = []
    for (label, depth, src, dtype, fdt), r in got.items():
        f = got.get((label, depth, src, "fp32", "fp32"))
        if dtype not in ("bf16", "int8") or f is None:
            continue
        parts = []
        for key, name in (("peak_load_gb", "peak RSS load"), ("peak_fwd_gb", "peak RSS after forward"),
                          ("peak_anon_fwd_gb", "peak anon after forward")):  # fmt: skip
            if r.get(key) and f.get(key):
                parts.append(f"{name} {r[key] / f[key]:.2f}")
        out.append(f"- {label}, depth {depth} ({src}), {dtype} from a {fdt} file ÷ fp32: " + ", ".join(parts))
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        role, job = sys.argv[2], json.loads(sys.argv[3])
        res = child_make(job) if role == "make" else child_measure(job)
        print("RESULT " + json.dumps(res), flush=True)
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--models", default="denoisers", help=f"comma list of {','.join(MODELS)}; 'denoisers' or 'all'"
    )
    ap.add_argument(
        "--dtypes", default="fp32,bf16", help="weights dtypes: fp32,bf16,fp16,int8 (int8: torchao)"
    )
    ap.add_argument("--depth", default=None,
                    help="'full' or N (measure depths 1 and N, compute full depth), per model as 2,pixart=full; "
                         "default 2 on the CPU, full on a GPU")  # fmt: skip
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--res", type=int, default=256, help="CPU forward resolution in px")
    ap.add_argument("--batches", default="1,4", help="CPU forward batch sizes")
    ap.add_argument("--repeats", type=int, default=1, help="timed CPU forwards per batch (after one warm-up)")
    ap.add_argument("--text-len", type=int, default=None, help="override the native text length")
    ap.add_argument(
        "--ckpt-dtype",
        default="same",
        choices=["same", "fp32", "bf16"],
        help="dtype of the saved random checkpoint (default: the weights dtype; int8 loads a bf16 file)",
    )
    ap.add_argument(
        "--max-rss-gb", type=float, default=8.0, help="refuse full-depth CPU rows estimated above this"
    )
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per CPU subprocess")
    ap.add_argument("--tmp", default=None, help="folder for the temporary checkpoints")
    ap.add_argument("--max-batch", type=int, default=64, help="GPU: largest batch tried")
    ap.add_argument("--seconds", type=float, default=2.0, help="GPU: timing window per measurement")
    ap.add_argument("--no-compile", action="store_true", help="GPU: eager only")
    ap.add_argument("--gpu-res", default="512,native", help="GPU: resolutions in px ('native': the model's)")
    ap.add_argument("--compile-res", default="native", choices=["native", "all"],
                    help="GPU: torch.compile at the largest resolution only (default) or at each")  # fmt: skip
    ap.add_argument(
        "--throughput", action="store_true", help="the GPU measurement on --device cpu (a smoke test)"
    )
    ap.add_argument("--out", default=None, help="JSON rows (written after every row)")
    ap.add_argument(
        "--report", default=None, help="comma list of saved JSON files: recompute and print the table"
    )
    args = ap.parse_args()
    names = {"denoisers": DENOISERS, "all": list(MODELS)}.get(args.models) or args.models.split(",")
    bad = [n for n in names if n not in MODELS]
    if bad:
        raise SystemExit(f"unknown model(s) {bad}; known: {', '.join(MODELS)}")
    args.dtypes = args.dtypes.split(",")
    if any(d not in DTYPES for d in args.dtypes):
        raise SystemExit(f"--dtypes: one of {DTYPES}")
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.report:
        rows = recompute([r for f in args.report.split(",") for r in json.loads(Path(f).read_text())])
        _save(args.out, rows)
        print(markdown(rows, args.batches) + "\n\n" + ratios(rows))
        return
    depth = {"*": "full"} if args.device != "cpu" or args.throughput else {"*": "2"}
    for part in (args.depth or "").split(","):
        if part:
            k, _, v = part.rpartition("=")
            depth[k or "*"] = v
    args.depth = depth
    import torch

    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}", flush=True)
    gpu = args.device != "cpu" or args.throughput
    rows = gpu_main(args, names) if gpu else cpu_main(args, names)
    _save(args.out, rows)
    print()
    print(markdown(rows, args.batches))
    if not gpu:
        print()
        print(ratios(rows))


if __name__ == "__main__":
    main()

"""Loading at real size (issue 26 #1-3, #5) on the tiny replicas: weights dtype, quantization, offload, the sampled
fingerprint of big files and the on-disk condition cache; one-line refusals where an option cannot apply."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import make_noise_folder, run_main
from diffdisc.backbones import base, loading
from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError
from family_fixtures import make_flux_dir, make_pixart_dir, make_sd3_dir, make_sdxl_dir

HAS_TORCHAO = loading.installed("torchao")
needs_torchao = pytest.mark.skipif(not HAS_TORCHAO, reason="torchao not installed (pip install 'diffdisc[quant]')")
FAMILIES = ["sd", "classcond", "sd3", "flux", "sdxl", "pixart"]
SMALL = {"flux": {"image_size": 16}}  # FLUX's replica defaults to 128 px: 16x the work for the same check


def load(dirs, family, **options):
    return create_backbone(dirs[family], **SMALL.get(family, {}), **options)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory, sd_dir, classcond_dir):
    made = {"sd": sd_dir, "classcond": classcond_dir}
    for name, make in [("sd3", make_sd3_dir), ("flux", make_flux_dir), ("sdxl", make_sdxl_dir), ("pixart", make_pixart_dir)]:
        made[name] = make(tmp_path_factory.mktemp(name))
    return made


def eps(bb, seed=0):
    """ε̂ (or v̂) of two noised images against two candidates, as the engine calls it."""
    g = torch.Generator().manual_seed(seed)
    s, ch = bb.info.image_size, bb.info.image_channels
    x0 = bb.encode(torch.rand(2, ch, s, s, generator=g) * 2 - 1)
    conds = bb.conditions(["a red cat", "a blue dog"] if bb.info.conditioning == "text" else [0, 1])
    t = torch.tensor([300, 700])
    return bb.predict_eps(bb.add_noise(x0, torch.randn(x0.shape, generator=g), t), t, conds)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_weights_load_directly_and_score_in_fp32(dirs, family, one_thread):
    ref = load(dirs, family)
    bb = load(dirs, family, weights_dtype="bf16")
    net = getattr(bb, bb.denoiser)
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16}
    for enc in bb.offloaded or (("text_encoder",) if family == "sd" else ()):
        assert {p.dtype for p in getattr(bb, enc).parameters()} == {torch.bfloat16}, enc
    out = eps(bb)
    assert out.dtype == torch.float32 and rel(out, eps(ref)) < 0.05  # bf16 rounding, not another model
    assert bb.info.fingerprint == f"{ref.info.fingerprint}@weights_dtype=bf16"  # fp32 keeps every old fingerprint


def test_vae_follows_force_upcast_unless_told(dirs):
    sdxl = dirs["sdxl"]
    assert json.loads((sdxl / "vae" / "config.json").read_text()).get("force_upcast", True)
    half = create_backbone(sdxl, weights_dtype="fp16")
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32  # SDXL's VAE overflows in fp16
    told = create_backbone(sdxl, weights_dtype="fp16", vae_dtype="fp16")
    assert told.vae.dtype == torch.float16 and "vae_dtype=fp16" in told.info.fingerprint
    assert create_backbone(dirs["sd"], weights_dtype="bf16").vae.dtype == torch.bfloat16  # upcast is about fp16


def test_auto_is_fp32_on_the_cpu_and_follows_the_accelerator(monkeypatch):
    assert loading.auto_dtype(None) == loading.auto_dtype("cpu") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert loading.auto_dtype("cuda:0") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert loading.auto_dtype("cuda") == "fp16"


@pytest.mark.parametrize("mode", ["model", "group"])
@pytest.mark.parametrize("family", FAMILIES)
def test_offload_applies_hooks_and_changes_no_score(dirs, family, mode, one_thread):
    ref = eps(load(dirs, family))
    bb = load(dirs, family, offload=mode)
    net = getattr(bb, bb.denoiser)
    if mode == "model":
        assert hasattr(net, "_hf_hook") and len(bb.offload_hooks) == (2 if getattr(bb, "vae", None) is not None else 1)
    else:
        assert getattr(net, "_diffusers_hook", None) is not None and net._diffusers_hook.get_hook("group_offloading")
    assert bb.denoiser in bb.held and bb.info.metadata["loading"]["offload"] == mode
    assert "offload" not in bb.info.fingerprint  # placement is speed only: the same run
    torch.testing.assert_close(eps(bb), ref, rtol=1e-5, atol=1e-6)


def test_offloaded_backbone_scores_through_the_engine(dirs):
    from diffdisc.scoring.config import ScoreConfig
    from diffdisc.scoring.engine import ScoringEngine, Work

    def scores(bb):
        x0 = bb.encode(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1)
        with ScoringEngine(bb, ScoreConfig(batch_size=3)) as engine:
            return engine.run(x0, ["a", "b"], bb.conditions([0, 1, 2]), Work.from_lists([0, 1, 1], [0, 2, 1], [10, 500, 900]))

    torch.testing.assert_close(scores(create_backbone(dirs["classcond"], offload="group")),
                               scores(create_backbone(dirs["classcond"])), rtol=1e-5, atol=1e-7)  # fmt: skip


def test_held_modules_stay_put_when_the_backbone_moves(dirs):
    bb = create_backbone(dirs["classcond"], offload="group")
    moved = {}
    bb.model.to = lambda *a, **k: moved.setdefault("model", a)  # a move would break the hooks' bookkeeping
    bb.to("cpu")
    assert not moved


def test_a_lora_loads_onto_an_offloaded_backbone(dirs, tmp_path):
    from diffdisc.tasks.attention import load_lora
    from test_lora_user import save_unet_lora

    lora = save_unet_lora(create_backbone(dirs["sd"]).unet, tmp_path / "lora")
    ref = create_backbone(dirs["sd"])
    load_lora(ref, lora)
    for mode in ("model", "group"):
        bb = create_backbone(dirs["sd"], offload=mode)
        load_lora(bb, lora)  # diffusers would re-offload the whole pipeline itself (and refuse on a CPU)
        assert len(bb.offload_hooks) == (2 if mode == "model" else 0) and bb.info.fingerprint == ref.info.fingerprint
        torch.testing.assert_close(eps(bb), eps(ref), rtol=1e-5, atol=1e-6)


@needs_torchao
@pytest.mark.parametrize("family", ["sd", "classcond", "sd3", "flux"])
def test_int8_quantizes_the_denoiser_and_t5_with_torchao_on_the_cpu(dirs, family, monkeypatch, one_thread):
    monkeypatch.setattr(loading, "MIN_QUANTIZE_PARAMS", 0)  # the replicas are tiny
    ref = eps(load(dirs, family))
    bb = load(dirs, family, quantize="int8")
    kinds = {type(p).__name__ for p in getattr(bb, bb.denoiser).parameters()}
    assert "Int8Tensor" in kinds, kinds
    if family in ("sd3", "flux"):  # T5 quantized too (torchao keeps it movable between CPU and accelerator)
        t5 = bb.text_encoder_3 if family == "sd3" else bb.text_encoder_2
        assert "Int8Tensor" in {type(p).__name__ for p in t5.parameters()}
    assert "quantize=int8-torchao" in bb.info.fingerprint
    out = eps(bb)
    assert rel(out, ref) < 0.05
    if family == "sd3":  # quantized and offloaded: the hooks move int8 weights outside inference mode
        torch.testing.assert_close(eps(load(dirs, family, quantize="int8", offload="model")), out)
    from diffdisc.features.cache import model_fingerprint

    assert model_fingerprint(bb)  # the feature cache can digest quantized weights


def test_quantize_refusals_are_one_line(dirs, monkeypatch):
    if HAS_TORCHAO:
        with pytest.raises(DiffdiscError, match="parameters; quantizing a model under"):
            create_backbone(dirs["sd"], quantize="int8")  # a tiny model: nothing worth saving
    monkeypatch.setattr(loading, "installed", lambda backend: False)
    with pytest.raises(DiffdiscError, match="pip install"):
        create_backbone(dirs["sd"], quantize="int8")
    with pytest.raises(DiffdiscError, match="CUDA GPU only"):
        loading.quant_backend("nf4", "cpu")
    with pytest.raises(DiffdiscError, match="fp8 cannot run on the CPU"):
        loading.quant_backend("fp8", None)
    with pytest.raises(DiffdiscError, match="use one of none, int8, nf4, fp8"):
        create_backbone(dirs["sd"], quantize="int4")


def test_device_map_and_clip_refusals(dirs, monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(DiffdiscError, match="several CUDA GPUs; this machine has 0"):
        create_backbone(dirs["flux"], device_map="balanced")
    with pytest.raises(DiffdiscError, match="clip models take no --weights-dtype"):
        create_backbone("fmnist-scenes-clip", weights_dtype="bf16")
    assert create_backbone("fmnist-scenes-clip", weights_dtype="auto").info.family == "clip"


def test_big_files_are_fingerprinted_by_windows(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    d = tmp_path / "m" / "unet"
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    save_file({"a.weight": torch.arange(256 * 1024, dtype=torch.float32).reshape(512, 512), "b": torch.ones(3)},
              str(d / "w.safetensors"))  # fmt: skip
    small = base.fingerprint(tmp_path / "m")
    monkeypatch.setattr(base, "BIG_FILE", 0)
    reads = []
    real = os.pread
    monkeypatch.setattr(os, "pread", lambda fd, n, off: reads.append(n) or real(fd, n, off))
    big = base.fingerprint(tmp_path / "m")
    assert big != small and sum(reads) <= base.WINDOWS * base.WINDOW + 12  # 1 MiB file: 32 KiB + the small tensor
    raw = bytearray((d / "w.safetensors").read_bytes())
    at = len(raw) - 12 - base.WINDOW  # one value in the last window of a.weight (b's 12 bytes end the file)
    raw[at : at + 4] = b"\x00\x00\x80\x7f"
    (d / "w.safetensors").write_bytes(bytes(raw))
    assert base.fingerprint(tmp_path / "m") != big


def test_condition_cache_makes_a_second_run_encode_nothing(dirs, tmp_path):
    calls = []

    def counted(bb):
        for name in bb.offloaded:
            getattr(bb, name).register_forward_hook(lambda *a, n=name: calls.append(n))
        return bb

    prompts = ["a red cat", "a blue dog", "a green squirrel"]
    first = counted(create_backbone(dirs["sd3"], condition_cache=tmp_path / "cc"))
    a, null_a = first.conditions(prompts), first.null_condition()
    assert calls
    calls.clear()
    second = counted(create_backbone(dirs["sd3"], condition_cache=tmp_path / "cc"))
    b, null_b = second.conditions(prompts), second.null_condition()
    assert calls == [] and second.condition_store.hits == 4
    assert torch.equal(a, b) and torch.equal(null_a, null_b)
    other = counted(create_backbone(dirs["sd3"], condition_cache=tmp_path / "cc", weights_dtype="bf16"))
    other.conditions(prompts[:1])
    assert calls  # other loader options, other conditions: encoded, never reused
    assert create_backbone(dirs["sd3"]).condition_store is None  # auto: tiny encoders are not worth files


def test_loading_options_from_the_command_line(monkeypatch, capsys, classcond_dir, tmp_path, one_thread):
    data = make_noise_folder(tmp_path / "data", per_class=1, size=16)
    args = ["classify", "--model", classcond_dir, "--data", data, "--timesteps", "2", "--quiet", "--json"]
    code, _, err = run_main(monkeypatch, capsys, *args, "--weights-dtype", "bf16", "--offload", "group", "--out", tmp_path / "r")
    assert code == 0, err
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["model"]["fingerprint"].endswith("@weights_dtype=bf16")
    code, _, err = run_main(monkeypatch, capsys, *args, "--weights-dtype", "fp32", "--out", tmp_path / "r")
    assert code != 0 and "fingerprint" in err and "Traceback" not in err  # a bf16 run never resumes as fp32
    for bad, message in [(["--device-map", "balanced"], "several CUDA GPUs"), (["--quantize", "int8"], "quantiz"),
                         (["--weights-dtype", "fp64"], "use one of auto, fp32, bf16, fp16")]:  # fmt: skip
        code, _, err = run_main(monkeypatch, capsys, *args, *bad, "--out", tmp_path / "x")
        assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err

"""Discffusion's attention score on joint attention (SD3's MMDiT, FLUX's double- and single-stream blocks).

Processor level on tiny transformers of diffusers' own test shapes: the capture changes no output, its LSE is
the image-query × text-key block written out here from the projections (hooks) with the norms and FLUX's
RoPE, and it reads the text keys, not the image keys. End to end on the tiny SD3 / FLUX pipelines: the
attention scorer through the engine, batch-size independent, and the heat map."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffdisc.backbones.classcond import ClassCondBackbone
from diffdisc.backbones.pixart import PixArtBackbone
from diffdisc.backbones.sd3 import SD3Backbone
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.joint_attention import JointAttentionCapture

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: OpenMP threads only wait for a busy core

N_TEXT = 7


# ---------------------------------------------------------------------- tiny transformers and their inputs
@pytest.fixture(scope="module")
def sd3(one_thread):
    """SD3's fast-test transformer (sample_size 8 instead of 32: 64 image tokens), with SD3.5's q/k RMS norms."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    net = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
                                num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                                pooled_projection_dim=64, out_channels=4, qk_norm="rms_norm")  # fmt: skip
    g = torch.Generator().manual_seed(1)
    kw = dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g),
              encoder_hidden_states=torch.randn(2, N_TEXT, 32, generator=g),
              pooled_projections=torch.randn(2, 64, generator=g), timestep=torch.tensor([300.0, 700.0]))  # fmt: skip
    return net.eval(), kw


@pytest.fixture(scope="module")
def flux(one_thread):
    """FLUX's fast-test transformer: 1 double- and 1 single-stream block, 16 image tokens with 2-D ids."""
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    net = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                 axes_dims_rope=[4, 4, 8])  # fmt: skip
    g = torch.Generator().manual_seed(1)
    img_ids = torch.zeros(4, 4, 3)
    img_ids[..., 1], img_ids[..., 2] = torch.arange(4)[:, None], torch.arange(4)[None, :]
    kw = dict(hidden_states=torch.randn(2, 16, 4, generator=g),
              encoder_hidden_states=torch.randn(2, N_TEXT, 32, generator=g),
              pooled_projections=torch.randn(2, 32, generator=g), timestep=torch.tensor([0.3, 0.7]),
              img_ids=img_ids.reshape(16, 3), txt_ids=torch.zeros(N_TEXT, 3))  # fmt: skip
    return net.eval(), kw


def run(net, kw, **over):
    with torch.no_grad():
        return net(**{**kw, **over}).sample


def captured(net, kw, layers="joint", keep_maps=False, **over):
    with JointAttentionCapture(net, keep_maps=keep_maps, layers=layers) as cap:
        out = run(net, kw, **over)
    return cap, out


# ---------------------------------------------------------------------- (1) the output is unchanged
@pytest.mark.parametrize("model, layers", [("sd3", "joint"), ("flux", "joint"), ("flux", "all")])
def test_capture_changes_no_output_and_restores_the_processors(model, layers, request):
    net, kw = request.getfixturevalue(model)
    before = {n: p for n, p in net.attn_processors.items()}
    ref = run(net, kw)
    cap, out = captured(net, kw, layers, keep_maps=True)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert net.attn_processors == before  # the same objects back
    names = [n for n, _, _ in cap.layers]
    expect = {"sd3": ["transformer_blocks.0.attn", "transformer_blocks.1.attn"],  # incl. the context_pre_only block
              "flux": ["transformer_blocks.0.attn"] + (["single_transformer_blocks.0.attn"] if layers == "all" else [])}
    assert names == expect[model]
    n_img = 64 if model == "sd3" else 16
    assert cap.score().shape == (2,) and torch.isfinite(cap.score()).all()
    for m in cap.maps().values():  # image queries over the text keys, renormalised over the text keys
        assert m.shape == (2, n_img, N_TEXT)
        torch.testing.assert_close(m.sum(-1), torch.ones(2, n_img))


# ---------------------------------------------------------------------- (2) the LSE written out independently
def record(modules: dict[str, torch.nn.Module]):
    """Forward hooks storing each module's output under its key; returns (store, handles)."""
    store, handles = {}, []
    for key, m in modules.items():
        handles.append(m.register_forward_hook(lambda mod, args, out, key=key: store.__setitem__(key, out)))
    return store, handles


def heads(x, h):  # (B, n, h·d) -> (B, h, n, d)
    return x.view(x.shape[0], x.shape[1], h, -1).transpose(1, 2)


def lse_and_maps(q, k):
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.logsumexp(logits, -1).mean((1, 2)), logits.softmax(-1).mean(1)


def test_sd3_score_is_the_image_text_block_lse(sd3):
    net, kw = sd3
    attns = [b.attn for b in net.transformer_blocks]
    store, handles = record({f"{i}{p}": getattr(a, p) for i, a in enumerate(attns) for p in ("to_q", "add_k_proj")})
    try:
        cap, _ = captured(net, kw, keep_maps=True)
    finally:
        for h in handles:
            h.remove()
    per_layer = []
    for i, a in enumerate(attns):
        q = a.norm_q(heads(store[f"{i}to_q"], a.heads))  # image queries (SD3 order: [image, text])
        k = a.norm_added_k(heads(store[f"{i}add_k_proj"], a.heads))  # text keys
        lse, maps = lse_and_maps(q, k)
        torch.testing.assert_close(cap.sink[f"transformer_blocks.{i}.attn"], lse)
        torch.testing.assert_close(cap.maps()[f"transformer_blocks.{i}.attn"], maps)
        per_layer.append(lse)
    torch.testing.assert_close(cap.score(), torch.stack(per_layer).mean(0))


def rope(x, cos, sin):
    """FLUX's rotary embedding on (B, h, n, d): pairs (x0, x1) rotated by the position's angles."""
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return x * cos + torch.stack([-x1, x0], -1).flatten(-2) * sin


def test_flux_score_is_the_image_text_block_lse_after_norms_and_rope(flux):
    net, kw = flux
    dbl, sgl = net.transformer_blocks[0].attn, net.single_transformer_blocks[0].attn
    store, handles = record({"pe": net.pos_embed, "dq": dbl.to_q, "dk": dbl.add_k_proj, "sq": sgl.to_q, "sk": sgl.to_k})
    try:
        cap, _ = captured(net, kw, layers="all", keep_maps=True)
    finally:
        for h in handles:
            h.remove()
    cos, sin = store["pe"]  # (text + image, d): FLUX's order [text, image]
    txt, img = slice(0, N_TEXT), slice(N_TEXT, None)
    # double stream: image queries from to_q, text keys from add_k_proj; RoPE at their places in [text, image]
    q = rope(dbl.norm_q(heads(store["dq"], dbl.heads).transpose(1, 2)).transpose(1, 2), cos[img], sin[img])
    k = rope(dbl.norm_added_k(heads(store["dk"], dbl.heads).transpose(1, 2)).transpose(1, 2), cos[txt], sin[txt])
    lse, maps = lse_and_maps(q, k)
    torch.testing.assert_close(cap.sink["transformer_blocks.0.attn"], lse)
    torch.testing.assert_close(cap.maps()["transformer_blocks.0.attn"], maps)
    # single stream: one projection of the joined [text, image] tokens
    q = rope(sgl.norm_q(heads(store["sq"], sgl.heads).transpose(1, 2)).transpose(1, 2), cos, sin)
    k = rope(sgl.norm_k(heads(store["sk"], sgl.heads).transpose(1, 2)).transpose(1, 2), cos, sin)
    lse2, maps2 = lse_and_maps(q[:, :, img], k[:, :, txt])
    torch.testing.assert_close(cap.sink["single_transformer_blocks.0.attn"], lse2)
    torch.testing.assert_close(cap.maps()["single_transformer_blocks.0.attn"], maps2)
    torch.testing.assert_close(cap.score(), (lse + lse2) / 2)


# ---------------------------------------------------------------------- (3) text keys are what is read
@pytest.mark.parametrize("model", ["sd3", "flux"])
def test_score_reads_the_text_keys_not_the_image_keys(model, request):
    net, kw = request.getfixturevalue(model)
    base = captured(net, kw)[0].score()
    flipped = captured(net, kw, **{k: kw[k].flip(0) for k in kw if k not in ("img_ids", "txt_ids")})[0].score()
    torch.testing.assert_close(flipped, base.flip(0))  # one score per pair, whatever else is in the batch
    other_text = captured(net, kw, encoder_hidden_states=kw["encoder_hidden_states"].flip(0))[0].score()
    assert not torch.allclose(other_text, base.flip(0)) and not torch.allclose(other_text, base)  # pair's text
    attn = net.transformer_blocks[0].attn
    saved = {n: p.clone() for n, p in attn.named_parameters()}
    try:
        with torch.no_grad():
            attn.to_k.weight.zero_(), attn.to_k.bias.zero_()  # image keys gone: the text block keeps its spread
            no_img_keys = captured(net, kw)[0].sink["transformer_blocks.0.attn"]
            attn.add_k_proj.weight.zero_(), attn.add_k_proj.bias.zero_()  # text keys 0 (after norm and RoPE too)
            no_txt_keys = captured(net, kw)[0].sink["transformer_blocks.0.attn"]
    finally:
        with torch.no_grad():
            for n, p in attn.named_parameters():
                p.copy_(saved[n])
    assert not torch.allclose(no_img_keys, torch.full((2,), math.log(N_TEXT)))
    torch.testing.assert_close(no_txt_keys, torch.full((2,), math.log(N_TEXT)))  # LSE of N_TEXT zero logits


def test_flux_single_block_is_read_only_when_asked(flux):
    """The default reads the double-stream blocks: a change in the (later) single-stream block changes the
    output but not that score; with layers="all" the single block's image queries enter it."""
    net, kw = flux
    block = net.single_transformer_blocks[0]
    base, base_out = captured(net, kw)
    base_all = captured(net, kw, layers="all")[0].score()
    saved = block.attn.to_q.weight.clone()
    try:
        with torch.no_grad():
            block.attn.to_q.weight.mul_(3.0)  # only the single block's queries
        cap, out = captured(net, kw)
        assert not torch.allclose(out, base_out)
        torch.testing.assert_close(cap.score(), base.score(), atol=0, rtol=0)
        assert not torch.allclose(captured(net, kw, layers="all")[0].score(), base_all)
    finally:
        with torch.no_grad():
            block.attn.to_q.weight.copy_(saved)


# ---------------------------------------------------------------------- refusals
def test_refusals(sd3, flux):
    from diffusers.models.attention_processor import AttnProcessor2_0

    from diffdisc.scoring.attention import make_capture

    net, kw = sd3
    cap = JointAttentionCapture(net)
    with pytest.raises(DiffdiscError, match="run a forward pass"):
        cap.score()
    with pytest.raises(DiffdiscError, match="layers must be one of"):
        JointAttentionCapture(flux[0], layers="single")
    attn = net.transformer_blocks[1].attn
    original = attn.processor
    attn.set_processor(AttnProcessor2_0())
    try:
        with pytest.raises(DiffdiscError, match="reproduces diffusers' JointAttnProcessor2_0"):
            cap.__enter__()
        assert type(net.transformer_blocks[0].attn.processor).__name__ == "JointAttnProcessor2_0"  # none swapped
    finally:
        attn.set_processor(original)
    with pytest.raises(DiffdiscError, match="SD3 or FLUX transformer"):
        JointAttentionCapture(torch.nn.Linear(2, 2))

    def fake(family, cls, conditioning="text", **mods):  # a backbone of `family` with what its class `cls` declares
        info = SimpleNamespace(name="m", family=family, conditioning=conditioning)
        return SimpleNamespace(info=info, capabilities=cls.capabilities, **{"unet": None, "transformer": None, **mods})

    assert isinstance(make_capture(fake("sd3", SD3Backbone, transformer=net)), JointAttentionCapture)
    with pytest.raises(DiffdiscError, match="m is a class-conditional .*no text attention .*use a text-conditional U-Net"):
        make_capture(fake("classcond", ClassCondBackbone, "class"))
    with pytest.raises(DiffdiscError, match="m is a class-conditional .*no text attention"):  # a class DiT too
        make_capture(fake("classcond", ClassCondBackbone, "class", transformer=torch.nn.Linear(2, 2)))
    with pytest.raises(DiffdiscError, match="m is a text-conditional diffusion model \\(pixart\\): it has no text attention"):
        make_capture(fake("pixart", PixArtBackbone, transformer=torch.nn.Linear(2, 2)))


# ---------------------------------------------------------------------- end to end on the tiny pipelines
@pytest.fixture(scope="module")
def sd3_bb(tmp_path_factory, one_thread):
    from diffdisc.backbones.registry import create_backbone
    from family_fixtures import make_sd3_dir

    return create_backbone(make_sd3_dir(tmp_path_factory.mktemp("sd3") / "sd3"))


@pytest.fixture(scope="module")
def flux_bb(tmp_path_factory, one_thread):
    from diffdisc.backbones.registry import create_backbone
    from family_fixtures import make_flux_dir

    return create_backbone(make_flux_dir(tmp_path_factory.mktemp("flux") / "flux"), image_size=8)


PROMPTS = ["a red cat", "a blue dog"]


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_attention_scorer_on_joint_backbones(family, request):
    from diffdisc.scoring.config import ScoreConfig
    from diffdisc.scoring.engine import ScoringEngine

    bb = request.getfixturevalue(f"{family}_bb")
    size = bb.info.image_size
    x0 = bb.encode(torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    conds = bb.conditions(PROMPTS)
    def scores(batch_size):
        return ScoringEngine(bb, ScoreConfig(scorer="attention", batch_size=batch_size)).exhaustive(
            x0, ["a", "b"], conds, [200, 700])  # fmt: skip

    one, three = scores(1), scores(3)
    assert one.shape == (2, 2, 2) and torch.isfinite(one).all()
    torch.testing.assert_close(one, three, atol=1e-5, rtol=1e-5)
    # without the denoising bias the engine's score is minus the captured LSE of one denoiser call
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    t, cond = torch.tensor([300, 600]), conds
    got = ScoringEngine(bb, ScoreConfig(scorer="attention", attention_bias=False)).errors(x0, eps, t, cond)
    with torch.no_grad(), JointAttentionCapture(bb.transformer) as cap:
        bb.predict_eps(bb.add_noise(x0, eps, t), t, cond)
    torch.testing.assert_close(got, -cap.score(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_heatmap_on_joint_backbones(family, request, tmp_path):
    from PIL import Image

    from diffdisc.tasks.attention import attention_heatmaps

    bb = request.getfixturevalue(f"{family}_bb")
    img = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)).save(img)
    png = attention_heatmaps(bb, img, "a red cat", tmp_path / "hm.png", t=300)
    assert png.stat().st_size > 1000


def test_masked_text_keys_and_autocast(sd3, flux):
    """A FLUX key mask (joint_attention_kwargs) leaves the masked text keys out of the LSE; under bf16
    autocast the output is still unchanged and the score stays float32-accurate."""
    net, kw = flux
    n = N_TEXT + 16
    mask = torch.ones(2, 1, 1, n, dtype=torch.bool)
    mask[:, ..., N_TEXT - 2 : N_TEXT] = False  # the last two text tokens are padding
    masked = dict(joint_attention_kwargs={"attention_mask": mask})
    ref = run(net, kw, **masked)
    cap, out = captured(net, kw, layers="all", **masked)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    short = dict(encoder_hidden_states=kw["encoder_hidden_states"][:, : N_TEXT - 2], txt_ids=kw["txt_ids"][: N_TEXT - 2])
    first = captured(net, kw, **short)[0].sink["transformer_blocks.0.attn"]  # the first block sees the same tokens
    torch.testing.assert_close(cap.sink["transformer_blocks.0.attn"], first)

    net, kw = sd3
    fp32 = captured(net, kw)[0].score()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = run(net, kw)
        cap, out = captured(net, kw)
    assert torch.equal(out, ref) and cap.score().dtype == torch.float32
    torch.testing.assert_close(cap.score(), fp32, atol=0.05, rtol=0.02)

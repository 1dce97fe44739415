"""Text-conditional and contrastive recipes, sampling, and the contrastive baseline through `classify`."""

import errno
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from diffdisc.backbones.registry import create_backbone
from diffdisc.datasets.export import export_captions, export_shipped_test
from diffdisc.datasets.fashion_mnist import load_shipped_subset
from diffdisc.datasets.scenes import PALETTE, generate_scenes, single_scenes
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.config import ScoreConfig
from diffdisc.tasks.classify import classify
from diffdisc.tasks.sample import SampleConfig, sample_grid
from diffdisc.training.recipes import get_recipe
from diffdisc.training.train import train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
QUIET = {"log": lambda m: None, "quiet": True}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    return train(get_recipe("tiny-text"), tmp_path_factory.mktemp("text"), **QUIET)


@pytest.fixture(scope="module")
def clip_model(tmp_path_factory):
    return train(get_recipe("tiny-clip"), tmp_path_factory.mktemp("clip"), **QUIET)


def test_text_model_loads_through_the_sd_backbone_and_samples(text_model, tmp_path):
    bb = create_backbone(text_model)
    assert bb.info.family == "sd" and bb.info.conditioning == "text" and not bb.info.latent
    assert bb.info.image_channels == 3 and bb.info.metadata["kind"] == "text"
    assert (text_model / "tokenizer").is_dir() and not (text_model / "vae").exists()
    c = bb.conditions(["a red sneaker", "a sneaker"])
    assert c.shape[0] == 2 and not torch.allclose(c[0], c[1])  # colour words change the condition
    png = sample_grid(bb, ["a red sneaker", "a bag"], SampleConfig(per_key=2, steps=2, guidance=2.0), out=tmp_path / "s.png")
    assert png.is_file() and png.stat().st_size > 1000


def test_sampler_is_seeded_and_guidance_is_per_image(tmp_path):
    from diffdisc.generation.sampler import sample

    model = train(get_recipe("tiny", steps=2), tmp_path / "cc", **QUIET)
    bb = create_backbone(model)
    conds = bb.conditions([0, 1])
    a = sample(bb, conds, steps=3, guidance=torch.tensor([1.0, 3.0]), generator=torch.Generator().manual_seed(0))
    b = sample(bb, conds, steps=3, guidance=torch.tensor([1.0, 3.0]), generator=torch.Generator().manual_seed(0))
    c = sample(bb, conds, steps=3, guidance=torch.tensor([1.0, 1.0]), generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 1, 16, 16) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)
    assert torch.allclose(a[0], c[0], atol=1e-6) and not torch.allclose(a[1], c[1])  # w=1 row unchanged
    with pytest.raises(DiffdiscError, match="unknown scheduler"):
        sample(bb, conds, scheduler="nope")


def test_contrastive_baseline_classifies_through_the_same_task(clip_model, tmp_path):
    bb = create_backbone(clip_model)
    assert bb.info.family == "clip" and bb.info.class_names[0] == "t-shirt"
    data = export_shipped_test(tmp_path / "data", per_class=1, scenes=True)
    res = classify(bb, data, out=tmp_path / "run")
    assert len(res) == 10 and (res.calls == 0).all()
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= m["accuracy"] <= 1 and m["unet_calls_per_image"] == 0
    # the same folder loads with open_clip itself (what users of the baseline do)
    import open_clip

    model = open_clip.create_model(f"local-dir:{clip_model}")
    tok = open_clip.get_tokenizer(f"local-dir:{clip_model}")
    emb = model.encode_text(tok(["a red sneaker"]), normalize=True)
    assert torch.allclose(emb[0], bb.conditions(["a red sneaker"])[0], atol=1e-5)


def test_contrastive_dir_with_only_pickles_is_refused(clip_model, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "open_clip_config.json").write_text((clip_model / "open_clip_config.json").read_text())
    (bad / "open_clip_pytorch_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(DiffdiscError, match="pickle"):
        create_backbone(bad)


def test_text_recipe_trains_on_a_users_captions_file(tmp_path):
    imgs, labels, _ = load_shipped_subset()
    export_captions(generate_scenes(imgs[:40], labels[:40], 12, "pair", seed=3), tmp_path / "caps")
    model = train(get_recipe("tiny-text", data=str(tmp_path / "caps"), steps=2), tmp_path / "out", **QUIET)
    bb = create_backbone(model)
    assert bb.info.metadata["steps"] == 2 and bb.info.class_names == ()
    with pytest.raises(DiffdiscError, match="captions.jsonl"):
        train(get_recipe("tiny-text", data=str(tmp_path)), tmp_path / "out2", **QUIET)


def test_disk_full_while_checkpointing_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = get_recipe("tiny", steps=2, checkpoint_every=1)
    out = tmp_path / "r"
    train(cfg, out, **QUIET)
    good = sorted(p.name for p in (out / "checkpoints").iterdir())
    import safetensors.torch

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(DiffdiscError, match=r"No space left on device.*\); step-000002 is intact"):
        train(get_recipe("tiny", steps=3, checkpoint_every=1), out, **QUIET)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == good  # no half-written step-000003
    monkeypatch.undo()
    model = train(get_recipe("tiny", steps=3, checkpoint_every=1), out, **QUIET)  # space freed: resumes
    assert json.loads((model / "diffdisc.json").read_text())["steps"] == 3


def test_single_scenes_keep_pixels_order_and_labels():
    imgs, labels, _ = load_shipped_subset()
    a = single_scenes(imgs[:20], labels[:20], seed=1)
    b = single_scenes(imgs[:20], labels[:20], seed=1)
    assert np.array_equal(a.images, b.images) and a.captions == b.captions
    for s, y, g in zip(a, labels[:20], imgs[:20], strict=True):
        it = s.items[0]
        assert it.class_id == y and it.position == "centre" and it.colour in PALETTE
        # the tinted item is the source item: its brightest channel follows the grey pixels' order
        ch = int(np.argmax(PALETTE[it.colour]))
        assert np.corrcoef(s.image[2:30, 2:30, ch].ravel(), g.ravel())[0, 1] > 0.99


def test_match_scores_groups_resumes_and_computes_winoground_metrics(text_model, clip_model, tmp_path):
    from diffdisc.data.groups import load_groups
    from diffdisc.datasets.probes import make_probe
    from diffdisc.scoring.match_metrics import winoground_scores
    from diffdisc.tasks.match import match

    groups = make_probe("binding", 3, seed=0)
    assert [g.id for g in groups] == [g.id for g in make_probe("binding", 3, seed=0)]
    bb = create_backbone(text_model)
    recs = match(bb, groups, n_timesteps=2, out=tmp_path / "m", chunk_groups=2)
    assert [np.array(r["scores"]).shape for r in recs] == [(2, 2)] * 3 and all(r["calls"] == 8 for r in recs)
    again = match(bb, groups, n_timesteps=2, out=tmp_path / "m")  # all stored: nothing recomputed
    assert again == recs
    # the engine's shared noise: scores equal a direct per-pair computation
    from diffdisc.tasks.match import score_chunk

    direct = score_chunk(bb, groups[:1], ScoreConfig(), [250, 750])
    assert np.allclose(direct[0], recs[0]["scores"], rtol=1e-5)
    assert winoground_scores(np.array([[0.1, 0.2], [0.3, 0.2]])) == (True, False, False)
    m = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert m["n_groups"] == 3 and 0 <= m["group"]["mean"] <= m["text"]["mean"]
    # contrastive through the same task; JSONL groups from files
    for i, g in enumerate(groups):
        for j, im in enumerate(g.images):
            Image.fromarray(im).save(tmp_path / f"{i}-{j}.png")
    rows = [{"id": g.id, "images": [f"{i}-0.png", f"{i}-1.png"], "captions": list(g.captions)} for i, g in enumerate(groups)]
    (tmp_path / "groups.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_groups(tmp_path / "groups.jsonl")
    crecs = match(create_backbone(clip_model), loaded, out=tmp_path / "c")
    assert all(r["calls"] == 0 and np.array(r["scores"]).shape == (2, 2) for r in crecs)
    (tmp_path / "bad.jsonl").write_text('{"id": 1, "images": ["a.png"]}\n')
    with pytest.raises(DiffdiscError, match="captions"):
        load_groups(tmp_path / "bad.jsonl")


def test_retrieval_metrics_on_a_square_group():
    from diffdisc.scoring.match_metrics import match_metrics

    S = np.full((6, 6), 1.0)
    np.fill_diagonal(S, 0.0)
    S[0, 0] = 2.0  # image 0 ranks its caption last
    m = match_metrics([S])
    assert m["text_R@1"]["mean"] == pytest.approx(5 / 6) and m["text_R@5"]["mean"] == pytest.approx(5 / 6)
    assert "group" not in m


def test_cross_attention_capture_keeps_the_forward_and_scores_per_pair(text_model):
    from diffdisc.scoring.attention import CrossAttentionCapture, discffusion_layers

    bb = create_backbone(text_model)
    names = [n for n, _ in discffusion_layers(bb.unet)]
    assert names and all(n.endswith("attn2") for n in names)
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([10, 500, 900])
    c = bb.conditions(["a red sneaker", "a bag", "a blue bag"])
    with torch.no_grad():
        ref = bb.predict_eps(x, t, c)
        with CrossAttentionCapture(bb.unet, keep_maps=True) as cap:
            out = bb.predict_eps(x, t, c)
            s = cap.score()
        solo = []
        for i in range(3):  # per pair, not batch-averaged: one pair alone gives the same number
            with CrossAttentionCapture(bb.unet) as cap1:
                bb.predict_eps(x[i : i + 1], t[i : i + 1], c[i : i + 1])
                solo.append(cap1.score()[0])
    assert torch.allclose(ref, out, atol=1e-5) and s.shape == (3,)
    assert torch.allclose(s, torch.stack(solo), atol=1e-5)
    # manual LSE from the layers' own inputs (captured by pre-hooks) equals the captured score
    inputs, handles = {}, []
    for name, attn in discffusion_layers(bb.unet):
        hook = lambda m, a, kw, name=name: inputs.__setitem__(name, (a[0] if a else kw["hidden_states"], kw["encoder_hidden_states"]))  # noqa: E731
        handles.append(attn.register_forward_pre_hook(hook, with_kwargs=True))
    with torch.no_grad():
        bb.predict_eps(x, t, c)
        manual = []
        for name, attn in discffusion_layers(bb.unet):
            h, e = inputs[name]
            q, k = attn.head_to_batch_dim(attn.to_q(h)), attn.head_to_batch_dim(attn.to_k(e))
            lse = torch.logsumexp(q @ k.transpose(1, 2) * attn.scale, -1).view(3, attn.heads, -1)
            manual.append(lse.mean((1, 2)))
    for hd in handles:
        hd.remove()
    assert torch.allclose(s, torch.stack(manual).mean(0), atol=1e-5)
    assert all(m.shape[0] == 3 and m.shape[-1] == bb.tokenizer.model_max_length for m in cap.maps().values())
    assert type(bb.unet.down_blocks[-1].attentions[0].transformer_blocks[0].attn2.processor).__name__ != "_CaptureProcessor"


def test_lora_gradient_step_lowers_the_hinge_loss(text_model):
    from diffdisc.datasets.probes import make_probe
    from diffdisc.scoring.attention import CrossAttentionCapture
    from diffdisc.tasks.attention import add_lora, group_loss

    bb = create_backbone(text_model)
    add_lora(bb)
    params = [p for n, p in bb.unet.named_parameters() if "lora_" in n]
    assert params and all(p.requires_grad for p in params)
    cap, grp = CrossAttentionCapture(bb.unet), make_probe("binding", 1, seed=1000)[0]
    opt = torch.optim.SGD(params, lr=1.0)
    losses = []
    for _ in range(3):  # the same t and noise each time: only the weights change
        loss = group_loss(bb, cap, grp, torch.Generator().manual_seed(0), margin=1.0)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0]


def test_attention_scorer_lora_tuning_and_heatmap(text_model, tmp_path):
    from diffdisc.datasets.probes import make_probe
    from diffdisc.tasks.attention import LoraConfig, attention_heatmaps, load_lora, tune
    from diffdisc.tasks.match import match

    ev, train_groups = make_probe("binding", 2, seed=0), make_probe("binding", 3, seed=1000)
    plain = create_backbone(text_model)
    score = ScoreConfig(scorer="attention")
    base = match(plain, ev, score=score, n_timesteps=2, out=tmp_path / "a0")
    assert all(r["calls"] == 16 for r in base)  # 4 pairs x 2 t x (cond + uncond for the bias)
    in_memory = create_backbone(text_model)
    adapter = tune(in_memory, train_groups, LoraConfig(lr=1e-2, seed=0), out=tmp_path / "lora")
    assert (adapter / "adapter_model.safetensors").is_file()
    tuned = create_backbone(text_model)
    load_lora(tuned, adapter)
    assert tuned.info.fingerprint != plain.info.fingerprint
    after = match(tuned, ev, score=score, n_timesteps=2, out=tmp_path / "a1")
    again = match(in_memory, ev, score=score, n_timesteps=2, out=tmp_path / "a2")  # saved == trained weights
    assert np.allclose(np.array(after[0]["scores"]), np.array(again[0]["scores"]), atol=1e-6)
    assert not np.allclose(np.array(after[0]["scores"]), np.array(base[0]["scores"]))
    png = attention_heatmaps(tuned, ev[0].images[0], ev[0].captions[0], tmp_path / "hm.png")
    assert png.stat().st_size > 1000
    with pytest.raises(DiffdiscError, match="text-conditional"):
        match(create_backbone(train(get_recipe("tiny", steps=1), tmp_path / "cc", **QUIET)), ev, score=score)
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["diffdisc"]["model_fingerprint"] = "0000"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    (other / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    with pytest.raises(DiffdiscError, match="trained for model 0000"):
        load_lora(create_backbone(text_model), other)

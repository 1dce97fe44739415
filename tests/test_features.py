"""Diffusion features (issue 6): taps, cache, heads, sweep selection, errors. Tiny models from conftest."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from diffdisc.backbones.registry import create_backbone
from diffdisc.data.labelled import LabelledImages
from diffdisc.errors import DiffdiscError
from diffdisc.features.cache import FeatureCache, cached_features, model_fingerprint
from diffdisc.features.heads import FittedHead, HeadConfig, fit_head, stratified_split
from diffdisc.features.taps import ExtractStats, describe_blocks, extract
from diffdisc.results.sweep import SWEEP_JSON
from diffdisc.scoring.config import ScoreConfig
from diffdisc.scoring.engine import ScoringEngine
from diffdisc.tasks.features import FeatureConfig, SweepConfig, parse_cells, sweep, sweep_on_features


@pytest.fixture(scope="module")
def cc(classcond_dir):
    return create_backbone(classcond_dir)


def _images(n=6, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1, [f"img{i}" for i in range(n)]


def _manual_unet2d(net, x, t, labels):
    """UNet2DModel.forward written out by hand, returning each top-level block's output and ε̂."""
    emb = net.time_embedding(net.time_proj(t).to(x.dtype)) + net.class_embedding(labels)
    h = net.conv_in(x)
    res, acts = (h,), {}
    for i, blk in enumerate(net.down_blocks):
        h, r = blk(hidden_states=h, temb=emb)
        res += r
        acts[f"down.{i}"] = h
    h = net.mid_block(h, emb)
    acts["mid"] = h
    for i, blk in enumerate(net.up_blocks):
        n = len(blk.resnets)
        h, res = blk(h, res[-n:], emb), res[:-n]
        acts[f"up.{i}"] = h
    return acts, net.conv_out(net.conv_act(net.conv_norm_out(h)))


def test_hooked_features_equal_a_manual_forward(cc, one_thread):
    x, keys = _images(5)
    blocks, ts = ["down.0", "down.1", "mid", "up.0", "up.1"], [10, 600]
    got = extract(cc, x, keys, blocks, ts, ("flat", "gap"), batch_size=2)
    eng = ScoringEngine(cc, ScoreConfig(seed=0))
    null = cc.null_condition().expand(5)
    with torch.inference_mode():
        for t in ts:
            tt = torch.full((5,), t)
            x_t = cc.add_noise(x, eng.noise(keys, [t] * 5, (3, 16, 16)), tt)
            acts, eps = _manual_unet2d(cc.model, x_t, tt, null)
            torch.testing.assert_close(eps, cc.model_output(x_t, tt, null))  # the hand-written forward is right
            for b in blocks:
                torch.testing.assert_close(got[(b, t, "flat")], acts[b], atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(got[(b, t, "gap")], acts[b].mean((2, 3)), atol=1e-5, rtol=1e-4)


def test_one_forward_per_image_and_t_whatever_the_blocks_and_batch(cc, one_thread):
    x, keys = _images(6)
    calls = []
    h = cc.model.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        st = ExtractStats()
        a = extract(cc, x, keys, ["down.0", "down.1", "mid", "up.0", "up.1", "mid.attn.0"], [5, 500, 900], ("gap", "avg2"),
                    batch_size=4, stats=st)  # fmt: skip
    finally:
        h.remove()
    assert st.forwards == 6 * 3 and len(calls) == 2 * 3  # 2 batches x 3 timesteps, not x 6 blocks
    b = extract(cc, x, keys, ["mid"], [500], ("gap",), batch_size=6)  # other batch size, other block set
    torch.testing.assert_close(a[("mid", 500, "gap")], b[("mid", 500, "gap")], atol=1e-5, rtol=1e-4)
    c = extract(cc, x, keys, ["mid"], [500], ("gap",), batch_size=6, stop_early=False)
    torch.testing.assert_close(b[("mid", 500, "gap")], c[("mid", 500, "gap")])


def test_text_conditional_backbone_taps_and_caption_condition(sd_dir, one_thread):
    bb = create_backbone(sd_dir)
    names = [b.name for b in describe_blocks(bb)]
    assert names == ["down.0", "down.1", "mid", "up.0", "up.1"]
    x, keys = _images(2, size=bb.info.image_size)
    null = extract(bb, x, keys, ["mid", "up.1"], [100], ("gap",))
    cap = extract(bb, x, keys, ["mid", "up.1"], [100], ("gap",), condition="caption:a red cat")
    assert null[("up.1", 100, "gap")].shape == (2, 16)
    assert not torch.allclose(null[("up.1", 100, "gap")], cap[("up.1", 100, "gap")])
    with pytest.raises(DiffdiscError, match="text-conditional"):
        extract(bb, x, keys, ["mid"], [100], condition="class:red")


def test_cache_round_trip_and_stale_fingerprint_recompute(classcond_dir, tmp_path, one_thread):
    bb = create_backbone(classcond_dir)
    x, keys = _images(7)
    cache = FeatureCache(tmp_path / "cache")
    st = ExtractStats()
    a = cached_features(bb, x, keys, ["down.1", "mid"], [20, 300], ("gap", "avg2"), cache=cache, stats=st, chunk=4)
    assert st.forwards == 7 * 2 and st.cache_hits == 0
    shards = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(shards) == 2 * 2 * 2 * 2  # blocks x t x poolings x chunks
    st2 = ExtractStats()
    b = cached_features(bb, x, keys, ["down.1", "mid"], [20, 300], ("gap", "avg2"), cache=cache, stats=st2, chunk=4)
    assert st2.forwards == 0 and st2.cache_hits == 16  # a hit never runs the U-Net
    for k in a:
        assert torch.equal(a[k], b[k])
    # a new cell at a cached t: one forward per image at that t only
    st3 = ExtractStats()
    cached_features(bb, x, keys, ["down.1", "up.0"], [20, 300], ("gap",), cache=cache, stats=st3, chunk=4)
    assert st3.forwards == 7 * 2 and st3.cache_hits == 4
    # another version of the model under the same name: the cache is stale and recomputed
    old = model_fingerprint(bb)
    with torch.no_grad():
        bb.model.mid_block.resnets[0].conv1.weight.add_(0.05)
    assert model_fingerprint(bb) != old
    logs = []
    st4 = ExtractStats()
    c = cached_features(bb, x, keys, ["mid"], [20], ("gap",), cache=FeatureCache(tmp_path / "cache", logs.append), stats=st4, chunk=4)
    assert st4.stale >= 1 and st4.forwards == 7 and any("another version" in m for m in logs)
    fresh = extract(bb, x, keys, ["mid"], [20], ("gap",))
    torch.testing.assert_close(c[("mid", 20, "gap")], fresh[("mid", 20, "gap")])
    assert not torch.allclose(c[("mid", 20, "gap")], a[("mid", 20, "gap")])


def _blobs(n_per, classes=3, dim=32, sep=6.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g) * sep
    y = torch.arange(classes).repeat_interleave(n_per)
    return centres[y] + torch.randn(len(y), dim, generator=g), y.numpy()


@pytest.mark.parametrize("optimizer", ["lbfgs", "adamw"])
def test_linear_probe_on_separable_features_reaches_100(optimizer, one_thread):
    x, y = _blobs(100)  # 300 points, 3 well separated classes
    idx = np.random.default_rng(0).permutation(len(y))
    train, test = idx[:200], idx[200:]
    tr, va = stratified_split(y[train], 0.2, 0)
    h = fit_head([x[train][tr]], y[train][tr], [x[train][va]], y[train][va], 3, HeadConfig(optimizer=optimizer, epochs=50))
    assert h.val_acc == 1.0 and h.accuracy([x[test]], y[test]) == 1.0
    assert set(h.grid) == set(HeadConfig().decays)


def test_attention_head_learns_tokens_and_saves(tmp_path, one_thread):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(3).repeat_interleave(40)
    maps = torch.randn(len(y), 8, 2, 2, generator=g) * 0.5
    maps[torch.arange(len(y)), y, 0, 0] += 4.0  # class = which channel lights up the top-left token
    tr, va = stratified_split(y.numpy(), 0.25, 0)
    cfg = HeadConfig(kind="attention", dim=16, heads=2, epochs=40, lr=3e-3, patience=10)
    h = fit_head([maps[tr]], y[tr], [maps[va]], y[va], 3, cfg)
    assert h.val_acc >= 0.9
    h.save_pretrained(tmp_path / "head")
    h2 = FittedHead.from_pretrained(tmp_path / "head")
    assert torch.equal(h.predict([maps]), h2.predict([maps]))
    # fusion: two sources with different channel counts
    other = torch.randn(len(y), 4, 3, 3, generator=g)
    hf = fit_head([maps[tr], other[tr]], y[tr], [maps[va], other[va]], y[va], 3, cfg)
    assert hf.val_acc >= 0.9
    with pytest.raises(DiffdiscError, match="spatial tokens"):
        fit_head([maps[tr].mean((2, 3))], y[tr], [maps[va].mean((2, 3))], y[va], 3, cfg)


def test_best_cell_is_chosen_on_validation_not_test(one_thread):
    """Cell (a, 1) separates train/val but not test; (b, 2) is perfect on test and noise on train.
    A test-peeking sweep would pick (b, 2); ours must pick (a, 1) and score the test set there only."""
    x_good, y = _blobs(40)
    g = torch.Generator().manual_seed(5)
    noise = {c: torch.randn(len(y), 32, generator=g) for c in [("a", 2), ("b", 1), ("b", 2)]}
    train = {("a", 1): x_good, **noise}
    xt_good, yt = _blobs(20, seed=3)
    test = {("a", 1): torch.randn(len(yt), 32, generator=g), ("a", 2): torch.randn(len(yt), 32, generator=g),
            ("b", 1): torch.randn(len(yt), 32, generator=g), ("b", 2): xt_good}  # fmt: skip
    asked = []

    def test_fn(b, t):
        asked.append((b, t))
        return test[(b, t)]

    grid, cell, test_acc, head, _ = sweep_on_features(lambda b, t: train[(b, t)], y, ["a", "b"], [1, 2], test_features=test_fn,
                                                      y_test=yt, head=HeadConfig(weight_decays=(1e-3,)), val_fraction=0.25)  # fmt: skip
    assert grid.shape == (2, 2) and cell == ("a", 1) and asked == [("a", 1)]
    assert grid[0, 0] == 1.0 and grid[1, 1] < 0.8
    assert test_acc < 0.7  # honest: the chosen cell does not transfer to this (adversarial) test set


def test_sweep_end_to_end_writes_schema_and_heatmap(classcond_dir, image_folder, tmp_path, one_thread):
    bb = create_backbone(classcond_dir)
    train = LabelledImages.from_folder(image_folder)
    test = LabelledImages.from_folder(image_folder, class_names=train.class_names).subset(range(8, -1, -1))  # other order
    grid = SweepConfig(["down.1", "mid"], [10, 500], features=FeatureConfig(pooling="avg2", val_fraction=0.3),
                       head=HeadConfig(weight_decays=(1e-3,), max_iter=30))  # fmt: skip
    r = sweep(bb, train, grid, test=test, cache=tmp_path / "cache", out=tmp_path / "out")
    data = json.loads((tmp_path / "out" / SWEEP_JSON).read_text())
    assert list(data) == ["model", "blocks", "timesteps", "val_acc", "best", "test_acc", "head", "pooling", "n_train", "n_val", "n_test"]
    assert data["blocks"] == ["down.1", "mid"] and data["timesteps"] == [10, 500]
    assert np.asarray(data["val_acc"]).shape == (2, 2) and set(data["best"]) == {"block", "t", "val_acc"}
    assert data["best"]["val_acc"] == max(max(row) for row in data["val_acc"])
    assert (data["n_train"], data["n_val"], data["n_test"]) == (6, 3, 9) and data["head"] == "linear" and data["pooling"] == "avg2"
    assert isinstance(data["test_acc"], float) and (tmp_path / "out" / "features_sweep.png").stat().st_size > 1000
    details = json.loads((tmp_path / "out" / "features_sweep_details.json").read_text())
    assert details["unet_forwards_train"] == 9 * 2 and details["unet_forwards_test"] == 9  # test: one t only
    r2 = sweep(bb, train, grid, cache=tmp_path / "cache")
    assert r2.val_acc == r.val_acc and r2.details["unet_forwards_train"] == 0 and r2.test_acc is None


def test_bad_input_errors(cc, image_folder, tmp_path):
    x, keys = _images(2)
    with pytest.raises(DiffdiscError, match=r"unknown block 'middle'.*valid: down\.0, down\.1, mid, up\.0, up\.1"):
        extract(cc, x, keys, ["middle"], [10])
    with pytest.raises(DiffdiscError, match=r"timestep 1000 out of range 0\.\.999"):
        extract(cc, x, keys, ["mid"], [1000])
    with pytest.raises(DiffdiscError, match="unknown pooling"):
        extract(cc, x, keys, ["mid"], [10], ("avg",))
    with pytest.raises(DiffdiscError, match="bad condition"):
        extract(cc, x, keys, ["mid"], [10], condition="label")
    with pytest.raises(DiffdiscError, match="too few labelled examples.*class 'b' has 1"):
        stratified_split([0, 0, 0, 1, 2, 2], 0.2, class_names=["a", "b", "c"])
    with pytest.raises(DiffdiscError, match="BLOCK@T"):
        parse_cells("mid:100")
    train = LabelledImages.from_folder(image_folder)
    tiny = train.subset([0, 1, 3, 6, 7])  # one image of the middle class
    with pytest.raises(DiffdiscError, match="too few labelled examples"):
        sweep(cc, tiny, SweepConfig(["mid"], [10]))
    with pytest.raises(DiffdiscError, match="spatial tokens"):
        sweep(cc, train, SweepConfig(["mid"], [10], head=HeadConfig(kind="attention")))


def test_cli_blocks_sweep_and_one_line_errors(classcond_dir, image_folder, tmp_path, capsys, monkeypatch):
    """In-process through `main()` (what the console script runs): exit codes and one-line errors."""
    from diffdisc import cli

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["diffdisc", "features", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            cli.main()
            raise SystemExit(0)
        return e.value.code, *capsys.readouterr()

    code, out, err = run("blocks", "--model", classcond_dir)
    assert code == 0 and out.split("\n")[0].split()[0] == "down.0" and "mid" in out
    code, out, err = run("sweep", "--model", classcond_dir, "--data", image_folder, "--out", tmp_path / "o", "--blocks", "mid,bogus",
                         "--cache", tmp_path / "c")  # fmt: skip
    assert code != 0 and err.strip().count("\n") == 0 and "unknown block 'bogus'" in err and "Traceback" not in err
    code, out, err = run("sweep", "--model", classcond_dir, "--data", image_folder, "--out", tmp_path / "o", "--blocks", "mid",
                         "--timesteps", "10,500", "--val-fraction", "0.3", "--cache", tmp_path / "c", "--json", "--weight-decays", "1e-3")  # fmt: skip
    assert code == 0 and json.loads(out)["timesteps"] == [10, 500] and (tmp_path / "o" / "features_sweep.png").is_file()


def test_probe_fuses_cells_and_compare_uses_the_same_head(cc, image_folder, tmp_path, one_thread):
    from diffdisc.tasks.features import CellConfig, compare, probe

    train = LabelledImages.from_folder(image_folder)
    test = train.subset(range(8, -1, -1))
    cfg = FeatureConfig(pooling="avg2", val_fraction=0.3)
    head = HeadConfig(weight_decays=(1e-3,), max_iter=20)
    r, fitted = probe(cc, train, CellConfig([("mid", 10), ("up.0", 500)], features=cfg, head=head), test=test,
                      cache=tmp_path / "c")  # fmt: skip
    assert r.dims == 32 * 4 * 2 and r.n_test == 9 and 0 <= r.test_acc <= 1 and fitted.shapes == [[32, 2, 2], [32, 2, 2]]
    att_head = HeadConfig(kind="attention", dim=16, heads=2, epochs=2)
    att, _ = probe(cc, train, CellConfig([("mid", 10), ("down.0", 10)], features=cfg, head=att_head), cache=tmp_path / "c")
    assert att.test_acc is None and 0 <= att.val_acc <= 1
    rows = compare(cc, train, CellConfig([("mid", 10)], features=cfg, head=head), test=test, cache=tmp_path / "c")
    assert [row.representation.split()[0] for row in rows] == ["mid@10", "pixels"] and rows[1].dims == 3 * 16 * 16

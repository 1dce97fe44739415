"""`diffdisc claims` stages `diversity` and `robustness` at the tiny size on the shipped models, and the
effective-robustness fit and its refitting bootstrap on synthetic accuracies."""

import os

import numpy as np
import pytest
from scipy.stats import norm

from diffdisc.datasets.shifts import CLEAN
from diffdisc.tasks import robustness as R
from diffdisc.tasks.claims import diversity, robustness
from diffdisc.tasks.claims.base import ClaimContext, verdict


def _rows(acc: dict[str, list[float]], roles: dict[str, str], shifts: list[str], n: int) -> list[dict]:
    return [{"model": m, "kind": "scenes", "shift": s, "role": roles[m], "accuracy": a[j], "clean": a[0], "n": n}
            for m, a in acc.items() for j, s in enumerate([CLEAN, *shifts])]  # fmt: skip


def test_fit_recovers_a_known_effective_robustness():
    """CNNs and a contrastive model on known probit lines, a diffusion model 7 points above them: the vectorised
    fit, the row-wise one (bench's) and the item-level values all give back 7 points and the lines."""
    lines = {"noise": (0.8, -0.5), "blur": (1.2, -0.9)}
    clean = {"cnn a": 0.3, "cnn b": 0.5, "cnn c": 0.7, "cnn d": 0.9, "clip": 0.8, "diff": 0.6}
    roles = {m: "cnn" for m in clean} | {"clip": "contrastive", "diff": "diffusion"}
    acc = {m: [c] + [norm.cdf(a * norm.ppf(c) + b) + (0.07 if m == "diff" else 0) for a, b in lines.values()]
           for m, c in clean.items()}  # fmt: skip
    n = 10**7  # the clipping of the probit does not matter
    models = list(acc)
    fit, of = [models.index(m) for m in models if m != "diff"], [models.index("diff"), models.index("clip")]
    er, parts = R.er_from_accuracies(np.array([acc[m] for m in models]), fit, of, n)
    assert er[0] == pytest.approx([0.07, 0.07], abs=1e-9) and er[1] == pytest.approx([0, 0], abs=1e-9)
    assert parts["slope"] == pytest.approx([0.8, 1.2]) and parts["intercept"] == pytest.approx([-0.5, -0.9])
    rows = _rows(acc, roles, list(lines), n)
    fits = R.fit_lines(rows, R.FIT_ROLES["baselines"])
    R.add_effective_robustness(rows, fits)
    assert fits["scenes/noise"]["slope"] == pytest.approx(0.8)
    assert [r["effective_robustness"] for r in rows if r["model"] == "diff" and r["shift"] != CLEAN] == pytest.approx([0.07, 0.07])
    # item level: 1,000 items whose means are those accuracies (rounded to 1/1000)
    N = 1000
    C = np.array([[np.arange(N) < round(a * N) for a in acc[m]] for m in models], np.float64)
    per_item = R.item_effective_robustness(C, fit, models.index("diff"))
    assert per_item.shape == (N,) and per_item.mean() == pytest.approx(0.07, abs=3e-3)


def test_bootstrap_refits_every_resample():
    """The vectorised bootstrap equals refitting by hand (fit_lines / predicted on the resampled items)."""
    rng = np.random.default_rng(1)
    M, S, N = 5, 2, 60  # diffusion, contrastive, 3 CNNs; clean + 2 shifts
    C = (rng.random((M, 1 + S, N)) < np.array([0.6, 0.8, 0.3, 0.5, 0.7])[:, None, None]).astype(np.float64)
    boot = R.bootstrap_effective_robustness(C, [1, 2, 3, 4], [0], n=5, seed=0)
    idx = np.random.default_rng(0).integers(0, N, (5, N))
    roles = ["diffusion", "contrastive", "cnn", "cnn", "cnn"]
    for b in range(5):
        acc = {str(m): list(C[m][:, idx[b]].mean(-1)) for m in range(M)}
        rows = _rows(acc, dict(zip(acc, roles, strict=True)), ["s1", "s2"], N)
        fits = R.fit_lines(rows, R.FIT_ROLES["baselines"])
        want = np.mean([acc["0"][1 + j] - R.predicted(fits[f"scenes/{s}"], acc["0"][0]) for j, s in enumerate(["s1", "s2"])])
        assert boot[b, 0] == pytest.approx(want, abs=1e-9)


@pytest.fixture(scope="module")
def loaded():
    return {}  # one ClaimContext cache for the module: the shipped models load once


def _ctx(tmp_path, loaded):
    return ClaimContext(tmp_path, _loaded=loaded)


# rewritten on every call though nothing is recomputed: classify's summaries (from its shards), synth.json, logs
SUMMARIES = {"metrics.json", "results.jsonl", "predictions.jsonl", "synth.json", "train.log"}


def _mtimes(root):
    """Every file a stage made (scores, images, weights, exports) and when it was last written."""
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and p.name not in SUMMARIES}


def test_robustness_tiny(tmp_path, loaded, monkeypatch):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    [c] = robustness.run(_ctx(tmp_path, loaded), robustness.SIZES["tiny"])
    assert c.id == "effective_robustness" and c.source == "Li et al. 2023" and c.n == 10
    assert c.verdict == verdict(c.ci) and c.ci[0] <= c.value <= c.ci[1]
    d = c.details
    assert len(d["points"]) == 4 and {p["shift"] for p in d["points"]} == {"gaussian_noise@3"}
    assert {"clean", "shifted", "model"} <= set(d["points"][0])
    diff = next(p for p in d["points"] if p["role"] == "diffusion")
    want = 100 * (diff["shifted"] - R.predicted({**d["fits"]["gaussian_noise@3"]}, diff["clean"]))
    assert c.value == pytest.approx(want, abs=1e-3) == d["diffusion"]["per_shift"]["gaussian_noise@3"]
    assert d["contrastive"]["effective_robustness"] is not None and d["settings"]["resamples"] == 2000
    # a rerun trains and classifies nothing new: every file it made is untouched
    before = _mtimes(tmp_path)
    monkeypatch.setattr("diffdisc.tasks.baseline.train_classifier", lambda *a, **k: pytest.fail("retrained a CNN"))
    [again] = robustness.run(_ctx(tmp_path, loaded), robustness.SIZES["tiny"])
    assert again.value == c.value and again.ci == c.ci and _mtimes(tmp_path) == before


def test_diversity_tiny(tmp_path, loaded, monkeypatch):
    [c] = diversity.run(_ctx(tmp_path, loaded), diversity.SIZES["tiny"])
    assert c.id == "diversity" and c.source == "Shipard et al. 2023" and c.n == 10
    assert c.verdict == verdict(c.ci) and c.ci[0] <= c.value <= c.ci[1]
    d = c.details
    assert c.value == pytest.approx(d["all_tricks"]["accuracy"] - d["no_tricks"]["accuracy"], abs=1e-4)
    assert d["all_tricks"]["tricks"] == ["template", "domain", "guidance"] and d["no_tricks"]["tricks"] == []
    assert d["settings"]["sampler"] == "dpm" and all((tmp_path / r["set"] / "metadata.jsonl").is_file() for r in d["runs"].values())
    before = _mtimes(tmp_path)
    monkeypatch.setattr("diffdisc.tasks.synth.sample", lambda *a, **k: pytest.fail("rendered again"))
    monkeypatch.setattr(diversity, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
    [again] = diversity.run(_ctx(tmp_path, loaded), diversity.SIZES["tiny"])
    assert again.value == c.value and again.ci == c.ci and _mtimes(tmp_path) == before

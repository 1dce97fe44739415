"""Run identity from the config (issue 25 #2): `RunStore` records a task's config and its model/data identities
itself, a resume may change only the fields marked speed-only, run.json files written before (hand-built, no
"version") still resume with the unchanged command, every output directory has the run.json header, and tasks
return Result objects that still read as what they returned before."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pytest

from diffdisc.backbones.capabilities import DIFFUSION, Capability
from diffdisc.backbones.registry import create_backbone
from diffdisc.config import SPEED_ONLY, ConfigMixin
from diffdisc.data.groups import Group, groups_digest
from diffdisc.errors import DiffdiscError
from diffdisc.results import MatchResult
from diffdisc.runs import RUN_JSON, RUN_VERSION, UNUSED, RunStore, run_task
from diffdisc.scoring.config import ScoreConfig
from diffdisc.scoring.schedule import dc_grid
from diffdisc.tasks import match as match_mod
from diffdisc.tasks.match import MatchConfig, match


@dataclass(frozen=True)
class _Cfg(ConfigMixin):
    steps: int = 4
    chunk: int = field(default=8, metadata=SPEED_ONLY)
    score: ScoreConfig = ScoreConfig()


def _model(fingerprint="f"):
    return {"name": "m", "fingerprint": fingerprint, "label": "m"}


# ---------------------------------------------------------------------- the store
def test_store_records_config_and_identity_and_reads_speed_only_from_the_fields(tmp_path):
    with RunStore(tmp_path, "t", _Cfg(), identity={"model": _model(), "data": "/d"}) as store:
        pass
    stored = json.loads((tmp_path / RUN_JSON).read_text())
    assert stored == store.settings == {"task": "t", "version": RUN_VERSION, "model": _model(), "data": "/d",
                                        "steps": 4, "chunk": 8, "score": ScoreConfig().to_dict()}  # fmt: skip
    # speed-only fields (top level and nested: chunk, score.batch_size, score.compile) may change on a resume
    RunStore(tmp_path, "t", _Cfg(chunk=2, score=ScoreConfig(batch_size=3, compile=True)),
             identity={"model": _model(), "data": "/d"}).close()  # fmt: skip
    with pytest.raises(DiffdiscError, match=r"steps: 4 -> 5"):
        RunStore(tmp_path, "t", _Cfg(steps=5), identity={"model": _model(), "data": "/d"})
    with pytest.raises(DiffdiscError, match=r"model.fingerprint: f -> g"):
        RunStore(tmp_path, "t", _Cfg(), identity={"model": _model("g"), "data": "/d"})


def test_an_identity_replaces_the_config_field_it_resolves_and_may_be_a_config(tmp_path):
    with RunStore(tmp_path, "t", _Cfg(), identity={"steps": [1, 2, 3], "other": ScoreConfig(seed=1)}) as store:
        pass
    assert store.settings["steps"] == [1, 2, 3] and store.settings["other"]["seed"] == 1
    RunStore(tmp_path, "t", _Cfg(), identity={"steps": [1, 2, 3], "other": ScoreConfig(seed=1, batch_size=1)}).close()
    with RunStore(tmp_path / "u", "t", _Cfg(), identity={"steps": UNUSED}) as store:  # a field this run never reads
        pass
    assert "steps" not in store.settings and store.settings["chunk"] == 8
    RunStore(tmp_path / "u", "t", _Cfg(steps=9), identity={"steps": UNUSED}).close()
    with pytest.raises(TypeError, match="identity= goes with a config"):
        RunStore(tmp_path / "d", "t", {"x": 1}, identity={"y": 2})


def test_a_settings_file_written_before_configs_resumes_unchanged_and_refuses_a_change(tmp_path):
    """A run.json without "version" lacks the config fields it never recorded: the same command resumes it."""
    legacy = {"task": "t", "model": {"name": "m", "fingerprint": "f"}, "data": "/d", "score": ScoreConfig().to_dict()}
    (tmp_path / RUN_JSON).write_text(json.dumps(legacy))
    RunStore(tmp_path, "t", _Cfg(), identity={"model": _model(), "data": "/d"}).close()
    assert json.loads((tmp_path / RUN_JSON).read_text()) == legacy  # written once: it stays as it was
    with pytest.raises(DiffdiscError, match=r"score.seed: 0 -> 1"):
        RunStore(tmp_path, "t", _Cfg(score=ScoreConfig(seed=1)), identity={"model": _model(), "data": "/d"})
    with pytest.raises(DiffdiscError, match=r"data: /d -> /e"):
        RunStore(tmp_path, "t", _Cfg(), identity={"model": _model(), "data": "/e"})
    with pytest.raises(DiffdiscError, match=r"benchmark: null -> "):  # an identity the old run lacks is a difference
        RunStore(tmp_path, "t", _Cfg(), identity={"model": _model(), "data": "/d", "benchmark": {"name": "b"}})


def test_plain_dict_callers_keep_their_settings_and_runtime_keys(tmp_path):
    s = {"model": _model(), "score": {"batch_size": 8, "seed": 0}}
    RunStore(tmp_path, "t", s).close()
    assert json.loads((tmp_path / RUN_JSON).read_text()) == {**s, "task": "t"}  # no version: as before
    RunStore(tmp_path, "t", {**s, "score": {"batch_size": 64, "seed": 0}}).close()  # RUNTIME_KEYS
    with RunStore(tmp_path, None, json.loads((tmp_path / RUN_JSON).read_text())):  # its own file, read back
        pass


def test_a_directory_with_its_own_settings_file_gets_the_run_json_header(tmp_path):
    with RunStore(tmp_path, "synth", _Cfg(), identity={"classes": ["a"]}, settings_file="own.json", shards=False,
                  rewrite=True, runtime_keys=()):  # fmt: skip
        pass
    own, head = (json.loads((tmp_path / f).read_text()) for f in ("own.json", RUN_JSON))
    assert "task" not in own and own["classes"] == ["a"] and own["steps"] == 4
    assert head == {"task": "synth", **own} and run_task(tmp_path) == "synth"
    assert not (tmp_path / "shards").exists()


# ---------------------------------------------------------------------- match: today's run.json still resumes
def _groups(n=2):
    rng = np.random.default_rng(0)
    ims = [(rng.random((16, 16, 3)) * 255).astype(np.uint8) for _ in range(n)]
    return [Group(str(i), (ims[i],), ("a red cat", "a blue dog")) for i in range(n)]


def test_match_resumes_a_run_json_in_todays_format_and_returns_a_result(sd_dir, tmp_path, monkeypatch):
    bb, groups = create_backbone(sd_dir), _groups()
    fresh = match(bb, groups, MatchConfig(n_timesteps=2), out=tmp_path / "new")
    assert isinstance(fresh, MatchResult) and fresh.metrics() == fresh.stored_metrics
    assert fresh.stored_metrics == json.loads((tmp_path / "new" / "metrics.json").read_text())
    assert [r["image_id"] for r in fresh] == ["0", "1"] and len(fresh) == 2 and fresh[0]["calls"] == fresh.calls[0]
    run = json.loads((tmp_path / "new" / RUN_JSON).read_text())
    assert run["version"] == RUN_VERSION and run["n_timesteps"] == 2 and run["chunk_groups"] == 16
    # the run.json match wrote before RunStore took its config (no version, no config fields), with its shards
    old = tmp_path / "old"
    old.mkdir()
    (old / RUN_JSON).write_text(json.dumps({
        "task": "match", "model": {"name": bb.info.name, "fingerprint": bb.info.fingerprint, "label": bb.info.label},
        "groups": ["0", "1"], "groups_sha256": groups_digest(groups), "score": ScoreConfig().to_dict(),
        "timesteps": dc_grid(bb.info.num_train_timesteps, 2)}, indent=2, sort_keys=True))  # fmt: skip
    os.makedirs(old / "shards")
    (old / "shards" / "part-00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fresh.records))
    before = (old / RUN_JSON).read_text()
    monkeypatch.setattr(match_mod, "score_chunk", lambda *a, **k: pytest.fail("a finished group was scored again"))
    again = match(bb, groups, MatchConfig(n_timesteps=2, chunk_groups=1), score=ScoreConfig(batch_size=4), out=old)
    assert again == fresh and again.stored_metrics == fresh.stored_metrics and (old / RUN_JSON).read_text() == before
    with pytest.raises(DiffdiscError, match="timesteps"):
        match(bb, groups, MatchConfig(n_timesteps=3), out=old)
    with pytest.raises(DiffdiscError, match="score.seed"):
        match(bb, groups, MatchConfig(n_timesteps=2), score=ScoreConfig(seed=1), out=old)


def test_match_result_reads_back_as_it_was_returned(sd_dir, tmp_path):
    res = match(create_backbone(sd_dir), _groups(1), MatchConfig(n_timesteps=1), out=tmp_path / "m")
    loaded = MatchResult.load(tmp_path / "m")
    assert loaded == res and loaded.metrics() == res.metrics() and loaded.settings == res.settings


# ---------------------------------------------------------------------- the other outputs: the same header
def test_colour_prior_resumes_todays_run_json_and_returns_the_dict_it_did(tmp_path, monkeypatch):
    from diffdisc.tasks import colour_prior as cp

    info = SimpleNamespace(name="m", fingerprint="f", label="m")
    bb = SimpleNamespace(info=info, capabilities={Capability.MATCH})  # contrastive: no noise, no timesteps
    monkeypatch.setattr(cp, "contrastive_choices", lambda b, prompts, per, seed: [["red"] * per for _ in prompts])
    first = cp.colour_prior(bb, 2, 0, out=tmp_path / "new")
    assert first["share"] == first.metrics()["share"] and json.loads(json.dumps(first)) == dict(first)
    head = json.loads((tmp_path / "new" / RUN_JSON).read_text())
    assert head["version"] == RUN_VERSION and head["n_timesteps"] is None and head["per_class"] == 2
    old = tmp_path / "old"
    os.makedirs(old / "shards")
    (old / RUN_JSON).write_text(json.dumps({"task": "colour_prior", "model": {"name": "m", "fingerprint": "f"},
                                            "per_class": 2, "seed": 0, "n_timesteps": None}))  # fmt: skip
    (old / "shards" / "part-00000.jsonl").write_text(
        (tmp_path / "new" / "shards" / "part-00000.jsonl").read_text())
    monkeypatch.setattr(cp, "contrastive_choices", lambda *a: pytest.fail("measured again"))
    assert cp.colour_prior(bb, 2, 0, out=old) == first
    with pytest.raises(DiffdiscError, match="per_class: 2 -> 3"):
        cp.colour_prior(bb, 3, 0, out=old)


def test_synth_set_keeps_synth_json_and_gets_the_header(tmp_path, monkeypatch):
    from diffdisc.tasks import synth

    assert synth.RUNTIME_KEYS == ("batch_size",)  # read from the field's metadata
    stub = SimpleNamespace(info=SimpleNamespace(name="m", fingerprint="f", family="classcond"), capabilities=DIFFUSION)
    cfg = synth.SynthConfig(per_class=2)
    legacy = {"model": "m", "fingerprint": "f", "classes": ["a"], **json.loads(json.dumps(cfg.__dict__))}
    (tmp_path / "synth.json").write_text(json.dumps({**legacy, "batch_size": 7}))
    monkeypatch.setattr(synth, "_render", lambda *a: None)  # only the store is under test
    res = synth.generate(stub, ["a"], cfg, out=tmp_path)
    assert os.fspath(res) == str(tmp_path) and (res / "synth.json").is_file() and res.is_dir()
    assert json.loads((tmp_path / "synth.json").read_text())["batch_size"] == 64  # follows the resume
    head = json.loads((tmp_path / RUN_JSON).read_text())
    assert head["task"] == "synth" and head["classes"] == ["a"] and head["per_class"] == 2
    assert res.metrics() == {"n_images": 0, "per_class": {"a": 0}}


def test_claims_directory_gets_the_header_and_run_claims_returns_the_table(tmp_path, monkeypatch):
    from diffdisc.results import ClaimsResult
    from diffdisc.tasks import claims as C

    stage = SimpleNamespace(SIZES={"tiny": {"n": 1}}, IDS=("x",), run=lambda ctx, knobs: [
        C.Claim("x", "c", "s", "p", "m", 1.0, (0.5, 1.5), C.HOLDS, 3)])  # fmt: skip
    monkeypatch.setattr(C, "STAGES", ("one",))
    monkeypatch.setattr(C, "stage_module", lambda name: stage)
    monkeypatch.setattr(C, "_model_identity", lambda ctx: {"text": {"name": "t", "fingerprint": "f"}})
    t = C.run_claims(C.ClaimsConfig(size="tiny"), out=tmp_path)
    assert isinstance(t, ClaimsResult) and t["claims"][0]["id"] == "x" and t.metrics()["x"]["verdict"] == C.HOLDS
    assert json.loads(json.dumps(t)) == json.loads((tmp_path / C.TABLE).read_text())
    head = json.loads((tmp_path / RUN_JSON).read_text())
    assert head["task"] == "claims" and head["size"] == "tiny" and head["models"]["text"]["fingerprint"] == "f"


# ---------------------------------------------------------------------- classify: today's run.json still resumes
# The keys classify's run.json has held since before RunStore took a config: every key of a file in today's format.
CLASSIFY_KEYS = ("task", "model", "data", "labels", "classes", "candidates", "prompts", "score", "adaptive",
                 "temperature", "model_temperature")  # fmt: skip


def test_classify_resumes_a_run_json_in_todays_format(classcond_dir, image_folder, tmp_path, monkeypatch):
    """A run made before classify handed RunStore its config (no version, no config fields beyond score,
    adaptive and temperature) resumes with the unchanged command, also with --limit/--chunk changed, and is
    refused when a setting that changes numbers is changed."""
    from diffdisc.scoring.config import AdaptiveConfig
    from diffdisc.scoring.engine import ScoringEngine
    from diffdisc.tasks.classify import ClassifyConfig, classify

    bb, cfg = create_backbone(classcond_dir), ClassifyConfig(adaptive=AdaptiveConfig(n_timesteps=2), limit=3)
    first = classify(bb, image_folder, cfg, out=tmp_path / "r")
    run = json.loads((tmp_path / "r" / RUN_JSON).read_text())
    todays = {k: run[k] for k in CLASSIFY_KEYS}
    (tmp_path / "r" / RUN_JSON).write_text(json.dumps(todays, indent=2, sort_keys=True))
    monkeypatch.setattr(ScoringEngine, "run", lambda *a, **k: pytest.fail("a finished image was scored again"))
    again = classify(bb, image_folder, cfg, out=tmp_path / "r")
    assert again.image_ids == first.image_ids and json.loads((tmp_path / "r" / RUN_JSON).read_text()) == todays
    classify(bb, image_folder, ClassifyConfig(adaptive=AdaptiveConfig(n_timesteps=2), limit=2, chunk_images=1),
             out=tmp_path / "r")  # fmt: skip
    with pytest.raises(DiffdiscError, match="adaptive.n_timesteps"):
        classify(bb, image_folder, ClassifyConfig(adaptive=AdaptiveConfig(n_timesteps=3), limit=3), out=tmp_path / "r")
    with pytest.raises(DiffdiscError, match="score.seed"):
        classify(bb, image_folder, ClassifyConfig(adaptive=AdaptiveConfig(n_timesteps=2), limit=3,
                                                  score=ScoreConfig(seed=1)), out=tmp_path / "r")  # fmt: skip


def test_results_that_stand_for_what_tasks_returned_before(tmp_path):
    """A LoRA adapter reads as its folder (`load_lora(bb, tune(...))`), probe rows as the list of rows."""
    from diffdisc.results import AdapterResult, ProbeResult

    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "diffdisc": {"shots": 8, "epochs": 1, "loss": 0.1}}))
    a = AdapterResult.load(tmp_path)
    assert os.fspath(a) == str(tmp_path) and (a / "adapter_config.json").is_file() and a.name == tmp_path.name
    assert a.metrics() == {"rank": 4, "shots": 8, "epochs": 1, "loss": 0.1}
    rows = ProbeResult([{"probe": "binding", "version": "v1", "model": "m", "kind": "diffusion", "n": 2, "text": 0.5,
                         "calls_per_group": 8.0, "run_dir": "x"}], tmp_path)  # fmt: skip
    assert rows[0]["text"] == 0.5 and json.loads(json.dumps(rows)) == list(rows)
    assert rows.metrics() == {"binding / m": {"text": 0.5, "calls_per_group": 8.0}}

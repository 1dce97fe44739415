"""Issue 24, run identity and run directories: nested configs round-trip (4), an interrupted match releases its
store (5), refused settings never reach run.json (10), a groups file's content joins a match run's identity (14);
speed-only settings resume, finished runs leave no lock files, one candidate class warns."""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

import diffdisc
from conftest import run_main
from diffdisc.backbones.registry import create_backbone
from diffdisc.config import ConfigMixin
from diffdisc.data.groups import Group, load_groups
from diffdisc.errors import DiffdiscError
from diffdisc.runs import RunStore
from diffdisc.scoring.calibrate import temperature_key
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.timestep_weights import TimestepWeights
from diffdisc.tasks import match as match_mod
from diffdisc.tasks.classify import ClassifyConfig, classify
from diffdisc.tasks.match import MatchConfig, match
from diffdisc.tasks.probe import ProbeConfig
from diffdisc.tasks.timestep_fit import TimestepFitConfig

FAST = AdaptiveConfig(n_timesteps=2)


# ---------------------------------------------------------------------- 4: nested configs round-trip
@dataclass(frozen=True)
class _Optional(ConfigMixin):
    """An optional nested config: `from_dict` must rebuild it through `X | None` too."""

    score: ScoreConfig | None = None
    n: int = 1


def _all_configs() -> list[type]:
    for m in pkgutil.walk_packages(diffdisc.__path__, "diffdisc."):
        if not m.name.endswith("__main__"):  # running the CLI is no import
            importlib.import_module(m.name)
    seen, todo = [], list(ConfigMixin.__subclasses__())
    while todo:
        c = todo.pop(0)
        if c not in seen:
            seen.append(c)
            todo += c.__subclasses__()
    return seen


# configs with required fields, and nested configs away from their defaults (a default-only round trip would
# pass with a plain dict compared against a default config's dict)
EXAMPLES = {
    "SweepConfig": dict(blocks=("mid",), timesteps=(5, 10)),
    "CellConfig": dict(cells=(("mid", 5),)),
}
NESTED = [
    ClassifyConfig(score=ScoreConfig(loss="l1", seed=3), adaptive=AdaptiveConfig(strategy="halving", sigmas="uniform")),
    TimestepFitConfig(score=ScoreConfig(weighting="clark")),
    ProbeConfig(n=10, score=ScoreConfig(scorer="attention")),
    _Optional(score=ScoreConfig(dtype="bf16")),
    _Optional(),
]


def _round_trip(cfg):
    back = type(cfg).from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg, type(cfg).__name__
    for f in ("score", "adaptive", "features", "head", "optimizer"):
        if isinstance(getattr(cfg, f, None), ConfigMixin):
            assert type(getattr(back, f)) is type(getattr(cfg, f)), f"{type(cfg).__name__}.{f}"


def test_every_config_round_trips_through_its_dict():
    configs = _all_configs()
    names = {c.__name__ for c in configs}
    assert {"ClassifyConfig", "TimestepFitConfig", "ProbeConfig", "ScoreConfig", "TrainConfig"} <= names
    for c in configs:
        _round_trip(c(**EXAMPLES.get(c.__name__, {})))
    for cfg in NESTED:
        _round_trip(cfg)
    assert ClassifyConfig.from_dict(NESTED[0].to_dict()).score.loss == "l1"  # not a dict: no AttributeError


def test_a_nested_config_of_the_wrong_kind_is_one_line():
    with pytest.raises(DiffdiscError, match="classify config key 'score'"):
        ClassifyConfig.from_dict({"score": "l2"})


# ---------------------------------------------------------------------- 5: an interrupted match releases its store
def _groups(n=3):
    rng = np.random.default_rng(0)
    ims = [(rng.random((16, 16, 3)) * 255).astype(np.uint8) for _ in range(n)]
    return [Group(str(i), (ims[i],), ("a red cat", "a blue dog")) for i in range(n)]


def test_interrupted_match_can_be_retried_in_the_same_process(sd_dir, tmp_path, monkeypatch):
    bb, groups = create_backbone(sd_dir), _groups()
    real, calls = match_mod.score_chunk, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # a notebook's interrupt mid-run
        return real(*a, **k)

    monkeypatch.setattr(match_mod, "score_chunk", flaky)
    with pytest.raises(KeyboardInterrupt) as held:  # the traceback (and its frames) stay alive, as in a notebook
        match(bb, groups, MatchConfig(n_timesteps=2, chunk_groups=1), out=tmp_path / "m")
    assert held.value is not None
    recs = match(bb, groups, MatchConfig(n_timesteps=2, chunk_groups=1), out=tmp_path / "m")
    assert [r["image_id"] for r in recs] == ["0", "1", "2"] and len(calls) == 4  # resumed: chunk 0 not redone
    assert not list((tmp_path / "m").glob(".*.lock"))


# ---------------------------------------------------------------------- 14: a groups file's content is the run's
def _groups_file(root, caption="a red cat", colour=200):
    root.mkdir(exist_ok=True)
    rows = []
    for i in range(2):
        a = np.full((16, 16, 3), 40, np.uint8)
        a[..., i] = colour
        Image.fromarray(a).save(root / f"{i}.png")
        rows.append({"id": f"g{i}", "images": [f"{i}.png"], "captions": [caption, "a blue dog"]})
    (root / "groups.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "groups.jsonl"


def test_groups_edited_under_the_same_ids_are_another_run(sd_dir, tmp_path):
    bb, cfg = create_backbone(sd_dir), MatchConfig(n_timesteps=2)
    path = _groups_file(tmp_path / "g")
    match(bb, load_groups(path), cfg, out=tmp_path / "m")
    match(bb, load_groups(path), cfg, out=tmp_path / "m")  # unchanged: resumes
    _groups_file(tmp_path / "g", caption="a green cat")  # new captions, same ids
    with pytest.raises(DiffdiscError, match="groups_sha256"):
        match(bb, load_groups(path), cfg, out=tmp_path / "m")
    _groups_file(tmp_path / "g", colour=90)  # back to the captions, other pixels at the same paths
    with pytest.raises(DiffdiscError, match="groups_sha256"):
        match(bb, load_groups(path), cfg, out=tmp_path / "m")
    _groups_file(tmp_path / "g")
    match(bb, load_groups(path), cfg, out=tmp_path / "m")  # the original content resumes again

    from diffdisc.data.groups import groups_digest

    a, b = _groups(2), _groups(2)
    assert groups_digest(a) == groups_digest(b)  # arrays (generated probes) by content, not identity
    b[1].images[0][0, 0, 0] ^= 1
    assert groups_digest(a) != groups_digest(b)


# ---------------------------------------------------------------------- 10: refusals before run.json
def _weights_file(classcond_dir, path, n=4):
    grid = [100 + 200 * k for k in range(n)]
    TimestepWeights(model={"fingerprint": create_backbone(classcond_dir).info.fingerprint},
                    score=temperature_key(ScoreConfig()), sigmas="scheduler", grid=grid, order=grid,
                    weights=[1 / n] * n, scales=[1.0] * n, informativeness={}, calibration={}, n_images=0,
                    seed=0).save(path)  # fmt: skip
    return path


@pytest.mark.parametrize(
    "bad, good",
    [
        (["--sigmas", "logit_normal"], []),
        (["--weighting", "velocity"], []),
        (["--timesteps", "9", "--timestep-weights", "W"], ["--timesteps", "4", "--timestep-weights", "W"]),
        (["--timesteps", "5000"], []),
    ],
    ids=["sigmas", "weighting", "weights-ranking", "too-many-t"],
)
def test_refused_settings_leave_the_out_free_for_the_corrected_rerun(monkeypatch, capsys, classcond_dir,
                                                                    image_folder, tmp_path, bad, good):  # fmt: skip
    w = str(_weights_file(classcond_dir, tmp_path / "w.json"))
    bad, good = ([w if a == "W" else a for a in args] for args in (bad, good))
    base = ["classify", "--model", classcond_dir, "--data", image_folder, "--limit", "3", "--quiet", "--out", tmp_path / "r"]
    code, _, err = run_main(monkeypatch, capsys, *base, *(["--timesteps", "2"] if "--timesteps" not in bad else []), *bad)
    assert code == 1 and err.startswith("error: ") and err.strip().count("\n") == 0, err
    assert not (tmp_path / "r" / "run.json").exists()
    code, _, err = run_main(monkeypatch, capsys, *base, *(["--timesteps", "2"] if "--timesteps" not in good else []), *good)
    assert code == 0, err


# ---------------------------------------------------------------------- speed-only settings, lock files, one class
def test_speed_only_settings_do_not_block_a_resume(classcond_dir, image_folder, tmp_path):
    bb = create_backbone(classcond_dir)
    first = classify(bb, image_folder, ClassifyConfig(adaptive=FAST, limit=3), out=tmp_path / "r")
    fast = ScoreConfig(compile=True, channels_last=True, batch_size=7)
    again = classify(bb, image_folder, ClassifyConfig(adaptive=FAST, limit=3, score=fast, chunk_images=1), out=tmp_path / "r")
    assert again.image_ids == first.image_ids  # resumed: nothing left to score
    assert ScoreConfig.speed_only_keys("score") == {"score.batch_size", "score.compile", "score.channels_last"}
    with pytest.raises(DiffdiscError, match="score.seed"):  # a setting that changes numbers still refuses
        classify(bb, image_folder, ClassifyConfig(adaptive=FAST, limit=3, score=ScoreConfig(seed=1)), out=tmp_path / "r")


def test_finished_runs_leave_no_lock_files_and_live_locks_stay(classcond_dir, image_folder, tmp_path):
    classify(create_backbone(classcond_dir), image_folder, ClassifyConfig(adaptive=FAST, limit=2), out=tmp_path / "r")
    assert not list((tmp_path / "r").glob(".*lock*"))
    held = RunStore(tmp_path / "s", None, {"x": 1})
    for _ in range(2):  # a refused second store removes nothing: the holder's lock stays in force
        with pytest.raises(DiffdiscError, match="already writing"):
            RunStore(tmp_path / "s", None, {"x": 1})
        assert (tmp_path / "s" / ".rank-00000.lock").exists()
    held.close()
    assert not list((tmp_path / "s").glob(".*lock*"))
    with RunStore(tmp_path / "s", None, {"x": 1}):  # and the next one locks afresh
        with pytest.raises(DiffdiscError, match="already writing"):
            RunStore(tmp_path / "s", None, {"x": 1})


def test_one_candidate_class_warns(classcond_dir, tmp_path, caplog):
    (tmp_path / "flat").mkdir()
    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(tmp_path / "flat" / "a.png")
    with caplog.at_level(logging.WARNING, logger="diffdisc"):
        classify(create_backbone(classcond_dir), tmp_path / "flat", ClassifyConfig(classes=("red",), adaptive=FAST),
                 out=tmp_path / "r")  # fmt: skip
    assert any("one candidate class (red)" in r.getMessage() for r in caplog.records)


def test_resize_note_is_said_once_and_before_the_run(classcond_dir, image_folder, tmp_path, monkeypatch, capsys, caplog):
    from diffdisc.tasks.classify import ClassifyConfig, classify

    events = []

    class Catch(logging.Handler):
        def emit(self, record):
            events.append(("log", record.getMessage()))

    handler = Catch()
    logging.getLogger("diffdisc").addHandler(handler)
    try:
        cfg = ClassifyConfig(adaptive=AdaptiveConfig(strategy="exhaustive", n_timesteps=2), chunk_images=3)
        res = classify(create_backbone(classcond_dir), image_folder, cfg, out=tmp_path / "api",
                       progress=lambda s: events.append(("progress", s["done"])))  # fmt: skip
    finally:
        logging.getLogger("diffdisc").removeHandler(handler)
    notes = [i for i, (kind, m) in enumerate(events) if kind == "log" and "resized 20×20 -> 16×16" in m]
    first_progress = next(i for i, (kind, _) in enumerate(events) if kind == "progress")
    assert notes and notes[0] < first_progress
    assert any("resized" in n for n in res.notes)  # the API keeps it on the result too
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="diffdisc"):  # a terminal gets these on stderr (logging's last resort)
        code, _, err = run_main(monkeypatch, capsys, "classify", "--model", classcond_dir, "--data", image_folder,
                                "--timesteps", "2", "--out", tmp_path / "cli")  # fmt: skip
    assert code == 0, err
    said = err + "\n".join(r.getMessage() for r in caplog.records)
    assert said.count("resized 20×20 -> 16×16") == 1

"""`classify --strategy auto --validation DIR`: a fixed list of settings scored on validation images in one
memoised pass, the cheapest within the tolerance chosen and recorded, the data classified with it; refusals."""

import json
import shutil

import numpy as np
import pytest

from conftest import make_classcond_dir, run_main
from diffdisc.backbones.registry import create_backbone
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.scoring.search import ExhaustiveConfig, HalvingConfig, SearchConfig
from diffdisc.tasks.auto_strategy import (
    Scored,
    Validation,
    candidate_settings,
    choose,
    choose_setting,
    open_validation,
    score_validation,
)
from diffdisc.tasks.candidates import build_candidates
from diffdisc.tasks.classify import ClassifyConfig, classify
from test_ensemble import folder

AUTO = ClassifyConfig(adaptive=AdaptiveConfig(n_timesteps=4), auto=True)


@pytest.fixture(scope="module")
def cc(tmp_path_factory):
    root = make_classcond_dir(tmp_path_factory.mktemp("cc2"), n_classes=2, channels=3)
    return create_backbone(root), root


def test_the_fixed_list_scales_with_the_timesteps():
    s = candidate_settings(20, 10)
    assert list(s)[:3] == ["exhaustive 5", "exhaustive 10", "exhaustive 20"]
    assert s["halving 10:3,20:1"] == HalvingConfig(stages=((10, 3), (20, 1)))
    assert s["halving 5:5,10:2,20:1 + early exit z 2"].exit_z == 2.0 and "t-test p 0.02" in s
    assert any(n.startswith("shortlist self 2 t top 3") for n in s) and not any(n.startswith("shortlist") for n in candidate_settings(20, 3))
    assert [n for n in candidate_settings(20, 10, timestep_weights="w.json") if n.startswith("learned")] == [
        "learned t: exhaustive 10", "learned t: exhaustive 20", "learned t: halving 5:3,20:1"]  # fmt: skip
    small = candidate_settings(2, 2)  # stage sets 2 cannot hold are dropped, equal configs listed once
    assert len(set(map(repr, small.values()))) == len(small) and "exhaustive 2" in small


def test_choose_keeps_the_cheapest_within_the_tolerance():
    y = np.zeros(200, dtype=int)

    def scored(n_right, calls):
        r = np.ones((200, 2), dtype=int)
        r[:n_right] = [0, 1]
        return Scored(np.zeros((200, 2)), r, np.full(200, float(calls)))

    val = Validation(y, {"a": scored(180, 200), "b": scored(179, 130), "c": scored(170, 50)})
    searches: dict[str, SearchConfig] = {k: ExhaustiveConfig(n_timesteps=n) for k, n in zip("abc", (20, 13, 5), strict=True)}
    assert choose(val, searches, 0.005)[0].name == "b"  # 0.5 points below the best at 130 calls
    assert choose(val, searches, 0.0)[0].name == "a"
    assert choose(val, searches, 0.06)[0].name == "c"
    c = choose(val, searches, 0.005)[0]
    assert c.record()["table"][1] == {"name": "b", "accuracy": 0.895, "calls": 130.0} and "chose b" in c.line()


def test_one_memoised_pass_charges_each_setting_its_own_calls(cc, tmp_path, one_thread):
    bb, _ = cc
    cand = build_candidates(bb, None)
    val = open_validation(folder(tmp_path / "val", 1), cand)
    searches = candidate_settings(4, 2)
    v = score_validation(bb, val, cand, ScoreConfig(), searches)
    single = score_validation(bb, val, cand, ScoreConfig(), {"exhaustive 4": searches["exhaustive 4"]})
    assert v.scored["exhaustive 4"].calls.tolist() == single.scored["exhaustive 4"].calls.tolist() == [8.0] * 6
    assert np.allclose(v.scored["exhaustive 4"].scores, single.scored["exhaustive 4"].scores)
    assert v.forwards < sum(s.calls.sum() for s in v.scored.values())  # shared (image, candidate, t) scored once


def test_auto_records_its_choice_and_runs_it(cc, tmp_path, one_thread):
    bb, _ = cc
    data, val = folder(tmp_path / "data", 2), folder(tmp_path / "val", 1)
    res = classify(bb, data, AUTO, out=tmp_path / "auto", validation=str(val))
    auto = res.settings["auto"]
    assert auto["chosen"] in candidate_settings(4, 2) and len(auto["table"]) == len(candidate_settings(4, 2))
    assert res.settings["search"] == auto["search"] and res.settings["validation"]["images"] == 6
    assert any(n.startswith("--strategy auto chose " + auto["chosen"]) for n in res.notes)
    chosen = SearchConfig.from_dict(auto["search"])
    plain = classify(bb, data, ClassifyConfig(search=chosen), out=tmp_path / "plain")
    assert res.predictions.tolist() == plain.predictions.tolist() and res.calls.tolist() == plain.calls.tolist()
    api = choose_setting(bb, val, data=data, n_timesteps=4)
    assert api.name == auto["chosen"] and list(api.table) == auto["table"]
    # the same call resumes the same directory (the choice is made again, identically)
    assert classify(bb, data, AUTO, out=tmp_path / "auto", validation=str(val)).settings == res.settings


def test_auto_refusals(cc, tmp_path):
    bb, _ = cc
    data = folder(tmp_path / "data", 2)
    with pytest.raises(DiffdiscError, match="auto picks the setting.*--validation"):
        classify(bb, data, AUTO, out=tmp_path / "a")
    with pytest.raises(DiffdiscError, match="is the --data folder"):
        classify(bb, data, AUTO, out=tmp_path / "b", validation=str(data))
    overlap = folder(tmp_path / "val", 1)
    shutil.copy(data / "red" / "0.png", overlap / "red" / "copy.png")  # one test image under another name
    with pytest.raises(DiffdiscError, match=r"shares 1 image\(s\) with --data"):
        classify(bb, data, AUTO, out=tmp_path / "c", validation=str(overlap))
    with pytest.raises(DiffdiscError, match="drop --tree / --shortlist"):
        classify(bb, data, AUTO, out=tmp_path / "d", validation=str(overlap), shortlist=1)
    assert not any((tmp_path / d).exists() for d in "abcd")


def test_cli_strategy_auto(cc, monkeypatch, capsys, caplog, tmp_path, one_thread):
    _, root = cc
    data, val = folder(tmp_path / "data", 2), folder(tmp_path / "val", 1)
    base = ["classify", "--model", root, "--data", data, "--timesteps", 4, "--strategy", "auto", "--out", tmp_path / "x"]
    code, _, err = run_main(monkeypatch, capsys, *base)
    assert code != 0 and "--validation" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_main(monkeypatch, capsys, *base, "--validation", val)
    assert code == 0, err
    chosen = json.loads((tmp_path / "x" / "run.json").read_text())["auto"]["chosen"]
    # said once, before the run (a log warning: stderr from the CLI)
    assert sum(f"--strategy auto chose {chosen}" in m for m in caplog.messages) == 1 and "results in" in out
    assert "auto chose" not in err  # not repeated as a note after the run

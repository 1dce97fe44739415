"""`classify --strategy auto --validation DIR --shortlist-model M`: the given cheap model's cascades join the list
`auto` chooses from (the only settings cheap enough at hundreds of candidates), are scored with that model's
stage while the self cascade keeps its own, and a chosen one runs exactly as the same cascade given by hand."""

import json

import pytest

from conftest import run_main
from diffdisc.backbones.registry import create_backbone
from diffdisc.datasets.export import export_shipped_test
from diffdisc.scoring.config import AdaptiveConfig
from diffdisc.scoring.search import CascadeConfig, ExhaustiveConfig, HalvingConfig, SearchConfig
from diffdisc.tasks.auto_strategy import candidate_settings, choose_setting, shortlist_settings
from diffdisc.tasks.classify import ClassifyConfig, classify

AUTO = ClassifyConfig(adaptive=AdaptiveConfig(n_timesteps=2), auto=True, auto_tolerance=0.99)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto-sl")
    data = export_shipped_test(root / "data", per_class=1)
    val = export_shipped_test(root / "val", per_class=1, split="train")
    return create_backbone("fmnist-classcond"), create_backbone("fmnist-scenes-clip"), data, val


def test_the_cascades_of_a_given_model():
    s = shortlist_settings(20, 80, "clip")
    assert s == {
        "shortlist clip top 3 → exhaustive 20": CascadeConfig(keep=3, decide=ExhaustiveConfig(n_timesteps=20)),
        "shortlist clip top 5 → exhaustive 20": CascadeConfig(keep=5, decide=ExhaustiveConfig(n_timesteps=20)),
        "shortlist clip top 5 → halving 5:3,20:1": CascadeConfig(keep=5, decide=HalvingConfig(stages=((5, 3), (20, 1)))),
        "shortlist clip top 10 → exhaustive 20": CascadeConfig(keep=10, decide=ExhaustiveConfig(n_timesteps=20)),
        "shortlist clip top 10 → halving 5:3,20:1": CascadeConfig(keep=10, decide=HalvingConfig(stages=((5, 3), (20, 1)))),
    }
    assert list(shortlist_settings(20, 5, "clip")) == ["shortlist clip top 3 → exhaustive 20"]  # K < candidates only
    assert not set(s) & set(candidate_settings(20, 80))


def test_auto_chooses_a_cascade_of_the_given_model_and_runs_it(setup, tmp_path, one_thread):
    bb, clip, data, val = setup
    res = classify(bb, data, AUTO, out=tmp_path / "auto", validation=str(val), shortlist_model=clip)
    auto = res.settings["auto"]
    names = [r["name"] for r in auto["table"]]
    assert [n for n in names if "fmnist-scenes-clip" in n] == list(shortlist_settings(2, 10, "fmnist-scenes-clip"))
    # the cheapest (tolerance 0.99): the contrastive top 3, then exhaustive 2 = 6 U-Net calls per image
    assert auto["chosen"] == "shortlist fmnist-scenes-clip top 3 → exhaustive 2" and res.calls.tolist() == [6.0] * 10
    assert res.settings["shortlist"]["scorer"] == "contrastive"
    rows = {r["name"]: r for r in auto["table"]}
    assert rows["shortlist self 1 t top 3 → exhaustive 2"]["calls"] == 13.0  # the self cascade kept its own stage
    api = choose_setting(bb, val, data=data, n_timesteps=2, shortlist_model=clip, tolerance=0.99)
    assert api.name == auto["chosen"] and list(api.table) == auto["table"]
    by_hand = ClassifyConfig(search=SearchConfig.from_dict(auto["search"]))
    plain = classify(bb, data, by_hand, out=tmp_path / "plain", shortlist_model=clip)
    assert res.predictions.tolist() == plain.predictions.tolist() and res.calls.tolist() == plain.calls.tolist()


def test_cli(setup, monkeypatch, capsys, tmp_path, one_thread):
    _, _, data, val = setup
    base = ["classify", "--model", "fmnist-classcond", "--data", data, "--timesteps", 2, "--quiet",
            "--shortlist-model", "fmnist-scenes-clip"]  # fmt: skip
    code, _, err = run_main(monkeypatch, capsys, *base, "--out", tmp_path / "x")
    assert code != 0 and "--strategy auto" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(monkeypatch, capsys, *base, "--strategy", "auto", "--validation", val, "--out", tmp_path / "y")
    assert code == 0, err
    run = json.loads((tmp_path / "y" / "run.json").read_text())
    assert sum("fmnist-scenes-clip" in r["name"] for r in run["auto"]["table"]) == len(shortlist_settings(2, 10, "x")) == 3
    if "fmnist-scenes-clip" in run["auto"]["chosen"]:
        assert run["shortlist"]["scorer"] == "contrastive"
    else:  # a choice that is not the model's cascade runs without it
        assert not isinstance(run["shortlist"], dict)

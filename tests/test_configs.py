"""The config base: every config serialises one way, and the stored forms do not move.

Run directories compare their saved settings with `to_dict()` of the new config before resuming, so these
pins are what keeps old runs resumable: change one only together with a note on converting old runs.
"""

import hashlib
import json

import pytest

from diffdisc.config import ConfigMixin, check_choice
from diffdisc.errors import DiffdiscError
from diffdisc.features.heads import HeadConfig
from diffdisc.scoring.config import AdaptiveConfig, ScoreConfig
from diffdisc.tasks.attention import LoraConfig, tune
from diffdisc.tasks.baseline import ClassifierConfig
from diffdisc.tasks.features import FeatureConfig
from diffdisc.tasks.match import MatchConfig
from diffdisc.tasks.synth import SynthConfig
from diffdisc.training.config import TrainConfig
from diffdisc.training.recipes import RECIPES

ALL = (ScoreConfig, AdaptiveConfig, FeatureConfig, HeadConfig, SynthConfig, ClassifierConfig, TrainConfig,
       LoraConfig, MatchConfig)  # fmt: skip

PINNED = {
    ScoreConfig(): {"loss": "l2", "weighting": "uniform", "batch_size": 64, "dtype": "fp32", "seed": 0,
                    "noise": "image", "min_snr_gamma": 5.0, "clark_rate": 7.0, "compile": False,
                    "channels_last": False, "scorer": "denoise", "attention_bias": True},
    AdaptiveConfig(): {"strategy": "exhaustive", "n_timesteps": 20, "timesteps": "even", "stages": [[10, 3], [20, 1]],
                       "min_scores": 20, "max_scores": 100, "p_value": 0.002, "exit_z": 0.0},
    FeatureConfig(): {"pooling": "gap", "condition": "null", "seed": 0, "batch_size": 64, "dtype": "fp32",
                      "val_fraction": 0.1},
    HeadConfig(weight_decays=(0.1, 0.2)): {"kind": "linear", "optimizer": "lbfgs", "weight_decays": [0.1, 0.2],
                                           "max_iter": 300, "eval_every": 10, "epochs": 60, "batch_size": 256,
                                           "lr": None, "patience": 5, "dim": 128, "depth": 1, "heads": 4,
                                           "dropout": 0.1, "seed": 0, "device": "cpu"},
    SynthConfig(tricks=("template",)): {"per_class": 100, "tricks": ["template"], "guidance": 3.0,
                                        "guidance_range": [1.5, 6.0], "steps": 25, "scheduler": "ddim", "seed": 0,
                                        "batch_size": 64,
                                        "templates": ["{a} {}", "an image of {a} {}", "{a} {} on black"],
                                        "domains": []},
    ClassifierConfig(): {"model": "resnet18", "epochs": 15, "batch_size": 128, "lr": 0.002, "weight_decay": 0.05,
                         "val_fraction": 0.1, "image_size": 32, "seed": 0, "mixed_precision": "no"},
    TrainConfig(): {"recipe": "fmnist-classcond", "name": None, "kind": "classcond", "data": None, "image_size": 32,
                    "channels": 1, "block_out_channels": [32, 64, 128], "layers_per_block": 1,
                    "attention_levels": [False, True, True], "steps": 2000, "batch_size": 128, "lr": 0.001,
                    "warmup_steps": 100, "weight_decay": 0.0, "ema_decay": 0.999, "ema_warmup": True,
                    "cond_dropout": 0.1, "beta_schedule": "squaredcos_cap_v2", "checkpoint_every": 100, "seed": 0,
                    "init_from": None, "scenes": 0, "pair_fraction": 0.5, "class_only_p": 0.0,
                    "colour_correlation": 0.0, "max_length": 20, "text_width": 128, "text_layers": 3,
                    "text_heads": 4, "vision_width": 128, "vision_layers": 4, "patch_size": 4, "embed_dim": 128},
    LoraConfig(): {"rank": 4, "margin": 0.1, "lr": 1e-4, "epochs": 1, "bias": True, "seed": 0},
    MatchConfig(): {"n_timesteps": 20, "chunk_groups": 16},
}  # fmt: skip


@pytest.mark.parametrize("cfg", list(PINNED), ids=lambda c: type(c).__name__)
def test_to_dict_is_pinned(cfg):
    d = cfg.to_dict()
    assert d == PINNED[cfg]
    assert list(d) == list(PINNED[cfg])  # key order too: the JSON text of run files stays byte-identical
    assert json.dumps(d) == json.dumps(PINNED[cfg])


def test_flow_recipe_is_classcond_with_the_flow_objective():
    """The matched pair differs in the objective only (same architecture, steps, batch, optimiser)."""
    flow, eps = RECIPES["fmnist-classcond-flow"].to_dict(), RECIPES["fmnist-classcond"].to_dict()
    assert {k: v for k, v in flow.items() if eps.get(k) != v} == {"recipe": "fmnist-classcond-flow", "objective": "flow"}


def test_every_recipe_serialises_as_before():
    """train_config.json of every shipped recipe (the resume guard of `diffdisc train`), byte for byte."""
    text = json.dumps({k: v.to_dict() for k, v in RECIPES.items() if k != "fmnist-classcond-flow"})
    assert hashlib.sha256(text.encode()).hexdigest() == "08f2827b3ed0e1cb0fde281e95fd42913461cc890a596aa6c0c965cd48bfd7a0"


@pytest.mark.parametrize("cfg", list(PINNED) + list(RECIPES.values()), ids=lambda c: type(c).__name__)
def test_round_trip_through_a_file(cfg, tmp_path):
    path = cfg.save(tmp_path / "sub" / "c.json")
    assert type(cfg).load(path) == cfg == type(cfg).from_dict(json.loads(path.read_text()))
    assert not list(path.parent.glob(".*.tmp"))


def test_every_config_uses_the_base():
    assert all(issubclass(c, ConfigMixin) for c in ALL)


def test_unknown_keys_are_refused_except_where_old_runs_need_it():
    with pytest.raises(DiffdiscError, match="unknown training config key 'colour'"):
        TrainConfig.from_dict({"colour": 1})
    with pytest.raises(DiffdiscError, match="unknown LoRA config key 'alpha'"):
        LoraConfig.from_dict({"alpha": 1})
    assert AdaptiveConfig.from_dict({"strategy": "halving", "dropped_key": 1}).strategy == "halving"


def test_load_says_what_is_wrong(tmp_path):
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(DiffdiscError, match="expected a JSON object"):
        MatchConfig.load(tmp_path / "bad.json")
    with pytest.raises(DiffdiscError, match="cannot read match config"):
        MatchConfig.load(tmp_path / "missing.json")


def test_choice_checks_keep_their_message():
    with pytest.raises(DiffdiscError, match=r"unknown loss 'l3' \(choose from l2, l1, huber\)"):
        ScoreConfig(loss="l3")
    with pytest.raises(DiffdiscError, match="unknown colour 'x'"):
        check_choice("colour", "x", ("red",))


def test_lora_and_match_configs_check_their_fields():
    with pytest.raises(DiffdiscError, match="LoRA rank must be >= 1"):
        LoraConfig(rank=0)
    with pytest.raises(DiffdiscError, match="chunk_groups must be >= 1"):
        MatchConfig(chunk_groups=0)


def test_tune_keeps_the_keyword_style():
    """Old keywords still work (they override the config's fields); unknown ones still fail loudly."""
    with pytest.raises(DiffdiscError, match="no training groups"):
        tune(None, [], out="unused", lr=1e-2, seed=3)
    with pytest.raises(DiffdiscError, match="LoRA rank"):
        tune(None, [], LoraConfig(), out="unused", rank=0)
    with pytest.raises(TypeError):
        tune(None, [], out="unused", learning_rate=1e-2)

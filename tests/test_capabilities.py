"""Issue 25 #3, capabilities, not families: every family declares what its models can do, the declaration
holds on a tiny replica of each, a task refuses a model lacking what it needs in one line, and no module asks
which family a model is to decide that."""

import ast
from pathlib import Path

import pytest
import torch

import diffdisc
from conftest import run_main
from diffdisc.backbones.capabilities import DIFFUSION, Capability
from diffdisc.backbones.registry import create_backbone, list_families
from diffdisc.errors import DiffdiscError
from diffdisc.features.taps import describe_blocks
from diffdisc.scoring.attention import make_capture
from diffdisc.scoring.config import ScoreConfig
from diffdisc.scoring.learned_noise import LearnedNoise
from diffdisc.scoring.scorers import make_scorer
from diffdisc.scoring.timestep_weights import TimestepWeights
from diffdisc.tasks.classify import ClassifyConfig, classify
from diffdisc.tasks.match import match
from diffdisc.tasks.noise_fit import fit_learned_noise
from diffdisc.tasks.sample import sample_grid
from diffdisc.tasks.synth import SynthConfig, generate
from diffdisc.tasks.timestep_fit import fit_timesteps
from family_fixtures import make_flux_dir, make_pixart_dir, make_sd3_dir, make_sdxl_dir

C = Capability
TEXT = DIFFUSION | {C.ENCODE_TEXT}
EXPECTED = {  # family -> what its models can do
    "sd": TEXT | {C.ATTEND},  # cross-attention to the prompt
    "sdxl": TEXT | {C.ATTEND},
    "sd3": TEXT | {C.ATTEND},  # joint attention over prompt and image tokens
    "flux": TEXT | {C.ATTEND},
    "pixart": TEXT,  # its cross-attention is not read by the attention scorer
    "classcond": DIFFUSION | {C.CLASS_CONDITIONS},
    "clip": {C.MATCH, C.ENCODE_TEXT},
}


@pytest.fixture(scope="module")
def replicas(sd_dir, classcond_dir, tmp_path_factory, one_thread):
    """One loaded tiny model of every family, by family name."""
    tmp = tmp_path_factory.mktemp("families")
    dirs = [sd_dir, classcond_dir, make_sdxl_dir(tmp / "sdxl"), make_sd3_dir(tmp / "sd3", with_t5=False),
            make_pixart_dir(tmp / "pixart"), make_flux_dir(tmp / "flux"), "fmnist-scenes-clip"]  # fmt: skip
    models = [create_backbone(d) for d in dirs]
    return {bb.info.family: bb for bb in models}


def test_every_family_declares_what_its_replica_can_do(replicas):
    assert set(EXPECTED) == set(replicas) == set(list_families())  # a new family is added here too
    for family, bb in replicas.items():
        caps = bb.capabilities
        assert caps == EXPECTED[family], family
        assert (C.ENCODE_TEXT in caps) == (bb.info.conditioning == "text"), family
        assert (C.CLASS_CONDITIONS in caps) == (bb.info.conditioning == "class"), family
        if C.ATTEND in caps:  # the attention scorer finds the layers it reads
            assert make_capture(bb) is not None
        if C.FEATURES in caps:  # and the feature taps the blocks
            assert describe_blocks(bb)
        if C.MATCH in caps:
            assert type(make_scorer(bb)).__name__ == "ContrastiveScorer"


def _refused(call, model: str, lacks: str) -> str:
    with pytest.raises(DiffdiscError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{model} is ") and f"it {lacks}" in msg and "; use " in msg, msg
    return msg


def test_tasks_refuse_a_model_lacking_a_capability_in_one_line(image_folder, tmp_path, monkeypatch, capsys):
    clip, cc = create_backbone("fmnist-scenes-clip"), create_backbone("fmnist-classcond")
    name = "fmnist-scenes-clip"
    msg = _refused(lambda: fit_learned_noise(clip, image_folder), name, "cannot denoise")
    assert msg.startswith(f"{name} is a contrastive model:") and "`diffdisc noise fit`" in msg
    assert msg.endswith("use a diffusion model such as fmnist-classcond")
    _refused(lambda: fit_timesteps(clip, image_folder, run_dir=tmp_path / "t"), name, "cannot denoise")
    noise = LearnedNoise({}, "x", "scheduler", [1], torch.zeros(1, 3, 2, 2), {}, path=Path("n.safetensors"))
    assert "needed by n.safetensors" in _refused(lambda: noise.check(clip), name, "cannot denoise")
    weights = TimestepWeights({}, "x", "scheduler", [1], [1], [1.0], [1.0], {}, {}, 1, 0)
    _refused(lambda: weights.check(clip), name, "cannot denoise")
    _refused(lambda: classify(clip, image_folder, ClassifyConfig(shortlist=1), out=tmp_path / "c"), name,
             "cannot denoise")  # fmt: skip
    _refused(lambda: generate(clip, ["red"], SynthConfig(per_class=1), out=tmp_path / "s"), name,
             "cannot generate images")  # fmt: skip
    _refused(lambda: sample_grid(clip, ["red"], out=tmp_path / "g.png"), name, "cannot generate images")
    _refused(lambda: describe_blocks(clip), name, "has no denoiser blocks")
    msg = _refused(lambda: make_scorer(cc, ScoreConfig(scorer="attention")), "fmnist-classcond", "has no text attention")
    assert msg.startswith("fmnist-classcond is a class-conditional diffusion model (classcond):")
    _refused(lambda: match(cc, []), "fmnist-classcond", "takes no text prompts")
    assert not any((tmp_path / d).exists() for d in "tcs")  # refused before any output was made
    code, _, err = run_main(monkeypatch, capsys, "sample", name, "--out", tmp_path / "g.png")
    assert code == 1 and "cannot generate images" in err and len(err.strip().splitlines()) == 1


def test_no_module_asks_whether_a_model_is_contrastive():
    """`is_contrastive` (a family test) is gone; the scorer factory asks for MATCH, and nothing compares a
    model's family with the contrastive one."""
    src = Path(diffdisc.__file__).parent
    found = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = {getattr(node, a, None) for a in ("id", "attr", "name")} | {
                getattr(a, "name", None) for a in getattr(node, "names", [])}  # fmt: skip
            if "is_contrastive" in names:
                found.append(f"{path.relative_to(src)}:{node.lineno}")
            if isinstance(node, ast.Compare) and getattr(node.left, "attr", None) == "family" and any(
                    isinstance(c, ast.Constant) and c.value == "clip" for c in node.comparators):  # fmt: skip
                found.append(f"{path.relative_to(src)}:{node.lineno}")
    assert not found

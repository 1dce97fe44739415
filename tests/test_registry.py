"""The backbone family registry: families claim directories by layout, a new one needs no edit of create_backbone."""

import json

import pytest
from torch import nn

from diffdisc.backbones import families, registry
from diffdisc.backbones.registry import create_backbone, detect_family, list_families
from diffdisc.errors import DiffdiscError


@pytest.fixture
def isolated(monkeypatch):
    """Families registered inside a test vanish after it."""
    monkeypatch.setattr(families, "_FAMILIES", dict(families._FAMILIES))


def _dir(root, files):
    for rel, content in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(content) if isinstance(content, dict) else content)
    return root


def test_builtin_families_in_detection_order():
    assert list_families() == ["clip", "flux", "pixart", "sd3", "sdxl", "sd", "classcond"]  # priority, then file name


@pytest.mark.parametrize(
    "files, family",
    [
        ({"unet/config.json": {"_class_name": "UNet2DModel"}, "text_encoder/config.json": {}}, "sd"),
        ({"unet/config.json": {"_class_name": "UNet2DConditionModel"}}, "sd"),
        ({"config.json": {"_class_name": "UNet2DConditionModel"}}, "sd"),
        ({"unet/config.json": {"_class_name": "UNet2DConditionModel"}, "transformer/config.json": {}}, "classcond"),
        ({"transformer/config.json": {}, "unet/config.json": {}, "text_encoder/config.json": {}}, "sd"),
        ({"config.json": {"_class_name": "UNet2DModel"}}, "classcond"),
        ({"unet/config.json": {"_class_name": "UNet2DModel"}}, "classcond"),
        ({"open_clip_config.json": {}, "unet/config.json": {}, "text_encoder/config.json": {}}, "clip"),
    ],
)
def test_layouts_pick_the_same_family_as_before(tmp_path, files, family):
    assert detect_family(_dir(tmp_path, files)) == family


def test_unrecognised_dir_message_lists_every_layout(tmp_path):
    with pytest.raises(DiffdiscError) as e:
        detect_family(_dir(tmp_path, {"config.json": {"_class_name": "Other"}}))
    assert str(e.value) == (
        f"{tmp_path} is not a recognised model directory (expected unet/ or config.json of a UNet2DModel, "
        "transformer/ (DiT), open_clip_config.json (open_clip), model_index.json of a FluxPipeline, "
        "model_index.json of a PixArtAlphaPipeline / PixArtSigmaPipeline, unet/+text_encoder/ (Stable Diffusion), "
        "model_index.json of a StableDiffusion3Pipeline, or model_index.json of a StableDiffusionXLPipeline)"
    )


def test_families_are_found_not_listed():
    """Every module of the backbones package that registers a family is imported by discovery: no list to edit."""
    import re
    from pathlib import Path

    from diffdisc.backbones import registry

    src = Path(registry.__file__).parent
    registering = {p.stem for p in src.glob("*.py") if re.search(r"^register_\w*family\(", p.read_text(), re.M)}
    assert registering and "(\"sd\", \"sdxl\"" not in Path(registry.__file__).read_text()
    import sys

    assert all(f"diffdisc.backbones.{m}" in sys.modules for m in registering)


class _Fake(nn.Module):
    def __init__(self, root, name):
        super().__init__()
        self.root, self.name = root, name


def test_registered_family_is_loaded_by_create_backbone(isolated, tmp_path, classcond_dir):
    calls = []
    families.register_family("fake", lambda root: (root / "fake.json").is_file(),
                             lambda root, name: calls.append(name) or _Fake(root, name), expects="fake.json (fake)")  # fmt: skip
    assert "fake" in list_families()
    mine = _dir(tmp_path / "mine", {"fake.json": {}})
    bb = create_backbone(mine)
    assert isinstance(bb, _Fake) and bb.root == mine and calls == [bb.name]  # name chosen as for every family
    assert detect_family(classcond_dir) == "classcond"  # priority 0: built-ins still claim their layouts first
    with pytest.raises(DiffdiscError, match=r"or fake.json \(fake\)\)$"):
        create_backbone(_dir(tmp_path / "other", {"x.txt": ""}))


def test_priority_decides_between_claims_and_load_errors_keep_one_line(isolated, classcond_dir):
    def broken(root, name):
        raise OSError("weights unreadable\nsecond line")

    families.register_family("greedy", lambda root: True, broken, priority=100)
    assert list_families()[0] == "greedy" and detect_family(classcond_dir) == "greedy"
    with pytest.raises(DiffdiscError, match=r"^cannot load model from .*: weights unreadable$"):
        create_backbone(classcond_dir)
    assert registry.list_families()[1:] == ["clip", "flux", "pixart", "sd3", "sdxl", "sd", "classcond"]

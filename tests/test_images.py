"""Image decoding and preprocessing: the official Diffusion Classifier transform, our deliberate extras, limits."""

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from conftest import CLASSES
from diffdisc.backbones.registry import create_backbone
from diffdisc.data.images import array_to_tensor, open_image, to_tensor
from diffdisc.errors import DiffdiscError
from diffdisc.scoring.config import AdaptiveConfig
from diffdisc.tasks.classify import ClassifyConfig, classify


def official(size):
    """Diffusion Classifier's `get_transform` (eval_prob_adaptive.py), written out."""
    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size),
                      T.ToTensor(), T.Normalize([0.5], [0.5])])  # fmt: skip


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("w,h,size", [(640, 480, 512), (500, 375, 512), (1000, 667, 512), (683, 512, 512),
                                      (480, 640, 512), (300, 300, 512), (5, 3, 32)])  # fmt: skip
def test_non_square_preprocessing_matches_official_transform(w, h, size, channels):
    a = np.random.default_rng(w * h).integers(0, 256, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(a)
    x = to_tensor(im, size, channels)
    assert x.shape == (channels, size, size)
    assert torch.equal(x, official(size)(im.convert("L" if channels == 1 else "RGB")))


def test_square_28_to_32_is_what_shipped_models_were_trained_on():
    """The shipped models saw PIL bicubic 28 -> 32 then u8 / 127.5 - 1; the torchvision path must be identical."""
    a = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    old = np.asarray(Image.fromarray(a).resize((32, 32), Image.BICUBIC), dtype=np.float32) / 127.5 - 1.0
    assert torch.equal(array_to_tensor(a, 32, 1), torch.from_numpy(old)[None])
    # the training recipes store u8 and feed u8 / 127.5 - 1
    u8 = torch.arange(256, dtype=torch.uint8).view(16, 16)
    assert torch.equal(array_to_tensor(u8.numpy(), 16, 1)[0], u8.float() / 127.5 - 1)


def test_rgba_on_white_and_exif_orientation_are_kept(tmp_path):
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert torch.equal(to_tensor(open_image(tmp_path / "clear.png"), 8, 3), torch.ones(3, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    Image.new("RGB", (30, 20)).save(tmp_path / "phone.jpg", exif=exif)
    assert open_image(tmp_path / "phone.jpg").size == (20, 30)


@pytest.mark.parametrize("side", [25, 40])  # over MAX_IMAGE_PIXELS: PIL warns; over twice that: PIL raises
def test_decompression_bomb_is_an_unreadable_image(tmp_path, monkeypatch, side):
    Image.new("RGB", (side, side)).save(tmp_path / "big.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "ok.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    assert open_image(tmp_path / "ok.png").size == (20, 20)
    with pytest.raises(DiffdiscError, match=r"cannot read image .*big\.png.*MAX_IMAGE_PIXELS"):
        open_image(tmp_path / "big.png")


def test_decompression_bomb_is_skipped_with_on_error_skip(classcond_dir, image_folder, tmp_path, monkeypatch):
    import shutil

    d = tmp_path / "bomb"
    shutil.copytree(image_folder, d)  # 20x20 images
    Image.new("RGB", (25, 25)).save(d / "red" / "warns.png")
    Image.new("RGB", (40, 40)).save(d / "red" / "raises.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    bb, fast = create_backbone(classcond_dir), AdaptiveConfig(n_timesteps=4)
    with pytest.raises(DiffdiscError, match="cannot read image"):
        classify(bb, d, ClassifyConfig(classes=CLASSES, adaptive=fast), out=tmp_path / "f")
    res = classify(bb, d, ClassifyConfig(classes=CLASSES, adaptive=fast, on_error="skip"), out=tmp_path / "s")
    assert len(res) == 9 and {s[0] for s in res.skipped} == {"red/warns.png", "red/raises.png"}

"""Every pipeline family samples and generates synthetic data through the one sampling loop, and keeps its text
encoders off the accelerator."""

import pytest

from diffdisc.backbones.registry import create_backbone
from family_fixtures import make_flux_dir, make_pixart_dir, make_sd3_dir, make_sdxl_dir

BUILDERS = {"sd3": make_sd3_dir, "flux": make_flux_dir, "sdxl": make_sdxl_dir, "pixart": make_pixart_dir}
SIZES = {"flux": 8}  # FLUX has no configured size; its tiny VAE keeps 8 px latents


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module", params=list(BUILDERS))
def family_bb(request, tmp_path_factory):
    root = BUILDERS[request.param](tmp_path_factory.mktemp(request.param))
    return request.param, create_backbone(root, image_size=SIZES.get(request.param))


def test_synth_generate_runs_and_is_seeded_per_image(family_bb, tmp_path):
    from diffdisc.tasks.synth import SynthConfig, generate

    fam, bb = family_bb
    cfg = SynthConfig(per_class=2, steps=2, batch_size=4, templates=("a photo of a {}",))
    a = generate(bb, ["cat", "dog"], cfg, out=tmp_path / "a")
    b = generate(bb, ["cat", "dog"], SynthConfig(**{**cfg.to_dict(), "batch_size": 1, "templates": cfg.templates}),
                 out=tmp_path / "b")  # fmt: skip
    files_a = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files_a) == 4 and files_a == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    import numpy as np
    from PIL import Image

    for f in files_a:  # one seed per image: the batch it was drawn in does not matter
        x, y = (np.asarray(Image.open(d / f), dtype=np.int16) for d in (a, b))
        assert np.abs(x - y).max() <= 1, (fam, f)


def test_text_encoders_stay_off_the_accelerator(family_bb):
    fam, bb = family_bb
    assert bb.offloaded, fam
    moved = create_backbone(bb.pipe.config._name_or_path, image_size=SIZES.get(fam)).to("meta")
    den = getattr(moved, moved.denoiser)
    assert next(den.parameters()).device.type == "meta" and moved.device.type == "meta"
    for name in moved.offloaded:
        assert next(getattr(moved, name).parameters()).device.type == "cpu", (fam, name)

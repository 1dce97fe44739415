"""The loader options and flow options on the command line: one run end to end, one-line refusals."""

import json

import pytest

from conftest import make_noise_folder, run_main
from family_fixtures import make_sd3_dir


@pytest.fixture(scope="module")
def sd3_dir(tmp_path_factory):
    return make_sd3_dir(tmp_path_factory.mktemp("sd3cli"))


def test_classify_sd3_without_t5_from_the_command_line(monkeypatch, capsys, sd3_dir, tmp_path, one_thread):
    data = make_noise_folder(tmp_path / "data", per_class=1, size=16)
    code, out, err = run_main(monkeypatch, capsys, "classify", "--model", sd3_dir, "--data", data, "--classes",
                              "red,green,blue", "--no-t5", "--timesteps", "2", "--weighting", "cosmap", "--sigmas",
                              "logit_normal", "--out", tmp_path / "run", "--json", "--quiet")  # fmt: skip
    assert code == 0, err
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert "no_t5=True" in run["model"]["fingerprint"] and run["model"]["name"].endswith("+no-t5")
    assert run["adaptive"]["sigmas"] == "logit_normal" and run["score"]["weighting"] == "cosmap"
    # other loader options are another model: the run refuses them
    code, _, err = run_main(monkeypatch, capsys, "classify", "--model", sd3_dir, "--data", data, "--classes",
                            "red,green,blue", "--timesteps", "2", "--weighting", "cosmap", "--sigmas", "logit_normal",
                            "--out", tmp_path / "run", "--quiet")  # fmt: skip
    assert code != 0 and "fingerprint" in err and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["--no-t5"], "take no option --no-t5"),
    (["--sigmas", "uniform"], "places σ for flow-matching models"),
    (["--weighting", "velocity"], "flow-matching model's velocity"),
])  # fmt: skip
def test_flow_and_loader_options_on_an_eps_model_are_one_line_errors(monkeypatch, capsys, classcond_dir, tmp_path,
                                                                       args, message):  # fmt: skip
    data = make_noise_folder(tmp_path / "data", per_class=1, size=16)
    code, _, err = run_main(monkeypatch, capsys, "classify", "--model", classcond_dir, "--data", data, "--timesteps", "2",
                            "--out", tmp_path / "r", "--quiet", *args)  # fmt: skip
    assert code != 0 and message in err and "Traceback" not in err, err

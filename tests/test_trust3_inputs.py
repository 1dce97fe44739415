"""Issue 24, bugs 11 and 12 and the slow `--help`: user JSON / JSONL files (Winoground, SugarCrepe, label trees)
and `claims --knob` values fail as one line naming file, line or knob, never a traceback; `diffdisc --help`
imports no torch."""

import json
import subprocess
import sys

import pytest
from PIL import Image

from conftest import run_main
from diffdisc.errors import DiffdiscError

EXAMPLE = {"id": 0, "image_0": "ex_0_img_0", "image_1": "ex_0_img_1", "caption_0": "a red cat", "caption_1": "a blue cat",
           "tag": "Object", "collapsed_tag": "Object"}  # fmt: skip
DEEP = "[" * 100_000 + "]" * 100_000  # json raises RecursionError on it


def _winoground(tmp_path, lines: list[bytes]):
    """A Winoground root (data/examples.jsonl, data/images/) whose examples.jsonl holds `lines`."""
    data = tmp_path / "wino" / "data"
    (data / "images").mkdir(parents=True)
    for k in ("ex_0_img_0", "ex_0_img_1"):
        (data / "images" / f"{k}.png").write_bytes(b"")  # only names are read here
    (data / "examples.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    return tmp_path / "wino"


def _line(**change) -> bytes:
    return json.dumps({**EXAMPLE, **change}, ensure_ascii=False).encode()  # raw UTF-8, as the Hub's file


@pytest.mark.parametrize("bad, message", [
    (b'{"id": 1, "caption_0": "caf\xe9"}', r"examples.jsonl:2: a JSON Lines file is not UTF-8 \(byte 0xe9\)"),
    (DEEP.encode(), r"examples.jsonl:2: the line is nested too deeply"),
    (_line(caption_1=None), r"examples.jsonl:2: caption_1 must be a non-empty string, got null"),
    (_line(caption_0=42), r"examples.jsonl:2: caption_0 must be a non-empty string, got 42"),
    (_line(caption_0=" "), r"examples.jsonl:2: caption_0 must be a non-empty string"),
    (_line(image_1=["x"]), r"examples.jsonl:2: image_1 must be a non-empty string"),
    (b"[1, 2]", r"examples.jsonl:2: not a Winoground example"),
])  # fmt: skip
def test_winoground_bad_lines_are_one_line_errors(tmp_path, bad, message):
    from diffdisc.data.winoground import open_winoground

    root = _winoground(tmp_path, [_line(), bad])
    with pytest.raises(DiffdiscError, match=message):
        open_winoground(root)


def test_winoground_keeps_line_separators_inside_strings(tmp_path):
    """U+2028 is legal raw inside a JSON string; `str.splitlines` would cut the line there."""
    from diffdisc.data.winoground import open_winoground

    (g,) = open_winoground(_winoground(tmp_path, [_line(caption_0="a red\u2028cat")]))
    assert g.captions == ("a red\u2028cat", "a blue cat")


def test_winoground_cli_is_one_line(tmp_path, monkeypatch, capsys):
    root = _winoground(tmp_path, [_line(caption_1=None)])
    code, _, err = run_main(monkeypatch, capsys, "match", "--model", "fmnist-scenes-text", "--dataset", "winoground",
                            "--root", root, "--out", tmp_path / "out")  # fmt: skip
    assert code == 1 and err.count("\n") == 1 and "caption_1 must be a non-empty string, got null" in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("content, message", [
    (b'{"1": {"filename": "a.jpg", "caption": "caf\xe9", "negative_caption": "x"}}', r"swap_obj.json:1: .*not UTF-8"),
    (DEEP.encode(), r"swap_obj.json: the annotation file is nested too deeply"),
    (b'{"1": {"filename": "a.jpg", "caption": null, "negative_caption": "x"}}',
     r"entry '1': caption must be a non-empty string, got null"),
    (b'{"1": {"filename": "a.jpg", "caption": "x", "negative_caption": 42}}',
     r"entry '1': negative_caption must be a non-empty string, got 42"),
    (b'[1, 2]', r"swap_obj.json: expected a JSON object of entries, got list"),
])  # fmt: skip
def test_sugar_crepe_bad_files_are_one_line_errors(tmp_path, content, message):
    from diffdisc.data.winoground import open_sugar_crepe

    (tmp_path / "val2017").mkdir()
    (tmp_path / "val2017" / "a.jpg").write_bytes(b"")
    (tmp_path / "swap_obj.json").write_bytes(content)
    with pytest.raises(DiffdiscError, match=message):
        open_sugar_crepe(tmp_path, "swap_obj")


NAMES = ["sandal", "sneaker", "coat"]


@pytest.mark.parametrize("content, message", [
    (b'{"footwear": ["sandal", "sneaker"],\n "caf\xe9": ["coat"]}', r"tree.json:2: tree file is not UTF-8"),
    (DEEP.encode(), r"tree.json: the tree is nested too deeply"),
    (("[" * 300 + '"sandal", "sneaker", "coat"' + "]" * 300).encode(), r"nested more than 200 deep"),
    (b'{"name": "all", "prompts": 42, "children": ["sandal", "sneaker", "coat"]}', r"prompts must be non-empty strings, got 42"),
    (b'{"name": null, "children": ["sandal", "sneaker", "coat"]}', r"a node's name must be a non-empty string, got null"),
])  # fmt: skip
def test_tree_file_bad_content_is_one_line_error(tmp_path, content, message):
    from diffdisc.scoring.label_tree import load_tree

    (tmp_path / "tree.json").write_bytes(content)
    with pytest.raises(DiffdiscError, match=message):
        load_tree(tmp_path / "tree.json", NAMES)


def test_tree_file_deep_but_allowed_still_loads(tmp_path):
    from diffdisc.scoring.label_tree import load_tree

    (tmp_path / "tree.json").write_text("[" * 150 + '"sandal", "sneaker", "coat"' + "]" * 150, encoding="utf-8")
    tree = load_tree(tmp_path / "tree.json", NAMES)
    assert tree.n_leaves == 3 and tree.depth == 150


# ---------------------------------------------------------------------- bug 12: claims knobs
@pytest.mark.parametrize("knobs, message", [
    ({"zero_shot": {"per_class": "abc"}}, r"knob zero_shot.per_class: expected an integer from 1 to 100, got 'abc'"),
    ({"zero_shot": {"per_class": -5}}, r"zero_shot.per_class: expected an integer from 1 to 100, got -5"),
    ({"zero_shot": {"per_class": 0}}, r"zero_shot.per_class: expected an integer from 1 to 100, got 0"),
    ({"zero_shot": {"per_class": 2.5}}, r"got 2.5"),
    ({"compositional": {"timesteps": True}}, r"compositional.timesteps: expected an integer ≥ 1, got True"),
    ({"shape_bias": {"lr_text": 0}}, r"shape_bias.lr_text: expected a number > 0, got 0"),
    ({"shape_bias": {"warmup": -1}}, r"shape_bias.warmup: expected an integer ≥ 0"),
    ({"attention_lora": {"lrs": []}}, r"attention_lora.lrs: expected a non-empty list of numbers > 0, got \[\]"),
    ({"robustness": {"baseline_per_class": [10, "x"]}}, r"a non-empty list of integers ≥ 1"),
    ({"features": {"blocks": [3]}}, r"features.blocks: expected a non-empty list of non-empty strings"),
    ({"zero_shot": {"nope": 1}}, r"unknown knob\(s\) nope for stage zero_shot"),
])  # fmt: skip
def test_claims_knobs_are_typed_and_ranged(knobs, message):
    from diffdisc.tasks.claims import ClaimsConfig

    with pytest.raises(DiffdiscError, match=message):
        ClaimsConfig(size="tiny", knobs=knobs)


def test_claims_knobs_normalised_and_every_documented_size_passes():
    from diffdisc.tasks.claims import STAGES, ClaimsConfig, check_knobs, stage_module

    cfg = ClaimsConfig(size="tiny", knobs={"zero_shot": {"per_class": "3"}, "attention_lora": {"lrs": "1e-4,1e-2"},
                                           "features": {"timesteps": 5, "n_train": 20.0}})  # fmt: skip
    assert cfg.knobs == {"zero_shot": {"per_class": 3}, "attention_lora": {"lrs": [1e-4, 1e-2]},
                         "features": {"timesteps": [5], "n_train": 20}}  # fmt: skip
    for size in ("tiny", "quick", "full"):  # the declared types and bounds admit every documented value
        sizes = {s: stage_module(s).SIZES[size] for s in STAGES}
        assert check_knobs(sizes, size) == sizes
        for s in STAGES:  # one type per knob, whatever the size
            assert {k: type(v) for k, v in sizes[s].items()} == {k: type(v) for k, v in stage_module(s).SIZES["tiny"].items()}


@pytest.mark.parametrize("value, message", [
    ("abc", "expected an integer from 1 to 100, got 'abc'"),
    ("-5", "expected an integer from 1 to 100, got -5"),
    ("0", "expected an integer from 1 to 100, got 0"),
])  # fmt: skip
def test_claims_cli_knob_is_one_line(tmp_path, monkeypatch, capsys, value, message):
    import diffdisc.tasks.claims as C

    def never(*a, **k):  # before the fix, `=0` ran every stage on all 1,000 test images
        raise AssertionError("the claims ran")

    monkeypatch.setattr(C, "run_claims", never)
    out = tmp_path / "claims"
    code, _, err = run_main(monkeypatch, capsys, "claims", "--size", "tiny", "--out", out, "--knob",
                            f"zero_shot.per_class={value}")  # fmt: skip
    assert code == 1 and err == f"error: --knob zero_shot.per_class: {message}\n"
    assert not out.exists()  # refused before anything is written


# ---------------------------------------------------------------------- --help imports no torch
HEAVY = ("torch", "diffusers", "transformers", "open_clip", "matplotlib", "numpy", "scipy", "timm", "torchvision")


def test_help_imports_no_heavy_library():
    """`diffdisc --help` and a command's help load only typer (3.2 s and 768 MB with torch, 0.3 s without)."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from diffdisc.cli import app\n"
        "for args in (['--help'], ['classify', '--help'], ['claims', '--help'], ['features', 'probe', '--help']):\n"
        "    r = CliRunner().invoke(app, args)\n"
        "    assert r.exit_code == 0 and 'Usage' in r.output, (args, r.output)\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", f"imported at CLI start: {r.stdout.strip()}"


def test_groups_file_bad_content_is_one_line(tmp_path):
    from diffdisc.data.groups import load_groups

    img = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(img)
    good = {"id": "g", "images": ["a.png"], "captions": ["a red cat", "a blue dog"]}
    cases = {
        "latin1.jsonl": json.dumps({**good, "captions": ["a café", "x"]}, ensure_ascii=False).encode("latin-1"),
        "deep.jsonl": b"[" * 100_000,
        "null.jsonl": json.dumps({**good, "captions": [None, 42]}).encode(),
        "string.jsonl": json.dumps({**good, "captions": "abc"}).encode(),
        "latin1.csv": "image_0,caption_0,caption_1\na.png,a café,x\n".encode("latin-1"),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DiffdiscError) as e:
            load_groups(tmp_path / name)
        assert "\n" not in str(e.value) and name in str(e.value), name
    (tmp_path / "ok.jsonl").write_text(json.dumps(good) + "\n")
    (g,) = load_groups(tmp_path / "ok.jsonl")
    assert g.captions == ("a red cat", "a blue dog")

"""`diffdisc classify` with the large-label-space options end to end: learned timestep weights, a label tree,
a benchmark by name (clip_benchmark's result file beside ours)."""

import json

from conftest import make_noise_folder, run_main


def test_learned_timestep_weights_drive_the_timesteps(monkeypatch, capsys, tmp_path, classcond_dir, one_thread):
    train = make_noise_folder(tmp_path / "train", per_class=2, seed=1, size=16)
    test = make_noise_folder(tmp_path / "test", per_class=1, seed=2, size=16)
    w = tmp_path / "w" / "timestep_weights.json"
    code, _, err = run_main(monkeypatch, capsys, "timesteps", "fit", "--model", classcond_dir, "--data", train, "--out", w,
                            "--grid", "4", "--json")  # fmt: skip
    assert code == 0, err
    d = json.loads(w.read_text())
    order = d["order"]
    # noise images carry no class, so the fit's own held-out check keeps the even grid at every budget (classify
    # would then ignore the file, tests/test_timestep_fit_check.py); here: as if learned timesteps had won
    w.write_text(json.dumps({**d, "plans": ["learned"] * len(order)}))
    code, _, err = run_main(monkeypatch, capsys, "classify", "--model", classcond_dir, "--data", test, "--timesteps", "2",
                            "--timestep-weights", w, "--out", tmp_path / "r", "--quiet")  # fmt: skip
    assert code == 0, err
    rec = [json.loads(line) for line in (tmp_path / "r" / "shards" / "part-00000.jsonl").read_text().splitlines()]
    assert all(sorted(r["timesteps"]) == sorted(order[:2]) for r in rec)  # the two most informative, not the even grid
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["timestep_weights"]["sha256"] and run["model_temperature"] is None
    # fitted on training images only: the weights refuse the folder they were fitted on
    code, _, err = run_main(monkeypatch, capsys, "classify", "--model", classcond_dir, "--data", train, "--timesteps", "2",
                            "--timestep-weights", w, "--out", tmp_path / "r2", "--quiet")  # fmt: skip
    assert code != 0 and "Traceback" not in err


def test_a_label_tree_runs_and_is_guarded(monkeypatch, capsys, tmp_path, sd_dir, one_thread):
    data = make_noise_folder(tmp_path / "d", per_class=1, size=16)
    tree = tmp_path / "tree.json"
    tree.write_text(json.dumps({"warm": ["red"], "cool": ["green", "blue"]}))
    args = ["classify", "--model", sd_dir, "--data", data, "--classes", "red,green,blue", "--timesteps", "2", "--quiet"]
    code, _, err = run_main(monkeypatch, capsys, *args, "--tree", tree, "--out", tmp_path / "t")
    assert code == 0, err
    run = json.loads((tmp_path / "t" / "run.json").read_text())
    assert run["tree"]["beam"] == 1
    rec = [json.loads(line) for line in (tmp_path / "t" / "shards" / "part-00000.jsonl").read_text().splitlines()]
    assert all(r["calls"] == r["node_calls"] + sum(r["n_calls"]) for r in rec) and all(r["node_calls"] == 4 for r in rec)
    code, _, err = run_main(monkeypatch, capsys, *args, "--tree", tree, "--beam", "2", "--out", tmp_path / "t")
    assert code != 0 and "beam" in err
    code, _, err = run_main(monkeypatch, capsys, *args, "--tree", "auto", "--tree-branching", "2", "--out", tmp_path / "a")
    assert code == 0, err


def test_a_benchmark_by_name_writes_the_clip_benchmark_file(monkeypatch, capsys, tmp_path, sd_dir, one_thread):
    root = tmp_path / "pets"
    base = root / "oxford-iiit-pet"
    (base / "images").mkdir(parents=True)
    (base / "annotations").mkdir()
    from PIL import Image

    rows = [("Abyssinian_1", 1, 1), ("american_bulldog_2", 2, 2)]
    for i, (name, _, _) in enumerate(rows):
        Image.new("RGB", (20, 16), (40 * i, 100, 200)).save(base / "images" / f"{name}.jpg")
    (base / "annotations" / "test.txt").write_text("".join(f"{n} {c} {s} 1\n" for n, c, s in rows))
    code, _, err = run_main(monkeypatch, capsys, "classify", "--model", sd_dir, "--dataset", "pets", "--root", root,
                            "--template-set", "li", "--timesteps", "1", "--limit", "2", "--out", tmp_path / "b", "--quiet")  # fmt: skip
    assert code == 0, err
    files = list((tmp_path / "b").glob("*.json"))
    bench = [json.loads(f.read_text()) for f in files if "metrics" in json.loads(f.read_text()) and "dataset" in json.loads(f.read_text())]
    assert bench and bench[0]["dataset"] == "pets" and "acc1" in bench[0]["metrics"]
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["benchmark"] == {"name": "pets", "split": "test"} and run["prompts"][0].endswith("a type of pet.")
    code, _, err = run_main(monkeypatch, capsys, "classify", "--model", sd_dir, "--dataset", "nosuch", "--root", root,
                            "--out", tmp_path / "n", "--quiet")  # fmt: skip
    assert code != 0 and "cifar10" in err and "Traceback" not in err

"""The two-item label spaces of issue 27 item 5 (6,400- and 800-way): export, natural tree, a tree classify end to end."""

import json

import pytest

from conftest import run_main
from diffdisc.backbones.registry import list_backbones
from diffdisc.datasets.export import PAIR_SCENE_SEED, export_pair_test, pair_classes
from diffdisc.datasets.fashion_mnist import CLASS_NAMES, load_shipped_subset
from diffdisc.datasets.scenes import COLOURS, describe, generate_scenes
from diffdisc.scoring.label_tree import LabelTree
from diffdisc.templates import fill


@pytest.mark.parametrize("right_colour, size", [(True, 6400), (False, 800)])
def test_export_writes_every_caption_and_labels_each_scene_by_its_own(tmp_path, right_colour, size):
    out = export_pair_test(tmp_path / "d", n=5, right_colour=right_colour)
    classes = (out / "classes.txt").read_text().splitlines()
    assert classes == pair_classes(right_colour) and len(set(classes)) == size
    assert sorted(json.loads((out / "classes.json").read_text()).values()) == sorted(classes)
    names = json.loads((out / "classes.json").read_text())
    images = {p.name: names[p.parent.name] for p in out.glob("*/*.png")}
    scenes = generate_scenes(*load_shipped_subset("test")[:2], 5, "pair", seed=PAIR_SCENE_SEED)
    assert len(images) == 5
    for i, s in enumerate(scenes):
        left, right = s.items
        want = (
            describe(s.items)
            if right_colour
            else describe([left]) + " to the left of " + describe([right], colours=False)
        )
        # the model's "{a} {}" template turns the class name back into the generator's left-of caption
        assert fill("{a} {}", images[f"{i:05d}.png"]) == want


@pytest.mark.parametrize("right_colour", [True, False])
def test_natural_tree_covers_the_classes_left_item_colour_right_item_colour(tmp_path, right_colour):
    out = export_pair_test(tmp_path / "d", n=1, right_colour=right_colour)
    classes = pair_classes(right_colour)
    tree = LabelTree.from_json(out / "tree.json", classes)  # refuses a tree missing or repeating a class
    assert sorted(tree.root.leaves()) == list(range(len(classes)))
    widths = [len(CLASS_NAMES), len(COLOURS), len(CLASS_NAMES)] + ([len(COLOURS)] if right_colour else [])
    level = [tree.root]
    for width in widths:
        assert {len(n.children) for n in level} == {width}
        level = [ch for n in level for ch in n.children]
    assert all(n.is_leaf for n in level) and tree.depth == len(widths)
    # each node holds what its path chose: under left item i, colour c, right item j: captions "c i ... j"
    for i, item in enumerate(tree.root.children):
        for c, colour in enumerate(item.children):
            for j, right in enumerate(colour.children):
                for leaf in right.leaves():
                    head = f"{COLOURS[c]} {CLASS_NAMES[i]} to the left of "
                    assert classes[leaf].startswith(head) and classes[leaf].endswith(CLASS_NAMES[j])


@pytest.mark.skipif("fmnist-scenes-text" not in list_backbones(), reason="shipped weights not present")
def test_tree_classify_runs_on_the_800_way_task(monkeypatch, capsys, tmp_path, one_thread):
    data = export_pair_test(tmp_path / "d", n=2, right_colour=False)
    code, _, err = run_main(monkeypatch, capsys, "classify", "--model", "fmnist-scenes-text", "--data", data,
                            "--classes", f"@{data / 'classes.txt'}", "--tree", data / "tree.json", "--timesteps", "1",
                            "--out", tmp_path / "r", "--quiet")  # fmt: skip
    assert code == 0, err
    rec = [
        json.loads(line) for line in (tmp_path / "r" / "shards" / "part-00000.jsonl").read_text().splitlines()
    ]
    assert len(rec) == 2 and all(len(r["ranking"]) == 800 for r in rec)
    # beam 1, 1 t: 10 left items + 8 colours scored as nodes, then the 10 right items as leaves
    assert all(r["node_calls"] == 18 and r["calls"] == 28 for r in rec)

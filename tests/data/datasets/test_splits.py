"""Train / val / test splits: split files, their errors and the seeded split."""
import json

import pytest
from folder_samples import all_images, make_labelfolder

from objguided_d2.data.datasets.convert import convert_to_coco
from objguided_d2.data.datasets.splits import resolve_splits, seeded_split
from objguided_d2.data.io import DataError


def test_labelfolder_split_files_json_and_txt(tmp_path):
    root = tmp_path / "lf"
    make_labelfolder(root)
    (root / "splits.json").write_text(json.dumps({"train": ["s0", "s1.png"], "val": ["s2"], "test": ["s3"]}))
    ds = convert_to_coco("labelfolder", str(root))
    got = all_images(ds)
    assert {k: v[0] for k, v in got.items()} == {"s0": "train", "s1": "train", "s2": "val", "s3": "test"}

    root2 = tmp_path / "lf2"
    make_labelfolder(root2)
    (root2 / "train.txt").write_text("# training\ns4\ns3\n\n")
    (root2 / "val.txt").write_text("s0\n")
    got = all_images(convert_to_coco("labelfolder", str(root2)))
    assert {k: v[0] for k, v in got.items()} == {"s3": "train", "s4": "train", "s0": "val"}


@pytest.mark.parametrize("content, match", [
    ({"train": ["nope"]}, "nope"),
    ({"train": ["s0"], "val": ["s0"]}, "both"),
    ({"training": ["s0"]}, "expected"),
])
def test_bad_split_file(tmp_path, content, match):
    root = tmp_path / "lf"
    make_labelfolder(root)
    (root / "splits.json").write_text(json.dumps(content))
    with pytest.raises(DataError, match=match) as e:
        convert_to_coco("labelfolder", str(root))
    assert "splits.json" in str(e.value)


def test_seeded_split_is_reproducible_and_sized_like_the_paper():
    keys = [f"k{i:03d}" for i in range(670)]
    a, b, c = seeded_split(keys, 0), seeded_split(keys, 0), seeded_split(keys, 1)
    assert a == b and a != c
    assert [len(a[s]) for s in ("train", "val", "test")] == [402, 134, 134]
    assert sorted(a["train"] + a["val"] + a["test"]) == keys
    assert [len(v) for v in seeded_split(keys[:473], 5).values()] == [284, 95, 94]
    assert resolve_splits(keys[:10], "/nonexistent", seed=2) == seeded_split(keys[:10], 2)

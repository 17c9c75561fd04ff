"""The fingerprinted cache and its one write transaction (used by every converter and generator)."""
import json
import os

import numpy as np
import pytest
import tifffile
from folder_samples import all_images, label_map, make_labelfolder

from objguided_d2.data.datasets import labelfolder
from objguided_d2.data.datasets.cache import cache_transaction, read_manifest
from objguided_d2.data.datasets.coco import prepare_coco
from objguided_d2.data.datasets.convert import convert_to_coco
from objguided_d2.data.datasets.synthetic import generate_synthetic_dataset
from objguided_d2.data.io import DataError


def _tree(root):
    """relative path -> (inode, mtime_ns) of every file and folder under ``root``."""
    out = {}
    for d, dirs, files in os.walk(root):
        for f in dirs + files:
            st = os.stat(os.path.join(d, f))
            out[os.path.relpath(os.path.join(d, f), root)] = (st.st_ino, st.st_mtime_ns)
    return out


def test_cache_reused_and_refreshed(tmp_path):
    root = tmp_path / "lf"
    make_labelfolder(root, n=3)
    ds1 = convert_to_coco("labelfolder", str(root), ratios=(1, 0, 0))
    mtime = os.stat(ds1.json_files["train"]).st_mtime_ns
    ds2 = convert_to_coco("labelfolder", str(root), ratios=(1, 0, 0))
    assert ds2.json_files == ds1.json_files
    assert os.stat(ds2.json_files["train"]).st_mtime_ns == mtime  # not rewritten

    # Change one label: the conversion is rebuilt and the stale one removed.
    tifffile.imwrite(str(root / "labels" / "s0.tif"), label_map(ids=((1, (0, 0, 3, 3)), (2, (5, 5, 9, 9)))).astype(np.uint16))
    ds3 = convert_to_coco("labelfolder", str(root), ratios=(1, 0, 0))
    assert ds3.json_files["train"] != ds1.json_files["train"]
    assert not os.path.exists(ds1.json_files["train"])
    assert len(all_images(ds3)["s0"][2]) == 2
    # Different options -> a different cache entry.
    ds4 = convert_to_coco("labelfolder", str(root), ratios=(1, 0, 0), class_name="cell")
    assert ds4.json_files["train"] != ds3.json_files["train"] and ds4.class_names == ["cell"]


def test_converter_failing_midway_publishes_nothing_and_leaves_no_temp_dir(tmp_path):
    root = tmp_path / "lf"
    make_labelfolder(root, n=3)
    (root / "labels" / "s2.tif").write_bytes(b"")  # the last sample fails after two were converted
    converted = tmp_path / "cache" / "converted"
    with pytest.raises(DataError, match="s2.tif"):
        convert_to_coco("labelfolder", str(root), ratios=(1, 0, 0))
    assert os.listdir(converted) == []  # neither an entry nor a hidden '.<entry>.tmp-*' folder

    tifffile.imwrite(str(root / "labels" / "s2.tif"), label_map().astype(np.uint16))
    ds = convert_to_coco("labelfolder", str(root), ratios=(1, 0, 0))  # the retry publishes
    assert os.listdir(converted) == [os.path.basename(os.path.dirname(ds.json_files["train"]))]
    assert sorted(all_images(ds)) == ["s0", "s1", "s2"]


def test_second_call_reuses_every_cache_without_rewriting_or_rereading(tmp_path, monkeypatch):
    root = tmp_path / "lf"
    make_labelfolder(root, n=3)
    single = tmp_path / "one" / "all.json"
    single.parent.mkdir()
    single.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
                                  "annotations": [], "categories": [{"id": 1, "name": "cell"}]}))
    synth = str(tmp_path / "synth")
    small = dict(image_size=32, num_train=2, num_val=1, num_test=1)

    first = (convert_to_coco("labelfolder", str(root)), prepare_coco(str(single)),
             generate_synthetic_dataset("nuclei", synth, **small))
    cache = _tree(tmp_path / "cache")
    synth_tree = _tree(synth)
    assert any(p.endswith("manifest.json") for p in cache) and "manifest.json" in synth_tree

    def no_rescan(path):
        raise AssertionError("a cached conversion scanned its source again")

    monkeypatch.setattr(labelfolder, "scan", no_rescan)
    second = (convert_to_coco("labelfolder", str(root)), prepare_coco(str(single)),
              generate_synthetic_dataset("nuclei", synth, **small))
    assert second == first
    assert _tree(tmp_path / "cache") == cache and _tree(synth) == synth_tree  # same inodes, same mtimes


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_transaction_failure_removes_its_temp_dir(tmp_path, error):
    out = tmp_path / "entry"
    with pytest.raises(type(error)):
        with cache_transaction(str(out), {"v": 1}) as tmp:
            assert os.path.dirname(tmp) == str(tmp_path) and os.path.basename(tmp).startswith(".entry.tmp-")
            (tmp_path / os.path.basename(tmp) / "half.json").write_text("{")
            raise error
    assert os.listdir(tmp_path) == []


def test_transaction_replaces_other_entries_and_keeps_a_concurrent_identical_one(tmp_path):
    out = tmp_path / "entry"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"v": 0}))  # made with other parameters
    (out / "old.json").write_text("old")
    with cache_transaction(str(out), {"v": 1}) as tmp:
        with open(os.path.join(tmp, "new.json"), "w") as f:
            f.write("new")
    assert sorted(os.listdir(out)) == ["manifest.json", "new.json"] and read_manifest(str(out)) == {"v": 1}
    assert os.listdir(tmp_path) == ["entry"]

    # Another process publishes the same entry while this one writes: the first one stays.
    before = _tree(out)
    with cache_transaction(str(out), {"v": 1}) as tmp:
        with open(os.path.join(tmp, "new.json"), "w") as f:
            f.write("second writer")
    assert _tree(out) == before and (out / "new.json").read_text() == "new"
    assert os.listdir(tmp_path) == ["entry"]

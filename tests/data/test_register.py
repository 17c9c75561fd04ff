"""Dataset specs, registration (lazy synthetic, real formats) and the tools' --dataset option."""
import argparse
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tifffile
from detectron2.data import DatasetCatalog, MetadataCatalog

from objguided_d2.data.io import DataError
from objguided_d2.data.register import (
    add_dataset_arguments,
    parse_dataset_spec,
    register_dataset_spec,
    register_from_args,
    register_synthetic,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OBJGUIDED_CACHE", str(tmp_path / "cache"))


def _labelfolder(root, n=5):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"s{i}.png"), np.full((12, 16), 40 * i, np.uint8))
        lab = np.zeros((12, 16), np.uint16)
        lab[2:6, 3:9] = 4
        tifffile.imwrite(str(root / "labels" / f"s{i}.tif"), lab)
    return str(root)


def test_parse_spec():
    assert parse_dataset_spec("cells=labelfolder:/data/x") == ("cells", "labelfolder", "/data/x", {})
    name, fmt, path, opt = parse_dataset_spec("n=synthetic:neural?image_size=128&num_train=16")
    assert (name, fmt, path, opt) == ("n", "synthetic", "neural", {"image_size": "128", "num_train": "16"})
    # Only the first ':' separates the format: Windows-style paths survive.
    assert parse_dataset_spec("a=coco:C:/data/c?image_root=C:/img")[2:] == ("C:/data/c", {"image_root": "C:/img"})
    assert parse_dataset_spec("a=cvppp:/my%20data?class=leaf%26stalk")[2:] == ("/my data", {"class": "leaf&stalk"})


@pytest.mark.parametrize("spec, match", [
    ("nodataset", "NAME=FORMAT:PATH"),
    ("x=labelfolder", "NAME=FORMAT:PATH"),
    ("=labelfolder:/a", "name"),
    ("x y=labelfolder:/a", "name"),
    ("x=tiff:/a", "unknown dataset format 'tiff'"),
    ("x=labelfolder:", "empty PATH"),
    ("x=labelfolder:/a?seed", "key=value"),
    ("x=labelfolder:/a?image_size=3", "unknown option 'image_size'"),
    ("x=labelfolder:/a?seed=1&seed=2", "twice"),
])
def test_malformed_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_dataset_spec(spec)


def test_bad_option_values(tmp_path):
    root = _labelfolder(tmp_path / "lf")
    with pytest.raises(ValueError, match="not an integer"):
        register_dataset_spec(f"t_badseed=labelfolder:{root}?seed=abc")
    with pytest.raises(ValueError, match="ratios"):
        register_dataset_spec(f"t_badratio=labelfolder:{root}?ratios=0.5,0.5")
    with pytest.raises(ValueError, match="family"):
        register_dataset_spec("t_badfam=synthetic:cats")


def test_register_labelfolder_twice_and_load(tmp_path):
    root = _labelfolder(tmp_path / "lf")
    names = register_dataset_spec(f"t_lf=labelfolder:{root}?seed=3&class=cell")
    assert names == ["t_lf_train", "t_lf_val", "t_lf_test"]
    assert register_dataset_spec(f"t_lf=labelfolder:{root}?seed=3&class=cell") == names  # no crash
    dicts = {n: DatasetCatalog.get(n) for n in names}
    assert [len(d) for d in dicts.values()] == [3, 1, 1]
    d = dicts["t_lf_train"][0]
    assert os.path.isfile(d["file_name"]) and d["file_name"].startswith(root)
    assert len(d["annotations"]) == 1 and d["annotations"][0]["category_id"] == 0
    meta = MetadataCatalog.get("t_lf_train")
    assert meta.thing_classes == ["cell"] and meta.evaluator_type == "coco"
    assert os.path.isfile(meta.json_file) and meta.image_root == root
    assert meta.json_file.startswith(str(tmp_path / "cache"))


def test_register_reports_bad_data(tmp_path):
    root = _labelfolder(tmp_path / "lf")
    os.remove(os.path.join(root, "labels", "s2.tif"))
    with pytest.raises(DataError, match="s2.png"):
        register_dataset_spec(f"t_bad=labelfolder:{root}")


def test_synthetic_spec_is_lazy(tmp_path):
    names = register_dataset_spec("t_syn=synthetic:leaves?image_size=64&num_train=3&num_val=1&num_test=2&seed=5")
    meta = MetadataCatalog.get("t_syn_test")
    assert meta.thing_classes == ["leaf"] and meta.evaluator_type == "coco"
    assert meta.json_file.startswith(str(tmp_path / "cache"))
    assert not os.path.exists(meta.json_file)  # nothing generated yet
    assert [len(DatasetCatalog.get(n)) for n in names] == [3, 1, 2]
    assert os.path.isfile(meta.json_file)
    d = DatasetCatalog.get("t_syn_train")[0]
    assert (d["height"], d["width"]) == (64, 64) and os.path.isfile(d["file_name"])


def test_builtins_registered_and_import_generates_nothing(tmp_path):
    for fam in ("nuclei", "neural", "leaves"):
        for s in ("train", "val", "test"):
            assert f"synth_{fam}_{s}" in DatasetCatalog.list()
            assert f"synth_{fam}_tiny_{s}" in DatasetCatalog.list()
    assert MetadataCatalog.get("synth_nuclei_train").thing_classes == ["nucleus"]
    assert "256px-200-50-50" in MetadataCatalog.get("synth_neural_val").json_file
    assert "128px-16-4-4" in MetadataCatalog.get("synth_leaves_tiny_test").json_file
    # Paper-scale objects: larger images (objects scale with them) and a floor on the smallest.
    assert "512px-100-10-30-seed0-min8" in MetadataCatalog.get("synth_nuclei_paperscale_test").json_file
    assert "384px-100-10-30-seed0-min8" in MetadataCatalog.get("synth_leaves_paperscale_train").json_file
    # In a fresh interpreter, importing the package must not create anything in the cache.
    cache = tmp_path / "fresh_cache"
    code = ("import objguided_d2.data, objguided_d2.data.register as r; from detectron2.data import DatasetCatalog;"
            "assert 'synth_neural_tiny_train' in DatasetCatalog.list(); r.register_builtin_synthetic()")
    env = dict(os.environ, OBJGUIDED_CACHE=str(cache))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, capture_output=True, timeout=120)
    assert not cache.exists()


def test_register_synthetic_same_code_path_as_builtins(tmp_path):
    names = register_synthetic("t_tiny", "nuclei", cache=str(tmp_path / "c2"), image_size=48, num_train=2, num_val=1, num_test=1)
    assert len(DatasetCatalog.get(names[0])) == 2
    assert os.path.isdir(tmp_path / "c2" / "synthetic")


def test_dataset_arguments(tmp_path):
    root = _labelfolder(tmp_path / "lf")
    parser = add_dataset_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--dataset", f"t_a=labelfolder:{root}", "--dataset", "t_b=synthetic:neural?image_size=32&num_train=1"])
    names = register_from_args(args)
    assert names == ["t_a_train", "t_a_val", "t_a_test", "t_b_train", "t_b_val", "t_b_test"]
    assert register_from_args(parser.parse_args([])) == []

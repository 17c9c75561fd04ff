"""The shared writer, JSON sanitiser, containment rule and label-map painter."""
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest

from objguided_d2.utils.io import (
    PARTIAL_SUFFIX, OutputExistsError, atomic_write, json_sanitize, path_inside, remove_partial_files, write_json,
)
from objguided_d2.utils.label_map import paint_label_map


def test_atomic_write_temp_names_are_unique_and_keep_the_extension(tmp_path):
    seen = []

    def write(tmp):
        seen.append(tmp)
        np.save(tmp, np.arange(3)) if tmp.endswith(".npy") else open(tmp, "w").write("x")

    for _ in range(2):
        atomic_write(str(tmp_path / "a.npy"), write, overwrite=True)
    assert len(set(seen)) == 2
    assert all(os.path.dirname(t) == str(tmp_path) and t.endswith(PARTIAL_SUFFIX + ".npy") for t in seen)
    assert np.load(tmp_path / "a.npy").tolist() == [0, 1, 2] and os.listdir(tmp_path) == ["a.npy"]
    with pytest.raises(OutputExistsError, match=r"a\.npy.*--overwrite"):
        atomic_write(str(tmp_path / "a.npy"), write)
    # a killed writer's leftovers (either form) are recognised and removed; nothing else is
    for name in (".a.npy.abcd1234.partial", ".a.npy.abcd1234.partial.npy", "user.partial"):
        (tmp_path / name).write_text("x")
    assert sorted(os.path.basename(p) for p in remove_partial_files(str(tmp_path))) == [
        ".a.npy.abcd1234.partial", ".a.npy.abcd1234.partial.npy"]
    assert sorted(os.listdir(tmp_path)) == ["a.npy", "user.partial"]


def test_write_json_is_strict(tmp_path):
    obj = {1: float("nan"), "b": (np.float32(0.5), np.int64(3), float("inf")), "c": np.arange(2), "d": [np.bool_(True)]}
    assert json_sanitize(obj) == {"1": None, "b": [0.5, 3, None], "c": [0, 1], "d": [True]}
    path = tmp_path / "sub" / "x.json"
    write_json(str(path), obj)
    assert json.loads(path.read_text()) == {"1": None, "b": [0.5, 3, None], "c": [0, 1], "d": [True]}
    assert "NaN" not in path.read_text()


def test_path_inside(tmp_path):
    root = str(tmp_path)
    assert path_inside(root, "a/b.png") == os.path.join(root, "a", "b.png")
    assert path_inside(root, "a/../b.png") == os.path.join(root, "b.png")
    assert path_inside(root, os.path.join(root, "c.png")) == os.path.join(root, "c.png")
    for bad in ("../x", "a/../../x", "/etc/passwd", root + "_sibling/x"):
        assert path_inside(root, bad) is None, bad


def test_paint_label_map_priority_labels_crops_and_rles():
    a = np.zeros((4, 4), bool)
    a[0:3, 0:3] = True
    b = np.zeros((4, 4), bool)
    b[1:4, 1:4] = True
    c = np.zeros((4, 4), bool)
    c[1:3, 1:3] = True  # covered by both
    lab, kept = paint_label_map([a, b, c], (4, 4), priority=[1, 0, 2])
    assert kept == [1, 0] and lab[1, 1] == 1 and lab[0, 0] == 2 and lab.dtype == np.int64
    lab2, _ = paint_label_map([a, b, c], (4, 4), priority=[1, 0, 2], labels=[20, 10, 30])
    np.testing.assert_array_equal(lab2, np.where(lab == 1, 20, np.where(lab == 2, 10, 0)))
    rles = [mask_util.encode(np.asfortranarray(m.astype(np.uint8))) for m in (a, b, c)]
    np.testing.assert_array_equal(paint_label_map(rles, (4, 4), priority=[1, 0, 2])[0], lab)
    crops = [a[0:3, 0:3], b[1:4, 1:4], c[1:3, 1:3]]
    boxes = [(0, 0, 3, 3), (1, 1, 4, 4), (1, 1, 3, 3)]
    np.testing.assert_array_equal(paint_label_map(crops, (4, 4), priority=[1, 0, 2], boxes=boxes)[0], lab)
    with pytest.raises(ValueError, match="mask 0"):
        paint_label_map([np.ones((3, 4), bool)], (4, 4))

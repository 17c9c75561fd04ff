"""The ``labelfolder`` format: every image / label kind, and every bad input named by file."""
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import tifffile
from folder_samples import all_images, files_under, label_map, make_labelfolder

from objguided_d2.data.datasets.convert import convert_to_coco
from objguided_d2.data.io import DataError


def test_labelfolder_all_image_and_label_kinds(tmp_path):
    root = tmp_path / "lf"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    # 16-bit gray PNG + 32-bit TIFF label with huge, non-contiguous ids and a two-blob object.
    cv2.imwrite(str(root / "images" / "a.png"), rng.integers(0, 4096, (20, 30), dtype=np.uint16))
    lab = label_map(ids=((100000, (0, 0, 5, 5)), (7, (10, 10, 15, 20))))
    lab[15:18, 25:28] = 100000  # second, disconnected blob of the same object
    tifffile.imwrite(str(root / "labels" / "a_label.tif"), lab.astype(np.uint32))
    # RGBA image + 8-bit PNG label with the _mask suffix.
    cv2.imwrite(str(root / "images" / "b.png"), rng.integers(0, 255, (20, 30, 4), dtype=np.uint8))
    cv2.imwrite(str(root / "labels" / "b_mask.png"), label_map(ids=((3, (1, 1, 4, 4)),)).astype(np.uint8))
    # RGB TIFF image with no object at all (valid sample), 16-bit PNG label, _labels suffix.
    tifffile.imwrite(str(root / "images" / "c.tif"), rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "labels" / "c_labels.png"), np.zeros((20, 30), np.uint16))
    (root / "images" / "notes.txt").write_text("ignored")
    before = files_under(root)

    ds = convert_to_coco("labelfolder", str(root), ratios=(1, 0, 0))
    assert files_under(root) == before  # nothing written into the data folder
    assert ds.image_root == str(root) and ds.class_names == ["object"]
    assert str(tmp_path / "cache") in ds.json_files["train"]
    got = all_images(ds)
    assert set(got) == {"a", "b", "c"} and all(s == "train" for s, _, _ in got.values())
    _, im, anns = got["a"]
    assert (im["height"], im["width"]) == (20, 30)
    assert len(anns) == 2
    masks = {a["area"]: mask_util.decode(a["segmentation"]).astype(bool) for a in anns}
    np.testing.assert_array_equal(masks[25 + 9], lab == 100000)  # one object, two blobs
    np.testing.assert_array_equal(masks[50], lab == 7)
    assert [a["bbox"] for a in anns if a["area"] == 50][0] == [10, 10, 10, 5]
    assert len(got["b"][2]) == 1 and got["c"][2] == []


def _bad(tmp_path, mutate):
    root = tmp_path / "lf"
    make_labelfolder(root, n=2)
    culprit = mutate(root)
    with pytest.raises(DataError) as e:
        convert_to_coco("labelfolder", str(root))
    assert culprit in str(e.value), str(e.value)
    return str(e.value)


def test_size_mismatch(tmp_path):
    def m(root):
        tifffile.imwrite(str(root / "labels" / "s1.tif"), np.zeros((21, 30), np.uint16))
        return "s1.tif"
    assert "differs" in _bad(tmp_path, m)


def test_truncated_image(tmp_path):
    def m(root):
        p = root / "images" / "s0.png"
        cv2.imwrite(str(p), np.random.default_rng(1).integers(0, 255, (20, 30), dtype=np.uint8))
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        return "s0.png"
    _bad(tmp_path, m)


def test_empty_file(tmp_path):
    def m(root):
        (root / "labels" / "s1.tif").write_bytes(b"")
        return "s1.tif"
    assert "empty" in _bad(tmp_path, m)


def test_image_without_label(tmp_path):
    def m(root):
        os.remove(root / "labels" / "s1.tif")
        return "s1.png"
    assert "no label" in _bad(tmp_path, m)


def test_non_integer_label(tmp_path):
    def m(root):
        tifffile.imwrite(str(root / "labels" / "s0.tif"), np.full((20, 30), 0.5, np.float32))
        return "s0.tif"
    assert "non-integer" in _bad(tmp_path, m)


def test_negative_label(tmp_path):
    def m(root):
        tifffile.imwrite(str(root / "labels" / "s0.tif"), np.full((20, 30), -1, np.int32))
        return "s0.tif"
    assert "negative" in _bad(tmp_path, m)

"""The ``dsb2018`` format: one mask file per nucleus."""
import os

import cv2
import numpy as np
import pytest
from folder_samples import all_images

from objguided_d2.data.datasets.convert import convert_to_coco
from objguided_d2.data.io import DataError


def _make_dsb(root):
    for sid, masks in (("aaa", [(0, 0, 4, 4), (4, 4, 8, 10), None]), ("bbb", [])):
        (root / sid / "images").mkdir(parents=True)
        (root / sid / "masks").mkdir()
        cv2.imwrite(str(root / sid / "images" / f"{sid}.png"), np.full((16, 24, 4), 90, np.uint8))
        for j, box in enumerate(masks):
            m = np.zeros((16, 24), np.uint8)
            if box is not None:
                y0, x0, y1, x1 = box
                m[y0:y1, x0:x1] = 255
                m[12:14, 20:22] = 255 if j == 1 else 0  # a two-blob nucleus stays one object
            cv2.imwrite(str(root / sid / "masks" / f"m{j}.png"), m)


def test_dsb2018(tmp_path):
    root = tmp_path / "dsb"
    _make_dsb(root)
    got = all_images(convert_to_coco("dsb2018", str(root), ratios=(1, 0, 0)))
    assert set(got) == {"aaa", "bbb"}
    anns = got["aaa"][2]
    assert sorted(a["area"] for a in anns) == [16, 24 + 4]  # the all-zero mask is skipped
    assert got["bbb"][2] == []
    assert got["aaa"][1]["file_name"] == "aaa/images/aaa.png"


def test_dsb2018_bad_mask_and_missing_masks(tmp_path):
    root = tmp_path / "dsb"
    _make_dsb(root)
    cv2.imwrite(str(root / "aaa" / "masks" / "m9.png"), np.zeros((15, 24), np.uint8))
    with pytest.raises(DataError, match="m9.png"):
        convert_to_coco("dsb2018", str(root))
    os.remove(root / "aaa" / "masks" / "m9.png")
    for f in os.listdir(root / "bbb" / "masks"):
        os.remove(root / "bbb" / "masks" / f)
    os.rmdir(root / "bbb" / "masks")
    with pytest.raises(DataError, match="bbb.png"):
        convert_to_coco("dsb2018", str(root))

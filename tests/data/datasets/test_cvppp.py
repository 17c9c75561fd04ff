"""The ``cvppp`` format: palette, gray and colour-coded leaf labels."""
import json

import cv2
import numpy as np
import pytest
from folder_samples import all_images, label_map
from PIL import Image

from objguided_d2.data.datasets.convert import convert_to_coco
from objguided_d2.data.datasets.cvppp import read_cvppp_label
from objguided_d2.data.io import DataError


def test_cvppp_colour_palette_and_gray_labels(tmp_path):
    root = tmp_path / "cvppp" / "A1"
    root.mkdir(parents=True)
    lab = label_map(ids=((1, (0, 0, 5, 5)), (2, (5, 5, 10, 12)), (3, (12, 0, 20, 4))))
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [20, 200, 20]], np.uint8)
    for stem in ("colour", "palette", "gray"):
        cv2.imwrite(str(root / f"{stem}_rgb.png"), np.full((20, 30, 3), 100, np.uint8))
    cv2.imwrite(str(root / "colour_label.png"), colours[lab][:, :, ::-1])
    pal = Image.fromarray(lab.astype(np.uint8), mode="P")
    pal.putpalette(np.random.default_rng(0).integers(0, 255, 768, dtype=np.uint8).tolist())
    pal.save(str(root / "palette_label.png"))
    cv2.imwrite(str(root / "gray_label.png"), lab.astype(np.uint8) * 40)

    for stem in ("colour", "palette", "gray"):
        dec = read_cvppp_label(str(root / f"{stem}_label.png"))
        assert dec.shape == lab.shape and dec.dtype == np.int64
        # Same partition as the ground truth, whatever the id values.
        assert len(np.unique(dec)) == 4 and np.all((dec == 0) == (lab == 0))
        for i in (1, 2, 3):
            assert len(np.unique(dec[lab == i])) == 1

    (tmp_path / "cvppp" / "splits.json").write_text(json.dumps({"train": ["A1/colour", "palette"], "test": ["gray"]}))
    ds = convert_to_coco("cvppp", str(tmp_path / "cvppp"))
    assert ds.class_names == ["leaf"]
    got = all_images(ds)
    assert {k: v[0] for k, v in got.items()} == {"colour_rgb": "train", "palette_rgb": "train", "gray_rgb": "test"}
    assert all(len(v[2]) == 3 for v in got.values())


def test_cvppp_missing_label(tmp_path):
    root = tmp_path / "cvppp"
    root.mkdir()
    cv2.imwrite(str(root / "p1_rgb.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="p1_rgb.png"):
        convert_to_coco("cvppp", str(root))

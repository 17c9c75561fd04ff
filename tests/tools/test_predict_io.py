"""Inputs (collecting, reading pages) and writers (label image, table, RLE, atomic writes)."""
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import tifffile

from objguided_d2.data.io import DataError
from objguided_d2.predict.inputs import collect_inputs, iter_pages
from objguided_d2.predict.tiling import Detection
from objguided_d2.predict.writers import (
    OutputExistsError, _rle_from_crop, atomic_write, label_image, measure_objects,
)


def test_collect_inputs_files_folders_globs(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "empty").mkdir()
    img = np.zeros((8, 8), np.uint8)
    for p in ["a.png", "b.TIF", "sub/c.jpg"]:
        cv2.imwrite(str(tmp_path / p), img) if not p.endswith("TIF") else tifffile.imwrite(tmp_path / p, img)
    (tmp_path / "notes.txt").write_text("x")
    files, errors = collect_inputs([str(tmp_path)])
    assert [os.path.basename(f) for f in files] == ["a.png", "b.TIF"] and errors == []
    files, _ = collect_inputs([str(tmp_path)], recursive=True)
    assert sorted(os.path.basename(f) for f in files) == ["a.png", "b.TIF", "c.jpg"]
    files, _ = collect_inputs([str(tmp_path / "*.png"), str(tmp_path / "a.png")])
    assert len(files) == 1  # de-duplicated
    _, errors = collect_inputs([str(tmp_path / "empty"), str(tmp_path / "nope.png"), str(tmp_path / "*.bmp")])
    assert len(errors) == 3
    assert "empty" in errors[0] and "nope.png" in errors[1] and "*.bmp" in errors[2]
    files, _ = collect_inputs([str(tmp_path / "notes.txt")])  # explicit: kept, fails on read
    with pytest.raises(DataError, match="notes.txt.*extension"):
        list(iter_pages(files[0]))


def test_pages_multipage_16bit_rgba(tmp_path):
    stack = (np.arange(3 * 20 * 30).reshape(3, 20, 30) * 20).astype(np.uint16)  # up to 35980
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    pages = list(iter_pages(str(tmp_path / "stack.tif")))
    assert [p.name for p in pages] == ["stack_p0", "stack_p1", "stack_p2"]
    for p in pages:
        assert p.image.shape == (20, 30, 3) and p.image.dtype == np.uint8
        # stretched, not clipped: the brightest quarter is not all saturated
        assert p.image.min() == 0 and p.image.max() == 255 and (p.image < 255).mean() > 0.9
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200  # red in RGBA order -> BGR channel 2
    tifffile.imwrite(tmp_path / "rgba.tif", rgba)
    (page,) = iter_pages(str(tmp_path / "rgba.tif"))
    assert page.name == "rgba" and (page.image[..., 2] == 200).all() and (page.image[..., 0] == 0).all()


@pytest.mark.parametrize("ext", [".jpg", ".png", ".tif"])
def test_truncated_files_are_errors(tmp_path, ext):
    img = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    good = str(tmp_path / f"good{ext}")
    cv2.imwrite(good, img) if ext != ".tif" else tifffile.imwrite(good, img)
    data = open(good, "rb").read()
    bad = str(tmp_path / f"bad{ext}")
    open(bad, "wb").write(data[: len(data) // 2])
    assert len(list(iter_pages(good))) == 1
    with pytest.raises(DataError, match="bad"):
        list(iter_pages(bad))


def test_rle_from_crop_equals_pycocotools():
    rng = np.random.default_rng(1)
    h, w = 37, 51
    for _ in range(20):
        y0, x0 = rng.integers(0, h - 5), rng.integers(0, w - 5)
        crop = rng.random((rng.integers(1, h - y0 + 1), rng.integers(1, w - x0 + 1))) > 0.5
        full = np.zeros((h, w), np.uint8)
        full[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
        rle = _rle_from_crop(crop, (y0, x0), (h, w))
        assert isinstance(rle["counts"], str)
        np.testing.assert_array_equal(mask_util.decode(rle), full)
        ref = mask_util.encode(np.asfortranarray(full))
        assert rle["counts"] == ref["counts"].decode()


def test_label_image_score_order_and_measurements():
    full = lambda shape: np.ones(shape, bool)  # noqa: E731
    low = Detection(box=(0, 0, 10, 10), mask=full((10, 10)), score=0.3, category=1)
    high = Detection(box=(5, 5, 15, 15), mask=full((10, 10)), score=0.9, category=0)
    hidden = Detection(box=(6, 6, 8, 8), mask=full((2, 2)), score=0.1, category=0)  # fully covered
    lab, kept = label_image([low, hidden, high], (20, 20))
    assert lab.dtype == np.uint16
    assert kept == [high, low]  # id 1 = highest score; hidden object dropped
    assert (lab == 1).sum() == 100 and (lab == 2).sum() == 100 - 25
    rows, coco = measure_objects(lab, kept, image_name="x", image_id=7, class_names=["cell", "nucleus"])
    assert [r["id"] for r in rows] == [1, 2]
    assert [r["class"] for r in rows] == ["cell", "nucleus"]
    assert [r["area"] for r in rows] == [100, 75]
    assert [int(mask_util.area(c["segmentation"])) for c in coco] == [100, 75]
    assert coco[0]["bbox"] == [5.0, 5.0, 10.0, 10.0] and coco[0]["image_id"] == 7
    assert rows[0]["centroid_y"] == pytest.approx(9.5)


def test_label_image_switches_to_uint32():
    n = 70_000
    dets = [Detection(box=(i // 300, i % 300, i // 300 + 1, i % 300 + 1), mask=np.ones((1, 1), bool),
                      score=1.0 - i / n, category=0) for i in range(n)]
    lab, kept = label_image(dets, (300, 300))
    assert lab.dtype == np.uint32 and lab.max() == n and len(kept) == n
    assert lab[0, 0] == 1 and lab[(n - 1) // 300, (n - 1) % 300] == n


def test_atomic_write_never_overwrites_and_cleans_up(tmp_path):
    path = str(tmp_path / "out.txt")
    atomic_write(path, lambda tmp: open(tmp, "w").write("one"))
    with pytest.raises(OutputExistsError, match="out.txt.*--overwrite"):
        atomic_write(path, lambda tmp: open(tmp, "w").write("two"))
    assert open(path).read() == "one"

    def failing(tmp):
        open(tmp, "w").write("partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, failing, overwrite=True)
    assert open(path).read() == "one"
    assert os.listdir(tmp_path) == ["out.txt"]  # no temp file left behind
    atomic_write(path, lambda tmp: open(tmp, "w").write("two"), overwrite=True)
    assert open(path).read() == "two"

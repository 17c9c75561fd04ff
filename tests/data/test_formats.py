"""Real-data formats -> COCO JSON: every format, split files, caching and every bad input."""
import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import tifffile
from PIL import Image

from objguided_d2.data.coco_json import seeded_split
from objguided_d2.data.formats import convert_to_coco, prepare_coco, read_cvppp_label, resolve_splits
from objguided_d2.data.io import DataError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OBJGUIDED_CACHE", str(tmp_path / "cache"))


def _label(h=20, w=30, ids=((1, (2, 2, 8, 8)),)):
    lab = np.zeros((h, w), np.int64)
    for i, (y0, x0, y1, x1) in ids:
        lab[y0:y1, x0:x1] = i
    return lab


def _load(path):
    with open(path) as f:
        return json.load(f)


def _all_images(ds):
    out = {}
    for s, p in ds.json_files.items():
        c = _load(p)
        for im in c["images"]:
            out[os.path.splitext(os.path.basename(im["file_name"]))[0]] = (
                s, im, [a for a in c["annotations"] if a["image_id"] == im["id"]])
    return out


def _make_labelfolder(root, n=5):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"s{i}.png"), rng.integers(0, 255, (20, 30), dtype=np.uint8))
        tifffile.imwrite(str(root / "labels" / f"s{i}.tif"), _label().astype(np.uint16))


def _files(root):
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)


# ------------------------------------------------------------------------------ labelfolder
def test_labelfolder_all_image_and_label_kinds(tmp_path):
    root = tmp_path / "lf"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    # 16-bit gray PNG + 32-bit TIFF label with huge, non-contiguous ids and a two-blob object.
    cv2.imwrite(str(root / "images" / "a.png"), rng.integers(0, 4096, (20, 30), dtype=np.uint16))
    lab = _label(ids=((100000, (0, 0, 5, 5)), (7, (10, 10, 15, 20))))
    lab[15:18, 25:28] = 100000  # second, disconnected blob of the same object
    tifffile.imwrite(str(root / "labels" / "a_label.tif"), lab.astype(np.uint32))
    # RGBA image + 8-bit PNG label with the _mask suffix.
    cv2.imwrite(str(root / "images" / "b.png"), rng.integers(0, 255, (20, 30, 4), dtype=np.uint8))
    cv2.imwrite(str(root / "labels" / "b_mask.png"), _label(ids=((3, (1, 1, 4, 4)),)).astype(np.uint8))
    # RGB TIFF image with no object at all (valid sample), 16-bit PNG label, _labels suffix.
    tifffile.imwrite(str(root / "images" / "c.tif"), rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "labels" / "c_labels.png"), np.zeros((20, 30), np.uint16))
    (root / "images" / "notes.txt").write_text("ignored")
    before = _files(root)

    ds = convert_to_coco("labelfolder", str(root), ratios=(1, 0, 0))
    assert _files(root) == before  # nothing written into the data folder
    assert ds.image_root == str(root) and ds.class_names == ["object"]
    assert str(tmp_path / "cache") in ds.json_files["train"]
    got = _all_images(ds)
    assert set(got) == {"a", "b", "c"} and all(s == "train" for s, _, _ in got.values())
    _, im, anns = got["a"]
    assert (im["height"], im["width"]) == (20, 30)
    assert len(anns) == 2
    masks = {a["area"]: mask_util.decode(a["segmentation"]).astype(bool) for a in anns}
    np.testing.assert_array_equal(masks[25 + 9], lab == 100000)  # one object, two blobs
    np.testing.assert_array_equal(masks[50], lab == 7)
    assert [a["bbox"] for a in anns if a["area"] == 50][0] == [10, 10, 10, 5]
    assert len(got["b"][2]) == 1 and got["c"][2] == []


def test_labelfolder_split_files_json_and_txt(tmp_path):
    root = tmp_path / "lf"
    _make_labelfolder(root)
    (root / "splits.json").write_text(json.dumps({"train": ["s0", "s1.png"], "val": ["s2"], "test": ["s3"]}))
    ds = convert_to_coco("labelfolder", str(root))
    got = _all_images(ds)
    assert {k: v[0] for k, v in got.items()} == {"s0": "train", "s1": "train", "s2": "val", "s3": "test"}

    root2 = tmp_path / "lf2"
    _make_labelfolder(root2)
    (root2 / "train.txt").write_text("# training\ns4\ns3\n\n")
    (root2 / "val.txt").write_text("s0\n")
    got = _all_images(convert_to_coco("labelfolder", str(root2)))
    assert {k: v[0] for k, v in got.items()} == {"s3": "train", "s4": "train", "s0": "val"}


@pytest.mark.parametrize("content, match", [
    ({"train": ["nope"]}, "nope"),
    ({"train": ["s0"], "val": ["s0"]}, "both"),
    ({"training": ["s0"]}, "expected"),
])
def test_bad_split_file(tmp_path, content, match):
    root = tmp_path / "lf"
    _make_labelfolder(root)
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


# ------------------------------------------------------------------------------ bad inputs
def _bad(tmp_path, mutate):
    root = tmp_path / "lf"
    _make_labelfolder(root, n=2)
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


def test_empty_and_missing_folders(tmp_path):
    root = tmp_path / "empty"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    with pytest.raises(DataError, match="no image files") as e:
        convert_to_coco("labelfolder", str(root))
    assert str(root / "images") in str(e.value)
    with pytest.raises(DataError, match="not found"):
        convert_to_coco("labelfolder", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="no DSB2018"):
        convert_to_coco("dsb2018", str(root / "labels"))
    with pytest.raises(DataError, match="no CVPPP"):
        convert_to_coco("cvppp", str(root))


# ------------------------------------------------------------------------------ caching
def test_cache_reused_and_refreshed(tmp_path):
    root = tmp_path / "lf"
    _make_labelfolder(root, n=3)
    ds1 = convert_to_coco("labelfolder", str(root), ratios=(1, 0, 0))
    mtime = os.stat(ds1.json_files["train"]).st_mtime_ns
    ds2 = convert_to_coco("labelfolder", str(root), ratios=(1, 0, 0))
    assert ds2.json_files == ds1.json_files
    assert os.stat(ds2.json_files["train"]).st_mtime_ns == mtime  # not rewritten

    # Change one label: the conversion is rebuilt and the stale one removed.
    tifffile.imwrite(str(root / "labels" / "s0.tif"), _label(ids=((1, (0, 0, 3, 3)), (2, (5, 5, 9, 9)))).astype(np.uint16))
    ds3 = convert_to_coco("labelfolder", str(root), ratios=(1, 0, 0))
    assert ds3.json_files["train"] != ds1.json_files["train"]
    assert not os.path.exists(ds1.json_files["train"])
    assert len(_all_images(ds3)["s0"][2]) == 2
    # Different options -> a different cache entry.
    ds4 = convert_to_coco("labelfolder", str(root), ratios=(1, 0, 0), class_name="cell")
    assert ds4.json_files["train"] != ds3.json_files["train"] and ds4.class_names == ["cell"]


# ------------------------------------------------------------------------------ dsb2018
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
    got = _all_images(convert_to_coco("dsb2018", str(root), ratios=(1, 0, 0)))
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


# ------------------------------------------------------------------------------ cvppp
def test_cvppp_colour_palette_and_gray_labels(tmp_path):
    root = tmp_path / "cvppp" / "A1"
    root.mkdir(parents=True)
    lab = _label(ids=((1, (0, 0, 5, 5)), (2, (5, 5, 10, 12)), (3, (12, 0, 20, 4))))
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
    got = _all_images(ds)
    assert {k: v[0] for k, v in got.items()} == {"colour_rgb": "train", "palette_rgb": "train", "gray_rgb": "test"}
    assert all(len(v[2]) == 3 for v in got.values())


def test_cvppp_missing_label(tmp_path):
    root = tmp_path / "cvppp"
    root.mkdir()
    cv2.imwrite(str(root / "p1_rgb.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(DataError, match="p1_rgb.png"):
        convert_to_coco("cvppp", str(root))


# ------------------------------------------------------------------------------ coco
def _coco(n_images, with_ann=True):
    images = [{"id": i + 10, "file_name": f"im{i}.png", "height": 8, "width": 8} for i in range(n_images)]
    anns = [{"id": i + 1, "image_id": i + 10, "category_id": 5, "bbox": [1, 1, 3, 3], "area": 9, "iscrowd": 0,
             "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]} for i in range(n_images)] if with_ann else []
    return {"images": images, "annotations": anns, "categories": [{"id": 5, "name": "cell"}]}


def test_coco_folder_and_single_file(tmp_path):
    root = tmp_path / "c3"
    (root / "images").mkdir(parents=True)
    for s in ("train", "val", "test"):
        (root / f"{s}.json").write_text(json.dumps(_coco(2)))
    ds = prepare_coco(str(root))
    assert ds.json_files["val"] == str(root / "val.json") and ds.image_root == str(root / "images")
    assert ds.class_names == ["cell"]

    single = tmp_path / "one" / "all.json"
    single.parent.mkdir()
    single.write_text(json.dumps(_coco(10)))
    ds = prepare_coco(str(single), seed=1)
    parts = {s: _load(p) for s, p in ds.json_files.items()}
    assert [len(parts[s]["images"]) for s in ("train", "val", "test")] == [6, 2, 2]
    for c in parts.values():
        ids = {im["id"] for im in c["images"]}
        assert all(a["image_id"] in ids for a in c["annotations"]) and len(c["annotations"]) == len(ids)
    assert str(tmp_path / "cache") in ds.json_files["train"]
    assert prepare_coco(str(single.parent), seed=1).json_files == ds.json_files  # folder with one json


def test_coco_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        prepare_coco(str(bad))
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="not a COCO"):
        prepare_coco(str(bad))
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "train.json").write_text(json.dumps(_coco(1)))
    with pytest.raises(DataError, match="not all"):
        prepare_coco(str(folder))

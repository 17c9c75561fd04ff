"""The ``coco`` format: a folder of three JSONs or one JSON split by image; bad files."""
import json

import pytest
from folder_samples import load_json

from objguided_d2.data.datasets.coco import prepare_coco
from objguided_d2.data.io import DataError


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
    parts = {s: load_json(p) for s, p in ds.json_files.items()}
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

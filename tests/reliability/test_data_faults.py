"""Bad and unusual data: every case is either handled (and the handling is asserted) or fails with
a DataError / ValueError naming the file and the problem -- never a crash deep in a tensor op and
never silently wrong labels. The table in docs/reliability-data.md maps each case to its test."""
import json
import math
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import tifffile
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.detection_utils import SizeMismatchError
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, BoxMode, Instances
from detectron2.utils.events import EventStorage

from objguided_d2.data.dataset_mapper import ObjGuidedDatasetMapper
from objguided_d2.data.datasets import convert_to_coco, prepare_coco
from objguided_d2.data.datasets.coco import encode_mask
from objguided_d2.data.io import DataError, read_image, read_label_map
from objguided_d2.data.register import register_dataset_spec
from objguided_d2.engine.train_net import load_config
from objguided_d2.evaluation import build_evaluators, gt_instances_from_dict
from objguided_d2.modeling.meta_arch import ObjGuidedRCNN
from objguided_d2.modeling.proposal_generator.centernet_utils import build_targets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs", "tiny", "objguided_R18_tiny.yaml")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OBJGUIDED_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------ helpers
def tiny_cfg(*opts):
    return load_config(TINY, ["MODEL.DEVICE", "cpu", *opts])


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


def train_step(model, batch):
    """One forward + backward; asserts finite losses and gradients. Returns (losses, scalars)."""
    model.train()
    model.zero_grad(set_to_none=True)
    with EventStorage() as storage:
        losses = model(batch)
        sum(losses.values()).backward()
        scalars = {k: v.latest() for k, v in storage.histories().items()}
    for name, v in losses.items():
        assert torch.isfinite(v), f"{name} = {v}"
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    return {k: float(v) for k, v in losses.items()}, scalars


def rect_annos(h, w, boxes, category_id=0):
    annos = []
    for x0, y0, x1, y1 in boxes:
        m = np.zeros((h, w), np.uint8)
        m[y0:y1, x0:x1] = 1
        annos.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "bbox_mode": BoxMode.XYWH_ABS,
                      "category_id": category_id, "iscrowd": 0, "segmentation": encode_mask(m)})
    return annos


def write_image(path, h=32, w=32, seed=0):
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))
    return str(path)


def exact_mapper(is_train=True, mask_format="bitmask"):
    """No augmentation: objects keep their exact pixels."""
    return ObjGuidedDatasetMapper(is_train, augmentations=[], instance_mask_format=mask_format)


def _truncate(path, keep):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])


def _makers():
    rng = np.random.default_rng(1)
    img16 = rng.integers(0, 65535, (48, 64), dtype=np.uint16)
    rgb = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return {
        "png": lambda p: cv2.imwrite(p, img16),
        "tif": lambda p: tifffile.imwrite(p, img16),
        "zlib.tif": lambda p: tifffile.imwrite(p, img16, compression="zlib"),
        "jpg": lambda p: cv2.imwrite(p, rgb),
    }


# ------------------------------------------------------------------------------ files
@pytest.mark.parametrize("ext", ["png", "tif", "jpg"])
def test_empty_image_file(tmp_path, ext):
    p = tmp_path / f"empty.{ext}"
    p.write_bytes(b"")
    for reader in (read_image, read_label_map):
        with pytest.raises(DataError, match="empty") as e:
            reader(str(p))
        assert str(p) in str(e.value)
    with pytest.raises(DataError, match="empty"):
        exact_mapper()({"file_name": str(p), "height": 8, "width": 8, "image_id": 0, "annotations": []})


@pytest.mark.parametrize("kind", ["png", "tif", "zlib.tif", "jpg"])
@pytest.mark.parametrize("keep", [0.97, 0.5, 0.05])
def test_truncated_image_file(tmp_path, kind, keep):
    p = str(tmp_path / f"cut.{kind}")
    _makers()[kind](p)
    read_image(p)  # the intact file reads
    _truncate(p, keep)
    readers = (read_image,) if kind == "jpg" else (read_image, read_label_map)
    for reader in readers:
        with pytest.raises(DataError) as e:
            reader(p)
        assert p in str(e.value)


def test_truncated_image_met_by_the_mapper(tmp_path):
    """A file damaged after conversion fails when training reads it, naming it."""
    p = write_image(tmp_path / "late.png", 40, 40)
    _truncate(p, 0.5)
    d = {"file_name": p, "height": 40, "width": 40, "image_id": 0, "annotations": rect_annos(40, 40, [(2, 2, 9, 9)])}
    with pytest.raises(DataError, match="late.png"):
        exact_mapper()(d)


# ------------------------------------------------------------------------------ sizes
def test_image_label_size_mismatch_labelfolder(tmp_path):
    root = tmp_path / "lf"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    write_image(root / "images" / "a.png", 20, 30)
    cv2.imwrite(str(root / "labels" / "a.png"), np.ones((30, 20), np.uint8))  # transposed
    with pytest.raises(DataError, match="differs from its image") as e:
        convert_to_coco("labelfolder", str(root))
    assert "a.png" in str(e.value) and "20x30" in str(e.value)


def test_mask_of_another_size_in_a_coco_dict(tmp_path):
    """An RLE whose size is not the image's: a DataError naming image and annotation (it used to
    fail inside a transform as a bare assert / shape error)."""
    p = write_image(tmp_path / "img.png", 40, 50)
    annos = rect_annos(40, 50, [(2, 2, 9, 9)]) + rect_annos(50, 40, [(3, 3, 8, 8)])
    annos[1]["id"] = 77
    d = {"file_name": p, "height": 40, "width": 50, "image_id": 0, "annotations": annos}
    with pytest.raises(DataError) as e:
        exact_mapper()(d)
    msg = str(e.value)
    assert "img.png" in msg and "annotation 1" in msg and "77" in msg and "40x50" in msg
    cfg = tiny_cfg("INPUT.TRAIN_SIZE", "64")
    with pytest.raises(DataError, match="annotation 1"):
        ObjGuidedDatasetMapper(cfg, True)(d)  # the same with the paper's crop augmentation


def test_dataset_dict_size_differs_from_image(tmp_path):
    p = write_image(tmp_path / "img.png", 40, 50)
    with pytest.raises(SizeMismatchError, match="img.png"):
        exact_mapper()({"file_name": p, "height": 41, "width": 50, "image_id": 0, "annotations": []})


# ------------------------------------------------------------------------------ label values
@pytest.mark.parametrize("values, match", [
    (np.float32([[0, 1.5], [2, 2]]), "non-integer"),
    (np.float32([[0, np.nan], [2, 2]]), "non-integer"),
    (np.int32([[0, -3], [2, 2]]), "negative"),
    (np.float32([[0, -1.0], [2, 2]]), "negative"),
])
def test_bad_label_values(tmp_path, values, match):
    p = str(tmp_path / "lab.tif")
    tifffile.imwrite(p, np.kron(values, np.ones((4, 4), values.dtype)))
    with pytest.raises(DataError, match=match) as e:
        read_label_map(p)
    assert p in str(e.value)


def test_float_label_with_integer_values_is_accepted(tmp_path):
    p = str(tmp_path / "lab.tif")
    lab = np.zeros((8, 8), np.float64)
    lab[1:3, 1:3], lab[5:7, 4:8] = 3.0, 70000.0
    tifffile.imwrite(p, lab)
    out = read_label_map(p)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, lab.astype(np.int64))


def test_noncontiguous_ids_and_two_blob_object(tmp_path, tiny_model):
    """Ids {3, 70000} are two objects; id 70000 has two disconnected blobs and stays ONE object
    (one mask, one box over both blobs); the detector is trained on its largest blob's box."""
    root = tmp_path / "lf"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    write_image(root / "images" / "a.png", 48, 48)
    lab = np.zeros((48, 48), np.uint32)
    lab[2:8, 2:8] = 3
    lab[20:30, 20:34] = 70000  # big blob
    lab[40:44, 2:6] = 70000  # small, disconnected blob
    tifffile.imwrite(str(root / "labels" / "a.tif"), lab)
    ds = convert_to_coco("labelfolder", str(root), ratios=(1, 0, 0))
    coco = json.load(open(ds.json_files["train"]))
    assert len(coco["annotations"]) == 2
    rec = load_coco_json(ds.json_files["train"], ds.image_root, "relia_lf")[0]
    inst = exact_mapper()(rec)["instances"]
    assert len(inst) == 2
    masks = inst.gt_masks.tensor.numpy()
    two_blob = int(np.argmax(masks.sum(axis=(1, 2))))
    np.testing.assert_array_equal(masks[two_blob], lab == 70000)
    assert inst.gt_boxes.tensor[two_blob].tolist() == [2.0, 20.0, 34.0, 44.0]
    comp = ObjGuidedRCNN._with_component_boxes({"instances": inst})["instances"]
    assert comp.gt_boxes.tensor[two_blob].tolist() == [20.0, 20.0, 34.0, 30.0]
    train_step(tiny_model, [{"image": torch.zeros(3, 48, 48, dtype=torch.uint8), "instances": inst}])


# ------------------------------------------------------------------------------ object counts
def test_one_and_two_pixel_objects(tmp_path, tiny_model):
    """Kept in the dataset and by the mapper; no heatmap target (<= MIN_BOX_SIZE = 2 px) and
    the segmentation branch skips the 1-px-wide ones (level-0 ROI < 2) -- without an error."""
    root = tmp_path / "lf"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    write_image(root / "images" / "s.png", 64, 64)
    lab = np.zeros((64, 64), np.uint16)
    lab[5, 5] = 1  # 1x1
    lab[10:12, 20:22] = 2  # 2x2
    lab[30, 30:32] = 3  # 1x2 (one pixel high)
    lab[40:52, 40:54] = 4  # a normal object
    cv2.imwrite(str(root / "labels" / "s.png"), lab)
    ds = convert_to_coco("labelfolder", str(root), ratios=(1, 0, 0))
    rec = load_coco_json(ds.json_files["train"], ds.image_root, "relia_lf")[0]
    assert sorted(a["bbox"][2] * a["bbox"][3] for a in rec["annotations"]) == [1, 2, 4, 168]
    inst = exact_mapper()(rec)["instances"]
    assert len(inst) == 4
    t = build_targets(inst.gt_boxes.tensor, inst.gt_classes, (16, 16), 4, 1, min_box_size=2.0)
    assert len(t["indices"]) == 1  # only the normal object has a centre
    losses, scalars = train_step(tiny_model, [{"image": torch.zeros(3, 64, 64, dtype=torch.uint8),
                                                "instances": inst}])
    assert scalars["roi_heads/num_skipped_small"] == 2  # the 1x1 and the 1x2
    assert scalars["roi_heads/num_segmented"] == 2  # the 2x2 (a 2x2 ROI) and the normal one
    assert losses["loss_seg"] > 0


def test_image_without_objects_trains(tmp_path, tiny_model):
    p = write_image(tmp_path / "bg.png", 64, 64)
    out = ObjGuidedDatasetMapper(tiny_cfg("INPUT.TRAIN_SIZE", "64"), True)(
        {"file_name": p, "height": 64, "width": 64, "image_id": 0, "annotations": []})
    inst = out["instances"]
    assert len(inst) == 0 and inst.gt_masks.tensor.shape == (0, 64, 64)
    losses, scalars = train_step(tiny_model, [out])
    assert losses["loss_seg"] == 0 and losses["loss_wh"] == 0 and losses["loss_heatmap"] > 0
    assert scalars["roi_heads/num_segmented"] == 0


# ------------------------------------------------------------------------------ COCO json
def _coco_folder(root, splits, categories=({"id": 1, "name": "cell"},)):
    """COCO folder with train/val/test.json; ``splits`` maps split -> (images, annotations)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for s in ("train", "val", "test"):
        images, anns = splits.get(s, ([], []))
        (root / f"{s}.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": list(categories)}))
    return root


def _image(root, image_id, name, h=32, w=32):
    write_image(root / "images" / name, h, w, seed=image_id)
    return {"id": image_id, "file_name": name, "height": h, "width": w}


def _ann(ann_id, image_id, box, segm, category_id=1):
    x0, y0, x1, y1 = box
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0,
            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "segmentation": segm}


def _rect(h, w, box):
    x0, y0, x1, y1 = box
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def test_duplicated_image_ids(tmp_path):
    root = tmp_path / "dup"
    (root / "images").mkdir(parents=True)
    images = [_image(root, 1, "a.png"), _image(root, 1, "b.png"), _image(root, 2, "c.png")]
    anns = [_ann(1, 1, (1, 1, 5, 5), [[1, 1, 5, 1, 5, 5, 1, 5]])]
    data = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "cell"}]}
    single = root / "all.json"
    single.write_text(json.dumps(data))
    # Why the check exists: Detectron2 silently merges the two images into one.
    assert len(load_coco_json(str(single), str(root / "images"))) == 2
    with pytest.raises(DataError, match="image id 1 is used more than once") as e:
        prepare_coco(str(single))
    assert "all.json" in str(e.value) and "a.png" in str(e.value) and "b.png" in str(e.value)
    folder = _coco_folder(tmp_path / "three", {"train": (images, anns)})
    with pytest.raises(DataError, match="image id 1") as e:
        register_dataset_spec(f"relia_dup=coco:{folder}")
    assert "train.json" in str(e.value)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d["annotations"].append(dict(d["annotations"][0])), "annotation id 1 is used more than once"),
    (lambda d: d["annotations"][0].update(category_id=4), "category_id 4, not among"),
    (lambda d: d["categories"].append({"id": 1, "name": "again"}), "category id 1 is used more than once"),
    (lambda d: d["images"][0].pop("height"), "lacks \\['height'\\]"),
])
def test_other_inconsistent_coco_ids(tmp_path, mutate, match):
    data = {"images": [{"id": 1, "file_name": "a.png", "height": 8, "width": 8}],
            "annotations": [_ann(1, 1, (1, 1, 5, 5), [[1, 1, 5, 1, 5, 5, 1, 5]])],
            "categories": [{"id": 1, "name": "cell"}]}
    mutate(data)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(data))
    with pytest.raises(DataError, match=match) as e:
        prepare_coco(str(p))
    assert "bad.json" in str(e.value)


def test_polygons_and_rle_mixed(tmp_path):
    h, w = 32, 40
    root = tmp_path / "mixed"
    (root / "images").mkdir(parents=True)
    boxes = [(2, 2, 10, 12), (15, 4, 30, 9), (5, 20, 12, 30)]
    poly = [[2, 2, 10, 2, 10, 12, 2, 12]]
    rle = encode_mask(_rect(h, w, boxes[1]))
    uncompressed = mask_util.frPyObjects(  # uncompressed RLE: counts as a list of ints
        {"size": [h, w], "counts": _uncompressed_counts(_rect(h, w, boxes[2]))}, h, w)
    assert mask_util.decode(uncompressed).sum() == 70
    anns = [_ann(1, 1, boxes[0], poly), _ann(2, 1, boxes[1], rle),
            _ann(3, 1, boxes[2], {"size": [h, w], "counts": _uncompressed_counts(_rect(h, w, boxes[2]))})]
    _coco_folder(root, {"train": ([_image(root, 1, "m.png", h, w)], anns)})
    register_dataset_spec(f"relia_mixed=coco:{root}")
    rec = DatasetCatalog.get("relia_mixed_train")[0]
    expected = np.stack([_rect(h, w, b) for b in boxes]).astype(bool)
    for fmt in ("bitmask", "polygon"):  # an RLE forces bitmasks even when polygons are asked for
        inst = exact_mapper(mask_format=fmt)(rec)["instances"]
        np.testing.assert_array_equal(inst.gt_masks.tensor.numpy(), expected)
        assert inst.gt_boxes.tensor.tolist() == [list(map(float, b)) for b in boxes]
    gt = gt_instances_from_dict(rec)
    np.testing.assert_array_equal(np.stack([mask_util.decode(m) for m in gt.masks]).astype(bool), expected)


def _uncompressed_counts(mask):
    flat = mask.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return [int(c) for c in counts]


def _perfect_outputs(rec, class_of=lambda c: c):
    """Model-style outputs that reproduce the GT of ``rec`` exactly (classes mapped by class_of)."""
    gt = gt_instances_from_dict(rec)
    h, w = rec["height"], rec["width"]
    inst = Instances((h, w))
    masks = [mask_util.decode(m).astype(bool) for m in gt.masks]
    inst.pred_masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.bool)
    inst.pred_boxes = Boxes(torch.as_tensor(gt.boxes, dtype=torch.float32))
    inst.scores = torch.linspace(0.9, 0.5, len(gt)) if len(gt) else torch.zeros(0)
    inst.pred_classes = torch.as_tensor([class_of(int(c)) for c in gt.classes], dtype=torch.int64)
    return {"instances": inst}


def _evaluate(cfg, name, records, outputs, out_dir):
    evaluator = build_evaluators(cfg, name, str(out_dir))
    evaluator.reset()
    for rec, out in zip(records, outputs):
        evaluator.process([{"image_id": rec["image_id"], "height": rec["height"], "width": rec["width"]}], [out])
    return evaluator.evaluate()


def test_category_ids_not_starting_at_one(tmp_path):
    """Categories 9 and 5 (unsorted, not from 1): contiguous 5 -> 0, 9 -> 1 everywhere, and
    evaluation maps predictions back correctly (perfect = 100, swapped classes = 0)."""
    root = tmp_path / "cats"
    (root / "images").mkdir(parents=True)
    h, w = 32, 32
    images = [_image(root, 10, "a.png"), _image(root, 11, "b.png")]
    anns = [
        _ann(1, 10, (2, 2, 10, 10), encode_mask(_rect(h, w, (2, 2, 10, 10))), category_id=9),
        _ann(2, 10, (15, 15, 28, 25), [[15, 15, 28, 15, 28, 25, 15, 25]], category_id=5),
        _ann(3, 11, (4, 18, 12, 30), encode_mask(_rect(h, w, (4, 18, 12, 30))), category_id=5),
    ]
    cats = [{"id": 9, "name": "nine"}, {"id": 5, "name": "five"}]
    _coco_folder(root, {"train": (images, anns), "val": (images, anns), "test": (images, anns)}, cats)
    register_dataset_spec(f"relia_cats=coco:{root}")
    recs = DatasetCatalog.get("relia_cats_val")
    meta = MetadataCatalog.get("relia_cats_val")
    assert meta.thing_classes == ["five", "nine"]
    assert meta.thing_dataset_id_to_contiguous_id == {5: 0, 9: 1}
    by_area = {a["bbox"][2] * a["bbox"][3]: a["category_id"] for r in recs for a in r["annotations"]}
    assert by_area == {64: 1, 130: 0, 96: 0}
    inst = exact_mapper()(recs[0])["instances"]
    assert sorted(inst.gt_classes.tolist()) == [0, 1]

    cfg = tiny_cfg("MODEL.ROI_HEADS.NUM_CLASSES", "2")
    res = _evaluate(cfg, "relia_cats_val", recs, [_perfect_outputs(r) for r in recs], tmp_path / "ev1")
    assert res["segm"]["AP"] == pytest.approx(100.0) and res["bbox"]["AP"] == pytest.approx(100.0)
    assert res["segm"]["AP-five"] == pytest.approx(100.0) and res["segm"]["AP-nine"] == pytest.approx(100.0)
    assert res["paper"]["APseg"] == pytest.approx(100.0) and res["paper"]["APseg-nine"] == pytest.approx(100.0)
    swapped = [_perfect_outputs(r, class_of=lambda c: 1 - c) for r in recs]
    res = _evaluate(cfg, "relia_cats_val", recs, swapped, tmp_path / "ev2")
    assert res["segm"]["AP"] == pytest.approx(0.0) and res["paper"]["APseg"] == pytest.approx(0.0)


def test_all_background_dataset_trains_and_evaluates(tmp_path, tiny_model):
    root = tmp_path / "bg"
    (root / "images").mkdir(parents=True)
    images = [_image(root, i, f"e{i}.png", 64, 64) for i in (1, 2)]
    _coco_folder(root, {"train": (images, []), "val": (images, []), "test": (images, [])})
    register_dataset_spec(f"relia_bg=coco:{root}")
    recs = DatasetCatalog.get("relia_bg_train")
    assert len(recs) == 2 and all(r["annotations"] == [] for r in recs)
    cfg = tiny_cfg("INPUT.TRAIN_SIZE", "64")
    mapper = ObjGuidedDatasetMapper(cfg, True)
    opt = torch.optim.Adam(tiny_model.parameters(), lr=1e-4)
    for _ in range(2):
        losses, _ = train_step(tiny_model, [mapper(r) for r in recs])
        assert losses["loss_seg"] == 0
        opt.step()

    tiny_model.eval()
    test_recs = DatasetCatalog.get("relia_bg_test")
    test_mapper = ObjGuidedDatasetMapper(cfg, False)
    with torch.no_grad():
        outputs = [tiny_model([test_mapper(r)])[0] for r in test_recs]
    # A false positive in one image: the case where evaluators most often divide by zero.
    fp = Instances((64, 64))
    fp.pred_boxes = Boxes(torch.tensor([[5.0, 5.0, 20.0, 20.0]]))
    fp.scores = torch.tensor([0.8])
    fp.pred_classes = torch.tensor([0])
    fp.pred_masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    fp.pred_masks[0, 5:20, 5:20] = True
    outputs[0] = {"instances": Instances.cat([outputs[0]["instances"], fp])} if len(outputs[0]["instances"]) \
        else {"instances": fp}
    res = _evaluate(cfg, "relia_bg_test", test_recs, outputs, tmp_path / "ev")
    # AP is undefined without GT: NaN (null in the JSON files), never a crash or a made-up number.
    assert math.isnan(res["segm"]["AP"]) and math.isnan(res["bbox"]["AP"])
    assert math.isnan(res["paper"]["APseg"]) and math.isnan(res["paper"]["APdec"])
    assert res["paper"]["DiffFG"] >= 0.5  # the false positive is counted (1 extra object / 2 images)
    saved = json.load(open(tmp_path / "ev" / "paper_metrics.json"))
    assert saved["metrics"]["APseg"] is None

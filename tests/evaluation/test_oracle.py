"""Mask quality given the ground-truth boxes (objguided_d2.evaluation.oracle)."""
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, BoxMode, Instances

from objguided_d2.engine.train_net import load_config
from objguided_d2.evaluation.oracle import (detected_object_ious, oracle_object_ious, perturb_boxes,
                                            summarize_oracle, thin_fraction)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _masks(h, w):
    a = np.zeros((h, w), bool)
    a[4:14, 5:17] = True  # compact
    b = np.zeros((h, w), bool)
    b[20, 3:30] = True  # a 1-px line: thin
    b[17:24, 30:37] = True
    c = np.zeros((h, w), bool)
    c[8:20, 20:26] = True
    return [a, b, c]


def _dataset(tmp_path, h=32, w=40):
    dicts = []
    for k in range(2):
        img = np.full((h, w, 3), 30 + 50 * k, np.uint8)
        path = str(tmp_path / f"im{k}.png")
        cv2.imwrite(path, img)
        anns = []
        for m in _masks(h, w)[: 3 - k]:
            rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode()
            x, y, bw, bh = mask_util.toBbox(rle).tolist()
            anns.append({"segmentation": rle, "bbox": [x, y, bw, bh], "bbox_mode": BoxMode.XYWH_ABS,
                         "category_id": 0, "iscrowd": 0})
        dicts.append({"file_name": path, "image_id": k, "height": h, "width": w, "annotations": anns})
    return dicts


def test_thin_fraction():
    line = np.zeros((10, 20), bool)
    line[5, 2:18] = True
    square = np.zeros((10, 20), bool)
    square[2:8, 4:12] = True
    assert thin_fraction(line) == 1.0
    assert thin_fraction(square) == 0.0
    assert thin_fraction(line | square) == pytest.approx(8 / (16 + 48 - 8))
    assert thin_fraction(np.zeros((4, 4), bool)) == 0.0


class _StubModel:
    """Returns the GT mask of every given box except the last, in reverse order; records the
    boxes it was given."""

    def __init__(self, dicts):
        self.by_size = dicts
        self.seen = []
        self.mask_nms_thresh = 0.2

    def inference(self, inputs, detected_instances):
        assert self.mask_nms_thresh == 0.0  # one object at a time: no mask NMS
        det = detected_instances[0]
        self.seen.append((inputs[0]["image"].shape, det.pred_boxes.tensor.clone()))
        h, w = inputs[0]["height"], inputs[0]["width"]
        masks = _masks(h, w)[: len(det)]
        keep = list(range(len(det) - 1))[::-1]
        res = Instances((h, w))
        res.scores = det.scores[keep]
        res.pred_masks = torch.as_tensor(np.stack([masks[i] for i in keep]))
        return [{"instances": res}]


def test_oracle_matches_outputs_to_objects_and_scales_boxes(tmp_path):
    dicts = _dataset(tmp_path)
    model = _StubModel(dicts)
    objs = oracle_object_ious(model, dicts, min_size_test=64, max_size_test=1000)
    assert model.mask_nms_thresh == 0.2  # restored
    assert [o["iou"] for o in objs] == [1.0, 1.0, 0.0, 1.0, 0.0]  # the last box of each image dropped
    assert [o["thin"] > 0.2 for o in objs] == [False, True, False, False, True]
    # the network input is resized like DefaultPredictor's (shortest edge 64) and so are the boxes
    shape, boxes = model.seen[0]
    assert tuple(shape) == (3, 64, 80)
    torch.testing.assert_close(boxes[0], torch.tensor([5.0, 4.0, 17.0, 14.0]) * 2)
    s = summarize_oracle(objs)
    assert s["all n"] == 5 and s["all mIoU"] == pytest.approx(60.0) and s["thin n"] == 2
    assert s["thin IoU>0.5"] == pytest.approx(50.0) and s["compact mIoU"] == pytest.approx(200 / 3)


@pytest.mark.parametrize("config", ["configs/tiny/objguided_R18_tiny.yaml", "configs/tiny/mask_rcnn_R18_tiny.yaml"])
def test_oracle_runs_real_models(tmp_path, config):
    dicts = _dataset(tmp_path)
    cfg = load_config(os.path.join(ROOT, config), ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    objs = oracle_object_ious(model, dicts, min_size_test=64, max_size_test=1000)
    assert len(objs) == 5
    assert all(0.0 <= o["iou"] <= 1.0 for o in objs)


# ------------------------------------------------------------------------- perturbed boxes
_BOXES = torch.tensor([[10.0, 20.0, 30.0, 60.0], [50.0, 50.0, 54.0, 58.0], [0.0, 0.0, 100.0, 80.0]])


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_perturb_boxes_identity_and_scale():
    torch.testing.assert_close(perturb_boxes(_BOXES, 1.0, 0.0, _gen(), (80, 100)), _BOXES, rtol=0, atol=1e-6)
    inner = _BOXES[:2]
    for s in (0.7, 1.5):
        out = perturb_boxes(inner, s, 0.0, _gen(), (80, 100))
        torch.testing.assert_close(out[:, 2:] - out[:, :2], (inner[:, 2:] - inner[:, :2]) * s)
        torch.testing.assert_close((out[:, :2] + out[:, 2:]) / 2, (inner[:, :2] + inner[:, 2:]) / 2)
    assert perturb_boxes(inner.double(), 0.8, 0.0, _gen(), (80, 100)).dtype == torch.float64


def test_perturb_boxes_shift_moves_the_centre_by_a_fraction_of_the_side():
    inner = _BOXES[:2]
    out = perturb_boxes(inner, 1.0, 0.2, _gen(3), (80, 100))
    size = inner[:, 2:] - inner[:, :2]
    torch.testing.assert_close(out[:, 2:] - out[:, :2], size)  # same size, inside the image
    moved = ((out[:, :2] + out[:, 2:]) / 2 - (inner[:, :2] + inner[:, 2:]) / 2) / size
    torch.testing.assert_close(moved.norm(dim=1), torch.full((2,), 0.2))
    # directions are random: over many boxes they cover every quadrant
    many = perturb_boxes(inner[:1].repeat(200, 1), 1.0, 0.1, _gen(), (80, 100))
    d = (many[:, :2] + many[:, 2:]) / 2 - (inner[0, :2] + inner[0, 2:]) / 2
    assert {(bool(x > 0), bool(y > 0)) for x, y in d.tolist()} == {(a, b) for a in (0, 1) for b in (0, 1)}


def test_perturb_boxes_seeded_clipped_and_empty():
    a = perturb_boxes(_BOXES, 1.3, 0.2, _gen(5), (80, 100))
    torch.testing.assert_close(a, perturb_boxes(_BOXES, 1.3, 0.2, _gen(5), (80, 100)))
    assert not torch.equal(a, perturb_boxes(_BOXES, 1.3, 0.2, _gen(6), (80, 100)))
    # the whole-image box scaled up is clipped to (H, W) = (80, 100)
    torch.testing.assert_close(perturb_boxes(_BOXES[2:], 1.5, 0.0, _gen(), (80, 100)), _BOXES[2:])
    assert (a >= 0).all() and (a[:, 0::2] <= 100).all() and (a[:, 1::2] <= 80).all()
    assert perturb_boxes(torch.zeros(0, 4), 0.8, 0.1, _gen(), (80, 100)).shape == (0, 4)
    with pytest.raises(ValueError, match="scale must be"):
        perturb_boxes(_BOXES, 0.0, 0.0, _gen(), (80, 100))
    with pytest.raises(ValueError, match="shift must be"):
        perturb_boxes(_BOXES, 1.0, -0.1, _gen(), (80, 100))


def test_oracle_hands_the_model_perturbed_boxes(tmp_path):
    dicts = _dataset(tmp_path)
    model = _StubModel(dicts)
    oracle_object_ious(model, dicts, min_size_test=64, max_size_test=1000, scale=1.5, generator=_gen())
    gt = torch.tensor([5.0, 4.0, 17.0, 14.0])  # the first object's box, side 12 x 10
    torch.testing.assert_close(model.seen[0][1][0], torch.tensor([2.0, 1.5, 20.0, 16.5]) * 2)
    model.seen.clear()
    oracle_object_ious(model, dicts, min_size_test=64, max_size_test=1000, shift=0.1, generator=_gen(1))
    expected = perturb_boxes(gt[None], 1.0, 0.1, _gen(1), (32, 40))[0] * 2  # first draw of the same seed
    torch.testing.assert_close(model.seen[0][1][0], expected)


class _DetectorStub:
    """Normal inference: image 0 predicts GT masks 0 and 2 (and a background blob), image 1 only
    a mask that half-covers its object 0; the given-box path is not used."""

    mask_nms_thresh = 0.2

    def inference(self, inputs, detected_instances=None):
        assert detected_instances is None
        h, w = inputs[0]["height"], inputs[0]["width"]
        gt = _masks(h, w)
        first = inputs[0]["image"].float().mean() < 50  # image 0 is the darker one
        if first:
            blob = np.zeros((h, w), bool)
            blob[28:31, 0:3] = True
            masks = [gt[0], gt[2], blob]
        else:
            half = gt[0].copy()
            half[:, 11:] = False
            masks = [half]
        res = Instances((h, w))
        res.pred_masks = torch.as_tensor(np.stack(masks))
        res.scores = torch.linspace(0.9, 0.5, len(masks))
        res.pred_classes = torch.zeros(len(masks), dtype=torch.int64)
        res.pred_boxes = Boxes(torch.zeros(len(masks), 4))
        return [{"instances": res}]


def test_detected_object_ious_takes_each_objects_best_prediction(tmp_path):
    dicts = _dataset(tmp_path)
    objs = detected_object_ious(_DetectorStub(), dicts, min_size_test=64, max_size_test=1000)
    assert [o["iou"] for o in objs] == pytest.approx([1.0, 0.0, 1.0, 0.5, 0.0])
    s = summarize_oracle(objs)
    assert s["all n"] == 5 and s["all IoU>0.5"] == pytest.approx(40.0)
    # only the top-scoring prediction of each image counts with max_dets=1
    top1 = detected_object_ious(_DetectorStub(), dicts, min_size_test=64, max_size_test=1000, max_dets=1)
    assert [o["iou"] for o in top1] == pytest.approx([1.0, 0.0, 0.0, 0.5, 0.0])

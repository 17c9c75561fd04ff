"""Mask quality given the ground-truth boxes (objguided_d2.evaluation.oracle)."""
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BoxMode, Instances

from objguided_d2.engine.train_net import load_config
from objguided_d2.evaluation.oracle import oracle_object_ious, summarize_oracle, thin_fraction

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

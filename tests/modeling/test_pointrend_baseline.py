"""The PointRend baseline trains on batches without any object (Detectron2's head crashes)."""
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from objguided_d2.engine.train_net import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _model(roi_heads=None):
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]
    if roi_heads:
        opts += ["MODEL.ROI_HEADS.NAME", roi_heads]
    cfg = load_config(os.path.join(ROOT, "configs/tiny/pointrend_R18_tiny.yaml"), opts)
    torch.manual_seed(0)
    return build_model(cfg).train()


def _batch(with_objects):
    out = []
    for k in range(2):
        inst = Instances((64, 64))
        if with_objects:
            m = torch.zeros(1, 64, 64, dtype=torch.bool)
            m[0, 10 + k : 30, 12:40] = True
            inst.gt_boxes = Boxes(torch.tensor([[12.0, 10.0 + k, 40.0, 30.0]]))
            inst.gt_classes = torch.zeros(1, dtype=torch.int64)
            inst.gt_masks = BitMasks(m)
        else:
            inst.gt_boxes = Boxes(torch.zeros(0, 4))
            inst.gt_classes = torch.zeros(0, dtype=torch.int64)
            inst.gt_masks = BitMasks(torch.zeros(0, 64, 64, dtype=torch.bool))
        g = torch.Generator().manual_seed(k)
        out.append({"image": torch.randint(0, 255, (3, 64, 64), generator=g, dtype=torch.uint8).float(),
                    "instances": inst, "height": 64, "width": 64})
    return out


def test_detectron2_pointrend_crashes_on_a_batch_without_objects():
    # The reason for EmptySafePointRendROIHeads; if Detectron2 fixes it, this test says so.
    model = _model("PointRendROIHeads")
    with EventStorage(), pytest.raises(ValueError, match="non-empty list"):
        model(_batch(False))


def test_batch_without_objects_gives_zero_mask_losses_and_trains():
    model = _model()
    assert type(model.roi_heads).__name__ == "EmptySafePointRendROIHeads"
    with EventStorage():
        losses = model(_batch(False))
    assert losses["loss_mask"].item() == 0 and losses["loss_mask_point"].item() == 0
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.roi_heads.mask_head.parameters())


def test_batch_with_objects_unchanged():
    batch = _batch(True)
    res = []
    for name in ("PointRendROIHeads", None):
        model = _model(name)
        torch.manual_seed(1)
        with EventStorage():
            res.append({k: v.item() for k, v in model(batch).items()})
    assert res[0] == res[1] and res[0]["loss_mask_point"] > 0

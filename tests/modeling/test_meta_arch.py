import pytest
import torch

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from objguided_d2 import add_objguided_config
from objguided_d2.modeling.meta_arch import ObjGuidedRCNN
from objguided_d2.modeling.postprocessing import mask_nms, postprocess_instances
from objguided_d2.modeling.roi_heads import enlarge_boxes, roi_level_sizes
from objguided_d2.structures import ROIMaskProbs


def disc_results(discs, image_hw, scores=None, classes=None):
    """ROI-head-style results whose ROI maps are soft discs (cx, cy, r) in input pixels."""
    maps, boxes = [], []
    for cx, cy, r in discs:
        box = torch.tensor([[cx - r, cy - r, cx + r, cy + r]], dtype=torch.float64)
        h, w = roi_level_sizes(box, [1], 1.1, 2)[0][0]
        x0, y0, x1, y1 = enlarge_boxes(box, 1.1)[0].tolist()
        ys = torch.linspace(y0, y1, h, dtype=torch.float64)
        xs = torch.linspace(x0, x1, w, dtype=torch.float64)
        d = torch.sqrt((xs[None] - cx) ** 2 + (ys[:, None] - cy) ** 2)
        maps.append((0.5 + 2 * (r - d)).clamp(0, 1).float())
        boxes.append(box.float())
    n = len(discs)
    boxes = torch.cat(boxes) if n else torch.zeros(0, 4)
    res = Instances(image_hw)
    res.pred_boxes = Boxes(boxes)
    res.scores = torch.linspace(0.9, 0.5, n) if scores is None else torch.tensor(scores)
    res.pred_classes = torch.zeros(n, dtype=torch.int64) if classes is None else torch.tensor(classes)
    res.pred_mask_probs = ROIMaskProbs(maps)
    res.pred_mask_boxes = Boxes(enlarge_boxes(boxes, 1.1))
    return res


def analytic_disc(H, W, cx, cy, r, sx=1.0, sy=1.0):
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    return (xs / sx - cx) ** 2 + (ys / sy - cy) ** 2 <= r * r


def iou(a, b):
    return ((a & b).sum() / (a | b).sum()).item()


@pytest.mark.parametrize("out_hw", [(61, 93), (123, 185), (30, 47)])
def test_postprocess_resizes_and_pastes_accurately(out_hw):
    in_hw = (61, 93)
    discs = [(30.2, 20.7, 14.0), (70.0, 45.0, 4.5), (88.0, 5.0, 6.0)]  # large, small, clipped
    out = postprocess_instances(disc_results(discs, in_hw), *out_hw, mask_nms_thresh=0.2)
    assert out.image_size == out_hw
    assert out.pred_masks.shape == (3, *out_hw) and out.pred_masks.dtype == torch.bool
    sx, sy = out_hw[1] / in_hw[1], out_hw[0] / in_hw[0]
    for k, (cx, cy, r) in enumerate(discs):
        truth = analytic_disc(*out_hw, cx, cy, r, sx, sy)
        if r * min(sx, sy) >= 4:
            assert iou(out.pred_masks[k], truth) > 0.95
        else:
            assert iou(out.pred_masks[k], truth) > 0.8
    assert out.pred_boxes.tensor[:, 2].max() <= out_hw[1]
    torch.testing.assert_close(out.pred_boxes.tensor[0], torch.tensor(
        [16.2 * sx, 6.7 * sy, 44.2 * sx, 34.7 * sy]))


def test_postprocess_zero_and_vanishing_instances():
    out = postprocess_instances(disc_results([], (40, 51)), 81, 101)
    assert out.pred_masks.shape == (0, 81, 101) and len(out.pred_boxes) == 0
    res = disc_results([(10.0, 10.0, 5.0), (30.0, 20.0, 6.0)], (40, 51))
    res.pred_mask_probs = ROIMaskProbs([m * 0.2 for m in res.pred_mask_probs])  # all below 0.5
    out = postprocess_instances(res, 40, 51, mask_threshold=0.5)
    assert out.pred_masks.shape == (0, 40, 51) and len(out.scores) == 0


def test_mask_nms():
    m = torch.zeros(4, 20, 20, dtype=torch.bool)
    m[0, 2:12, 2:12] = True
    m[1, 3:12, 2:12] = True  # IoU 0.9 with 0
    m[2, 10:18, 10:18] = True  # small overlap
    m[3, 2:12, 2:12] = True  # same as 0 but another class
    scores = torch.tensor([0.5, 0.9, 0.3, 0.4])
    classes = torch.tensor([0, 0, 0, 1])
    assert mask_nms(m, scores, 0.2, classes).tolist() == [1, 3, 2]
    assert mask_nms(m, scores, 0.2).tolist() == [1, 2]
    assert mask_nms(m, scores, 0.95, classes).tolist() == [1, 0, 3, 2]
    assert mask_nms(m[:0], scores[:0], 0.2).tolist() == []
    # through postprocess: a duplicate disc is suppressed, NMS off keeps it
    res = disc_results([(20.0, 20.0, 8.0), (20.5, 20.0, 8.0), (45.0, 20.0, 5.0)], (40, 60))
    assert len(postprocess_instances(res, 40, 60, mask_nms_thresh=0.2)) == 2
    assert len(postprocess_instances(res, 40, 60, mask_nms_thresh=0.0)) == 3


def test_component_boxes_replace_gt_boxes():
    inst = Instances((30, 40))
    inst.gt_boxes = Boxes(torch.tensor([[0.0, 0, 40, 30], [5.0, 5, 10, 10], [1.0, 2, 3, 4]]))
    inst.gt_classes = torch.tensor([0, 0, 0])
    masks = torch.zeros(3, 30, 40, dtype=torch.bool)
    masks[0, 0:3, 0:3] = True
    masks[0, 10:20, 20:35] = True
    masks[1, 5:10, 5:10] = True
    inst.gt_masks = BitMasks(masks)
    inputs = {"image": torch.zeros(3, 30, 40), "instances": inst}
    out = ObjGuidedRCNN._with_component_boxes(inputs)
    assert out["instances"].gt_boxes.tensor.tolist() == [[20, 10, 35, 20], [5, 5, 10, 10], [1, 2, 3, 4]]
    assert inputs["instances"].gt_boxes.tensor[0].tolist() == [0, 0, 40, 30]  # input untouched
    poly = Instances((30, 40))
    poly.gt_boxes = Boxes(torch.tensor([[0.0, 0, 40, 30]]))
    poly.gt_classes = torch.tensor([0])
    poly.gt_masks = PolygonMasks([[[2, 2, 8, 2, 8, 8, 2, 8], [20, 20, 38, 20, 38, 28, 20, 28]]])
    out = ObjGuidedRCNN._with_component_boxes({"instances": poly})["instances"]
    x0, y0, x1, y1 = out.gt_boxes.tensor[0].tolist()
    assert 19 <= x0 <= 21 and 19 <= y0 <= 21 and 37 <= x1 <= 39 and 27 <= y1 <= 29


# ------------------------------------------------------------------------ full model
def tiny_cfg():
    cfg = add_objguided_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.META_ARCHITECTURE = "ObjGuidedRCNN"
    cfg.MODEL.BACKBONE.NAME = "build_objguided_resnet_backbone"
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "CenterNetProposalGenerator"
    cfg.MODEL.ROI_HEADS.NAME = "ObjGuidedROIHeads"
    cfg.MODEL.ROI_MASK_HEAD.NAME = "ObjGuidedMaskHead"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.OBJGUIDED.C0_CHANNELS = 8
    cfg.MODEL.OBJGUIDED.DECODER_CHANNELS = [16, 16, 16]
    cfg.MODEL.OBJGUIDED.HEAD_CHANNELS = 16
    cfg.MODEL.OBJGUIDED.MASK_HEAD_CHANNELS = 8
    cfg.MODEL.OBJGUIDED.SCORE_THRESH_TEST = 0.0  # untrained heatmap: keep peaks
    cfg.MODEL.OBJGUIDED.TOPK = 20
    cfg.INPUT.MASK_FORMAT = "bitmask"
    return cfg


def make_input(H, W, n, seed):
    g = torch.Generator().manual_seed(seed)
    inst = Instances((H, W))
    masks = torch.zeros(n, H, W, dtype=torch.bool)
    boxes = []
    for k in range(n):
        h, w = (int(v) for v in torch.randint(6, 24, (2,), generator=g))
        y0 = int(torch.randint(0, H - h, (1,), generator=g))
        x0 = int(torch.randint(0, W - w, (1,), generator=g))
        masks[k, y0 : y0 + h, x0 : x0 + w] = True
        boxes.append([x0, y0, x0 + w, y0 + h])
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.zeros(n, dtype=torch.int64)
    inst.gt_masks = BitMasks(masks)
    image = (torch.rand(3, H, W, generator=g) * 255)
    return {"image": image, "instances": inst, "height": H, "width": W}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(tiny_cfg())


def test_full_model_train(model):
    assert isinstance(model, ObjGuidedRCNN)
    model.train()
    batch = [make_input(61, 90, 3, 0), make_input(70, 45, 0, 1)]  # half-empty, odd sizes
    with EventStorage():
        losses = model(batch)
    assert {"loss_seg", "loss_refine"} <= set(losses)
    assert any(k not in ("loss_seg", "loss_refine") for k in losses)  # detector losses
    for k, v in losses.items():
        assert torch.isfinite(v), k
    sum(losses.values()).backward()
    assert model.roi_heads.mask_head.predictor.weight.grad.abs().sum() > 0
    assert model.backbone.bottom_up.stem.conv1.weight.grad is not None


def test_full_model_eval(model):
    model.eval()
    # Untrained wh predicts ~0-size boxes: bias it to 4 cells (16 px) so ROIs get segmented, and
    # lower the threshold so the near-0.5 untrained masks survive.
    wh_last = [m for m in model.proposal_generator.wh_head.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        wh_last.weight.mul_(0.01)
        wh_last.bias.fill_(4.0)
    model.mask_threshold = 0.3
    a = make_input(61, 90, 0, 2)
    b = make_input(45, 77, 0, 3)
    b["height"], b["width"] = 90, 153  # original size twice the network input
    with torch.no_grad():
        outs = model([a, b])
    for out, (H, W) in zip(outs, [(61, 90), (90, 153)]):
        inst = out["instances"]
        assert inst.image_size == (H, W)
        assert inst.pred_masks.shape == (len(inst), H, W) and inst.pred_masks.dtype == torch.bool
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_masks"}
        assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
        assert inst.pred_masks.flatten(1).any(1).all()
    assert len(outs[0]["instances"]) > 0 and len(outs[1]["instances"]) > 0
    raw = model.inference([a], do_postprocess=False)
    assert raw[0].has("pred_mask_probs") and len(raw[0]) >= len(outs[0]["instances"])
    model.mask_threshold = 1.1  # every mask vanishes: 0 instances, (0, H, W) masks
    with torch.no_grad():
        empty = model([b])[0]["instances"]
    assert empty.pred_masks.shape == (0, 90, 153)

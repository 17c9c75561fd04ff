import pytest
import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import EventStorage

from objguided_d2 import add_objguided_config
from objguided_d2.modeling.roi_heads import ObjGuidedROIHeads
from objguided_d2.structures import ROIMaskProbs

NAMES = ["c0", "c1", "d2", "d3", "d4"]
STRIDES = [1, 2, 4, 8, 16]
CH = [4, 4, 8, 8, 16]
PAD_HW = (64, 96)


def make_cfg(**og):
    cfg = add_objguided_config(get_cfg())
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_HEADS.NAME = "ObjGuidedROIHeads"
    cfg.MODEL.ROI_MASK_HEAD.NAME = "ObjGuidedMaskHead"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.OBJGUIDED.MASK_HEAD_CHANNELS = 8
    for k, v in og.items():
        setattr(cfg.MODEL.OBJGUIDED, k, v)
    return cfg


def make_heads(**og):
    torch.manual_seed(0)
    shapes = {n: ShapeSpec(channels=c, stride=s) for n, c, s in zip(NAMES, CH, STRIDES)}
    return build_roi_heads(make_cfg(**og), shapes)


def make_features(n, requires_grad=True):
    g = torch.Generator().manual_seed(1)
    return {
        name: torch.randn(n, c, PAD_HW[0] // s, PAD_HW[1] // s, generator=g, requires_grad=requires_grad)
        for name, c, s in zip(NAMES, CH, STRIDES)
    }


def make_targets(num, image_hw=(61, 90), seed=0, polygons=False):
    g = torch.Generator().manual_seed(seed)
    H, W = image_hw
    inst = Instances(image_hw)
    size = 3 + torch.rand(num, 2, generator=g) * 35
    ctr = torch.rand(num, 2, generator=g) * torch.tensor([W, H])
    boxes = torch.cat([ctr - size / 2, ctr + size / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
    inst.gt_boxes = Boxes(boxes)
    inst.gt_classes = torch.randint(0, 2, (num,), generator=g)
    if polygons:
        inst.gt_masks = PolygonMasks(
            [[b[[0, 1, 2, 1, 2, 3, 0, 3]].numpy()] for b in boxes]
        )
    else:
        masks = torch.zeros(num, H, W, dtype=torch.bool)
        for k, b in enumerate(boxes.round().long().tolist()):
            masks[k, b[1] : b[3], b[0] : b[2]] = True
        inst.gt_masks = BitMasks(masks)
    return inst


def run_train(heads, targets):
    feats = make_features(len(targets))
    with EventStorage():
        _, losses = heads(None, feats, [Instances(t.image_size) for t in targets], targets)
    assert set(losses) == {"loss_seg", "loss_refine"}
    for k, v in losses.items():
        assert torch.isfinite(v), k
    sum(losses.values()).backward()
    grads = [p.grad for p in heads.mask_head.parameters()]
    assert all(g is not None for g in grads)
    return losses, feats


def test_registered_and_built():
    heads = make_heads()
    assert isinstance(heads, ObjGuidedROIHeads)
    assert heads.pooler.strides == STRIDES and heads.in_features == NAMES
    assert heads.pooler.enlarge == 1.1 and heads.pooler.min_size == 2


@pytest.mark.parametrize("num", [0, 1, 300])
def test_train_losses_finite(num):
    heads = make_heads()
    heads.train()
    losses, feats = run_train(heads, [make_targets(num)])
    if num == 0:
        assert losses["loss_seg"].item() == 0.0
    else:
        assert losses["loss_seg"].item() > 0
        assert feats["c0"].grad.abs().sum() > 0
    if num == 300:  # some ROI reaches d4: the detector's decoder is trained (object guidance)
        assert feats["d4"].grad.abs().sum() > 0


def test_train_half_empty_batch_and_polygons():
    heads = make_heads()
    heads.train()
    losses, feats = run_train(heads, [make_targets(0), make_targets(5, polygons=True, seed=3)])
    assert losses["loss_seg"].item() > 0 and losses["loss_refine"].item() > 0
    assert feats["c0"].grad[0].abs().sum() == 0 and feats["c0"].grad[1].abs().sum() > 0


def test_train_tiny_instances_skipped():
    heads = make_heads()
    heads.train()
    t = Instances((61, 90))
    t.gt_boxes = Boxes(torch.tensor([[10.0, 10.0, 11.0, 30.0], [40.0, 40.0, 41.5, 41.5]]))
    t.gt_classes = torch.tensor([0, 1])
    t.gt_masks = BitMasks(torch.zeros(2, 61, 90, dtype=torch.bool))
    losses, _ = run_train(heads, [t])
    assert losses["loss_seg"].item() == 0.0


def test_seg_loss_matches_manual_bce_and_weight():
    heads = make_heads(REFINE_ON=False)
    heads.train()
    t = make_targets(3, seed=5)
    feats = make_features(1)
    with EventStorage():
        _, losses = heads(None, feats, [Instances(t.image_size)], [t])
    assert set(losses) == {"loss_seg"}
    from objguided_d2.modeling.roi_heads.roi_grid import roi_level_sizes
    import torch.nn.functional as F

    from reference_seg import crop_mask_roi, crop_roi, forward_single

    per = []
    for j, sizes in enumerate(roi_level_sizes(t.gt_boxes.tensor, STRIDES, 1.1, 2)):
        out = forward_single(heads.mask_head, [
            crop_roi(feats[n], t.gt_boxes.tensor[j], hw, s, enlarge=1.1)[None]
            for n, s, hw in zip(NAMES, STRIDES, sizes)])
        target = crop_mask_roi(t.gt_masks.tensor[j], t.gt_boxes.tensor[j], sizes[0], enlarge=1.1)
        per.append(F.binary_cross_entropy_with_logits(out.mask_logits[0, int(t.gt_classes[j])], target))
    torch.testing.assert_close(losses["loss_seg"], 2.0 * torch.stack(per).mean())


def test_max_train_instances_cap():
    heads = make_heads(MAX_TRAIN_INSTANCES=4)
    heads.train()
    with EventStorage() as storage:
        heads(None, make_features(1), [Instances((61, 90))], [make_targets(30)])
        assert storage.history("roi_heads/num_segmented").latest() == 4


def make_proposals(boxes, image_hw=(61, 90)):
    p = Instances(image_hw)
    p.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    n = len(p.proposal_boxes)
    p.objectness_logits = torch.linspace(2, -2, n) if n else torch.zeros(0)
    p.scores = p.objectness_logits.sigmoid()
    p.pred_classes = torch.arange(n) % 2
    return p


def test_inference_instances():
    heads = make_heads()
    heads.eval()
    props = [
        make_proposals([[5, 5, 30, 20], [40, 10, 41, 50], [50, 30, 80, 58], [60, 2, 64, 6]]),
        make_proposals([]),
    ]
    with torch.no_grad():
        res, losses = heads(None, make_features(2, requires_grad=False), props)
    assert losses == {}
    r = res[0]
    assert len(r) == 3  # the 1 px wide proposal is dropped
    assert r.pred_boxes.tensor[1].tolist() == [50, 30, 80, 58]
    assert isinstance(r.pred_mask_probs, ROIMaskProbs)
    assert r.pred_mask_probs[0].shape == (int(1.1 * 15), int(1.1 * 25))
    assert all(((m >= 0) & (m <= 1)).all() for m in r.pred_mask_probs)
    torch.testing.assert_close(r.pred_mask_boxes.tensor[0], torch.tensor([3.75, 4.25, 31.25, 20.75]))
    assert (r.scores[:-1] >= r.scores[1:]).all()
    # Instances-level indexing, concatenation and device moves keep the container consistent.
    sub = r[r.scores > r.scores[1] - 1e-6]
    assert len(sub) == 2 and len(sub.pred_mask_probs) == 2
    assert sub.pred_mask_probs[1].shape == r.pred_mask_probs[1].shape
    assert len(Instances.cat([r, r]).pred_mask_probs) == 6
    assert len(r.to("cpu").pred_mask_probs) == 3
    assert len(res[1]) == 0 and len(res[1].pred_mask_probs) == 0


def test_detections_per_image_and_given_boxes():
    heads = make_heads()
    heads.detections_per_image = 2
    heads.eval()
    props = [make_proposals([[5, 5, 30, 20], [50, 30, 80, 58], [10, 30, 40, 50]])]
    with torch.no_grad():
        res, _ = heads(None, make_features(1, requires_grad=False), props)
        assert len(res[0]) == 2
        given = Instances((61, 90), pred_boxes=Boxes(torch.tensor([[10.0, 30, 40, 50]])),
                          pred_classes=torch.tensor([1]), scores=torch.tensor([0.9]))
        out = heads.forward_with_given_boxes(make_features(1, requires_grad=False), [given])
    assert len(out[0]) == 1 and out[0].pred_mask_probs[0].shape == (22, 33)


def test_recrop_grows_boxes_whose_masks_touch_the_roi_border():
    props = [make_proposals([[20, 20, 40, 30], [0, 0, 10, 12], [50, 30, 80, 58]])]
    feats = make_features(1, requires_grad=False)
    base = make_heads().eval()
    grown = make_heads(RECROP_EXPAND_TEST=0.5).eval()
    for h in (base, grown):  # masks of probability ~1 everywhere: every ROI border is touched
        torch.nn.init.constant_(h.mask_head.predictor.bias, 20.0)
    with torch.no_grad():
        r0 = base(None, feats, props)[0][0]
        r1 = grown(None, feats, props)[0][0]
    b0, b1 = r0.pred_boxes.tensor, r1.pred_boxes.tensor
    # Every side moves out by half the box side, within the 90x61 image.
    torch.testing.assert_close(b1[0], torch.tensor([10.0, 15.0, 50.0, 35.0]))
    torch.testing.assert_close(b1[1], torch.tensor([0.0, 0.0, 15.0, 18.0]))
    torch.testing.assert_close(b1[2], torch.tensor([35.0, 16.0, 90.0, 61.0]))
    for k in range(3):  # each mask was segmented again at its grown ROI's size
        w, h = (b1[k, 2:] - b1[k, :2]).tolist()
        assert r1.pred_mask_probs[k].shape == (int(1.1 * h), int(1.1 * w))
    torch.testing.assert_close(r1.pred_mask_boxes.tensor, torch.cat([
        (b1[:, :2] + b1[:, 2:]) / 2 - (b1[:, 2:] - b1[:, :2]) * 0.55,
        (b1[:, :2] + b1[:, 2:]) / 2 + (b1[:, 2:] - b1[:, :2]) * 0.55], dim=1))
    # Masks that stay inside their ROIs keep everything as it was.
    for h in (base, grown):
        torch.nn.init.constant_(h.mask_head.predictor.bias, -20.0)
    with torch.no_grad():
        r0 = base(None, feats, props)[0][0]
        r1 = grown(None, feats, props)[0][0]
    torch.testing.assert_close(r0.pred_boxes.tensor, r1.pred_boxes.tensor)
    assert all(torch.equal(a, b) for a, b in zip(r0.pred_mask_probs, r1.pred_mask_probs))
    assert torch.equal(b0, props[0].proposal_boxes.tensor)

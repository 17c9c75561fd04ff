"""Beyond the paper: training the segmentation branch on boxes like the detector's (jittered GT
boxes, the detector's matched boxes), and the test-time options that let the box follow the mask
and rank by mask quality. Tiny ROI heads from test_roi_heads.py."""
import pytest
import torch

from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from objguided_d2.modeling.roi_heads.roi_grid import enlarge_boxes, mask_boxes, scale_shift_boxes
from objguided_d2.modeling.roi_heads.train_boxes import jitter_boxes, match_detections

from test_roi_heads import make_features, make_heads, make_targets


def test_scale_shift_boxes_about_the_centre_and_clipped():
    b = torch.tensor([[10.0, 20.0, 30.0, 60.0]])
    out = scale_shift_boxes(b, torch.tensor([[1.5, 0.5]]), torch.tensor([[0.1, -0.25]]), (100, 100))
    # centre (20, 40) -> (20 + 0.1 * 20, 40 - 0.25 * 40) = (22, 30); size (30, 20)
    torch.testing.assert_close(out, torch.tensor([[7.0, 20.0, 37.0, 40.0]]))
    clipped = scale_shift_boxes(b, torch.tensor(4.0), torch.zeros(1, 2), (50, 35))
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0, 35.0, 50.0]]))


def test_jitter_boxes_ranges_seeded_and_identity():
    g = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[100.0, 100.0, 140.0, 120.0]]).repeat(2000, 1)
    out = jitter_boxes(boxes, (0.8, 1.3), 0.1, (1000, 1000), generator=g)
    w, h = out[:, 2] - out[:, 0], out[:, 3] - out[:, 1]
    assert (w >= 0.8 * 40 - 1e-4).all() and (w <= 1.3 * 40 + 1e-4).all()
    assert (h >= 0.8 * 20 - 1e-4).all() and (h <= 1.3 * 20 + 1e-4).all()
    assert w.min() < 0.82 * 40 and w.max() > 1.28 * 40  # the whole range is drawn
    cx = (out[:, 0] + out[:, 2]) / 2
    assert (cx - 120).abs().max() <= 0.1 * 40 + 1e-4 and (cx - 120).abs().max() > 0.09 * 40
    again = jitter_boxes(boxes, (0.8, 1.3), 0.1, (1000, 1000), generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    same = jitter_boxes(boxes[:3], (1.0, 1.0), 0.0, (1000, 1000))
    torch.testing.assert_close(same, boxes[:3])
    assert jitter_boxes(torch.zeros(0, 4), (0.8, 1.2), 0.1, (10, 10)).shape == (0, 4)
    with pytest.raises(ValueError, match="scale lo <= hi"):
        jitter_boxes(boxes, (1.2, 0.8), 0.1, (10, 10))


def test_match_detections_takes_the_best_box_above_the_threshold():
    gt = torch.tensor([[0.0, 0, 10, 10], [50, 50, 70, 70], [80, 0, 90, 5]])
    det = torch.tensor([[1.0, 1, 11, 11], [0, 0, 20, 20], [52, 48, 70, 72], [200, 200, 210, 210]])
    out, matched = match_detections(gt, det, 0.5)
    assert matched.tolist() == [True, True, False]
    torch.testing.assert_close(out, torch.stack([det[0], det[2], gt[2]]))
    none, m0 = match_detections(gt, torch.zeros(0, 4), 0.5)
    assert torch.equal(none, gt) and not m0.any()


def test_mask_boxes_in_input_pixels():
    box = torch.tensor([[10.0, 10.0, 30.0, 20.0]])
    eb = enlarge_boxes(box, 1.1)[0]  # maps span this box with 22 x 11 samples
    m = torch.zeros(11, 22)
    m[3:6, 5:9] = 0.9
    out, found = mask_boxes(box, [m], 0.5, 1.1)
    step_x, step_y = (eb[2] - eb[0]) / 21, (eb[3] - eb[1]) / 10
    torch.testing.assert_close(out[0], torch.stack([eb[0] + 4.5 * step_x, eb[1] + 2.5 * step_y,
                                                    eb[0] + 8.5 * step_x, eb[1] + 5.5 * step_y]))
    assert found.tolist() == [True]
    empty, f = mask_boxes(box, [torch.zeros(11, 22)], 0.5, 1.1)
    assert torch.equal(empty, box) and f.tolist() == [False]


@pytest.mark.parametrize("num", [0, 1, 300])
def test_training_with_jitter_and_detected_boxes(num):
    """No object, one, 300: finite losses; with the options off nothing changes and no random
    number is drawn; with them on the GT masks are sampled on the boxes used."""
    t = make_targets(num, seed=3)
    props = Instances(t.image_size)
    # a detector whose boxes are 15 % too large (IoU 0.76 with the GT boxes)
    props.proposal_boxes = Boxes(scale_shift_boxes(t.gt_boxes.tensor, torch.tensor(1.15), torch.zeros(num, 2), (1000, 1000)))
    props.scores = torch.ones(num)
    res = {}
    for name, og in [("paper", {}), ("jitter", dict(TRAIN_BOX_JITTER_SCALE=[0.7, 1.4], TRAIN_BOX_JITTER_SHIFT=0.2)),
                     ("det", dict(TRAIN_DETECTED_BOXES_PROB=1.0, TRAIN_DETECTED_BOXES_WARMUP=0))]:
        heads = make_heads(**og).train()
        with torch.no_grad():  # non-trivial predictions (the default init gives p ~ 0.5: BCE = ln 2 for any target)
            for p in heads.mask_head.parameters():
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.3)
        torch.manual_seed(5)
        with EventStorage() as storage:
            _, losses = heads(None, make_features(1), [props], [t])
            state = torch.get_rng_state()
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        res[name] = (losses, state, storage)
    if num == 0:
        return
    torch.manual_seed(5)
    heads = make_heads().train()
    boxes = heads._training_boxes(t, props)
    assert torch.equal(boxes, t.gt_boxes.tensor)  # the paper: exact boxes...
    assert torch.equal(torch.get_rng_state(), torch.random.default_generator.get_state())
    assert res["paper"][0]["loss_seg"].item() > 0
    for k in ["loss_seg"] + (["loss_refine"] if num > 1 else []):  # ...and the jitter / detected boxes change what the head trains on
        assert res["jitter"][0][k].item() != res["paper"][0][k].item()
        assert res["det"][0][k].item() != res["paper"][0][k].item()
    assert res["det"][2].latest()["roi_heads/detected_box_share"][0] == 1.0


def test_detected_boxes_wait_for_the_warmup():
    t = make_targets(20, seed=4)
    props = Instances(t.image_size)
    props.proposal_boxes = Boxes(t.gt_boxes.tensor + 3.0)
    props.scores = torch.ones(20)
    heads = make_heads(TRAIN_DETECTED_BOXES_PROB=1.0, TRAIN_DETECTED_BOXES_WARMUP=100).train()
    with EventStorage(start_iter=99):
        assert torch.equal(heads._training_boxes(t, props), t.gt_boxes.tensor)
    with EventStorage(start_iter=100):
        boxes = heads._training_boxes(t, props)
    moved = (boxes != t.gt_boxes.tensor).any(dim=1)
    assert moved.sum() > 10  # the matched ones (IoU >= 0.5) use the detector's box


def _proposals(boxes, hw=(61, 90)):
    p = Instances(hw)
    p.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    p.scores = torch.linspace(0.9, 0.5, len(boxes))
    p.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
    return p


def test_box_follows_the_mask_shrinking_and_growing():
    """A constant mask filling the whole ROI makes the mask's box the enlarged box (grow); a mask
    confined to the centre makes it smaller (shrink); rounds repeat; off = unchanged."""
    feats = make_features(1, requires_grad=False)
    props = [_proposals([[20, 20, 40, 30], [50, 30, 70, 50]])]
    base = make_heads().eval()
    follow = make_heads(RECROP_FOLLOW_MASK_TEST=0.02, RECROP_ROUNDS_TEST=1).eval()
    two = make_heads(RECROP_FOLLOW_MASK_TEST=0.02, RECROP_ROUNDS_TEST=2).eval()
    for h in (base, follow, two):
        torch.nn.init.constant_(h.mask_head.predictor.bias, 20.0)  # every pixel is foreground
    with torch.no_grad():
        r0, r1, r2 = (h(None, feats, props)[0][0] for h in (base, follow, two))
    b0, b1, b2 = r0.pred_boxes.tensor, r1.pred_boxes.tensor, r2.pred_boxes.tensor
    assert torch.equal(b0, props[0].proposal_boxes.tensor)
    w0, w1, w2 = (b[:, 2] - b[:, 0] for b in (b0, b1, b2))
    assert (w1 > w0 * 1.05).all() and (w2 > w1 * 1.05).all()  # grows round after round
    for k in range(2):
        w, h = (b1[k, 2:] - b1[k, :2]).tolist()
        assert r1.pred_mask_probs[k].shape == (int(1.1 * h + 1e-4), int(1.1 * w + 1e-4))
    # Shrink: a mask that is foreground only in the central part of each ROI.
    for h in (base, follow):
        torch.nn.init.constant_(h.mask_head.predictor.bias, -20.0)
    with torch.no_grad():
        r0 = base(None, feats, props)[0][0]
        assert all(float(p.max()) < 0.5 for p in r0.pred_mask_probs)
        r1 = follow(None, feats, props)[0][0]
    assert torch.equal(r1.pred_boxes.tensor, b0)  # empty masks: the box stays
    # Shrink: maps whose foreground is the central half of each ROI give boxes half the size.
    boxes = props[0].proposal_boxes.tensor
    maps = []
    for p in r0.pred_mask_probs:
        m = torch.zeros_like(p)
        h, w = m.shape
        m[h // 4 : h - h // 4, w // 4 : w - w // 4] = 0.9
        maps.append(m)
    new_boxes, new_maps, moved = follow._follow_masks(
        [feats[f] for f in follow.in_features], boxes, torch.zeros(2, dtype=torch.int64),
        torch.zeros(2, dtype=torch.int64), maps)
    assert moved == 2
    ratio = (new_boxes[:, 2] - new_boxes[:, 0]) / (boxes[:, 2] - boxes[:, 0])
    assert ((ratio > 0.45) & (ratio < 0.7)).all(), ratio
    torch.testing.assert_close((new_boxes[:, :2] + new_boxes[:, 2:]) / 2, (boxes[:, :2] + boxes[:, 2:]) / 2,
                               atol=1.0, rtol=0)
    assert [tuple(m.shape) for m in new_maps] != [tuple(m.shape) for m in maps]


def test_rescore_by_mask_quality():
    feats = make_features(1, requires_grad=False)
    props = [_proposals([[20, 20, 40, 30], [50, 30, 70, 50], [5, 5, 25, 25]])]
    plain, rescored = make_heads().eval(), make_heads(MASK_RESCORE_TEST=True).eval()
    with torch.no_grad():
        a = plain(None, feats, props)[0][0]
        b = rescored(None, feats, props)[0][0]
    expected = []
    for s, p in zip(a.scores, a.pred_mask_probs):
        on = p >= 0.5
        expected.append(s * (p[on].mean() if on.any() else 0.0))
    torch.testing.assert_close(b.scores, torch.stack(expected).to(b.scores))
    assert (b.scores <= a.scores).all() and not torch.equal(a.scores, b.scores)

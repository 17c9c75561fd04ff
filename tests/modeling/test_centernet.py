"""Center-point detector: the reference numbers of docs/method.md §2 (radius, targets, decoding), the
focal loss, and the proposal generator in training / eval, plus a tiny overfit run."""

import math

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.proposal_generator import build_proposal_generator
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage

from objguided_d2.config import add_objguided_config
from objguided_d2.modeling.proposal_generator import CenterNetProposalGenerator
from objguided_d2.modeling.proposal_generator.centernet_utils import (
    build_targets,
    decode_detections,
    draw_gaussian,
    focal_loss,
    gaussian_radius,
)


def _cxcywh_to_xyxy(rows):
    return torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2] for cx, cy, w, h in rows])


# ------------------------------------------------------------------------- reference numbers
@pytest.mark.parametrize(
    "hw,overlap,expected",
    [
        ((10, 10), 0.7, 2.7332005306815113),
        ((20, 10), 0.7, 3.6779253585061333),
        ((5, 5), 0.7, 1.3666002653407556),
        ((50, 30), 0.7, 10.302337817003107),
        ((128, 128), 0.7, 34.984966792723355),
        ((10, 10), 0.5, 4.142135623730951),
    ],
)
def test_gaussian_radius_reference(hw, overlap, expected):
    assert abs(gaussian_radius(hw, min_overlap=overlap) - expected) < 1e-9


def test_build_targets_reference():
    boxes = _cxcywh_to_xyxy([[100.5, 60, 40, 24], [30, 31, 9, 13]])
    t = build_targets(boxes, torch.tensor([0, 0]), (128, 128), 4, 1, min_overlap=0.7)
    assert t["indices"].tolist() == [1945, 903]
    torch.testing.assert_close(t["wh"], torch.tensor([[10.0, 6.0], [2.25, 3.25]]))
    torch.testing.assert_close(t["offset"], torch.tensor([[0.125, 0.0], [0.5, 0.75]]))
    assert t["radius"].tolist() == [2, 0]
    assert t["mask"].tolist() == [True, True]
    hm = t["heatmap"]
    assert hm.shape == (1, 128, 128)
    assert hm[0, 15, 25] == 1 and hm[0, 7, 7] == 1
    assert int((hm == 1).sum()) == 2
    assert abs(float(hm.sum()) - 5.3504534) < 1e-5
    assert int((hm > 0).sum()) == 26


def test_build_targets_radius_from_ceiled_sizes():
    # The authors' convention: gaussian_radius of the ceil'd integer size in cells. A 14 x 14 px box
    # at stride 4 is 3.5 cells: the float size gives int(0.96) = 0, the ceil'd 4 cells int(1.09) = 1;
    # a 28.8 px box (7.2 cells) gives 1 from the float size and 2 from 8 cells.
    boxes = torch.tensor([[0.0, 0.0, 14.0, 14.0], [40.0, 40.0, 68.8, 68.8], [80.0, 80.0, 92.0, 92.0]])
    t = build_targets(boxes, torch.tensor([0, 0, 0]), (32, 32), 4, 1)
    assert int(gaussian_radius((3.5, 3.5))) == 0 and int(gaussian_radius((7.2, 7.2))) == 1
    # Integer sizes are unchanged by the ceil (12 px = 3 cells: radius 0).
    assert t["radius"].tolist() == [1, 2, 0] and int(gaussian_radius((3, 3))) == 0
    t = build_targets(torch.tensor([[0.0, 0.0, 40.0, 40.0]]), torch.tensor([0]), (32, 32), 4, 1)
    assert t["radius"].tolist() == [int(gaussian_radius((10, 10), 0.7))] == [2]


def test_build_targets_multiclass_small_boxes_and_cell_limit():
    # Class 1 object goes to channel 1; a 2-pixel-wide box gets no target.
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [20.0, 4.0, 22.0, 30.0], [4.0, 4.0, 12.0, 12.0]])
    t = build_targets(boxes, torch.tensor([1, 0, 0]), (8, 8), 4, 2, min_box_size=2.0)
    assert t["classes"].tolist() == [1, 0]
    assert t["heatmap"][1, 2, 2] == 1 and t["heatmap"][0, 2, 2] == 1
    assert t["indices"].tolist() == [2 * 8 + 2, 2 * 8 + 2]
    # More objects than cells: K <= H*W.
    many = torch.tensor([[0.0, 0.0, 8.0, 8.0]] * 10)
    t = build_targets(many, torch.zeros(10, dtype=torch.long), (2, 2), 4, 1)
    assert len(t["indices"]) == 4
    # Boxes beyond the grid are clipped: centre stays on the grid, offset in [0, 1).
    t = build_targets(
        torch.tensor([[20.0, 20.0, 60.0, 60.0]]), torch.zeros(1, dtype=torch.long), (8, 8), 4, 1
    )
    assert 0 <= int(t["indices"][0]) < 64
    assert ((t["offset"] >= 0) & (t["offset"] < 1)).all()
    with pytest.raises(ValueError, match="NUM_CLASSES"):
        build_targets(boxes, torch.tensor([0, 0, 2]), (8, 8), 4, 2)


def test_build_targets_min_radius_and_positive_cells():
    boxes = torch.tensor([[8.0, 8.0, 16.0, 16.0], [0.0, 0.0, 6.0, 6.0]])  # 2x2 and 1.5x1.5 cells
    paper = build_targets(boxes, torch.tensor([0, 0]), (16, 16), 4, 1)
    assert paper["radius"].tolist() == [0, 0] and int((paper["heatmap"] == 1).sum()) == 2
    t = build_targets(boxes, torch.tensor([0, 0]), (16, 16), 4, 1, min_radius=2)
    assert t["radius"].tolist() == [2, 2]
    assert int((t["heatmap"] > 0).sum()) > int((paper["heatmap"] > 0).sum())
    # positive_radius 1: 3x3 positives per centre (4 for the centre in the corner cell (0, 0)).
    t = build_targets(boxes, torch.tensor([0, 0]), (16, 16), 4, 1, positive_radius=1)
    assert len(t["indices"]) == 9 + 4 and int((t["heatmap"] == 1).sum()) == 13
    assert t["heatmap"][0, 2:5, 2:5].eq(1).all()
    # Every positive regresses its object's size, and the offset points back at the true centre.
    cells = torch.stack([t["indices"] % 16, t["indices"] // 16], dim=1).float()
    centres = (t["boxes"][:, :2] + t["boxes"][:, 2:]) / 2
    torch.testing.assert_close(cells + t["offset"], centres)
    torch.testing.assert_close(t["boxes"][:, 2:] - t["boxes"][:, :2], t["wh"])
    assert sorted(t["wh"].unique().tolist()) == [1.5, 2.0]
    # With positive_radius 0 the outputs are the paper's.
    for k in ("indices", "wh", "offset", "classes"):
        assert torch.equal(paper[k], build_targets(boxes, torch.tensor([0, 0]), (16, 16), 4, 1)[k])


def test_giou_loss_option():
    gen = _generator(num_classes=1, GIOU_LOSS_WEIGHT=2.0).train()
    with torch.no_grad():  # positive sizes (the L1 wh loss gets them there within a few steps)
        gen.wh_head[-1].bias.fill_(3.0)
        gen.offset_head[-1].bias.fill_(2.5)  # off centre: the offset gets a gradient too
    gts = [_gt((64, 64), [[10.0, 12.0, 30.0, 20.0]], [0])]
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    feats = {"d2": torch.randn(1, 8, 16, 16)}
    with EventStorage():
        _, losses = gen(images, feats, gts)
    assert 0 < float(losses["loss_giou"]) <= 2 * 2.0
    losses["loss_giou"].backward()
    assert gen.wh_head[0].weight.grad.abs().sum() > 0 and gen.offset_head[0].weight.grad.abs().sum() > 0
    # A perfect box prediction at the centre cell has GIoU loss 0.
    with torch.no_grad():
        for p in list(gen.wh_head.parameters()) + list(gen.offset_head.parameters()):
            p.zero_()
        gen.wh_head[-1].bias.copy_(torch.tensor([20 / 4, 8 / 4]))
        gen.offset_head[-1].bias.copy_(torch.tensor([(20 / 4) % 1, (16 / 4) % 1]))
    with EventStorage():
        _, losses = gen(images, feats, gts)
    assert float(losses["loss_giou"]) < 1e-5
    with pytest.raises(ValueError, match="POSITIVE_RADIUS"):
        _generator(POSITIVE_RADIUS=-1)


def test_draw_gaussian_max_merge_and_border():
    hm = torch.zeros(5, 5)
    draw_gaussian(hm, (0, 0), 2)  # cropped at the corner
    assert hm[0, 0] == 1 and hm.shape == (5, 5)
    before = hm.clone()
    draw_gaussian(hm, (1, 1), 1)
    assert torch.equal(hm, torch.maximum(before, hm))
    assert hm[1, 1] == 1
    sigma = 3 / 6
    assert math.isclose(
        float(hm[1, 2]), max(float(before[1, 2]), math.exp(-1 / (2 * sigma**2))), rel_tol=1e-6
    )
    # Off the grid: untouched.
    hm2 = torch.zeros(3, 3)
    draw_gaussian(hm2, (10, 10), 1)
    assert hm2.sum() == 0


def _reference_maps():
    hm = torch.zeros(1, 1, 4, 4)
    hm[0, 0, 1, 2] = 0.9
    hm[0, 0, 1, 3] = 0.5
    hm[0, 0, 3, 0] = 0.35
    hm[0, 0, 3, 3] = 0.2
    off = torch.zeros(1, 2, 4, 4)
    wh = torch.zeros(1, 2, 4, 4)
    off[0, :, 1, 2] = torch.tensor([0.25, 0.5])
    wh[0, :, 1, 2] = torch.tensor([3.0, 2.0])
    off[0, :, 3, 0] = torch.tensor([0.5, 0.5])
    wh[0, :, 3, 0] = torch.tensor([1.0, 1.0])
    return hm, wh, off


def test_decode_reference():
    hm, wh, off = _reference_maps()
    (dets,) = decode_detections(hm, wh, off, K=4, score_thresh=0.3)
    expected = torch.tensor([[2.25, 1.5, 3, 2, 0.9, 0], [0.5, 3.5, 1, 1, 0.35, 0]])
    torch.testing.assert_close(dets, expected)


def test_decode_k_larger_than_cells_and_multiclass():
    hm, wh, off = _reference_maps()
    (dets,) = decode_detections(hm, wh, off, K=500, score_thresh=0.3)
    assert dets.shape == (2, 6)
    (all_peaks,) = decode_detections(hm, wh, off, K=500, score_thresh=-1.0)
    assert all_peaks.shape == (16, 6)  # K clamped to C*H*W
    two = torch.cat([hm, torch.zeros_like(hm)], dim=1)
    two[0, 1, 0, 0] = 0.95  # class 1 peak, not suppressed by class 0's
    (dets,), (idx,) = decode_detections(two, wh, off, K=3, score_thresh=0.3, return_indices=True)
    assert dets[:, 5].tolist() == [1, 0, 0]
    assert idx.tolist() == [16 + 0, 1 * 4 + 2, 3 * 4 + 0]


# ------------------------------------------------------------------------------ focal loss
def test_focal_loss_matches_formula_and_is_stable():
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    gt = torch.tensor([[[[1.0, 0.5], [0.0, 1.0]]]])
    p = logits.sigmoid()
    pos = (1 - p) ** 2 * p.log() * (gt == 1)
    neg = (1 - gt) ** 4 * p**2 * (1 - p).log() * (gt < 1)
    expected = -(pos.sum() + neg.sum()) / 2
    torch.testing.assert_close(focal_loss(logits, gt), expected)
    # Extreme logits: the authors' unclamped version gives inf; ours stays finite.
    extreme = torch.tensor([[[[-200.0, 200.0], [200.0, -200.0]]]], requires_grad=True)
    loss = focal_loss(extreme, gt)
    loss.backward()
    assert torch.isfinite(loss) and loss > 100
    assert torch.isfinite(extreme.grad).all()
    # No centre: negative part alone, finite.
    zero = focal_loss(torch.zeros(1, 1, 3, 3), torch.zeros(1, 1, 3, 3))
    torch.testing.assert_close(zero, -9 * 0.25 * torch.log(torch.tensor(0.5)))


# ------------------------------------------------------------------------ proposal generator
def _cfg(num_classes=1, head_channels=16):
    cfg = get_cfg()
    add_objguided_config(cfg)
    cfg.MODEL.PROPOSAL_GENERATOR.NAME = "CenterNetProposalGenerator"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.OBJGUIDED.HEAD_CHANNELS = head_channels
    return cfg


def _generator(num_classes=1, in_channels=8, **kw):
    cfg = _cfg(num_classes)
    for k, v in kw.items():
        setattr(cfg.MODEL.OBJGUIDED, k, v)
    return build_proposal_generator(cfg, {"d2": ShapeSpec(channels=in_channels, stride=4)})


def _gt(image_size, boxes, classes):
    inst = Instances(image_size)
    inst.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.as_tensor(classes, dtype=torch.long)
    return inst


def _random_boxes(n, h, w, gen):
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w - 8.0, h - 8.0])
    size = 3 + torch.rand(n, 2, generator=gen) * 20
    return torch.cat([xy, xy + size], dim=1)


def test_from_config_and_heads():
    gen = _generator(num_classes=3, in_channels=8)
    assert isinstance(gen, CenterNetProposalGenerator)
    assert gen.heatmap_head[-1].out_channels == 3
    assert gen.wh_head[0].kernel_size == (7, 7) and gen.wh_head[2].kernel_size == (7, 7)
    assert gen.offset_head[0].kernel_size == (3, 3) and gen.offset_head[2].kernel_size == (1, 1)
    torch.testing.assert_close(gen.heatmap_head[-1].bias, torch.full((3,), -math.log(9.0)))
    assert gen.loss_weights == {"loss_heatmap": 1.0, "loss_wh": 0.1, "loss_offset": 1.0, "loss_giou": 0.0}
    assert gen.min_radius == 0 and gen.positive_radius == 0  # the paper's targets by default
    with pytest.raises(ValueError, match="DET_IN_FEATURE"):
        build_proposal_generator(_cfg(), {"d3": ShapeSpec(channels=8, stride=8)})
    with pytest.raises(ValueError, match="REG_LOSS"):
        _generator(REG_LOSS="l2")


@pytest.mark.parametrize("num_gt", [0, 1, 300])
@pytest.mark.parametrize("reg_loss", ["l1", "smooth_l1"])
def test_training_losses(num_gt, reg_loss):
    gen = _generator(num_classes=2, REG_LOSS=reg_loss).train()
    h, w = 64, 96
    g = torch.Generator().manual_seed(1)
    boxes = _random_boxes(num_gt, h, w, g)
    classes = torch.randint(0, 2, (num_gt,), generator=g)
    # Second image of the batch has no instance at all (half-empty batch).
    gts = [_gt((h, w), boxes, classes), _gt((h - 5, w - 9), torch.zeros(0, 4), torch.zeros(0))]
    images = ImageList(torch.zeros(2, 3, h, w), [(h, w), (h - 5, w - 9)])
    feats = {"d2": torch.randn(2, 8, h // 4, w // 4)}
    with EventStorage():
        proposals, losses = gen(images, feats, gts)
    assert set(losses) == {"loss_heatmap", "loss_wh", "loss_offset"}
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), k
        assert v.requires_grad, k
    if num_gt == 0:
        assert losses["loss_wh"] == 0 and losses["loss_offset"] == 0
    else:
        assert losses["loss_wh"] > 0
    sum(losses.values()).backward()
    for head in (gen.heatmap_head, gen.wh_head, gen.offset_head):
        for p in head.parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all()
    assert gen.heatmap_head[0].weight.grad.abs().sum() > 0
    if num_gt:
        assert gen.wh_head[0].weight.grad.abs().sum() > 0
        assert gen.offset_head[0].weight.grad.abs().sum() > 0
    assert len(proposals) == 2  # decoded in training too


def test_loss_weights_and_normalisation():
    gen = _generator(num_classes=1, WH_LOSS_WEIGHT=0.1).train()
    with torch.no_grad():
        for p in gen.wh_head.parameters():
            p.zero_()
        for p in gen.offset_head.parameters():
            p.zero_()
    gts = [_gt((64, 64), [[10.0, 12.0, 30.0, 20.0], [40.0, 40.0, 50.0, 60.0]], [0, 0])]
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    with EventStorage():
        _, losses = gen(images, {"d2": torch.randn(1, 8, 16, 16)}, gts)
    # Predictions are 0, so L1 = mean of |target| over the 2 values of each centre (code).
    wh = torch.tensor([[20 / 4, 8 / 4], [10 / 4, 20 / 4]])
    off = torch.tensor([[(20 / 4) % 1, (16 / 4) % 1], [(45 / 4) % 1, (50 / 4) % 1]])
    torch.testing.assert_close(losses["loss_wh"], 0.1 * wh.abs().mean())
    torch.testing.assert_close(losses["loss_offset"], off.abs().mean())


def test_eval_outputs_instances_inside_image():
    gen = _generator(num_classes=2, SCORE_THRESH_TEST=0.0, TOPK=50).eval()
    with torch.no_grad():  # large positive wh pushes boxes past the border; clip must hold
        gen.wh_head[-1].bias.fill_(30.0)
        gen.offset_head[-1].bias.fill_(0.5)
    h, w = 64, 96
    sizes = [(61, 90), (40, 33)]
    images = ImageList(torch.zeros(2, 3, h, w), sizes)
    with torch.no_grad():
        proposals, losses = gen(images, {"d2": torch.randn(2, 8, h // 4, w // 4)})
    assert losses == {}
    for inst, size in zip(proposals, sizes):
        assert inst.image_size == size
        assert set(inst.get_fields()) == {
            "proposal_boxes",
            "objectness_logits",
            "pred_classes",
            "scores",
        }
        assert 0 < len(inst) <= 50
        b = inst.proposal_boxes.tensor
        assert isinstance(inst.proposal_boxes, Boxes)
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all()
        assert (b[:, 2] <= size[1]).all() and (b[:, 3] <= size[0]).all()
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
        assert inst.pred_classes.dtype == torch.int64
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < 2)).all()
        torch.testing.assert_close(inst.objectness_logits.sigmoid(), inst.scores)
        assert (inst.scores[:-1] >= inst.scores[1:]).all()


def test_eval_threshold_drops_low_scores():
    gen = _generator().eval()  # prior 0.1 < 0.3: nothing passes before training
    images = ImageList(torch.zeros(1, 3, 32, 32), [(32, 32)])
    with torch.no_grad():
        (inst,), _ = gen(images, {"d2": torch.randn(1, 8, 8, 8) * 0.01})
    assert len(inst) == 0
    assert inst.proposal_boxes.tensor.shape == (0, 4)


def test_overfit_one_image_recovers_box():
    torch.manual_seed(0)
    gen = _generator(num_classes=1, in_channels=8, head_channels=16)
    h, w = 64, 64
    box = [13.0, 21.0, 41.0, 37.0]  # centre (27, 29): cell (6, 7), offset (0.75, 0.25)
    gts = [_gt((h, w), [box], [0])]
    images = ImageList(torch.zeros(1, 3, h, w), [(h, w)])
    feats = {"d2": torch.randn(1, 8, h // 4, w // 4)}
    opt = torch.optim.Adam(gen.parameters(), lr=1e-2)
    gen.train()
    with EventStorage():
        for _ in range(200):
            _, losses = gen(images, feats, gts)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
    assert losses["loss_heatmap"] < 0.1
    gen.eval()
    with torch.no_grad():
        (inst,), _ = gen(images, feats)
    assert len(inst) >= 1
    top = inst.proposal_boxes.tensor[0]
    assert inst.scores[0] > 0.3
    # Within one output cell (n = 4 pixels) of the GT box on every side.
    assert (top - torch.tensor(box)).abs().max() < 4, top


def test_paper_head_parameter_count(capsys):
    gen = build_proposal_generator(
        _cfg(num_classes=1, head_channels=256), {"d2": ShapeSpec(channels=256, stride=4)}
    )
    count = {
        n: sum(p.numel() for p in getattr(gen, n).parameters())
        for n in ("heatmap_head", "wh_head", "offset_head")
    }
    # conv3x3 256->256 + conv1x1 256->1; 7x7 256->256 + 7x7 256->2; conv3x3 + conv1x1 256->2.
    assert count["heatmap_head"] == 256 * 256 * 9 + 256 + 256 + 1
    assert count["wh_head"] == 256 * 256 * 49 + 256 + 256 * 2 * 49 + 2
    assert count["offset_head"] == 256 * 256 * 9 + 256 + 256 * 2 + 2
    with capsys.disabled():
        print(f"\n[CenterNet heads, 256 ch, C=1] {count} total {sum(count.values()):,}")

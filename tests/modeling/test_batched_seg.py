"""The packed-canvas segmentation branch equals the one-ROI-at-a-time oracle
(``reference_seg.py``): mask probabilities, losses and gradients, on boxes of very different sizes
and aspect ratios; and its canvas operations equal the per-ROI operations they stand for."""
import pytest
import torch
import torch.nn.functional as F

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import build_roi_heads
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from objguided_d2 import add_objguided_config
from objguided_d2.modeling.roi_heads import ObjGuidedMaskHead, roi_level_sizes
from objguided_d2.modeling.roi_heads.canvas_layout import pack_canvas
from objguided_d2.modeling.roi_heads.canvas_ops import (
    crop_masks_at_pixels,
    segment_instance_norm,
    upsample_to_canvas,
)

from reference_seg import crop_mask_roi, reference_losses, reference_probs

NAMES = ["c0", "c1", "d2", "d3", "d4"]
STRIDES = [1, 2, 4, 8, 16]
CH = [4, 6, 8, 8, 12]
PAD_HW = (96, 128)  # feature map size of the loop-vs-canvas cases

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")),
]


def make_heads(device, **og):
    cfg = add_objguided_config(get_cfg())
    cfg.MODEL.MASK_ON = True
    cfg.MODEL.ROI_HEADS.NAME = "ObjGuidedROIHeads"
    cfg.MODEL.ROI_MASK_HEAD.NAME = "ObjGuidedMaskHead"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.OBJGUIDED.MASK_HEAD_CHANNELS = 8
    for k, v in og.items():
        setattr(cfg.MODEL.OBJGUIDED, k, v)
    torch.manual_seed(0)
    heads = build_roi_heads(cfg, {n: ShapeSpec(channels=c, stride=s) for n, c, s in zip(NAMES, CH, STRIDES)})
    # Non-trivial predictions: the default init (std 0.001) makes every probability ~0.5.
    with torch.no_grad():
        for p in heads.mask_head.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.3)
    return heads.to(device)


def make_features(n, device):
    g = torch.Generator().manual_seed(1)
    return {name: torch.randn(n, c, PAD_HW[0] // s, PAD_HW[1] // s, generator=g).to(device).requires_grad_()
            for name, c, s in zip(NAMES, CH, STRIDES)}


def random_boxes(num, image_hw, seed):
    """Boxes from 1 px (skipped) to ~70 px, aspect ratios up to ~1:15, some leaving the image."""
    g = torch.Generator().manual_seed(seed)
    H, W = image_hw
    side = torch.exp(torch.rand(num, 2, generator=g) * 4.3)  # 1 .. ~74 px per side
    ctr = torch.rand(num, 2, generator=g) * torch.tensor([W + 10.0, H + 10.0]) - 5
    return torch.cat([ctr - side / 2, ctr + side / 2], dim=1)


def make_targets(num, image_hw, seed):
    H, W = image_hw
    inst = Instances(image_hw)
    boxes = random_boxes(num, image_hw, seed)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, W)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, H)
    inst.gt_boxes = Boxes(boxes)
    g = torch.Generator().manual_seed(seed + 1)
    inst.gt_classes = torch.randint(0, 2, (num,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    r = ((boxes[:, 2:] - boxes[:, :2]) / 2).clamp(min=0.5)
    inst.gt_masks = BitMasks(((xx - c[:, 0, None, None]) / r[:, 0, None, None]) ** 2
                             + ((yy - c[:, 1, None, None]) / r[:, 1, None, None]) ** 2 <= 1)
    return inst


# ------------------------------------------------------------------------------ building blocks
def _slot(lay, k):
    return tuple(int(t[k]) for t in (lay.y0, lay.x0, lay.h, lay.w))


def test_upsample_norm_and_mask_crop_match_per_roi_ops():
    g = torch.Generator().manual_seed(0)
    ins = [(3, 7), (9, 2), (5, 5)]
    outs = [(7, 15), (19, 4), (5, 11)]
    layout = pack_canvas([[o, i] for i, o in zip(ins, outs)])
    lay0, lay1 = layout.levels
    x = torch.randn(3, 4, 9, 7, generator=g)
    deep = torch.zeros(1, 4, lay1.height, lay1.width)
    for b in range(3):
        y0, x0, h, w = _slot(lay1, int(layout.slots[b, 1]))
        deep[0, :, y0 : y0 + h, x0 : x0 + w] = x[b, :, :h, :w]
    up = upsample_to_canvas(deep, lay1, lay0, layout.slots[lay0.rois[: lay0.num_merged], 1])
    z = segment_instance_norm((up * 3 + 1).clone(), lay0, lay0.merged_rows)
    assert (up * (1 - lay0.mask[:, :, : lay0.merged_rows])).abs().sum() == 0  # gaps stay 0
    for b, ((hi, wi), (ho, wo)) in enumerate(zip(ins, outs)):
        y0, x0, h, w = _slot(lay0, int(layout.slots[b, 0]))
        ref = F.interpolate(x[b : b + 1, :, :hi, :wi], size=(ho, wo), mode="bilinear", align_corners=False)
        torch.testing.assert_close(up[:, :, y0 : y0 + h, x0 : x0 + w], ref, rtol=0, atol=1e-5)
        torch.testing.assert_close(z[:, :, y0 : y0 + h, x0 : x0 + w], F.instance_norm(ref * 3 + 1),
                                   rtol=0, atol=1e-5)

    boxes = torch.tensor([[3.3, 4.1, 20.7, 9.2], [0.0, 10.5, 39.0, 30.0], [30.2, 1.0, 33.9, 29.5]])
    masks = torch.rand(3, 31, 40, generator=g) > 0.4
    sizes = roi_level_sizes(boxes, [1], 1.1, 2)
    lay = pack_canvas(sizes).levels[0]
    slots = pack_canvas(sizes).slots[:, 0]
    pix, vals = crop_masks_at_pixels(masks, boxes, slots, lay, enlarge=1.1)
    canvas = torch.zeros(lay.height * lay.width)
    canvas[lay.pix_flat[pix]] = vals
    canvas = canvas.reshape(lay.height, lay.width)
    assert len(pix) == sum(h * w for (h, w), in sizes)
    for b, ((h, w),) in enumerate(sizes):
        y0, x0, _, _ = _slot(lay, int(slots[b]))
        torch.testing.assert_close(canvas[y0 : y0 + h, x0 : x0 + w],
                                   crop_mask_roi(masks[b], boxes[b], (h, w), enlarge=1.1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("norm", ["BN", "GN"])
def test_norm_that_mixes_rois_is_refused(norm):
    with pytest.raises(ValueError, match="mixes ROIs"):
        ObjGuidedMaskHead(in_channels=[32, 32], seg_channels=[32], num_classes=1, seg_norm=norm)


# ------------------------------------------------------------------------------ loop == batched
@pytest.mark.parametrize("device", DEVICES)
def test_inference_probabilities_equal_loop(device):
    feats = make_features(2, device)
    props = []
    for i, seed in enumerate((5, 6)):
        p = Instances((90, 125))
        boxes = random_boxes(70, (90, 125), seed)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, 125)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, 90)
        p.proposal_boxes = Boxes(boxes.to(device))
        p.scores = torch.rand(70, generator=torch.Generator().manual_seed(seed)).to(device)
        p.pred_classes = torch.randint(0, 2, (70,), generator=torch.Generator().manual_seed(seed)).to(device)
        props.append(p)
    heads = make_heads(device).eval()
    with torch.no_grad():
        outs, _ = heads(None, feats, props)
        for i, b in enumerate(outs):
            assert 20 < len(b) < 70  # some ROIs are too small to segment
            ref = reference_probs(heads, feats, i, b.pred_boxes.tensor, b.pred_classes)
            assert len({tuple(m.shape) for m in ref}) > 10  # really different sizes
            spread = 0.0
            for ma, mb in zip(ref, b.pred_mask_probs):
                assert ma.shape == mb.shape
                assert (ma - mb).abs().max().item() <= 1e-4
                spread = max(spread, (ma.max() - ma.min()).item())
            assert spread > 0.3  # the comparison is not between constant maps


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("refine_on,max_inst", [(True, 0), (True, 25), (False, 0)])
def test_training_losses_and_gradients_equal_loop(device, refine_on, max_inst):
    targets = [make_targets(40, (90, 125), 11).to(device), make_targets(0, (90, 125), 12).to(device),
               make_targets(30, (80, 100), 13).to(device)]
    res = {}
    for batched in (False, True):
        heads = make_heads(device, REFINE_ON=refine_on, MAX_TRAIN_INSTANCES=max_inst).train()
        feats = make_features(3, device)
        torch.manual_seed(123)  # same randperm and refinement point draws in both paths
        if batched:
            with EventStorage():
                _, losses = heads(None, feats, [Instances(t.image_size) for t in targets], targets)
        else:
            losses = reference_losses(heads, feats, targets)
        sum(losses.values()).backward()
        res[batched] = (losses, feats, [p.grad.clone() for p in heads.mask_head.parameters()])
    (la, fa, ga), (lb, fb, gb) = res[False], res[True]
    assert set(la) == set(lb) == ({"loss_seg", "loss_refine"} if refine_on else {"loss_seg"})
    for k in la:
        assert la[k].item() > 0
        assert abs(la[k].item() - lb[k].item()) <= 1e-4 * abs(la[k].item()), k
    for n in NAMES:
        scale = fa[n].grad.abs().max().item()
        assert scale > 0
        assert (fa[n].grad - fb[n].grad).abs().max().item() <= 1e-4 * scale, n
    for a, b in zip(ga, gb):
        assert (a - b).abs().max().item() <= 1e-4 * max(a.abs().max().item(), 1e-8)


# ------------------------------------------------------------------------------ canvas packing
def test_canvas_layout_separates_rois_and_orders_levels():
    sizes = [s for s in roi_level_sizes(random_boxes(120, (200, 300), 7), STRIDES, 1.1, 2) if s]
    layout = pack_canvas(sizes)
    for l, lay in enumerate(layout.levels):
        n = len(lay.rois)
        assert n == sum(len(s) > l for s in sizes)
        occ = torch.full((lay.height + 1, lay.width + 1), -1)
        for k in range(n):
            y, x, h, w = (int(t[k]) for t in (lay.y0, lay.x0, lay.h, lay.w))
            assert (h, w) == tuple(sizes[int(lay.rois[k])][l])
            # the ROI grown by one pixel (its zero border) overlaps no other ROI
            assert (occ[max(y - 1, 0) : y + h + 1, max(x - 1, 0) : x + w + 1] == -1).all()
            occ[y : y + h, x : x + w] = k
            assert int(layout.slots[int(lay.rois[k]), l]) == k
            # merged ROIs (with a deeper level) first, inside rows [0, merged_rows)
            merged = len(sizes[int(lay.rois[k])]) > l + 1
            assert merged == (k < lay.num_merged)
            assert (y + h <= lay.merged_rows) if merged else (y >= lay.merged_rows + (lay.num_merged > 0))
        assert int(lay.mask.sum()) == sum(h * w for h, w in zip(lay.h.tolist(), lay.w.tolist()))
        if l + 1 < len(layout.levels):
            assert set(lay.rois[: lay.num_merged].tolist()) == set(layout.levels[l + 1].rois.tolist())


def test_segment_instance_norm_matches_per_roi_instance_norm():
    sizes = [[(h, w)] for h, w in [(3, 7), (9, 2), (5, 5), (12, 4), (2, 2), (7, 9)]]
    lay = pack_canvas(sizes).levels[0]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, lay.height, lay.width, generator=g) * 4 + 3  # garbage in the gaps
    y = segment_instance_norm(x.clone(), lay, lay.height)
    assert (y * (1 - lay.mask)).abs().sum() == 0
    for k in range(len(lay.rois)):
        ys, xs, h, w = (int(t[k]) for t in (lay.y0, lay.x0, lay.h, lay.w))
        ref = F.instance_norm(x[:, :, ys : ys + h, xs : xs + w])
        torch.testing.assert_close(y[:, :, ys : ys + h, xs : xs + w], ref, rtol=0, atol=1e-5)


def _single_image_step(batched, og, dtype):
    """One training step (losses, input features with their grads, head grads) and inference on
    the GT boxes, of the one-ROI oracle (batched False) or the canvas heads, in ``dtype``."""
    targets = [make_targets(35, (90, 125), 21)]
    heads = make_heads("cpu", **og).train().to(dtype)
    feats = {k: v[:1].detach().to(dtype).requires_grad_() for k, v in make_features(1, "cpu").items()}
    torch.manual_seed(7)
    if batched:
        with EventStorage():
            _, losses = heads(None, feats, [Instances(t.image_size) for t in targets], targets)
    else:
        losses = reference_losses(heads, feats, targets)
    sum(losses.values()).backward()
    grads = [p.grad.clone() for p in heads.mask_head.parameters()]
    heads.eval()
    p = Instances((90, 125))
    p.proposal_boxes = targets[0].gt_boxes
    p.scores = torch.linspace(1, 0.1, 35)
    p.pred_classes = targets[0].gt_classes
    with torch.no_grad():
        inst = heads(None, feats, [p])[0][0]
        if not batched:  # the oracle's maps of the same (kept) boxes
            inst.pred_mask_probs = reference_probs(heads, feats, 0, inst.pred_boxes.tensor, inst.pred_classes)
    return losses, feats, grads, inst


@pytest.mark.parametrize("og", [{}, {"SEG_CHANNELS": [6, 5, 7, 9]}])
def test_single_image_training_and_entry_convs_equal_loop(og):
    """One image (the canvas crops straight from its maps) and, with custom SEG_CHANNELS,
    1x1 entry convs for ROIs whose deepest level is shallower than the head's."""
    (la, _, _, ia), (lb, _, _, ib) = (_single_image_step(b, og, torch.float32) for b in (False, True))
    for k in la:
        assert abs(la[k].item() - lb[k].item()) <= 1e-4 * abs(la[k].item()), k
    assert len(ia) == len(ib) > 20
    for ma, mb in zip(ia.pred_mask_probs, ib.pred_mask_probs):
        assert ma.shape == mb.shape and (ma - mb).abs().max().item() <= 1e-4
    # Gradients in float64: in float32 the two paths sum the same terms in different orders (one
    # grid_sample backward per canvas vs per ROI), and where large terms cancel (c0's gradient)
    # the difference reaches ~1e-3 of the largest entry on some CPUs (AVX-512 oneDNN); in float64
    # the paths agree to the float32 grid coordinates both use (~1e-7).
    (la, fa, ga, _), (lb, fb, gb, _) = (_single_image_step(b, og, torch.float64) for b in (False, True))
    for k in la:
        assert abs(la[k].item() - lb[k].item()) <= 1e-6 * abs(la[k].item()), k
    for n in NAMES:
        assert (fa[n].grad is None) == (fb[n].grad is None), n
        if fa[n].grad is None:
            continue
        scale = fa[n].grad.abs().max().item()
        assert scale > 0
        assert (fa[n].grad - fb[n].grad).abs().max().item() <= 1e-5 * scale, n
    for a, b in zip(ga, gb):
        assert (a - b).abs().max().item() <= 1e-5 * max(a.abs().max().item(), 1e-12)


def test_paste_pixels_and_mask_nms_from_pixels_match_full_masks():
    from objguided_d2.modeling.postprocessing import mask_nms, paste_roi_masks

    g = torch.Generator().manual_seed(3)
    boxes = random_boxes(40, (60, 80), 9)
    maps = [torch.rand(int(h) + 2, int(w) + 2, generator=g)
            for w, h in (boxes[:, 2:] - boxes[:, :2]).clamp(min=1).tolist()]
    masks, (inst, flat) = paste_roi_masks(maps, boxes, (60, 80), 0.3, return_pixels=True)
    ref_inst, ref_flat = masks.reshape(40, -1).nonzero(as_tuple=True)
    got = sorted(zip(inst.tolist(), flat.tolist()))
    assert got == sorted(zip(ref_inst.tolist(), ref_flat.tolist())) and len(got) > 100
    scores = torch.rand(40, generator=g)
    keep_full = mask_nms(masks, scores, 0.2)
    keep_pix = mask_nms(masks[:0], scores, 0.2, pixels=(inst, flat))
    assert torch.equal(keep_full, keep_pix) and 0 < len(keep_full) < 40

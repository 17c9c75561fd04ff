"""Property tests (hypothesis, modest example counts): target encoding/decoding round trip, AP
invariants beyond tests/evaluation, ROI sizing of arbitrary boxes, and degenerate predicted boxes
at inference (clipped or dropped, never an error)."""
import math
import os

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_util

from objguided_d2.engine.train_net import load_config
from objguided_d2.evaluation.paper_ap import ImageInstances, paper_ap
from objguided_d2.modeling.postprocessing import postprocess_instances
from objguided_d2.modeling.proposal_generator import CenterNetProposalGenerator
from objguided_d2.modeling.proposal_generator.centernet_utils import build_targets, decode_detections
from objguided_d2.modeling.roi_heads import enlarge_boxes, roi_level_sizes
from objguided_d2.structures import ROIMaskProbs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = settings(max_examples=40, deadline=None)


# ------------------------------------------------------------------------------ round trip
@SETTINGS
@given(st.data())
def test_targets_decode_back_to_the_box(data):
    stride = data.draw(st.sampled_from([1, 2, 4, 8]))
    grid_h, grid_w = data.draw(st.integers(4, 40)), data.draw(st.integers(4, 40))
    img_h, img_w = grid_h * stride, grid_w * stride
    min_box = 2.0
    w = data.draw(st.floats(min_box + 0.01, float(img_w)))
    h = data.draw(st.floats(min_box + 0.01, float(img_h)))
    x0 = data.draw(st.floats(0.0, img_w - w))
    y0 = data.draw(st.floats(0.0, img_h - h))
    num_classes = data.draw(st.integers(1, 3))
    cls = data.draw(st.integers(0, num_classes - 1))
    box = torch.tensor([[x0, y0, x0 + w, y0 + h]], dtype=torch.float32)
    t = build_targets(box, torch.tensor([cls]), (grid_h, grid_w), stride, num_classes, min_box_size=min_box)
    assert len(t["indices"]) == 1
    # The regression maps hold the targets at the centre cell, as a perfectly trained head would.
    wh = torch.zeros(1, 2, grid_h * grid_w)
    off = torch.zeros(1, 2, grid_h * grid_w)
    wh[0, :, t["indices"]] = t["wh"].T
    off[0, :, t["indices"]] = t["offset"].T
    dets = decode_detections(t["heatmap"][None], wh.view(1, 2, grid_h, grid_w),
                             off.view(1, 2, grid_h, grid_w), K=5, score_thresh=0.99)[0]
    assert len(dets) == 1  # exactly one peak of value 1
    cx, cy, bw, bh, score, c = dets[0].tolist()
    assert score == 1.0 and int(c) == cls
    true = [(x0 + w / 2) / stride, (y0 + h / 2) / stride, w / stride, h / stride]
    for got, want in zip((cx, cy, bw, bh), true):
        assert abs(got - want) <= 1.0  # within one output cell (the requirement) ...
        assert abs(got - want) * stride < 1e-2  # ... in fact exact up to float32 rounding


# ------------------------------------------------------------------------------ AP invariants
def _rle(mask):
    return mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))


@st.composite
def _segm_dataset(draw):
    """1-4 images of 16x16 with random rectangles, 2 classes; predictions = jittered GT + extras."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    gts, preds = [], []
    for _ in range(draw(st.integers(1, 4))):
        def rects(n):
            ms = []
            for _ in range(n):
                x0, y0 = rng.integers(0, 12, 2)
                x1, y1 = x0 + rng.integers(1, 5), y0 + rng.integers(1, 5)
                m = np.zeros((16, 16), bool)
                m[y0:y1, x0:x1] = True
                ms.append(m)
            return ms
        g, p = rects(int(rng.integers(0, 4))), rects(int(rng.integers(0, 5)))
        p = [m for m in g if rng.random() < 0.7] + p
        gts.append(ImageInstances(classes=rng.integers(0, 2, len(g)), masks=[_rle(m) for m in g]))
        preds.append(ImageInstances(classes=rng.integers(0, 2, len(p)), masks=[_rle(m) for m in p],
                                    scores=rng.permutation(len(p)) / 10 + rng.random()))
    return gts, preds


def _same(a, b):
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-12)


@SETTINGS
@given(_segm_dataset(), st.randoms(use_true_random=False))
def test_paper_ap_segm_permutation_bounds_and_extra_false_positive(dataset, rnd):
    gts, preds = dataset
    res = paper_ap(gts, preds, "segm")
    # Permuting whole images (GT and predictions together) changes nothing (with distinct scores:
    # ties across images are broken by image order, by definition).
    scores = np.concatenate([p.scores for p in preds]) if preds else np.zeros(0)
    if len(np.unique(scores)) == len(scores):
        order = list(range(len(gts)))
        rnd.shuffle(order)
        res_p = paper_ap([gts[i] for i in order], [preds[i] for i in order], "segm")
        assert _same(res["AP"], res_p["AP"])
    if not math.isnan(res["AP"]):
        assert 0.0 <= res["AP"] <= 1.0 and np.all((res["curve"] >= 0) & (res["curve"] <= 1))
        # A false positive scored below everything can only lower precision at the tail: AP never rises.
        extra = np.zeros((16, 16), bool)
        extra[0, 15] = True
        p0 = preds[0]
        low = (scores.min() if len(scores) else 0.0) - 1.0
        worse = [ImageInstances(classes=np.append(p0.classes, gts[0].classes[:1] if len(gts[0]) else [0]),
                                masks=list(p0.masks) + [_rle(extra)], scores=np.append(p0.scores, low))]
        res_w = paper_ap(gts, worse + preds[1:], "segm")
        assert res_w["AP"] <= res["AP"] + 1e-12
    # Perfect predictions give 1 (the segm variant; the bbox one lives in tests/evaluation).
    perfect = [ImageInstances(classes=g.classes, masks=g.masks, scores=np.arange(len(g), dtype=float))
               for g in gts]
    res_perfect = paper_ap(gts, perfect, "segm")
    assert math.isnan(res_perfect["AP"]) if math.isnan(res["AP"]) else res_perfect["AP"] == pytest.approx(1.0)


# ------------------------------------------------------------------------------ ROI sizing
_coord = st.one_of(
    st.floats(-1e3, 1e3, allow_nan=False),
    st.floats(-1e7, 1e7, allow_nan=False),
    st.sampled_from([0.0, 1.0, 1.9, 2.0, 2.2, 1e9]),
)


@SETTINGS
@given(st.lists(st.tuples(_coord, _coord, _coord, _coord), min_size=0, max_size=12),
       st.sampled_from([1.0, 1.1, 1.5]), st.sampled_from([[1, 2, 4, 8, 16], [4], [1, 4, 16]]))
def test_roi_level_sizes_of_arbitrary_boxes(boxes, enlarge, strides):
    t = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    sizes = roi_level_sizes(t, strides, enlarge, 2)
    assert len(sizes) == len(boxes)
    for (x0, y0, x1, y1), levels in zip(boxes, sizes):
        assert len(levels) <= len(strides)

        def expected(level):
            s = strides[level]
            return (math.floor(enlarge * (y1 - y0) / s + 1e-4), math.floor(enlarge * (x1 - x0) / s + 1e-4))

        for lvl, (h, w) in enumerate(levels):
            assert (h, w) == expected(lvl)  # the formula
            assert h >= 2 and w >= 2  # never a side below MIN_ROI_SIZE
            if lvl:
                assert h <= levels[lvl - 1][0] and w <= levels[lvl - 1][1]  # monotone
        if len(levels) < len(strides):  # stops exactly at the first level that is too small
            assert min(expected(len(levels))) < 2
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            assert levels == []  # zero / negative size: skipped


# ------------------------------------------------------------------------------ degenerate boxes
@SETTINGS
@given(st.data())
def test_proposal_decoding_clips_or_drops_degenerate_boxes(data):
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    stride, gh, gw = 4, 12, 16
    img_h, img_w = data.draw(st.integers(1, gh * stride)), data.draw(st.integers(1, gw * stride))
    pg = CenterNetProposalGenerator(in_feature="d2", in_channels=4, stride=stride, num_classes=2,
                                    head_channels=4, topk=40, score_thresh=0.0).eval()
    logits = torch.randn(1, 2, gh, gw) * 3
    # Zero, negative, huge sizes and centres pushed far outside the image.
    wh = torch.tensor(np.random.default_rng(0).choice([-50.0, -1.0, 0.0, 0.1, 3.0, 1e4], (1, 2, gh, gw)),
                      dtype=torch.float32)
    wh = wh[:, :, torch.randperm(gh)][..., torch.randperm(gw)]
    offset = (torch.rand(1, 2, gh, gw) - 0.5) * data.draw(st.sampled_from([1.0, 100.0, 1e4]))
    inst = pg.decode(logits, wh, offset, [(img_h, img_w)])[0]
    b = inst.proposal_boxes.tensor
    assert len(inst) <= 40 and inst.image_size == (img_h, img_w)
    assert torch.isfinite(b).all()
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= img_w).all() and (b[:, 3] <= img_h).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    torch.testing.assert_close(inst.scores, inst.objectness_logits.sigmoid())


_box_coord = st.floats(-80.0, 160.0, allow_nan=False)


@SETTINGS
@given(st.lists(st.tuples(_box_coord, _box_coord, _box_coord, _box_coord), min_size=0, max_size=8),
       st.integers(0, 2**16), st.sampled_from([(40, 60), (81, 119)]))
def test_postprocess_survives_degenerate_boxes(boxes, seed, out_hw):
    in_hw = (40, 60)
    rng = np.random.default_rng(seed)
    t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    res = Instances(in_hw)
    res.pred_boxes = Boxes(t)
    res.scores = torch.as_tensor(rng.random(len(t)), dtype=torch.float32)
    res.pred_classes = torch.zeros(len(t), dtype=torch.int64)
    res.pred_mask_probs = ROIMaskProbs(
        [torch.as_tensor(rng.random((rng.integers(2, 7), rng.integers(2, 7))), dtype=torch.float32) for _ in boxes])
    res.pred_mask_boxes = Boxes(enlarge_boxes(t, 1.1))
    out = postprocess_instances(res, *out_hw, mask_threshold=0.5, mask_nms_thresh=0.2)
    assert len(out) <= len(t) and out.image_size == out_hw
    assert out.pred_masks.shape == (len(out), *out_hw)
    ob = out.pred_boxes.tensor
    assert torch.isfinite(ob).all()
    assert (ob[:, 0::2] >= 0).all() and (ob[:, 0::2] <= out_hw[1]).all()
    assert (ob[:, 1::2] >= 0).all() and (ob[:, 1::2] <= out_hw[0]).all()
    assert out.pred_masks.flatten(1).any(dim=1).all()  # vanished masks are dropped
    # A mask lies inside its (scaled) grid box: degenerate boxes cannot paint elsewhere.
    sx, sy = out_hw[1] / in_hw[1], out_hw[0] / in_hw[0]
    ys, xs = torch.meshgrid(torch.arange(out_hw[0]) + 0.5, torch.arange(out_hw[1]) + 0.5, indexing="ij")
    grid = res.pred_mask_boxes.tensor * torch.tensor([sx, sy, sx, sy])
    for m, score in zip(out.pred_masks, out.scores):
        k = int((res.scores == score).nonzero()[0])
        x0, y0, x1, y1 = grid[k].tolist()
        assert x1 > x0 and y1 > y0
        inside = (xs >= x0 - 1e-3) & (xs <= x1 + 1e-3) & (ys >= y0 - 1e-3) & (ys <= y1 + 1e-3)
        assert not (m & ~inside).any()


def test_roi_heads_drop_degenerate_proposals():
    """Through the model's ROI heads: zero / negative / outside / sub-2-px proposals are dropped,
    the valid ones segmented, no error."""
    cfg = load_config(os.path.join(ROOT, "configs", "tiny", "objguided_R18_tiny.yaml"), ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    boxes = torch.tensor([
        [10.0, 10.0, 30.0, 26.0],  # valid
        [5.0, 5.0, 5.0, 20.0],  # zero width
        [40.0, 40.0, 30.0, 50.0],  # negative width
        [100.0, 100.0, 120.0, 130.0],  # entirely outside the 64 px image
        [20.0, 20.0, 21.0, 21.0],  # 1 px: level-0 ROI < 2
        [-10.0, 50.0, 12.0, 70.0],  # partly outside: kept
    ])
    prop = Instances((64, 64))
    prop.proposal_boxes = Boxes(boxes)
    prop.scores = torch.linspace(0.9, 0.4, len(boxes))
    prop.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
    with torch.no_grad():
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        out, _ = model.roi_heads(images, features, [prop])
    kept = out[0].pred_boxes.tensor.tolist()
    assert [10.0, 10.0, 30.0, 26.0] in kept and [-10.0, 50.0, 12.0, 70.0] in kept
    # 64-px box: sides of 0 / negative / 1 px can never be segmented; the outside box may only be
    # kept as a box whose masks are then empty and dropped by postprocess.
    assert not any(b in kept for b in ([5.0, 5.0, 5.0, 20.0], [40.0, 40.0, 30.0, 50.0], [20.0, 20.0, 21.0, 21.0]))
    final = postprocess_instances(out[0], 64, 64)
    fb = final.pred_boxes.tensor
    assert (fb[:, 0::2] >= 0).all() and (fb[:, 0::2] <= 64).all() and (fb[:, 1::2] <= 64).all()

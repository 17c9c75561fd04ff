import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_util

from objguided_d2.evaluation.paper_ap import (
    IOU_THRESHOLDS,
    ImageInstances,
    ap_from_tp,
    average_precision,
    box_iou,
    f1_operating_point,
    mask_iou,
    match_predictions,
    paper_ap,
    voc_ap,
)


def _rle(mask):
    return mask_util.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))


def _rect_mask(h, w, y0, x0, y1, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


# ----------------------------------------------------------------- worked examples of docs/method.md §7
def test_card_example_tp_sequence():
    assert ap_from_tp([1, 0, 1, 1, 0], num_gt=4) == pytest.approx(0.625)


def test_card_example_recall_precision():
    assert voc_ap([0.2, 0.4, 0.4, 0.6, 0.8], [1, 1, 0.667, 0.75, 0.8]) == pytest.approx(0.72)


def test_voc_ap_uses_envelope_not_raw_precision():
    # Raw precision at recall 0.5 is 0.5 but a later point has 2/3: the envelope takes 2/3.
    assert ap_from_tp([1, 0, 1], num_gt=3) == pytest.approx(1 / 3 + 1 / 3 * 2 / 3)


def test_ap_from_tp_edge_cases():
    assert ap_from_tp([], num_gt=3) == 0.0
    assert ap_from_tp([1, 1, 1], num_gt=3) == pytest.approx(1.0)
    assert ap_from_tp([0, 0], num_gt=2) == 0.0
    with pytest.raises(ValueError, match="num_gt"):
        ap_from_tp([1], num_gt=0)


def test_iou_thresholds():
    assert len(IOU_THRESHOLDS) == 10
    assert IOU_THRESHOLDS[0] == 0.5 and IOU_THRESHOLDS[5] == 0.75 and IOU_THRESHOLDS[-1] == 0.95


# ------------------------------------------------------------------------------- matching
def test_duplicate_is_false_positive():
    tp = match_predictions(np.array([[0.9], [0.8]]), [0.5])
    assert tp.tolist() == [[True, False]]


def test_threshold_is_strict():
    # [0,0,2,1] vs [0,0,1,1]: intersection 1, union 2 -> IoU exactly 0.5.
    ious = box_iou(np.array([[0, 0, 2, 1]]), np.array([[0, 0, 1, 1]]))
    assert ious[0, 0] == 0.5
    assert match_predictions(ious, [0.5, 0.45]).tolist() == [[False], [True]]


def test_matches_best_still_unmatched_gt():
    # pred 0 takes GT 0; pred 1 prefers GT 0 too but it is taken, so it falls back to GT 1.
    ious = np.array([[0.9, 0.6], [0.8, 0.55]])
    tp = match_predictions(ious, [0.5, 0.6])
    assert tp.tolist() == [[True, True], [True, False]]


def test_box_iou_values():
    a = np.array([[0, 0, 10, 10], [5, 5, 15, 15]])
    b = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 0, 0]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    np.testing.assert_allclose(iou, [[1, 0, 0], [25 / 175, 0, 0]])


def test_mask_iou_matches_dense():
    rng = np.random.default_rng(0)
    preds = rng.random((5, 17, 23)) > 0.6
    gts = rng.random((4, 17, 23)) > 0.5
    dense = np.array([[(p & g).sum() / (p | g).sum() for g in gts] for p in preds])
    iou = mask_iou([_rle(p) for p in preds], [_rle(g) for g in gts])
    np.testing.assert_allclose(iou, dense, atol=1e-12)
    assert mask_iou([], [_rle(gts[0])]).shape == (0, 1)


def test_mask_iou_size_mismatch_raises():
    with pytest.raises(ValueError, match="different sizes"):
        mask_iou([_rle(np.ones((3, 4)))], [_rle(np.ones((4, 3)))])


# -------------------------------------------------------------------- dataset-level AP
def test_empty_predictions_give_zero():
    ap = average_precision(
        [np.zeros((0, 3)), np.zeros((0, 1))], [np.zeros(0), np.zeros(0)], [0.5, 0.9]
    )
    np.testing.assert_array_equal(ap, [0.0, 0.0])


def test_no_gt_at_all_is_nan_not_crash():
    ap = average_precision([np.zeros((2, 0))], [np.array([0.9, 0.1])], [0.5])
    assert np.isnan(ap).all()
    res = paper_ap(
        [ImageInstances(classes=[], boxes=np.zeros((0, 4)))],
        [ImageInstances(classes=[0], boxes=[[0, 0, 1, 1]], scores=[0.5])],
        "bbox",
    )
    assert math.isnan(res["AP"]) and math.isnan(res["AP50"]) and res["per_class"] == {}


def test_predictions_on_empty_gt_image_are_false_positives():
    # Image A has no GT and a higher-scored prediction; image B one perfect prediction.
    ious = [np.zeros((1, 0)), np.ones((1, 1))]
    scores = [np.array([0.9]), np.array([0.8])]
    # Pooled tp sequence [0, 1] with 1 GT: rec [0, 1], prec [0, 0.5] -> AP 0.5.
    assert average_precision(ious, scores, [0.5])[0] == pytest.approx(0.5)
    assert average_precision(ious[1:], scores[1:], [0.5])[0] == pytest.approx(1.0)


def test_image_without_predictions_lowers_recall():
    ious = [np.ones((1, 1)), np.zeros((0, 1))]
    scores = [np.array([0.9]), np.zeros(0)]
    assert average_precision(ious, scores, [0.5])[0] == pytest.approx(0.5)


def test_pooling_sorts_across_images():
    # Image 0: a FP at 0.5 score; image 1: a TP at 0.9 -> pooled [TP, FP], 2 GT.
    ious = [np.array([[0.0]]), np.array([[1.0]])]
    scores = [np.array([0.5]), np.array([0.9])]
    assert average_precision(ious, scores, [0.5])[0] == pytest.approx(0.5)
    # Scores swapped: pooled [FP, TP] -> rec [0, .5], prec [0, .5] -> 0.25.
    assert average_precision(ious, scores[::-1], [0.5])[0] == pytest.approx(0.25)


def test_row_order_inside_image_does_not_matter():
    ious = np.array([[0.6, 0.1], [0.7, 0.2], [0.1, 0.8]])
    scores = np.array([0.3, 0.9, 0.5])
    perm = np.array([2, 0, 1])
    a = average_precision([ious], [scores], IOU_THRESHOLDS)
    b = average_precision([ious[perm]], [scores[perm]], IOU_THRESHOLDS)
    np.testing.assert_array_equal(a, b)


def test_average_precision_shape_errors():
    with pytest.raises(ValueError, match="image 0"):
        average_precision([np.zeros((2, 1))], [np.zeros(3)])
    with pytest.raises(ValueError, match="IoU matrices"):
        average_precision([np.zeros((2, 1))], [])


def _masks_instances(masks, classes, scores=None):
    masks = list(masks)
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    return ImageInstances(
        classes=classes,
        boxes=np.array(boxes).reshape(-1, 4),
        masks=[_rle(m) for m in masks],
        scores=scores,
    )


def test_perfect_masks_give_one_and_curve():
    h, w = 20, 30
    gt_masks = [_rect_mask(h, w, 1, 1, 6, 8), _rect_mask(h, w, 10, 10, 18, 25)]
    gt = _masks_instances(gt_masks, [0, 0])
    pred = _masks_instances(gt_masks[::-1], [0, 0], scores=[0.7, 0.9])
    for t in ("segm", "bbox"):
        res = paper_ap([gt], [pred], t)
        assert res["AP"] == pytest.approx(1.0) and res["AP50"] == 1.0 and res["AP75"] == 1.0
        assert res["curve"].shape == (10,) and np.allclose(res["curve"], 1.0)


def test_apseg_differs_from_apdec_for_wrong_shape():
    # Same box, but the predicted mask is the box's upper half only: box IoU 1, mask IoU 0.5.
    h, w = 12, 12
    gt_mask = _rect_mask(h, w, 2, 2, 10, 10)
    pred_mask = _rect_mask(h, w, 2, 2, 6, 10)
    gt = _masks_instances([gt_mask], [0])
    pred = ImageInstances(classes=[0], boxes=gt.boxes, masks=[_rle(pred_mask)], scores=[0.9])
    assert paper_ap([gt], [pred], "bbox")["AP"] == pytest.approx(1.0)
    seg = paper_ap([gt], [pred], "segm")
    assert seg["AP"] == 0.0 and seg["AP50"] == 0.0  # 0.5 is not > 0.5


def test_multiclass_average_over_classes_with_gt():
    boxes_gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    gt = ImageInstances(classes=[0, 1], boxes=boxes_gt)
    # Class 0 found; class 1 predicted with the wrong class (2, which has no GT: ignored).
    pred = ImageInstances(classes=[0, 2], boxes=boxes_gt, scores=[0.9, 0.8])
    res = paper_ap([gt], [pred], "bbox")
    assert set(res["per_class"]) == {0, 1}
    assert res["per_class"][0][0] == 1.0 and res["per_class"][1][0] == 0.0
    assert res["AP"] == pytest.approx(0.5)


def test_paper_ap_input_errors():
    gt = ImageInstances(classes=[0], boxes=[[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="iou_type"):
        paper_ap([gt], [gt], "keypoints")
    with pytest.raises(ValueError, match="no masks"):
        paper_ap([gt], [ImageInstances(classes=[0], boxes=[[0, 0, 1, 1]], scores=[1.0])], "segm")
    with pytest.raises(ValueError, match="scores"):
        paper_ap([gt], [gt], "bbox")
    with pytest.raises(ValueError, match="boxes but"):
        ImageInstances(classes=[0, 1], boxes=[[0, 0, 1, 1]])


# ------------------------------------------------------------------ property tests
_box = st.tuples(
    st.integers(0, 40), st.integers(0, 40), st.integers(1, 20), st.integers(1, 20)
).map(lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])
_image = st.lists(_box, min_size=0, max_size=6)


@settings(max_examples=40, deadline=None)
@given(st.lists(_image, min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_property_perfect_and_empty(images, rnd):
    gts = [
        ImageInstances(classes=np.zeros(len(b)), boxes=np.array(b).reshape(-1, 4)) for b in images
    ]
    n = sum(len(b) for b in images)
    scores = list(range(n))
    rnd.shuffle(scores)
    preds, k = [], 0
    for b in images:
        preds.append(
            ImageInstances(
                classes=np.zeros(len(b)),
                boxes=np.array(b).reshape(-1, 4),
                scores=np.array(scores[k : k + len(b)], dtype=float),
            )
        )
        k += len(b)
    perfect = paper_ap(gts, preds, "bbox")
    empty = paper_ap(
        gts, [ImageInstances(classes=[], boxes=np.zeros((0, 4)), scores=[]) for _ in images], "bbox"
    )
    if n == 0:
        assert math.isnan(perfect["AP"]) and math.isnan(empty["AP"])
    else:
        assert perfect["AP"] == pytest.approx(1.0)
        assert empty["AP"] == 0.0


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_property_image_permutation_invariance(data):
    n_img = data.draw(st.integers(1, 5))
    shapes = [(data.draw(st.integers(0, 5)), data.draw(st.integers(0, 4))) for _ in range(n_img)]
    total = sum(p for p, _ in shapes)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    # Distinct scores: ties would be broken by image order.
    all_scores = rng.permutation(total).astype(float)
    ious, scores, k = [], [], 0
    for p, g in shapes:
        ious.append(rng.random((p, g)))
        scores.append(all_scores[k : k + p])
        k += p
    perm = data.draw(st.permutations(list(range(n_img))))
    a = average_precision(ious, scores)
    b = average_precision([ious[i] for i in perm], [scores[i] for i in perm])
    np.testing.assert_array_equal(a, b)
    if not np.isnan(a).any():
        assert ((a >= 0) & (a <= 1)).all()


# ----------------------------------------------------------------- F1 operating point
def test_f1_operating_point_picks_the_best_cutoff():
    # F1 after 1..4 kept: 2/4, 2/5, 4/6, 4/7 -> keep the top 3 (score >= 0.7)
    op = f1_operating_point(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]), num_gt=3)
    assert op["score"] == 0.7
    assert op["F1"] == pytest.approx(2 / 3) and op["precision"] == pytest.approx(2 / 3)
    assert op["recall"] == pytest.approx(2 / 3)


def test_f1_operating_point_keeps_ties_together():
    # cutting inside the tie at 0.8 (F1 1.0) is impossible: score >= 0.8 keeps all three
    op = f1_operating_point(np.array([0.9, 0.8, 0.8]), np.array([1, 1, 0]), num_gt=2)
    assert op["score"] == 0.8 and op["F1"] == pytest.approx(0.8) and op["precision"] == pytest.approx(2 / 3)


def test_f1_operating_point_edge_cases():
    none = f1_operating_point(np.array([0.9, 0.5]), np.array([0, 0]), num_gt=2)
    assert math.isnan(none["score"]) and none["F1"] == 0.0
    assert math.isnan(f1_operating_point(np.zeros(0), np.zeros(0), num_gt=2)["score"])
    assert math.isnan(f1_operating_point(np.array([0.9]), np.array([0]), num_gt=0)["F1"])


def test_paper_ap_reports_the_f1_operating_point():
    h = w = 20
    gt_masks = [_rect_mask(h, w, 0, 0, 8, 8), _rect_mask(h, w, 10, 10, 18, 18)]
    gt = ImageInstances(classes=np.zeros(2, int), boxes=None, masks=[_rle(m) for m in gt_masks])
    # two exact masks at 0.3 / 0.2, a false positive above them at 0.9 and one below at 0.1:
    # keeping score >= 0.2 gives TP 2, FP 1 -> F1 0.8, the best cutoff
    masks = [_rect_mask(h, w, 0, 12, 5, 17), gt_masks[0], gt_masks[1], _rect_mask(h, w, 12, 0, 17, 5)]
    pred = ImageInstances(classes=np.zeros(4, int), boxes=None, masks=[_rle(m) for m in masks],
                          scores=np.array([0.9, 0.3, 0.2, 0.1]))
    op = paper_ap([gt], [pred], "segm")["best_f1"]
    assert op["score"] == pytest.approx(0.2) and op["F1"] == pytest.approx(0.8)
    assert op["precision"] == pytest.approx(2 / 3) and op["recall"] == 1.0
    # the same operating point when 0.5 is not among the AP thresholds (matched again at 0.5)
    assert paper_ap([gt], [pred], "segm", iou_thresholds=(0.75,))["best_f1"] == op

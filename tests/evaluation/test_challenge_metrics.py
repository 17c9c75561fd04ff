import math

import numpy as np
import pytest
from pycocotools import mask as mask_util

from objguided_d2.evaluation.challenge_metrics import (
    best_dice,
    challenge_metrics,
    contingency,
    count_objects,
    ctc_seg,
    det_like_counts,
    fg_bg_dice,
    masks_to_label_map,
    seg_jaccards,
    symmetric_best_dice,
)

# GT objects: 1 (area 4), 2 (area 6), 3 (area 2).
GT = np.array(
    [
        [1, 1, 0, 2, 2, 2],
        [1, 1, 0, 2, 2, 2],
        [0, 0, 0, 0, 0, 0],
        [3, 3, 0, 0, 0, 0],
    ]
)
# Pred objects: 5 (3 px inside GT 1), 7 (4 px inside GT 2), 9 (1 px of GT 3 + 1 bg), 8 (extra).
PRED = np.array(
    [
        [5, 5, 0, 7, 7, 0],
        [5, 0, 0, 7, 7, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 9, 9, 0, 0, 8],
    ]
)


def test_contingency_by_hand():
    inter, ga, pa = contingency(GT, PRED)
    # Objects in ascending label order: GT 1, 2, 3; pred 5, 7, 8, 9.
    np.testing.assert_array_equal(ga, [4, 6, 2])
    np.testing.assert_array_equal(pa, [3, 4, 1, 2])
    np.testing.assert_array_equal(inter, [[3, 0, 0, 0], [0, 4, 0, 0], [0, 0, 0, 1]])


def test_seg_by_hand():
    # GT 1: |R∩S| = 3 > 2 -> J = 3/4; GT 2: 4 > 3 -> J = 4/6; GT 3: 1 is not > 1 -> 0.
    np.testing.assert_allclose(seg_jaccards(GT, PRED), [0.75, 4 / 6, 0.0])
    assert ctc_seg([GT], [PRED]) == pytest.approx((0.75 + 4 / 6) / 3)


def test_seg_needs_more_than_half():
    gt = np.array([[1, 1, 1, 1]])
    assert seg_jaccards(gt, np.array([[2, 2, 0, 0]]))[0] == 0.0  # exactly half: no match
    assert seg_jaccards(gt, np.array([[2, 2, 2, 0]]))[0] == pytest.approx(0.75)
    # The matching object's J counts its pixels outside R too.
    assert seg_jaccards(np.array([[1, 1, 0, 0]]), np.array([[2, 2, 2, 2]]))[0] == pytest.approx(0.5)


def test_det_like_by_hand():
    # IoU: GT1-P5 0.75, GT2-P7 0.67 match; GT3-P9 1/3 does not. P8, P9 are FP; GT3 is FN.
    assert det_like_counts(GT, PRED) == (2, 2, 1)
    with pytest.raises(ValueError, match=">= 0.5"):
        det_like_counts(GT, PRED, iou_thresh=0.3)


def test_best_dice_by_hand():
    d1, d2, d3 = 2 * 3 / 7, 2 * 4 / 10, 2 * 1 / 4
    assert best_dice(GT, PRED) == pytest.approx((d1 + d2 + d3) / 3)
    assert best_dice(PRED, GT) == pytest.approx((d1 + d2 + 0 + d3) / 4)
    assert symmetric_best_dice(PRED, GT) == pytest.approx((d1 + d2 + d3) / 4)


def test_fg_bg_dice_and_counts_by_hand():
    # |G| = 12, |P| = 10, foreground overlap 3 + 4 + 1 = 8.
    assert fg_bg_dice(PRED, GT) == pytest.approx(16 / 22)
    assert count_objects(PRED) - count_objects(GT) == 1


def test_dataset_summary_two_images():
    perfect_gt = np.array([[0, 4, 4], [2, 0, 0]])
    perfect_pred = np.array([[0, 1, 1], [7, 0, 0]])  # same objects, other label values
    m = challenge_metrics([GT, perfect_gt], [PRED, perfect_pred])
    # SEG pools the 5 GT objects of both images.
    assert m["SEG"] == pytest.approx((0.75 + 4 / 6 + 0 + 1 + 1) / 5)
    # TP 4, FP 2, FN 1.
    assert m["DET_precision"] == pytest.approx(4 / 6)
    assert m["DET_recall"] == pytest.approx(4 / 5)
    assert m["DET_F1"] == pytest.approx(8 / 11)
    d1, d2, d3 = 6 / 7, 0.8, 0.5
    assert m["bestDice"] == pytest.approx(((d1 + d2 + d3) / 4 + 1) / 2)
    assert m["DiffFG"] == pytest.approx(0.5)
    assert m["absDiffFG"] == pytest.approx(0.5)
    assert m["FgBgDice"] == pytest.approx((16 / 22 + 1) / 2)


def test_signed_diff_fg_cancels_but_abs_does_not():
    a = np.array([[1, 0, 2]])
    b = np.array([[1, 0, 0]])
    m = challenge_metrics([a, b], [b, a])  # -1 then +1
    assert m["DiffFG"] == 0.0 and m["absDiffFG"] == 1.0


def test_empty_cases():
    z = np.zeros((3, 3), dtype=np.int64)
    one = z.copy()
    one[1, 1] = 3
    m = challenge_metrics([z], [z])
    assert math.isnan(m["SEG"]) and math.isnan(m["DET_F1"])
    assert m["bestDice"] == 1.0 and m["FgBgDice"] == 1.0 and m["DiffFG"] == 0.0
    m = challenge_metrics([one], [z])  # nothing predicted
    assert m["SEG"] == 0.0 and m["DET_recall"] == 0.0 and m["DET_F1"] == 0.0
    assert math.isnan(m["DET_precision"])
    assert m["bestDice"] == 0.0 and m["FgBgDice"] == 0.0 and m["DiffFG"] == -1.0
    m = challenge_metrics([z], [one])  # only a false positive
    assert math.isnan(m["SEG"]) and m["DET_precision"] == 0.0 and m["bestDice"] == 0.0
    assert math.isnan(challenge_metrics([], [])["bestDice"])


def test_perfect_relabelled_is_one():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 6, size=(16, 16))
    pred = np.where(gt > 0, gt * 10 + 3, 0)
    m = challenge_metrics([gt], [pred])
    for k in ("SEG", "DET_F1", "bestDice", "FgBgDice"):
        assert m[k] == pytest.approx(1.0), k
    assert m["DiffFG"] == 0.0


def test_label_map_errors():
    with pytest.raises(ValueError, match="same size"):
        contingency(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="integer"):
        contingency(np.zeros((2, 2)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="negative"):
        contingency(-np.ones((2, 2), int), np.zeros((2, 2), int))


def test_masks_to_label_map_highest_score_on_top():
    a = np.zeros((4, 4), bool)
    a[0:3, 0:3] = True
    b = np.zeros((4, 4), bool)
    b[1:4, 1:4] = True
    c = np.zeros((4, 4), bool)
    c[1:3, 1:3] = True  # inside both, lowest score: disappears
    lab = masks_to_label_map(np.stack([a, b, c]), scores=[0.9, 0.5, 0.1])
    assert lab[1, 1] == 1 and lab[2, 2] == 1  # a (label 1) wins the overlap
    assert lab[3, 3] == 2 and lab[0, 3] == 0
    assert count_objects(lab) == 2
    # Without scores later masks win; RLE input gives the same map.
    lab2 = masks_to_label_map([a, b])
    assert lab2[1, 1] == 2
    rles = [mask_util.encode(np.asfortranarray(m.astype(np.uint8))) for m in (a, b, c)]
    np.testing.assert_array_equal(masks_to_label_map(rles, [0.9, 0.5, 0.1]), lab)


def test_masks_to_label_map_empty_and_errors():
    assert masks_to_label_map([], image_size=(2, 5)).shape == (2, 5)
    with pytest.raises(ValueError, match="image_size"):
        masks_to_label_map([])
    with pytest.raises(ValueError, match="scores"):
        masks_to_label_map([np.ones((2, 2), bool)], scores=[1, 2])
    with pytest.raises(ValueError, match="mask 1"):
        masks_to_label_map([np.ones((2, 2), bool), np.ones((3, 2), bool)])

"""The false-positive kinds, their AP cost and the GT neighbourhood (objguided_d2.evaluation.errors)."""
import numpy as np
import pycocotools.mask as mask_util
import pytest

from objguided_d2.evaluation.errors import classify_predictions, error_breakdown, gt_neighbourhood
from objguided_d2.evaluation.paper_ap import ImageInstances, paper_ap

H = W = 64


def _rle(x0, y0, x1, y1):
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    return mask_util.encode(np.asfortranarray(m))


def _inst(boxes, scores=None):
    return ImageInstances(classes=np.zeros(len(boxes)), boxes=np.asarray(boxes, float),
                          masks=[_rle(*b) for b in boxes], scores=scores)


# A and B touch (side by side), C stands apart.
A, B, C = (0, 0, 10, 10), (10, 0, 20, 10), (40, 40, 50, 50)
PRED = [
    ((50, 0, 60, 5), 0.95),  # background, ranked above every true positive
    (A, 0.9),  # true positive
    (A, 0.8),  # duplicate of A
    ((0, 0, 20, 10), 0.7),  # A and B in one mask: IoU 0.5 with each (not > 0.5), covers both
    ((40, 40, 45, 45), 0.6),  # a quarter of C: a part
    ((45, 40, 55, 50), 0.5),  # C shifted by half: IoU 1/3, half inside C: wrong extent
]


def test_kinds_and_costs_by_hand():
    gt = _inst([A, B, C])
    pred = _inst([b for b, _ in PRED], np.array([s for _, s in PRED]))
    res = error_breakdown([gt], [pred])
    assert res["counts"] == {"tp": 1, "dupe": 1, "merge": 1, "part": 1, "loc": 1, "bkg": 1, "missed": 2}
    # One TP after one FP among 3 GT: precision 1/2 at recall 1/3.
    assert res["AP50"] == pytest.approx(1 / 6)
    assert res["AP50"] == pytest.approx(paper_ap([gt], [pred])["AP50"])  # the paper's matching
    assert res["dAP"]["bkg"] == pytest.approx(1 / 3 - 1 / 6)  # the TP first: precision 1 at 1/3
    for k in ("dupe", "merge", "part", "loc"):  # ranked after the only TP: they cost nothing
        assert res["dAP"][k] == pytest.approx(0.0)
    assert res["dAP"]["missed"] == pytest.approx(1 / 2 - 1 / 6)  # 1 GT left: recall 1 at precision 1/2
    # Best F1 keeps the two top predictions: 2 * 1 / (2 + 3) = 0.4.
    assert res["cutoff"] == pytest.approx(0.9)
    assert res["counts_at_cutoff"] == {"tp": 1, "dupe": 0, "merge": 0, "part": 0, "loc": 0, "bkg": 1, "missed": 2}
    assert res["found"][0].tolist() == [True, False, False]
    assert res["found_at_cutoff"][0].tolist() == [True, False, False]
    # B's best prediction is the merged mask (IoU 1/2, box twice B's); C's the shifted one (1/3, same size).
    assert res["best_iou"][0].tolist() == pytest.approx([1.0, 0.5, 1 / 3])
    assert res["box_scale"][0].tolist() == pytest.approx([1.0, np.sqrt(2.0), 1.0])


def test_classes_never_match_across():
    gt = _inst([A])
    pred = ImageInstances(classes=[1], boxes=[A], masks=[_rle(*A)], scores=[0.9])
    res = error_breakdown([gt], [pred])
    assert res["counts"]["missed"] == 1 and res["counts"]["tp"] == 0 and res["AP50"] == 0.0


def test_no_gt_makes_every_prediction_background():
    assigned, kinds = classify_predictions(np.zeros((2, 0)), np.array([4.0, 9.0]), np.zeros(0))
    assert assigned.tolist() == [-1, -1] and kinds.tolist() == ["bkg", "bkg"]


def test_many_predictions_in_one_image():
    # pycocotools 2.0.11's area() of a list fails past 255 masks; the breakdown must not.
    boxes = [(i % 60, 0, i % 60 + 4, 4) for i in range(300)]
    res = error_breakdown([_inst([A])], [_inst(boxes, np.linspace(1, 0.1, 300))])
    assert sum(v for k, v in res["counts"].items() if k != "missed") == 300


def test_max_dets_keeps_the_top_scoring():
    gt = _inst([A, C])
    pred = _inst([C, A], np.array([0.2, 0.9]))
    res = error_breakdown([gt], [pred], max_dets=1)
    assert res["found"][0].tolist() == [True, False]


def test_neighbourhood_of_touching_and_lone_objects():
    objs = gt_neighbourhood(_inst([A, B, C]))
    assert [o["touching"] for o in objs] == [True, True, False]
    assert [o["side"] for o in objs] == [10.0, 10.0, 10.0]
    assert objs[0]["area"] == 100.0
    assert objs[0]["nn_dist"] == pytest.approx(10.0)
    assert objs[2]["nn_dist"] == pytest.approx(np.hypot(45 - 15, 45 - 5))
    assert gt_neighbourhood(_inst([C]))[0]["nn_dist"] == float("inf")

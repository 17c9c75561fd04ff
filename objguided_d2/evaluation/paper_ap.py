"""The paper's AP metric (docs/method.md §7), pure numpy + pycocotools' RLE IoU.

AP@t for one class: pool the detections of all test images and sort them by score (descending;
ties keep image order, then the order inside the image: a stable sort). Inside each image, going
down the scores, a prediction matches the *still-unmatched* ground truth (GT) of highest IoU if
that IoU is > t (strict); otherwise it is a false positive (so a duplicate of an already matched
object is a FP). AP is the area under the precision-recall curve with the VOC2010 all-point rule
(monotone precision envelope, every recall step counted). APdec uses box IoU, APseg mask IoU.
The paper reports the mean over t in {0.50, 0.55, ..., 0.95}, and AP at 0.5 and 0.75.

Conventions (where the paper is silent):
- multi-class: AP is computed per class (a prediction can only match GT of its class) and then
  averaged over the classes that have at least one GT instance in the evaluated images;
  predictions of classes without GT are therefore ignored (as COCO does).
- a class (or a whole dataset) without GT has AP ``NaN`` (undefined, never a crash); with GT but
  no predictions AP is 0.
- all values are fractions in [0, 1] here; the evaluator reports percent.

Shape legend: N images, P predictions of one image, G GT instances of one image, D pooled
detections, T IoU thresholds. Boxes are absolute XYXY pixels (continuous: area = w * h, no +1).
Masks are pycocotools RLEs (dicts with ``size`` [H, W] and ``counts``) of the full image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
from pycocotools import mask as mask_util

__all__ = [
    "IOU_THRESHOLDS",
    "ImageInstances",
    "top_scoring",
    "voc_ap",
    "ap_from_tp",
    "match_assignment",
    "match_predictions",
    "box_iou",
    "mask_iou",
    "average_precision",
    "f1_operating_point",
    "paper_ap",
]

# t = 0.50:0.05:0.95 (rounded so 0.75 is exactly 0.75 and not 0.7500000000000002).
IOU_THRESHOLDS = np.round(np.arange(0.5, 0.951, 0.05), 2)


@dataclass
class ImageInstances:
    """The instances (GT or predictions) of one image, K of them.

    Attributes:
        classes: (K,) int, contiguous class ids.
        boxes: (K, 4) float, absolute XYXY; may be None when only masks are evaluated.
        masks: K pycocotools RLEs of the full image; may be None when only boxes are evaluated.
        scores: (K,) float confidence; predictions only (None for GT).
    """

    classes: np.ndarray
    boxes: Optional[np.ndarray] = None
    masks: Optional[List[dict]] = None
    scores: Optional[np.ndarray] = None

    def __post_init__(self):
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        k = len(self.classes)
        if self.boxes is not None:
            self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
            if len(self.boxes) != k:
                raise ValueError(f"ImageInstances: {len(self.boxes)} boxes but {k} classes")
        if self.masks is not None and len(self.masks) != k:
            raise ValueError(f"ImageInstances: {len(self.masks)} masks but {k} classes")
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if len(self.scores) != k:
                raise ValueError(f"ImageInstances: {len(self.scores)} scores but {k} classes")

    def __len__(self) -> int:
        return len(self.classes)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC2010 all-point AP: area under the monotone (right-to-left max) precision envelope.

    Args:
        recall: (D,) non-decreasing recall after each pooled detection.
        precision: (D,) precision after each pooled detection.
    Returns:
        AP in [0, 1] (0 for D = 0).
    """
    recall = np.asarray(recall, dtype=np.float64).reshape(-1)
    precision = np.asarray(precision, dtype=np.float64).reshape(-1)
    if recall.shape != precision.shape:
        raise ValueError(f"voc_ap: recall {recall.shape} and precision {precision.shape} differ")
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    # The envelope: precision at recall r is the best precision at any recall >= r.
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def ap_from_tp(tp: np.ndarray, num_gt: int) -> float:
    """AP of pooled detections already sorted by descending score.

    Args:
        tp: (D,) bool/0-1, 1 where the detection is a true positive.
        num_gt: number of GT instances (> 0).
    Returns:
        VOC2010 all-point AP in [0, 1].
    """
    if num_gt <= 0:
        raise ValueError(f"ap_from_tp: num_gt must be > 0, got {num_gt} (AP is undefined)")
    tp = np.asarray(tp, dtype=np.float64).reshape(-1)
    if tp.size == 0:
        return 0.0
    ctp = np.cumsum(tp)
    recall = ctp / num_gt
    precision = ctp / np.arange(1, tp.size + 1)
    return voc_ap(recall, precision)


def match_assignment(ious: np.ndarray, iou_threshold: float) -> np.ndarray:
    """The greedy matching of one image at one threshold: which GT each prediction took.

    Going down the rows (descending score), a prediction takes the still-unmatched GT of highest
    IoU if that IoU is > ``iou_threshold`` (strict); otherwise it is a false positive.

    Args:
        ious: (P, G) IoU of each prediction with each GT, rows sorted by descending score.
        iou_threshold: the threshold t.
    Returns:
        (P,) int, the GT index each prediction matched, -1 for a false positive.
    """
    ious = np.asarray(ious, dtype=np.float64)
    num_pred, num_gt = ious.shape
    assigned = np.full(num_pred, -1, dtype=np.int64)
    if num_pred == 0 or num_gt == 0:
        return assigned
    free = np.ones(num_gt, dtype=bool)
    for p in range(num_pred):
        row = np.where(free, ious[p], -1.0)
        g = int(np.argmax(row))
        if row[g] > iou_threshold:
            assigned[p] = g
            free[g] = False
            if not free.any():
                break
    return assigned


def match_predictions(ious: np.ndarray, iou_thresholds: Sequence[float]) -> np.ndarray:
    """Greedy matching (:func:`match_assignment`) of one image's predictions at each threshold.

    Args:
        ious: (P, G) IoU of each prediction with each GT, rows sorted by descending score.
        iou_thresholds: T thresholds.
    Returns:
        (T, P) bool, True where the prediction is a true positive at that threshold.
    """
    ious = np.asarray(ious, dtype=np.float64)
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    tp = np.zeros((len(thresholds), ious.shape[0]), dtype=bool)
    for ti, t in enumerate(thresholds):
        tp[ti] = match_assignment(ious, float(t)) >= 0
    return tp


def box_iou(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Pairwise IoU of XYXY boxes.

    Args:
        boxes1: (P, 4); boxes2: (G, 4), absolute XYXY.
    Returns:
        (P, G) IoU; 0 where the union is empty.
    """
    b1 = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    b2 = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    area1 = np.clip(b1[:, 2] - b1[:, 0], 0, None) * np.clip(b1[:, 3] - b1[:, 1], 0, None)
    area2 = np.clip(b2[:, 2] - b2[:, 0], 0, None) * np.clip(b2[:, 3] - b2[:, 1], 0, None)
    lt = np.maximum(b1[:, None, :2], b2[None, :, :2])
    rb = np.minimum(b1[:, None, 2:], b2[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[:, None] + area2[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def mask_iou(pred_rles: List[dict], gt_rles: List[dict]) -> np.ndarray:
    """Pairwise mask IoU computed on RLEs (pycocotools, never decodes the masks).

    Args:
        pred_rles: P RLEs; gt_rles: G RLEs, all of the same image size.
    Returns:
        (P, G) IoU (0 for empty masks).
    """
    if len(pred_rles) == 0 or len(gt_rles) == 0:
        return np.zeros((len(pred_rles), len(gt_rles)), dtype=np.float64)
    sizes = {tuple(r["size"]) for r in list(pred_rles) + list(gt_rles)}
    if len(sizes) != 1:
        raise ValueError(f"mask_iou: masks of one image have different sizes {sorted(sizes)}")
    ious = mask_util.iou(list(pred_rles), list(gt_rles), [0] * len(gt_rles))
    return np.asarray(ious, dtype=np.float64).reshape(len(pred_rles), len(gt_rles))


def _pooled_matches(ious_per_image, scores_per_image, thresholds):
    """Match each image's predictions greedily (:func:`match_predictions`) and pool them.

    Returns:
        scores (D,) in descending order, tp (T, D) in that order, and the number of GT.
    """
    if len(ious_per_image) != len(scores_per_image):
        raise ValueError(
            f"average_precision: {len(ious_per_image)} IoU matrices but "
            f"{len(scores_per_image)} score arrays"
        )
    num_gt = 0
    all_scores, all_tp = [np.zeros(0)], [np.zeros((len(thresholds), 0), dtype=bool)]
    for i, (ious, scores) in enumerate(zip(ious_per_image, scores_per_image)):
        ious = np.asarray(ious, dtype=np.float64)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if ious.ndim != 2 or ious.shape[0] != len(scores):
            raise ValueError(
                f"average_precision: image {i} has IoU matrix {ious.shape} "
                f"but {len(scores)} scores (expected (P, G) with P = #scores)"
            )
        num_gt += ious.shape[1]
        order = np.argsort(-scores, kind="stable")
        all_scores.append(scores[order])
        all_tp.append(match_predictions(ious[order], thresholds))
    scores = np.concatenate(all_scores)
    tp = np.concatenate(all_tp, axis=1)
    order = np.argsort(-scores, kind="stable")
    return scores[order], tp[:, order], num_gt


def average_precision(
    ious_per_image: Sequence[np.ndarray],
    scores_per_image: Sequence[np.ndarray],
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> np.ndarray:
    """Single-class AP at each threshold, detections pooled over images.

    Args:
        ious_per_image: N arrays (P_i, G_i), prediction-vs-GT IoU of image i (any row order).
        scores_per_image: N arrays (P_i,) of prediction scores.
        iou_thresholds: T thresholds.
    Returns:
        (T,) AP per threshold; all NaN when there is no GT at all.
    """
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    _, tp, num_gt = _pooled_matches(ious_per_image, scores_per_image, thresholds)
    return _ap_per_threshold(tp, num_gt)


def _ap_per_threshold(tp: np.ndarray, num_gt: int) -> np.ndarray:
    """(T,) AP from pooled (T, D) true positives in descending score order; NaN without GT."""
    if num_gt == 0:
        return np.full(len(tp), np.nan)
    return np.array([ap_from_tp(row, num_gt) for row in tp])


def f1_operating_point(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> Dict[str, float]:
    """The score cutoff of maximal F1: keeping the predictions with score >= ``score``.

    Args:
        scores: (D,) pooled prediction scores, in descending order.
        tp: (D,) 1 where the prediction is a true positive (at one IoU threshold).
        num_gt: number of GT instances.
    Returns:
        dict with ``score`` (NaN when no cutoff finds a true positive), ``F1``, ``precision``,
        ``recall`` (fractions; NaN when there is no GT).
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    tp = np.asarray(tp, dtype=np.float64).reshape(-1)
    if num_gt <= 0:
        return {"score": float("nan"), "F1": float("nan"), "precision": float("nan"), "recall": float("nan")}
    ctp = np.cumsum(tp)
    if len(tp) == 0 or ctp[-1] == 0:
        return {"score": float("nan"), "F1": 0.0, "precision": 0.0, "recall": 0.0}
    kept = np.arange(1, len(tp) + 1)
    # A cutoff keeps every prediction of equal score: only the last of a run of ties counts.
    last = np.ones(len(tp), dtype=bool)
    last[:-1] = scores[1:] != scores[:-1]
    f1 = np.where(last, 2 * ctp / (kept + num_gt), -1.0)
    k = int(np.argmax(f1))
    return {"score": float(scores[k]), "F1": float(f1[k]), "precision": float(ctp[k] / kept[k]),
            "recall": float(ctp[k] / num_gt)}


def top_scoring(pred: "ImageInstances", k: int) -> "ImageInstances":
    """The ``k`` highest-scoring predictions of an image (stable order among equal scores)."""
    keep = np.sort(np.argsort(-np.asarray(pred.scores), kind="stable")[: max(int(k), 0)])
    return ImageInstances(
        classes=pred.classes[keep],
        boxes=None if pred.boxes is None else pred.boxes[keep],
        masks=None if pred.masks is None else [pred.masks[j] for j in keep],
        scores=pred.scores[keep],
    )


def paper_ap(
    gts: Sequence[ImageInstances],
    preds: Sequence[ImageInstances],
    iou_type: str = "segm",
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    max_dets: Optional[int] = None,
) -> Dict:
    """The paper's AP over a dataset (APseg for ``"segm"``, APdec for ``"bbox"``).

    Args:
        gts: N ground truths, one per image (``scores`` unused).
        preds: N predictions of the same images, same order (``scores`` required).
        iou_type: ``"segm"`` (mask IoU on ``masks``) or ``"bbox"`` (box IoU on ``boxes``).
        iou_thresholds: T thresholds (default 0.50:0.05:0.95).
        max_dets: count only the ``max_dets`` highest-scoring predictions of each image (COCO's
            ``maxDets``; the evaluators pass ``TEST.DETECTIONS_PER_IMAGE``); None: all.
    Returns:
        dict with fractions in [0, 1]:
        ``"AP"`` mean of the curve over thresholds, ``"AP50"``/``"AP75"`` (NaN when 0.5/0.75 are
        not among the thresholds), ``"curve"`` (T,) class-averaged AP per threshold,
        ``"per_class"`` {class id: (T,) curve} for classes with GT, ``"iou_thresholds"`` (T,),
        ``"best_f1"``: :func:`f1_operating_point` at IoU 0.5 over all classes (the score cutoff
        where one-to-one F1 is highest: a method's own operating point, e.g. for drawing).
        Everything is NaN when the images hold no GT at all.
    """
    if iou_type not in ("segm", "bbox"):
        raise ValueError(f"paper_ap: iou_type must be 'segm' or 'bbox', got {iou_type!r}")
    if len(gts) != len(preds):
        raise ValueError(f"paper_ap: {len(gts)} GT images but {len(preds)} prediction images")
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    attr = "masks" if iou_type == "segm" else "boxes"

    if max_dets is not None:
        preds = [top_scoring(p, max_dets) if p.scores is not None and len(p) > max_dets else p for p in preds]
    # One IoU matrix per image (all classes), sliced per class below.
    ious_all = []
    for i, (gt, pred) in enumerate(zip(gts, preds)):
        for name, inst in (("GT", gt), ("prediction", pred)):
            if getattr(inst, attr) is None:
                raise ValueError(f"paper_ap({iou_type!r}): image {i} {name} has no {attr}")
        if pred.scores is None:
            raise ValueError(f"paper_ap: image {i} predictions have no scores")
        if iou_type == "segm":
            ious_all.append(mask_iou(pred.masks, gt.masks))
        else:
            ious_all.append(box_iou(pred.boxes, gt.boxes))

    gt_classes = np.unique(np.concatenate([g.classes for g in gts])) if gts else np.array([])
    per_class = {}
    pooled = []
    for c in gt_classes.tolist():
        ious_c, scores_c = [], []
        for gt, pred, ious in zip(gts, preds, ious_all):
            pm, gm = pred.classes == c, gt.classes == c
            ious_c.append(ious[np.ix_(pm, gm)])
            scores_c.append(pred.scores[pm])
        sc, tp, n = _pooled_matches(ious_c, scores_c, thresholds)
        per_class[int(c)] = _ap_per_threshold(tp, n)
        # The F1 operating point (IoU 0.5, every class pooled) from the same greedy matching; a
        # second matching only when 0.5 is not among the thresholds.
        at50 = np.nonzero(np.isclose(thresholds, 0.5))[0]
        tp50 = tp[at50[0]] if len(at50) else _pooled_matches(ious_c, scores_c, [0.5])[1][0]
        pooled.append((sc, tp50, n))

    if per_class:
        curve = np.mean(np.stack(list(per_class.values())), axis=0)
    else:
        curve = np.full(len(thresholds), np.nan)

    sc = np.concatenate([p[0] for p in pooled]) if pooled else np.zeros(0)
    tp = np.concatenate([p[1] for p in pooled]) if pooled else np.zeros(0)
    order = np.argsort(-sc, kind="stable")
    best_f1 = f1_operating_point(sc[order], tp[order], sum(p[2] for p in pooled))

    def _at(t: float) -> float:
        hit = np.nonzero(np.isclose(thresholds, t))[0]
        return float(curve[hit[0]]) if len(hit) else float("nan")

    return {
        "AP": float(np.mean(curve)) if len(curve) else float("nan"),
        "AP50": _at(0.5),
        "AP75": _at(0.75),
        "curve": curve,
        "per_class": per_class,
        "iou_thresholds": thresholds,
        "best_f1": best_f1,
    }

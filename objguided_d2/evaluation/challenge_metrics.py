"""Challenge metrics on instance label maps (docs/method.md §7), pure numpy.

A label map is an (H, W) non-negative integer array: 0 is background, every other value one
object (values need not be consecutive). Overlapping masks are turned into a label map with
:func:`masks_to_label_map` (highest score on top), since these metrics assume each pixel belongs
to at most one object.

Metrics (fractions in [0, 1] unless a count):
- Cell Tracking Challenge SEG: a GT object R is matched by the predicted object S with
  |R ∩ S| > 0.5 |R| (unique in a label map); J = |R ∩ S| / |R ∪ S|, or 0 without a match.
  SEG is the mean of J over *all GT objects of the dataset* (pooled, as the CTC does over frames);
  NaN when there is no GT object.
- "DET-like" detection scores (NOT the CTC DET, which is an AOGM graph-edit measure): a GT and a
  predicted object match when their mask IoU > 0.5 — one-to-one in label maps, since two objects
  of one label map cannot both cover more than half of a third. TP/FP/FN are pooled over the
  dataset; precision = TP/(TP+FP), recall = TP/(TP+FN), F1 = 2TP/(2TP+FP+FN), NaN when 0/0.
- Leaf Segmentation Challenge (per image, then mean over images):
  bestDice = min(BD(pred, gt), BD(gt, pred)), BD(La, Lb) = mean over objects a of La of
  max over objects b of Lb of Dice(a, b); BD of an empty La is 0 when Lb has objects (as the LSC
  reference code), and bestDice of two empty maps is 1.
  DiffFG = #pred objects - #gt objects (signed), absDiffFG = |DiffFG|.
  FgBgDice = Dice of the foreground unions (pred > 0 vs gt > 0); 1 when both are empty.

Shape legend: H, W image size; K instances; G GT objects, P predicted objects of one image.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

from objguided_d2.utils.label_map import paint_label_map

__all__ = [
    "masks_to_label_map",
    "contingency",
    "seg_jaccards",
    "ctc_seg",
    "det_like_counts",
    "best_dice",
    "symmetric_best_dice",
    "fg_bg_dice",
    "count_objects",
    "image_challenge_stats",
    "summarize_challenge_stats",
    "challenge_metrics",
]

MasksLike = Union[np.ndarray, Sequence[np.ndarray], Sequence[dict]]


def masks_to_label_map(
    masks: MasksLike,
    scores: Optional[Sequence[float]] = None,
    image_size: Optional[Tuple[int, int]] = None,
) -> np.ndarray:
    """Paint instance masks into one label map; instance k gets label k + 1.

    Masks are painted in ascending score order (a stable sort), so where masks overlap the pixel
    goes to the highest-scored one; without scores later masks win. An instance entirely covered
    by higher-scored ones disappears from the map.

    Args:
        masks: (K, H, W) bool array, or K (H, W) bool arrays, or K pycocotools RLEs.
        scores: (K,) scores, or None.
        image_size: (H, W); required only when K = 0.
    Returns:
        (H, W) int64 label map.
    """
    k = len(masks)
    if scores is not None and len(scores) != k:
        raise ValueError(f"masks_to_label_map: {k} masks but {len(scores)} scores")
    if k == 0:
        if image_size is None:
            raise ValueError("masks_to_label_map: no masks and no image_size given")
        return np.zeros(tuple(image_size), dtype=np.int64)
    first = masks[0]
    shape = tuple(first["size"]) if isinstance(first, dict) else np.shape(first)
    if image_size is not None and tuple(shape) != tuple(image_size):
        raise ValueError(f"masks_to_label_map: masks are {tuple(shape)}, expected {image_size}")
    order = np.arange(k) if scores is None else np.argsort(np.asarray(scores), kind="stable")
    # Painting in ascending order, later on top == the reverse order taking the free pixels.
    priority = order[::-1].tolist()
    try:
        label, _ = paint_label_map(masks, shape, priority=priority, labels=[i + 1 for i in priority])
    except ValueError as e:
        raise ValueError(f"masks_to_label_map: {e}") from None
    return label


def _check_pair(gt: np.ndarray, pred: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.ndim != 2 or gt.shape != pred.shape:
        raise ValueError(
            f"label maps must both be (H, W) of the same size, got gt {gt.shape}, pred {pred.shape}"
        )
    for name, lab in (("gt", gt), ("pred", pred)):
        if not np.issubdtype(lab.dtype, np.integer) and lab.dtype != bool:
            raise ValueError(f"{name} label map must be integer, got {lab.dtype}")
        if lab.size and lab.min() < 0:
            raise ValueError(f"{name} label map has negative labels (min {lab.min()})")
    return gt, pred


def _compact(label: np.ndarray) -> Tuple[int, np.ndarray]:
    """Number of objects and per-pixel index in [0, n] (0 = background)."""
    ids, inv = np.unique(label.reshape(-1), return_inverse=True)
    if ids.size and ids[0] == 0:
        return ids.size - 1, inv
    return ids.size, inv + 1


def contingency(gt: np.ndarray, pred: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel overlaps of the objects of two label maps.

    Args:
        gt, pred: (H, W) label maps.
    Returns:
        inter (G, P) |R_g ∩ S_p|, gt_area (G,), pred_area (P,); objects in ascending label order.
    """
    gt, pred = _check_pair(gt, pred)
    ng, gi = _compact(gt)
    npr, pi = _compact(pred)
    full = np.bincount(gi * (npr + 1) + pi, minlength=(ng + 1) * (npr + 1))
    full = full.reshape(ng + 1, npr + 1)
    return full[1:, 1:], full[1:, :].sum(axis=1), full[:, 1:].sum(axis=0)


def _iou(inter: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    union = a[:, None] + b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def seg_jaccards(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """CTC SEG's Jaccard of every GT object of one image.

    Returns:
        (G,) J per GT object (0 where no predicted object covers > half of it).
    """
    return _seg_jaccards(contingency(gt, pred))


def _seg_jaccards(cont) -> np.ndarray:
    inter, ga, pa = cont
    if inter.size == 0:
        return np.zeros(len(ga))
    jac = _iou(inter, ga, pa)
    matched = inter > 0.5 * ga[:, None]
    return np.where(matched, jac, 0.0).max(axis=1)


def ctc_seg(gts: Sequence[np.ndarray], preds: Sequence[np.ndarray]) -> float:
    """CTC SEG over a dataset: mean J over all GT objects of all images (NaN if none)."""
    if len(gts) != len(preds):
        raise ValueError(f"ctc_seg: {len(gts)} GT label maps but {len(preds)} predictions")
    js = [seg_jaccards(g, p) for g, p in zip(gts, preds)]
    js = np.concatenate(js) if js else np.zeros(0)
    return float(js.mean()) if js.size else float("nan")


def det_like_counts(
    gt: np.ndarray, pred: np.ndarray, iou_thresh: float = 0.5
) -> Tuple[int, int, int]:
    """(TP, FP, FN) of one image with one-to-one matching at mask IoU > ``iou_thresh``.

    For ``iou_thresh`` >= 0.5 the pairs above the threshold are one-to-one in label maps.
    """
    if iou_thresh < 0.5:
        raise ValueError(
            f"det_like_counts: iou_thresh must be >= 0.5 (unique matches), got {iou_thresh}"
        )
    cont = contingency(gt, pred)
    tp = _det_tp(cont, iou_thresh)
    return tp, len(cont[2]) - tp, len(cont[1]) - tp


def _det_tp(cont, iou_thresh: float) -> int:
    inter, ga, pa = cont
    return int((_iou(inter, ga, pa) > iou_thresh).sum()) if inter.size else 0


def count_objects(label: np.ndarray) -> int:
    """Number of distinct non-zero labels."""
    return _compact(np.asarray(label))[0]


def best_dice(la: np.ndarray, lb: np.ndarray) -> float:
    """BD(La, Lb): mean over objects of ``la`` of the best Dice with an object of ``lb``.

    0 when exactly one of the maps has no object, 1 when neither has.
    """
    return _best_dice(*contingency(la, lb))


def _best_dice(inter: np.ndarray, aa: np.ndarray, ab: np.ndarray) -> float:
    if len(aa) == 0:
        return 1.0 if len(ab) == 0 else 0.0
    if len(ab) == 0:
        return 0.0
    dice = 2.0 * inter / (aa[:, None] + ab[None, :])
    return float(dice.max(axis=1).mean())


def symmetric_best_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """LSC bestDice = min(BD(pred, gt), BD(gt, pred))."""
    return min(best_dice(pred, gt), best_dice(gt, pred))


def fg_bg_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of the foregrounds (label > 0); 1 when both are empty."""
    gt, pred = _check_pair(gt, pred)
    p, g = pred > 0, gt > 0
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else float(2.0 * np.logical_and(p, g).sum() / denom)


def image_challenge_stats(gt: np.ndarray, pred: np.ndarray) -> Dict[str, Union[float, np.ndarray]]:
    """Everything :func:`summarize_challenge_stats` needs from one image (small, picklable).

    Args:
        gt, pred: (H, W) label maps of one image.
    """
    cont = contingency(gt, pred)
    inter, ga, pa = cont
    tp = _det_tp(cont, 0.5)
    return {
        "seg_jaccards": _seg_jaccards(cont),
        "tp": tp,
        "fp": len(pa) - tp,
        "fn": len(ga) - tp,
        "bestDice": min(_best_dice(inter, ga, pa), _best_dice(inter.T, pa, ga)),
        "DiffFG": len(pa) - len(ga),
        "FgBgDice": fg_bg_dice(pred, gt),
    }


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def summarize_challenge_stats(stats: Sequence[Dict]) -> Dict[str, float]:
    """Dataset metrics from per-image stats (see the module docstring for the definitions).

    Returns:
        dict: SEG, DET_precision, DET_recall, DET_F1, bestDice, FgBgDice (fractions),
        DiffFG, absDiffFG (object counts, mean over images). NaN when undefined (no images, ...).
    """
    js = [s["seg_jaccards"] for s in stats]
    js = np.concatenate(js) if js else np.zeros(0)
    tp = sum(s["tp"] for s in stats)
    fp = sum(s["fp"] for s in stats)
    fn = sum(s["fn"] for s in stats)
    diff = np.array([s["DiffFG"] for s in stats], dtype=np.float64)

    def _mean(key):
        return float(np.mean([s[key] for s in stats])) if stats else float("nan")

    return {
        "SEG": float(js.mean()) if js.size else float("nan"),
        "DET_precision": _ratio(tp, tp + fp),
        "DET_recall": _ratio(tp, tp + fn),
        "DET_F1": _ratio(2 * tp, 2 * tp + fp + fn),
        "bestDice": _mean("bestDice"),
        "DiffFG": float(diff.mean()) if diff.size else float("nan"),
        "absDiffFG": float(np.abs(diff).mean()) if diff.size else float("nan"),
        "FgBgDice": _mean("FgBgDice"),
    }


def challenge_metrics(gts: Sequence[np.ndarray], preds: Sequence[np.ndarray]) -> Dict[str, float]:
    """All challenge metrics of a dataset given N GT and N predicted (H_i, W_i) label maps."""
    if len(gts) != len(preds):
        raise ValueError(
            f"challenge_metrics: {len(gts)} GT label maps but {len(preds)} predictions"
        )
    return summarize_challenge_stats([image_challenge_stats(g, p) for g, p in zip(gts, preds)])

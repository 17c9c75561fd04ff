"""Where a method's AP goes: its false positives and misses at IoU 0.5, by kind (TIDE-style).

After the same greedy matching as the paper's AP (:func:`.paper_ap.match_assignment`, per class,
IoU > 0.5), every unmatched prediction is given one kind, from its IoU with the image's ground
truth (GT) of its class:

- ``dupe``: IoU > 0.5 with a GT that a higher-scoring prediction already took (a second peak on
  one object);
- ``merge``: no IoU > 0.5, but it covers at least half of two or more GT objects (one mask over
  touching objects);
- ``part``: no IoU > 0.5, and at least 80 % of it lies inside one GT object (a fragment);
- ``loc``: any other prediction with IoU >= 0.1 with some GT (wrong extent);
- ``bkg``: IoU < 0.1 with every GT.

A GT no prediction took is ``missed``. As in TIDE (Bolya et al., ECCV 2020), the cost of a kind is
``dAP``: AP@0.5 with that error fixed minus AP@0.5, the fix being to drop those false positives
(the matching of the others does not change: a false positive takes no GT), or for ``missed`` to
stop counting the missed GT. The costs overlap, so they need not add up to 1 - AP.

Per GT object it also gives the neighbourhood the centre-point detector sees: box side, the
distance to the nearest other object's box centre and whether the object touches another one
(:func:`gt_neighbourhood`), so that recall can be read by size and by crowding.

Shapes: P predictions and G GT of one image; D pooled predictions.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import cv2
import numpy as np
from pycocotools import mask as mask_util

from .paper_ap import ImageInstances, ap_from_tp, f1_operating_point, mask_iou, match_assignment, top_scoring

__all__ = ["ERROR_KINDS", "classify_predictions", "error_breakdown", "gt_neighbourhood"]

ERROR_KINDS = ("dupe", "merge", "part", "loc", "bkg")
_IOU = 0.5  # the matching threshold (AP@0.5)
_BKG = 0.1  # below this IoU with every GT a prediction is background (TIDE's t_b)
_COVER = 0.5  # a merge covers at least this share of each of two GT objects
_INSIDE = 0.8  # a part has at least this share of its own pixels inside one GT object


def _areas(rles: List[dict]) -> np.ndarray:
    """(K,) pixel areas of K RLEs, one call each: pycocotools 2.0.11's ``area`` of a list of more
    than 255 masks fails (an index kept in uint8)."""
    return np.asarray([mask_util.area(r) for r in rles], dtype=np.float64)


def _box_area(boxes: np.ndarray) -> np.ndarray:
    """(K,) areas of (K, 4) XYXY boxes (0 for degenerate ones)."""
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def classify_predictions(ious: np.ndarray, pred_areas: np.ndarray, gt_areas: np.ndarray) -> tuple:
    """Match one image's predictions of one class and give each unmatched one its kind.

    Args:
        ious: (P, G) mask IoU, rows in descending score order.
        pred_areas: (P,) pixel areas of the predicted masks; gt_areas: (G,) of the GT masks.
    Returns:
        ``(assigned, kinds)``: (P,) int GT index per prediction (-1 unmatched) and (P,) str,
        ``"tp"`` or one of :data:`ERROR_KINDS`.
    """
    ious = np.asarray(ious, dtype=np.float64)
    num_pred, num_gt = ious.shape
    assigned = match_assignment(ious, _IOU)
    kinds = np.full(num_pred, "tp", dtype=object)
    if num_gt == 0:
        kinds[:] = "bkg"
        return assigned, kinds
    pa = np.asarray(pred_areas, dtype=np.float64).reshape(-1, 1)
    ga = np.asarray(gt_areas, dtype=np.float64).reshape(1, -1)
    # |A n B| from IoU = I / (|A| + |B| - I).
    inter = ious * (pa + ga) / (1.0 + ious)
    cover = inter / np.maximum(ga, 1.0)  # share of each GT the prediction covers
    inside = inter / np.maximum(pa, 1.0)  # share of the prediction inside each GT
    for p in np.nonzero(assigned < 0)[0]:
        best = ious[p].max()
        if best > _IOU:
            kinds[p] = "dupe"
        elif (cover[p] >= _COVER).sum() >= 2:
            kinds[p] = "merge"
        elif inside[p].max() >= _INSIDE:
            kinds[p] = "part"
        elif best >= _BKG:
            kinds[p] = "loc"
        else:
            kinds[p] = "bkg"
    return assigned, kinds


def error_breakdown(gts: Sequence[ImageInstances], preds: Sequence[ImageInstances], max_dets=None) -> Dict:
    """The false positives and misses of a method over a dataset, with their cost in AP@0.5.

    Args:
        gts: N ground truths (``masks`` required); preds: N predictions of the same images
            (``masks`` and ``scores``).
        max_dets: count only the ``max_dets`` highest-scoring predictions of each image, as the
            paper's AP does with ``TEST.DETECTIONS_PER_IMAGE``; None: all.
    Returns:
        dict of fractions / counts:
        ``AP50`` (class mean, as :func:`.paper_ap.paper_ap`), ``dAP`` {kind or "missed": class-mean
        AP@0.5 gain when fixed}, ``counts`` {kind: false positives of that kind, "tp", "missed"}
        over all predictions, ``cutoff`` (the best-F1 score cutoff, every class pooled) and
        ``counts_at_cutoff`` (the same counts among predictions with score >= cutoff; "missed"
        there counts the GT not found above it), ``found`` and ``found_at_cutoff``: N (G_i,) bool
        arrays, per GT object whether some prediction (above the cutoff) took it; ``best_iou``
        (N (G_i,) arrays: the object's best mask IoU with any prediction of its class, 0 without
        one) and ``box_scale`` (the box of that prediction against the GT box, sqrt of the area
        ratio: < 1 when it is too small; NaN where predictions have no boxes).
    """
    if len(gts) != len(preds):
        raise ValueError(f"error_breakdown: {len(gts)} GT images but {len(preds)} prediction images")
    if max_dets is not None:
        preds = [top_scoring(p, max_dets) if len(p) > max_dets else p for p in preds]
    classes = np.unique(np.concatenate([g.classes for g in gts])) if gts else np.zeros(0)
    # Pooled over images, per class: score, matched GT (image, index) and kind of every prediction.
    per_class = {}
    # Per GT object: its best mask IoU with any prediction of its class, and that prediction's box
    # size relative to the GT box (sqrt of the area ratio; NaN without predicted boxes).
    best_iou = [np.zeros(len(g)) for g in gts]
    box_scale = [np.full(len(g), np.nan) for g in gts]
    for c in classes.tolist():
        scores, kinds, owners, num_gt = [], [], [], 0
        for i, (gt, pred) in enumerate(zip(gts, preds)):
            gm, pm = np.nonzero(gt.classes == c)[0], np.nonzero(pred.classes == c)[0]
            num_gt += len(gm)
            order = pm[np.argsort(-pred.scores[pm], kind="stable")]
            p_masks = [pred.masks[j] for j in order]
            g_masks = [gt.masks[j] for j in gm]
            ious = mask_iou(p_masks, g_masks)
            areas_p, areas_g = _areas(p_masks), _areas(g_masks)
            assigned, k = classify_predictions(ious, areas_p, areas_g)
            if len(order) and len(gm):
                best = ious.argmax(axis=0)
                best_iou[i][gm] = ious[best, np.arange(len(gm))]
                if pred.boxes is not None and gt.boxes is not None:
                    pb, gb = pred.boxes[order[best]], gt.boxes[gm]
                    box_scale[i][gm] = np.sqrt(_box_area(pb) / np.maximum(_box_area(gb), 1e-9))
            scores.append(pred.scores[order])
            kinds.append(k)
            owners.extend((i, int(gm[a])) if a >= 0 else None for a in assigned)
        scores = np.concatenate(scores) if scores else np.zeros(0)
        kinds = np.concatenate(kinds) if kinds else np.zeros(0, dtype=object)
        order = np.argsort(-scores, kind="stable")
        per_class[c] = (scores[order], kinds[order], [owners[j] for j in order], num_gt)

    found = [np.zeros(len(g), dtype=bool) for g in gts]
    all_scores, all_tp, total_gt = [], [], 0
    for scores, kinds, owners, num_gt in per_class.values():
        for o in owners:
            if o is not None:
                found[o[0]][o[1]] = True
        all_scores.append(scores)
        all_tp.append(kinds == "tp")
        total_gt += num_gt
    sc = np.concatenate(all_scores) if all_scores else np.zeros(0)
    tp = np.concatenate(all_tp) if all_tp else np.zeros(0, dtype=bool)
    order = np.argsort(-sc, kind="stable")
    cutoff = f1_operating_point(sc[order], tp[order], total_gt)["score"]

    ap, dap = [], {k: [] for k in ERROR_KINDS + ("missed",)}
    counts = {k: 0 for k in ("tp",) + ERROR_KINDS + ("missed",)}
    at_cut = dict(counts)
    found_at_cutoff = [np.zeros(len(g), dtype=bool) for g in gts]
    for scores, kinds, owners, num_gt in per_class.values():
        is_tp = kinds == "tp"
        base = ap_from_tp(is_tp, num_gt)
        ap.append(base)
        for k in ERROR_KINDS:
            dap[k].append(ap_from_tp(is_tp[kinds != k], num_gt) - base)
        n_found = int(is_tp.sum())
        dap["missed"].append(ap_from_tp(is_tp, n_found) - base if n_found else 0.0)
        keep = scores >= cutoff if np.isfinite(cutoff) else np.zeros(len(scores), dtype=bool)
        for k in ("tp",) + ERROR_KINDS:
            counts[k] += int((kinds == k).sum())
            at_cut[k] += int((kinds[keep] == k).sum())
        counts["missed"] += num_gt - n_found
        at_cut["missed"] += num_gt - int(is_tp[keep].sum())
        for o, kp in zip(owners, keep):
            if o is not None and kp:
                found_at_cutoff[o[0]][o[1]] = True
    nan = float("nan")
    return {
        "AP50": float(np.mean(ap)) if ap else nan,
        "dAP": {k: float(np.mean(v)) if v else nan for k, v in dap.items()},
        "counts": counts,
        "cutoff": cutoff,
        "counts_at_cutoff": at_cut,
        "found": found,
        "found_at_cutoff": found_at_cutoff,
        "best_iou": best_iou,
        "box_scale": box_scale,
    }


def gt_neighbourhood(gt: ImageInstances) -> List[Dict[str, float]]:
    """Per GT object of one image: ``side`` (max box side, px), ``area`` (px), ``nn_dist`` (px from
    its box centre to the nearest other object's; inf when alone) and ``touching`` (its mask,
    dilated by one pixel, overlaps another object's mask)."""
    boxes = np.asarray(gt.boxes, dtype=np.float64).reshape(-1, 4)
    g = len(boxes)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1) if g else np.zeros((0, 0))
    np.fill_diagonal(d, np.inf)
    masks = mask_util.decode(list(gt.masks)) if g else None  # (H, W, G)
    kernel = np.ones((3, 3), np.uint8)
    if g:
        # Pixels covered per object count; another object is near where the total exceeds its own.
        total = masks.astype(np.int32).sum(axis=2)
    out = []
    for j in range(g):
        m = masks[:, :, j]
        near = cv2.dilate(m, kernel).astype(bool)
        others = total - m.astype(np.int32)
        out.append({
            "side": float(max(boxes[j, 2] - boxes[j, 0], boxes[j, 3] - boxes[j, 1])),
            "area": float(m.sum()),
            "nn_dist": float(d[j].min()) if g > 1 else float("inf"),
            "touching": bool((others[near] > 0).any()),
        })
    return out

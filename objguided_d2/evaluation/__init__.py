"""Evaluation: the paper's AP (APseg / APdec), CTC SEG / DET-like F1, LSC bestDice / DiffFG /
FgBgDice, and Detectron2 evaluators that report them (docs/method.md §7)."""

from .challenge_metrics import (
    best_dice,
    challenge_metrics,
    contingency,
    count_objects,
    ctc_seg,
    det_like_counts,
    fg_bg_dice,
    image_challenge_stats,
    masks_to_label_map,
    seg_jaccards,
    summarize_challenge_stats,
    symmetric_best_dice,
)
from .evaluator import PaperMetricsEvaluator, build_evaluators, gt_instances_from_dict
from .paper_ap import (
    IOU_THRESHOLDS,
    ImageInstances,
    ap_from_tp,
    average_precision,
    box_iou,
    mask_iou,
    match_predictions,
    paper_ap,
    voc_ap,
)

__all__ = [
    "IOU_THRESHOLDS",
    "ImageInstances",
    "PaperMetricsEvaluator",
    "ap_from_tp",
    "average_precision",
    "best_dice",
    "box_iou",
    "build_evaluators",
    "challenge_metrics",
    "contingency",
    "count_objects",
    "ctc_seg",
    "det_like_counts",
    "fg_bg_dice",
    "gt_instances_from_dict",
    "image_challenge_stats",
    "mask_iou",
    "masks_to_label_map",
    "match_predictions",
    "paper_ap",
    "seg_jaccards",
    "summarize_challenge_stats",
    "symmetric_best_dice",
    "voc_ap",
]

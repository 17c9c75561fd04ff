"""Detectron2 evaluator for the paper's AP and the challenge metrics (docs/method.md §7).

:class:`PaperMetricsEvaluator` keeps each image's predictions as RLEs (never dense masks), gathers
them to the main process like Detectron2's evaluators, reads the ground truth from
``DatasetCatalog.get(dataset_name)`` and reports, under ``results["paper"]``:

- ``APseg``/``APdec`` (mean over IoU 0.50:0.05:0.95), ``APseg50``/``APseg75``/``APdec50``/
  ``APdec75`` — the paper's AP (:mod:`.paper_ap`), percent (0-100) like Detectron2. APdec scores
  the box of each final (thresholded, pasted) mask, as the authors' evaluation does;
  ``APdec_det``/``APdec_det50``/``APdec_det75`` score the detector's own ``pred_boxes`` (for ours
  the CenterNet box, for the baselines the box head's);
  ``APseg-<class>`` per class when the dataset has more than one class;
- ``SEG``, ``DET_precision``, ``DET_recall``, ``DET_F1`` (the "DET-like" F1, not CTC DET),
  ``bestDice``, ``FgBgDice`` — percent; ``DiffFG``, ``absDiffFG`` — object counts (mean per
  image), not scaled (:mod:`.challenge_metrics`);
- ``F1_best`` (percent) and ``F1_best_score``: the highest one-to-one F1 at mask IoU 0.5 over
  all score cutoffs, and the cutoff that gives it (keep predictions with score >= it): each
  method's own operating point, which ``tools/compare.py`` draws its masks at (the scores of a
  centre heatmap and of a box classifier are not on one scale).

The whole dataset is evaluated, like ``COCOEvaluator``: the GT of an image the model was never
run on counts as missed. Undefined values (no GT at all) are NaN, written as ``null`` in
``paper_metrics.json``.

Ground truth: ``annotations`` with ``bbox``/``bbox_mode`` (derived from the mask when missing),
``segmentation`` as polygons, (un)compressed RLE or an (H, W) bool array, and ``category_id``
(contiguous after ``register_coco_instances``). ``iscrowd`` annotations are dropped from the GT
(a prediction on one is a FP); the paper's datasets have none.

The challenge metrics are class-agnostic and work on label maps: GT masks are painted in
annotation order (later on top), predicted masks with score >= ``score_thresh`` in ascending
score order (highest score on top). AP uses every prediction.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from pycocotools import mask as mask_util

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from detectron2.structures import BoxMode
from detectron2.utils import comm
from detectron2.utils.logger import create_small_table

from objguided_d2.utils.io import write_json

from .challenge_metrics import image_challenge_stats, masks_to_label_map, summarize_challenge_stats
from .coco_eval import ObjGuidedCOCOEvaluator
from .paper_ap import IOU_THRESHOLDS, ImageInstances, paper_ap, top_scoring

__all__ = ["PaperMetricsEvaluator", "build_evaluators", "gt_instances_from_dict", "max_dets_per_image"]

logger = logging.getLogger(__name__)

# Results in [0, 1] that are reported in percent; DiffFG / absDiffFG are counts.
_FRACTION_KEYS = ("SEG", "DET_precision", "DET_recall", "DET_F1", "bestDice", "FgBgDice")


def _segmentation_to_rle(segm, height: int, width: int, where: str) -> dict:
    """One annotation's ``segmentation`` -> compressed RLE of the (height, width) image."""
    if isinstance(segm, list):
        polys = [np.asarray(p, dtype=np.float64).reshape(-1).tolist() for p in segm]
        if not polys or any(len(p) < 6 or len(p) % 2 for p in polys):
            raise ValueError(
                f"{where}: polygon segmentation must be a non-empty list of [x0, y0, x1, y1, ...] "
                f"with >= 3 points each"
            )
        return mask_util.merge(mask_util.frPyObjects(polys, height, width))
    if isinstance(segm, dict):
        if "counts" not in segm or "size" not in segm:
            raise ValueError(
                f"{where}: RLE segmentation needs 'counts' and 'size', got {list(segm)}"
            )
        if list(segm["size"]) != [height, width]:
            raise ValueError(f"{where}: RLE size {segm['size']} != image size {[height, width]}")
        if isinstance(segm["counts"], list):  # uncompressed RLE
            return mask_util.frPyObjects(segm, height, width)
        counts = segm["counts"]
        return {
            "size": [height, width],
            "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
        }
    if isinstance(segm, np.ndarray):
        if segm.shape != (height, width):
            raise ValueError(f"{where}: mask of shape {segm.shape} != image size {(height, width)}")
        return mask_util.encode(np.asfortranarray(segm.astype(np.uint8)))
    raise ValueError(
        f"{where}: segmentation must be polygons (list), RLE (dict) or an (H, W) array, "
        f"got {type(segm).__name__}"
    )


def gt_instances_from_dict(record: Dict) -> ImageInstances:
    """Ground truth of one Detectron2 dataset dict as :class:`ImageInstances` (crowds dropped).

    Returns:
        ImageInstances with classes (G,), boxes (G, 4) XYXY_ABS and G compressed RLEs.
    """
    name = record.get("file_name", record.get("image_id", "?"))
    for key in ("height", "width"):
        if key not in record:
            raise ValueError(f"dataset dict of {name}: missing '{key}' (needed for the GT masks)")
    h, w = int(record["height"]), int(record["width"])
    classes, boxes, rles = [], [], []
    for j, ann in enumerate(record.get("annotations", [])):
        if ann.get("iscrowd", 0):
            continue
        where = f"dataset dict of {name}, annotation {j}"
        if "segmentation" not in ann:
            raise ValueError(f"{where}: missing 'segmentation' (the paper's metrics need masks)")
        if "category_id" not in ann:
            raise ValueError(f"{where}: missing 'category_id'")
        rle = _segmentation_to_rle(ann["segmentation"], h, w, where)
        if "bbox" in ann:
            mode = ann.get("bbox_mode", BoxMode.XYWH_ABS)
            box = BoxMode.convert(list(ann["bbox"]), mode, BoxMode.XYXY_ABS)
        else:
            x, y, bw, bh = mask_util.toBbox(rle).tolist()
            box = [x, y, x + bw, y + bh]
        classes.append(int(ann["category_id"]))
        boxes.append(box)
        rles.append(rle)
    return ImageInstances(
        classes=np.asarray(classes, dtype=np.int64),
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        masks=rles,
    )


class PaperMetricsEvaluator(DatasetEvaluator):
    """The paper's APseg/APdec and the CTC / LSC challenge metrics for one registered dataset."""

    def __init__(
        self,
        dataset_name: str,
        output_dir: Optional[str] = None,
        *,
        mask_threshold: float = 0.5,
        score_thresh: float = 0.0,
        max_dets: Optional[int] = None,
        distributed: bool = True,
    ):
        """
        Args:
            dataset_name: a name registered in ``DatasetCatalog`` (Detectron2 dicts with masks).
            output_dir: where ``paper_metrics.json`` goes (None: write nothing).
            mask_threshold: threshold of ``pred_masks`` when the model returns probabilities
                (``>=`` like Detectron2's paste); bool masks are used as they are.
            score_thresh: predictions below this score are left out of the challenge metrics'
                label maps (AP always uses all predictions); 0 keeps what the model returns.
            max_dets: only the ``max_dets`` highest-scoring predictions of an image count, in
                AP and in the challenge metrics (COCO's ``maxDets``; :func:`build_evaluators`
                passes ``TEST.DETECTIONS_PER_IMAGE``); None: all.
            distributed: gather predictions from all workers and compute on the main process.
        """
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._mask_threshold = float(mask_threshold)
        self._score_thresh = float(score_thresh)
        self._max_dets = None if max_dets is None else int(max_dets)
        self._distributed = distributed
        self._metadata = MetadataCatalog.get(dataset_name)
        self._predictions: List[Dict] = []

    def reset(self):
        self._predictions = []

    def process(self, inputs, outputs):
        """Keep each image's predictions compactly: boxes, scores, classes and mask RLEs.

        Args:
            inputs: the model's inputs (dicts with ``image_id``; ``height``/``width`` optional).
            outputs: the model's outputs (dicts with ``instances``: ``pred_boxes``, ``scores``,
                ``pred_classes``, ``pred_masks`` (R, H, W) at the original image size).
        """
        for inp, out in zip(inputs, outputs):
            if "image_id" not in inp:
                raise ValueError(
                    f"{type(self).__name__}: model input has no 'image_id' ({list(inp)})"
                )
            if "instances" not in out:
                raise ValueError(
                    f"{type(self).__name__}: model output has no 'instances' ({list(out)})"
                )
            inst = out["instances"].to(torch.device("cpu"))
            for field in ("pred_boxes", "scores", "pred_classes", "pred_masks"):
                if not inst.has(field):
                    raise ValueError(
                        f"{type(self).__name__}: instances of image {inp['image_id']} have no "
                        f"'{field}' (fields: {list(inst.get_fields())})"
                    )
            masks = inst.pred_masks
            if masks.dtype != torch.bool:
                masks = masks >= self._mask_threshold
            masks = masks.numpy()
            image_size = tuple(int(s) for s in inst.image_size)
            if masks.ndim != 3 or (len(masks) and masks.shape[1:] != image_size):
                raise ValueError(
                    f"{type(self).__name__}: pred_masks of image {inp['image_id']} have shape "
                    f"{tuple(masks.shape)}, expected (R, {image_size[0]}, {image_size[1]})"
                )
            rles = (
                mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
                if len(masks)
                else []
            )
            mask_boxes = np.asarray(mask_util.toBbox(rles), dtype=np.float64).reshape(-1, 4) if len(masks) else np.zeros((0, 4))
            mask_boxes[:, 2:] += mask_boxes[:, :2]  # XYWH -> XYXY; an empty mask gives a zero box
            self._predictions.append(
                {
                    "image_id": inp["image_id"],
                    "image_size": image_size,
                    "boxes": inst.pred_boxes.tensor.numpy().astype(np.float64),
                    "mask_boxes": mask_boxes,
                    "scores": inst.scores.numpy().astype(np.float64),
                    "classes": inst.pred_classes.numpy().astype(np.int64),
                    "masks": list(rles),
                }
            )

    def evaluate(self):
        if self._distributed:
            comm.synchronize()
            predictions = comm.gather(self._predictions, dst=0)
            predictions = list(itertools.chain(*predictions))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if len(predictions) == 0:
            logger.warning(f"[{type(self).__name__}] Did not receive valid predictions.")
            return {}
        metrics, curves = self._compute(predictions)
        if self._output_dir:
            # NaN (undefined, e.g. AP without ground truth) is written as null.
            write_json(os.path.join(self._output_dir, "paper_metrics.json"),
                       {"dataset": self._dataset_name, "metrics": metrics, **curves}, indent=2, overwrite=True)
        ap_keys = [k for k in metrics if k.startswith("AP") and "-" not in k]
        logger.info(
            f"Paper AP (percent) on {self._dataset_name}:\n"
            + create_small_table({k: metrics[k] for k in ap_keys})
        )
        logger.info(
            f"Challenge metrics on {self._dataset_name} (percent; DiffFG/absDiffFG are counts):\n"
            + create_small_table({k: v for k, v in metrics.items() if not k.startswith("AP")})
        )
        return OrderedDict({"paper": metrics})

    def _load_gt(self) -> Dict:
        records = DatasetCatalog.get(self._dataset_name)
        gt = OrderedDict()
        for r in records:
            if "image_id" not in r:
                raise ValueError(
                    f"dataset '{self._dataset_name}': a dict has no 'image_id' "
                    f"({r.get('file_name')})"
                )
            gt[r["image_id"]] = (gt_instances_from_dict(r), (int(r["height"]), int(r["width"])))
        return gt

    def _compute(self, predictions: List[Dict]) -> Tuple[Dict[str, float], Dict]:
        gt = self._load_gt()
        by_id = {}
        for p in predictions:
            if p["image_id"] not in gt:
                raise ValueError(
                    f"{type(self).__name__}: prediction for image_id {p['image_id']!r}, which "
                    f"is not in dataset '{self._dataset_name}'"
                )
            by_id[p["image_id"]] = p  # an image seen twice (padded sampler) counts once
        gts, preds, preds_mask_box, stats = [], [], [], []
        for image_id, (g, size) in gt.items():
            p = by_id.get(image_id)
            if p is not None and tuple(p["image_size"]) != size:
                raise ValueError(
                    f"{type(self).__name__}: predictions of image_id {image_id!r} are "
                    f"{p['image_size']} but the dataset says (height, width) = {size}"
                )
            if p is None:
                pred = ImageInstances(
                    classes=np.zeros(0), boxes=np.zeros((0, 4)), masks=[], scores=np.zeros(0)
                )
                mask_box = pred
            else:
                pred = ImageInstances(p["classes"], p["boxes"], p["masks"], p["scores"])
                mask_box = ImageInstances(p["classes"], p["mask_boxes"], None, p["scores"])
                if self._max_dets is not None and len(pred) > self._max_dets:
                    # The same top predictions for every metric (same scores: same selection).
                    pred = top_scoring(pred, self._max_dets)
                    mask_box = top_scoring(mask_box, self._max_dets)
            gts.append(g)
            preds.append(pred)
            preds_mask_box.append(mask_box)
            keep = pred.scores >= self._score_thresh
            pred_label = masks_to_label_map(
                [m for m, k in zip(pred.masks, keep) if k], pred.scores[keep], image_size=size
            )
            gt_label = masks_to_label_map(g.masks, None, image_size=size)
            stats.append(image_challenge_stats(gt_label, pred_label))

        seg = paper_ap(gts, preds, "segm", IOU_THRESHOLDS)
        dec = paper_ap(gts, preds_mask_box, "bbox", IOU_THRESHOLDS)
        dec_det = paper_ap(gts, preds, "bbox", IOU_THRESHOLDS)
        metrics: Dict[str, float] = OrderedDict()
        for prefix, res in (("APseg", seg), ("APdec", dec), ("APdec_det", dec_det)):
            metrics[prefix] = 100.0 * res["AP"]
            metrics[prefix + "50"] = 100.0 * res["AP50"]
            metrics[prefix + "75"] = 100.0 * res["AP75"]
        class_names = getattr(self._metadata, "thing_classes", None)
        if len(seg["per_class"]) > 1:
            for c, curve in seg["per_class"].items():
                name = class_names[c] if class_names and 0 <= c < len(class_names) else str(c)
                metrics[f"APseg-{name}"] = 100.0 * float(np.mean(curve))
        for k, v in summarize_challenge_stats(stats).items():
            metrics[k] = 100.0 * v if k in _FRACTION_KEYS else v
        metrics["F1_best"] = 100.0 * seg["best_f1"]["F1"]
        metrics["F1_best_score"] = seg["best_f1"]["score"]
        curves = {
            "iou_thresholds": IOU_THRESHOLDS.tolist(),
            "APseg_curve": (100.0 * seg["curve"]).tolist(),
            "APdec_curve": (100.0 * dec["curve"]).tolist(),
            "APdec_det_curve": (100.0 * dec_det["curve"]).tolist(),
            "APseg_curve_per_class": {
                str(c): (100.0 * v).tolist() for c, v in seg["per_class"].items()
            },
            "APdec_curve_per_class": {
                str(c): (100.0 * v).tolist() for c, v in dec["per_class"].items()
            },
            "units": "percent, except DiffFG/absDiffFG (objects per image)",
        }
        return metrics, curves


def max_dets_per_image(cfg) -> int:
    """COCO's ``maxDets`` for every evaluator: ``TEST.DETECTIONS_PER_IMAGE``, the most detections
    the model may return per image (the paper's images hold hundreds of objects; COCO's default
    100 would clip AP). ``<= 0`` means "all" to ObjGuidedRCNN, which then returns at most
    ``MODEL.OBJGUIDED.TOPK`` (its proposals)."""
    n = int(cfg.TEST.DETECTIONS_PER_IMAGE)
    if n > 0:
        return n
    og = cfg.MODEL.get("OBJGUIDED", None)
    if og is None:
        raise ValueError(f"TEST.DETECTIONS_PER_IMAGE {n}: expected a positive number")
    return int(og.TOPK)


def build_evaluators(cfg, dataset_name: str, output_dir: Optional[str] = None) -> DatasetEvaluators:
    """COCO bbox+segm AP (faster-coco-eval when installed, else pycocotools; no Detectron2
    compiled ops; ``maxDets`` = :func:`max_dets_per_image`) and, unless
    ``cfg.TEST.PAPER_METRICS_ON`` is False, :class:`PaperMetricsEvaluator`.

    Args:
        cfg: a config after :func:`add_objguided_config`.
        dataset_name: registered dataset to evaluate.
        output_dir: where both evaluators write (default ``cfg.OUTPUT_DIR/inference``).
    """
    if output_dir is None:
        output_dir = os.path.join(cfg.OUTPUT_DIR, "inference")
    og = cfg.MODEL.get("OBJGUIDED", None)
    max_dets = max_dets_per_image(cfg)
    evaluators = [
        ObjGuidedCOCOEvaluator(
            dataset_name,
            output_dir=output_dir,
            tasks=("bbox", "segm"),
            use_fast_impl=False,
            max_dets_per_image=max_dets,
        )
    ]
    if cfg.TEST.get("PAPER_METRICS_ON", True):
        evaluators.append(
            PaperMetricsEvaluator(
                dataset_name,
                output_dir=output_dir,
                mask_threshold=float(og.MASK_THRESHOLD) if og is not None else 0.5,
                score_thresh=float(cfg.TEST.get("PAPER_METRICS_SCORE_THRESH", 0.0)),
                max_dets=max_dets,
            )
        )
    return DatasetEvaluators(evaluators)

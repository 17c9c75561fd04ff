"""COCO AP with ``faster-coco-eval`` (C++ COCOeval, same numbers as pycocotools, much faster on
crowded images) when it is installed, else the official ``pycocotools``.

``maxDets`` is ``[1, 10, TEST.DETECTIONS_PER_IMAGE]``: AP counts at most as many detections per
image as the model may output, never COCO's default 100 (which would clip crowded images).
:class:`ObjGuidedCOCOEvaluator` is Detectron2's ``COCOEvaluator`` with that evaluation step.
"""
import copy
import itertools
from typing import Optional, Sequence

from detectron2.evaluation import COCOEvaluator

__all__ = ["cocoeval_backend", "evaluate_on_coco", "ObjGuidedCOCOEvaluator"]


def cocoeval_backend(prefer: Optional[str] = None) -> str:
    """``"faster-coco-eval"`` if importable (or ``prefer`` says so), else ``"pycocotools"``."""
    if prefer == "pycocotools":
        return prefer
    try:
        import faster_coco_eval  # noqa: F401

        return "faster-coco-eval"
    except ImportError:
        if prefer == "faster-coco-eval":
            raise
        return "pycocotools"


def evaluate_on_coco(coco_gt, coco_results: Sequence[dict], iou_type: str, max_dets: int, *,
                     img_ids=None, backend: Optional[str] = None):
    """Run COCOeval (``iou_type`` "bbox" or "segm") with ``maxDets = [1, 10, max_dets]``.

    Args:
        coco_gt: a pycocotools ``COCO`` of the ground truth.
        coco_results: COCO result dicts (non-empty).
        backend: "faster-coco-eval" or "pycocotools" (default: :func:`cocoeval_backend`).

    Returns the evaluated, accumulated and summarised COCOeval (``stats``, ``eval["precision"]``).
    """
    if iou_type == "segm":
        # As Detectron2 does: without the box, COCO uses the mask area for small/medium/large.
        coco_results = copy.deepcopy(list(coco_results))
        for c in coco_results:
            c.pop("bbox", None)
    backend = cocoeval_backend(backend)
    coco_dt = coco_gt.loadRes(list(coco_results))
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCOeval_faster as impl
    elif int(max_dets) != 100:
        # pycocotools' summarize() reads maxDets=100 only; Detectron2's subclass reads the last.
        from detectron2.evaluation.coco_evaluation import COCOevalMaxDets as impl
    else:
        from pycocotools.cocoeval import COCOeval as impl
    ev = impl(coco_gt, coco_dt, iou_type)
    ev.params.maxDets = [1, 10, int(max_dets)]
    if img_ids is not None:
        ev.params.imgIds = img_ids
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev


class ObjGuidedCOCOEvaluator(COCOEvaluator):
    """Detectron2's ``COCOEvaluator`` (result preparation, JSON dump, derived metrics) whose
    evaluation runs :func:`evaluate_on_coco` (faster-coco-eval when installed, ``maxDets`` from
    ``max_dets_per_image``)."""

    def _eval_predictions(self, predictions, img_ids=None):
        # Detectron2's method maps category ids back to the dataset's (in place) and writes
        # coco_instances_results.json; with _do_evaluation off it stops right there.
        do_eval, self._do_evaluation = self._do_evaluation, False
        try:
            super()._eval_predictions(predictions, img_ids=img_ids)
        finally:
            self._do_evaluation = do_eval
        if not do_eval:
            return
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)
        backend = cocoeval_backend()
        self._logger.info(f"Evaluating predictions with {backend} (maxDets {self._max_dets_per_image})")
        for task in sorted(tasks):
            ev = (evaluate_on_coco(self._coco_api, coco_results, task, self._max_dets_per_image[-1],
                                   img_ids=img_ids, backend=backend)
                  if coco_results else None)  # cocoapi does not handle empty results
            self._results[task] = self._derive_coco_results(ev, task, class_names=self._metadata.get("thing_classes"))

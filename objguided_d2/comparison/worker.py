"""Evaluate one trained method in its own process: metrics, speed, size and the masks to draw.

``python -m objguided_d2.comparison.worker --config-file CFG --weights W --test-dataset NAME
--output DIR [--dataset SPEC ...] [opts ...]`` (run by :mod:`objguided_d2.comparison.runner`,
the same way for every method):

1. the test split is evaluated with ``Trainer.test`` and the project's evaluators
   (:func:`objguided_d2.evaluation.build_evaluators`: COCO bbox/segm + the paper's metrics),
   written under ``DIR`` (``paper_metrics.json`` holds the AP-vs-IoU curves);
2. speed (:func:`~objguided_d2.comparison.speed.measure_speed`) on the first N test images;
3. the first K test images' predictions (score >= ``--vis-score``; ``best-f1``, the default:
   the method's own F1-best cutoff ``F1_best_score`` from step 1) are saved as label maps
   ``DIR/qualitative.npz`` (key = image index in the split, (H, W) int32, 0 = background,
   painted in ascending score so the most confident mask is on top);
4. everything goes to ``DIR/eval.json``.

A crash here (a model that cannot run) ends only this process; the comparison reports it.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch

from objguided_d2.comparison.settings import BEST_F1, vis_score_arg
from objguided_d2.utils.io import atomic_write, write_json
from objguided_d2.utils.label_map import paint_label_map

__all__ = ["get_parser", "label_map_from_instances", "main", "resolve_vis_score"]

logger = logging.getLogger("objguided_d2.comparison")


def get_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="trained checkpoint (model_final.pth)")
    p.add_argument("--test-dataset", required=True, help="registered dataset name to evaluate")
    p.add_argument("--output", required=True, help="folder for eval.json, paper_metrics.json, ...")
    p.add_argument("--dataset", action="append", default=[], metavar="NAME=FORMAT:PATH")
    p.add_argument("--speed-images", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--vis-images", type=int, default=3)
    p.add_argument("--vis-score", type=vis_score_arg, default=BEST_F1,
                   help=f"score threshold of the saved masks, or {BEST_F1!r} (default): the method's "
                   "cutoff of highest F1 at mask IoU 0.5 on the evaluated split")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return p


def resolve_vis_score(vis_score: Union[str, float], results: Dict) -> float:
    """The score threshold to draw at: ``vis_score`` itself, or for ``best-f1`` the evaluation's
    ``F1_best_score`` (0.5 when the paper metrics are off; +inf when no cutoff finds a match)."""
    if vis_score != BEST_F1:
        return float(vis_score)
    paper = results.get("paper") or {}
    if "F1_best_score" not in paper:
        logger.warning("--vis-score best-f1: no paper metrics (TEST.PAPER_METRICS_ON False); drawing at 0.5")
        return 0.5
    thr = paper["F1_best_score"]
    return float(thr) if thr is not None and np.isfinite(thr) else float("inf")


def label_map_from_instances(instances, score_thresh: float, mask_threshold: float = 0.5) -> np.ndarray:
    """Paint predicted masks with score >= ``score_thresh`` into one (H, W) int32 label map.

    Masks are painted in ascending score, so where masks overlap the most confident one shows.
    Ids are 1..R in that painting order; 0 is background.
    """
    inst = instances.to("cpu")
    h, w = (int(s) for s in inst.image_size)
    if len(inst) == 0:
        return np.zeros((h, w), dtype=np.int32)
    scores = inst.scores.numpy()
    masks = inst.pred_masks
    masks = (masks if masks.dtype == torch.bool else masks >= mask_threshold).numpy()
    order = [i for i in np.argsort(scores, kind="stable") if scores[i] >= score_thresh]
    # Painting in ascending order, later on top == the reverse order taking the free pixels.
    out, _ = paint_label_map(masks, (h, w), priority=order[::-1], labels=list(range(len(order), 0, -1)))
    return out.astype(np.int32)


def run(args: argparse.Namespace) -> Dict:
    import objguided_d2  # noqa: F401  (registers the model, datasets, evaluators)
    from detectron2.data import DatasetCatalog
    from detectron2.utils.logger import setup_logger

    from objguided_d2.comparison.speed import count_parameters, measure_speed
    from objguided_d2.data.dataset_mapper import ObjGuidedDatasetMapper
    from objguided_d2.data.register import register_dataset_spec
    from objguided_d2.config import load_config
    from objguided_d2.engine.checkpoint import ObjGuidedCheckpointer
    from objguided_d2.engine.trainer import Trainer
    from objguided_d2.evaluation import build_evaluators

    setup_logger(name="detectron2")
    setup_logger(name="objguided_d2")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    for spec in args.dataset:
        register_dataset_spec(spec)
    if not os.path.isfile(args.weights):
        raise FileNotFoundError(f"--weights {args.weights}: checkpoint not found")
    os.makedirs(args.output, exist_ok=True)

    opts = list(args.opts or [])
    if opts and opts[0] == "--":
        opts = opts[1:]
    cfg = load_config(args.config_file, opts + ["DATASETS.TEST", f"('{args.test_dataset}',)"])
    cfg.freeze()
    model = Trainer.build_model(cfg)
    ObjGuidedCheckpointer(model, trust_pickle=cfg.MODEL.TRUST_PICKLE).load(args.weights)
    model.eval()

    evaluator = build_evaluators(cfg, args.test_dataset, args.output)
    results = Trainer.test(cfg, model, evaluators=[evaluator])
    results = dict(results) if results else {}

    curves = {}
    paper_json = os.path.join(args.output, "paper_metrics.json")
    if os.path.isfile(paper_json):
        with open(paper_json) as f:
            curves = {k: v for k, v in json.load(f).items() if k != "metrics"}

    # The same first images of the split for every method: the dataset order is deterministic.
    records = DatasetCatalog.get(args.test_dataset)
    mapper = ObjGuidedDatasetMapper(cfg, is_train=False)
    n_speed = max(1, min(args.speed_images, len(records)))
    n_vis = max(0, min(args.vis_images, len(records)))
    inputs = [mapper(dict(r)) for r in records[: max(n_speed, n_vis)]]
    speed = measure_speed(model, inputs[:n_speed], warmup=args.warmup, repeats=args.repeats)

    vis = {}
    mask_thr = float(cfg.MODEL.OBJGUIDED.MASK_THRESHOLD) if "OBJGUIDED" in cfg.MODEL else 0.5
    vis_score = resolve_vis_score(args.vis_score, results)
    with torch.no_grad():
        for i in range(n_vis):
            out = model([inputs[i]])[0]
            vis[str(i)] = label_map_from_instances(out["instances"], vis_score, mask_thr)
    atomic_write(os.path.join(args.output, "qualitative.npz"), lambda tmp: np.savez_compressed(tmp, **vis),
                 overwrite=True)

    report = {
        "results": results,
        "curves": curves,
        "speed": speed,
        "params": count_parameters(model),
        "vis_images": [
            {"index": i, "image_id": records[i].get("image_id"), "file_name": records[i].get("file_name")}
            for i in range(n_vis)
        ],
        "vis_score": vis_score if np.isfinite(vis_score) else None,
        "vis_score_rule": args.vis_score if args.vis_score == BEST_F1 else "fixed",
        "test_dataset": args.test_dataset,
        "num_test_images": len(records),
        "weights": os.path.abspath(args.weights),
    }
    write_json(os.path.join(args.output, "eval.json"), report, indent=2, overwrite=True)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    from objguided_d2.config import ConfigError
    from objguided_d2.engine.safe_load import UntrustedFileError

    args = get_parser().parse_args(argv)
    try:
        run(args)
    except (ConfigError, UntrustedFileError) as e:
        # One line, in the form the runner's failure_reason reads from the console log.
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Where each method's AP@0.5 goes: its false positives by kind, its misses, and its recall by object
size and crowding, from the predictions a comparison already saved (no model is run).

    python benchmarks/error_breakdown.py out/paperscale/nuclei_seed0 \\
        --dataset-name synth_nuclei_paperscale --output out/paperscale/nuclei_seed0/errors.md

Reads ``runs/<method>/eval/coco_instances_results.json`` (written by every evaluation, kept by
``benchmarks/archive_study.py``), so it works on archived runs whose weights were removed. The kinds
(dupe, merge, part, loc, bkg, missed) and their cost dAP are defined in
``objguided_d2.evaluation.errors``. Counts "at cutoff" are among the predictions a method keeps at
its own best-F1 score cutoff. Recall is at that cutoff, per GT object, by box side (tercile of the
test set), by whether the object touches another one, and by the distance to the nearest other
object's centre in heatmap cells (stride 4).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# This checkout's package first, not another one installed in the same environment (a study worktree).
sys.path.insert(0, ROOT)

RESULTS = os.path.join("eval", "coco_instances_results.json")
STRIDE = 4  # the centre detector's heatmap stride: distances are also given in its cells


def get_parser() -> argparse.ArgumentParser:
    from objguided_d2.comparison.runs import add_compare_dir_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_compare_dir_arguments(p, "run folder names (default: every run with saved predictions)")
    p.add_argument("--output", default=None, help="markdown file to write (a .json with the numbers beside it)")
    return p


def load_predictions(path: str, records, dataset_to_contiguous):
    """The saved COCO results of ``path`` as one :class:`ImageInstances` per dataset record."""
    from objguided_d2.evaluation.paper_ap import ImageInstances

    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"{path}: cannot read the saved predictions ({e})")
    if not isinstance(results, list):
        sys.exit(f"{path}: expected a list of COCO results, got {type(results).__name__}")
    by_image = {}
    for j, r in enumerate(results):
        if not isinstance(r, dict) or not {"image_id", "category_id", "score", "segmentation"} <= set(r):
            sys.exit(f"{path}: result {j} needs image_id, category_id, score and segmentation")
        by_image.setdefault(r["image_id"], []).append(r)
    unknown = set(by_image) - {rec["image_id"] for rec in records}
    if unknown:
        sys.exit(f"{path}: predictions for image ids {sorted(unknown)[:3]} that the test set does not have")
    preds = []
    for rec in records:
        rs = by_image.get(rec["image_id"], [])
        masks = []
        for r in rs:
            seg = dict(r["segmentation"])
            if isinstance(seg.get("counts"), str):
                seg["counts"] = seg["counts"].encode("ascii")
            masks.append(seg)
        cls = [dataset_to_contiguous.get(r["category_id"], r["category_id"]) for r in rs]
        boxes = np.asarray([r.get("bbox", [np.nan] * 4) for r in rs], dtype=np.float64).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]  # COCO XYWH -> XYXY
        preds.append(ImageInstances(classes=np.asarray(cls, dtype=np.int64), masks=masks, boxes=boxes,
                                    scores=np.asarray([r["score"] for r in rs], dtype=np.float64)))
    return preds


def _recall_rows(objects, found):
    """Recall per bin of the GT objects: box side terciles, touching, nearest centre in cells."""
    side = np.array([o["side"] for o in objects])
    nn = np.array([o["nn_dist"] for o in objects]) / STRIDE
    touch = np.array([o["touching"] for o in objects])
    t1, t2 = np.quantile(side, [1 / 3, 2 / 3])
    bins = [
        (f"side < {t1:.0f} px", side < t1),
        (f"side {t1:.0f}-{t2:.0f} px", (side >= t1) & (side < t2)),
        (f"side >= {t2:.0f} px", side >= t2),
        ("touching", touch),
        ("not touching", ~touch),
        ("nearest centre < 4 cells", nn < 4),
        ("nearest centre 4-6 cells", (nn >= 4) & (nn < 6)),
        ("nearest centre >= 6 cells", nn >= 6),
    ]
    return [(name, int(sel.sum()), 100.0 * float(found[sel].mean()) if sel.any() else float("nan"))
            for name, sel in bins]


def _miss_row(res):
    """The missed GT objects of one method split by how close its nearest prediction came."""
    found = np.concatenate(res["found"]) if res["found"] else np.zeros(0, dtype=bool)
    iou = np.concatenate(res["best_iou"])[~found] if res["found"] else np.zeros(0)
    scale = np.concatenate(res["box_scale"])[~found] if res["found"] else np.zeros(0)
    near = iou >= 0.1
    s = scale[near & np.isfinite(scale)]
    return {"missed": int((~found).sum()), "none": int((~near).sum()), "near": int(near.sum()),
            "scale_median": float(np.median(s)) if len(s) else float("nan"),
            "too_small": int((s < 0.8).sum()), "too_large": int((s > 1.25).sum())}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from objguided_d2.comparison.runs import dataset_from_args, finished_runs, run_name, write_report
    from objguided_d2.evaluation.errors import ERROR_KINDS, error_breakdown, gt_neighbourhood
    from objguided_d2.evaluation.evaluator import gt_instances_from_dict

    try:
        dataset = dataset_from_args(args)
        # the saved predictions, not the weights: archived runs have no model_final.pth
        runs_dir, ids = finished_runs(args.compare_dir, args.methods, required=(RESULTS,),
                                      hint="evaluate it with tools/compare.py first")
    except ValueError as e:
        sys.exit(str(e))

    records = DatasetCatalog.get(dataset)
    meta = MetadataCatalog.get(dataset)
    to_contiguous = dict(getattr(meta, "thing_dataset_id_to_contiguous_id", {}) or {})
    gts = [gt_instances_from_dict(r) for r in records]
    objects = [o for g in gts for o in gt_neighbourhood(g)]
    max_dets = None
    kinds = list(ERROR_KINDS) + ["missed"]
    lines = [f"Errors at IoU 0.5 on {dataset} ({len(objects)} GT objects, {len(records)} images).", "",
             "dAP: AP@0.5 gained if that error were fixed (points). Counts: all predictions / at the method's best-F1 cutoff.", "",
             "| Method | AP@0.5 | cutoff | TP | " + " | ".join(f"{k} dAP | {k} n" for k in kinds) + " |",
             "|:---|" + "---:|" * (3 + 2 * len(kinds))]
    recall_tables, misses, data = [], [], {"dataset": dataset, "methods": {}}
    for mid in ids:
        run = os.path.join(runs_dir, mid)
        cfg_path = os.path.join(run, "config.yaml")
        if os.path.isfile(cfg_path):
            from objguided_d2.config import ConfigError, load_config

            try:
                max_dets = int(load_config(cfg_path).TEST.DETECTIONS_PER_IMAGE)
            except (ConfigError, ValueError) as e:
                sys.exit(f"{cfg_path}: {e}")
        preds = load_predictions(os.path.join(run, RESULTS), records, to_contiguous)
        res = error_breakdown(gts, preds, max_dets=max_dets)
        name = run_name(runs_dir, mid)
        c, cc = res["counts"], res["counts_at_cutoff"]
        lines.append(f"| {name} | {100 * res['AP50']:.2f} | {res['cutoff']:.2f} | {c['tp']} / {cc['tp']} | "
                     + " | ".join(f"{100 * res['dAP'][k]:.1f} | {c[k]} / {cc[k]}" for k in kinds) + " |")
        found = np.concatenate(res["found_at_cutoff"]) if objects else np.zeros(0, dtype=bool)
        rows = _recall_rows(objects, found)
        misses.append((name, _miss_row(res)))
        recall_tables.append((name, rows))
        data["methods"][mid] = {"name": name, "AP50": res["AP50"], "dAP": res["dAP"], "counts": c,
                                "cutoff": res["cutoff"], "counts_at_cutoff": cc,
                                "recall_at_cutoff": {r[0]: {"n": r[1], "recall": r[2]} for r in rows},
                                "misses": misses[-1][1]}
        print(f"{name}: AP@0.5 {100 * res['AP50']:.2f}, {c['missed']} GT missed", flush=True)
    lines += ["", "Recall (%) at each method's best-F1 cutoff, by GT object:", "",
              "| GT objects | n | " + " | ".join(n for n, _ in recall_tables) + " |",
              "|:---|---:|" + "---:|" * len(recall_tables)]
    for i, (bin_name, n, _) in enumerate(recall_tables[0][1]):
        lines.append(f"| {bin_name} | {n} | " + " | ".join(f"{rows[i][2]:.1f}" for _, rows in recall_tables) + " |")
    lines += ["", "Missed GT objects (no prediction took them, over all predictions), by their best mask IoU with any "
              "prediction; for those with one at IoU 0.1-0.5, that prediction's box against the GT box (sqrt of the area "
              "ratio):", "",
              "| Method | missed | IoU < 0.1 | IoU 0.1-0.5 | box scale median | box scale < 0.8 | box scale > 1.25 |",
              "|:---|---:|---:|---:|---:|---:|---:|"]
    for name, m in misses:
        lines.append(f"| {name} | {m['missed']} | {m['none']} | {m['near']} | {m['scale_median']:.2f} | "
                     f"{m['too_small']} | {m['too_large']} |")
    text = "\n".join(lines)
    print(text)
    if args.output:
        write_report(args.output, text, data)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

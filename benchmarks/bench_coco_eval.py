#!/usr/bin/env python
"""Time COCO evaluation (bbox + segm) of a crowded set with faster-coco-eval and pycocotools.

    python benchmarks/bench_coco_eval.py                 # 30 images x 500 objects, maxDets 500

Synthetic: each 512x512 image holds 500 GT discs (radius 3-9 px) and ~500 predictions (jittered
copies, 10 % missed, 10 % false positives). Prints seconds per backend and the AP of each (they
must agree). Uses objguided_d2.evaluation.coco_eval.evaluate_on_coco, as training does.
"""
import argparse
import contextlib
import io
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_set(num_images, num_objects, size=512, seed=0):
    import cv2
    import pycocotools.mask as mask_util

    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []

    def disc(cx, cy, r):
        m = np.zeros((size, size), np.uint8)
        cv2.circle(m, (int(cx), int(cy)), max(1, int(r)), 1, -1)
        rle = mask_util.encode(np.asfortranarray(m))
        bb = mask_util.toBbox(rle).tolist()
        rle["counts"] = rle["counts"].decode("ascii")
        return rle, bb

    for i in range(1, num_images + 1):
        images.append({"id": i, "height": size, "width": size, "file_name": f"{i}.png"})
        for _ in range(num_objects):
            cx, cy, r = rng.uniform(8, size - 8, 2).tolist() + [rng.uniform(3, 9)]
            rle, bb = disc(cx, cy, r)
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "segmentation": rle, "bbox": bb,
                         "area": float(mask_util.area(rle)), "iscrowd": 0})
            if rng.random() > 0.1:
                dx, dy, dr = rng.normal(0, 0.7, 3)
                rle, bb = disc(cx + dx, cy + dy, r + dr)
                results.append({"image_id": i, "category_id": 1, "segmentation": rle, "bbox": bb,
                                "score": float(rng.random())})
        for _ in range(num_objects // 10):
            rle, bb = disc(*rng.uniform(0, size, 2), rng.uniform(3, 9))
            results.append({"image_id": i, "category_id": 1, "segmentation": rle, "bbox": bb, "score": float(rng.random())})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}, results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=30)
    ap.add_argument("--objects", type=int, default=500)
    ap.add_argument("--max-dets", type=int, default=500, help="maxDets (TEST.DETECTIONS_PER_IMAGE)")
    args = ap.parse_args(argv)
    from pycocotools.coco import COCO

    from objguided_d2.evaluation.coco_eval import evaluate_on_coco

    gt, results = make_set(args.images, args.objects)
    print(f"{args.images} images, {len(gt['annotations'])} GT objects, {len(results)} predictions, "
          f"maxDets {args.max_dets}")
    for backend in ("pycocotools", "faster-coco-eval"):
        times, aps = [], []
        for task in ("bbox", "segm"):
            with contextlib.redirect_stdout(io.StringIO()):
                coco = COCO()
                coco.dataset = gt
                coco.createIndex()
                t0 = time.perf_counter()
                ev = evaluate_on_coco(coco, results, task, args.max_dets, backend=backend)
            times.append(time.perf_counter() - t0)
            aps.append(100 * ev.stats[0])
        print(f"{backend:17s} bbox {times[0]:6.2f} s  segm {times[1]:6.2f} s  total {sum(times):6.2f} s   "
              f"AP bbox {aps[0]:.4f}  AP segm {aps[1]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

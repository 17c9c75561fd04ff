#!/usr/bin/env python
"""Size-aware prediction (--diameter): per-object IoU at the training magnification (1x) and on
images at 2x magnification, with and without --diameter; and how well a first pass estimates D.

    python tools/train_net.py --config-file configs/tiny/objguided_R18_tiny.yaml \\
        --dataset 'nuc=synthetic:nuclei?image_size=128&num_train=100&num_val=4&num_test=20' \\
        DATASETS.TRAIN '("nuc_train",)' DATASETS.TEST '()' SOLVER.MAX_ITER 600 OUTPUT_DIR out/size_model
    python benchmarks/size_aware.py out/size_model --family nuclei --image-size 128 --num 20

1x: test images rendered as in training (``render_sample(family, S)``). 2x: rendered at 2S and
the top-left S x S quarter kept (twice the magnification: objects twice as large, same image
size). Per-object IoU: each GT object's best IoU with a predicted object of the label image
(0 when missed), averaged over all GT objects. D is the true median equivalent diameter of the
set's GT objects. "auto" reports the median equivalent diameter of the first-pass (no
--diameter) predictions against the true D.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def per_object_iou(gt, pred):
    ious = []
    for g in range(1, int(gt.max()) + 1):
        m = gt == g
        if not m.any():
            continue
        ids, cnt = np.unique(pred[m], return_counts=True)
        best = 0.0
        for p, c in zip(ids, cnt):
            if p:
                best = max(best, c / (m.sum() + (pred == p).sum() - c))
        ious.append(best)
    return ious


def median_diameter(labels_list):
    areas = [a for lab in labels_list for a in np.bincount(lab.ravel())[1:] if a > 0]
    return float(np.median(np.sqrt(4 * np.asarray(areas) / np.pi))) if areas else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--family", default="nuclei")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--num", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7, help="seed of the test images (not the training seed)")
    ap.add_argument("--dataset", action="append", default=[], metavar="NAME=FORMAT:PATH",
                    help="the training set, to measure it when the model folder has no object_size.json")
    args = ap.parse_args(argv)
    import cv2

    from objguided_d2.data.datasets.synthetic import render_sample
    from objguided_d2.data.object_size import read_size_stats, write_size_stats
    from objguided_d2.predict.predictor import InstancePredictor, load_predict_config, resolve_model_dir
    from objguided_d2.predict.size import diameter_scale
    from objguided_d2.predict.tiling import predict_tiled
    from objguided_d2.predict.writers import label_image

    config, weights = resolve_model_dir(args.model_dir)
    cfg = load_predict_config(config, device="cpu")
    try:
        stats = read_size_stats(args.model_dir)
    except ValueError:  # a model trained before object_size.json existed: measure its training set now
        from objguided_d2.data.register import register_from_args

        register_from_args(args)
        print("object_size.json missing: measuring the training set (DATASETS.TRAIN must be registered)")
        write_size_stats(cfg)
        stats = read_size_stats(args.model_dir)
    d_train = stats["median_diameter_input"]
    S = args.image_size
    sets = {"1x": [], "2x": []}
    for i in range(args.num):
        img, lab = render_sample(args.family, S, args.seed, "test", i)
        sets["1x"].append((img, lab))
        img2, lab2 = render_sample(args.family, 2 * S, args.seed, "test", i)
        sets["2x"].append((np.ascontiguousarray(img2[:S, :S]), np.ascontiguousarray(lab2[:S, :S])))
    print(f"model {args.model_dir}: training median diameter at the network input {d_train:.2f} px")
    print("| set | true D (px) | --diameter | scale | per-object IoU | detected / GT |\n|---|---:|---|---:|---:|---:|")
    for name, items in sets.items():
        D = median_diameter([lab for _, lab in items])
        first = None
        for mode in ("none", "D"):
            scale = diameter_scale(d_train, D) if mode == "D" else None
            pred = InstancePredictor(cfg, weights, input_scale=scale)
            tile = int(pred.test_size / scale) if scale else pred.test_size
            ious, preds = [], []
            for img, lab in items:
                bgr = np.ascontiguousarray(img[:, :, ::-1]) if img.ndim == 3 else cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
                labels, _ = label_image(predict_tiled(bgr, pred, tile_size=tile, overlap=tile // 4), lab.shape)
                ious += per_object_iou(lab, labels)
                preds.append(labels)
            n_det = sum(int(p.max()) for p in preds)
            n_gt = sum(len(np.unique(lab)) - 1 for _, lab in items)
            if mode == "none":
                first = median_diameter(preds)
            sc = "default" if scale is None else f"{scale:.3f}"
            print(f"| {name} | {D:.1f} | {'no' if mode == 'none' else f'{D:.1f}'} | {sc} | {np.mean(ious):.3f} | {n_det} / {n_gt} |",
                  flush=True)
        print(f"  auto estimate for {name}: first-pass median diameter {first:.1f} px vs true {D:.1f} px "
              f"({100 * (first / D - 1):+.0f} %)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Object scale of a dataset as the centre-point detector sees it.

For every object of a split: its box side (max of width and height, in network-input pixels) and
the CenterNet Gaussian radius it gets at the detector's stride (the targets' own rule,
``build_targets``). Prints the 10th / 50th / 90th percentile of the box side, the smallest one and
the share of objects whose radius is 0 (a single positive heatmap cell with full negatives
around it), as a markdown table row per dataset.

    python benchmarks/data_scale.py --dataset 'nuclei512=synthetic:nuclei?image_size=512&min_object_size=8' \
        --dataset-name nuclei512 --split test

``--input-scale`` is network-input pixels per image pixel: 1 for native-scale training
(``INPUT.NATIVE_CROP_SIZE``) and for whole-image testing at native size; TRAIN_SIZE / max(H, W) for
the paper's crop-and-resize at crop scale 1.
"""
import argparse
import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")


def object_scale(records, *, input_scale: float = 1.0, stride: int = 4):
    """Box sides (px, network input), Gaussian radii (cells) and "not cut by the image border"
    flags of every object of ``records``."""
    import torch
    from detectron2.structures import BoxMode

    from objguided_d2.modeling.proposal_generator.centernet_utils import build_targets

    sides, radii, inner = [], [], []
    for r in records:
        anns = [a for a in r.get("annotations", []) if not a.get("iscrowd", 0)]
        if not anns:
            continue
        # Boxes in XYWH -> XYXY, in network-input pixels.
        b = np.array([BoxMode.convert(list(a["bbox"]), a.get("bbox_mode", BoxMode.XYWH_ABS), BoxMode.XYWH_ABS)
                      for a in anns], dtype=np.float64) * input_scale
        xyxy = np.concatenate([b[:, :2], b[:, :2] + b[:, 2:]], axis=1)
        h, w = int(np.ceil(r["height"] * input_scale)), int(np.ceil(r["width"] * input_scale))
        t = build_targets(torch.as_tensor(xyxy), torch.zeros(len(b), dtype=torch.long),
                          ((h + stride - 1) // stride, (w + stride - 1) // stride), stride, 1, min_box_size=0.0)
        sides.extend(np.maximum(b[:, 2], b[:, 3]).tolist())
        radii.extend(t["radius"].tolist())
        # Objects the image border cuts are smaller than drawn; the generator's floor is for the rest.
        inner.extend(((xyxy[:, 0] > 0.5) & (xyxy[:, 1] > 0.5) & (xyxy[:, 2] < w - 0.5) & (xyxy[:, 3] < h - 0.5)).tolist())
    return np.asarray(sides), np.asarray(radii), np.asarray(inner, dtype=bool)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", action="append", default=[], metavar="NAME=FORMAT:PATH", help="register a dataset (repeatable)")
    p.add_argument("--dataset-name", action="append", required=True, help="base name (NAME_<split> is read); repeatable")
    p.add_argument("--split", default="test")
    p.add_argument("--input-scale", type=float, default=1.0, help="network-input pixels per image pixel (default 1)")
    p.add_argument("--stride", type=int, default=4, help="detector output stride (default 4)")
    a = p.parse_args(argv)

    from detectron2.data import DatasetCatalog

    import objguided_d2  # noqa: F401  (registers the datasets)
    from objguided_d2.data.register import register_dataset_spec

    for spec in a.dataset:
        register_dataset_spec(spec)
    print("| data | split | objects | box side p10 / p50 / p90 (px) | smallest (px) | smallest not at the border (px) | under 8 px | radius 0 |")
    print("|:---|:---|---:|---:|---:|---:|---:|---:|")
    for name in a.dataset_name:
        sides, radii, inner = object_scale(DatasetCatalog.get(f"{name}_{a.split}"), input_scale=a.input_scale, stride=a.stride)
        if not len(sides):
            print(f"| {name} | {a.split} | 0 | - | - | - | - | - |")
            continue
        p10, p50, p90 = np.percentile(sides, [10, 50, 90])
        print(f"| {name} | {a.split} | {len(sides)} | {p10:.0f} / {p50:.0f} / {p90:.0f} | {sides.min():.0f} "
              f"| {sides[inner].min() if inner.any() else float('nan'):.0f} "
              f"| {100.0 * np.mean(sides < 8):.1f} % | {100.0 * np.mean(radii == 0):.0f} % |")


if __name__ == "__main__":
    main()

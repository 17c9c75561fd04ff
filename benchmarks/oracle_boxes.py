#!/usr/bin/env python
"""Mask quality given the ground-truth boxes, for every trained method of a comparison folder.

Each method segments every test object from the object's own ground-truth box
(``objguided_d2.evaluation.oracle``), so its mask head is judged apart from its detector. Prints
(and with --output writes) a markdown table: mean IoU and the shares of objects above IoU 0.5 /
0.75, for all objects and separately for thin ones (> 20 % of the pixels in <= 2-px structures).

Then the sensitivity to the box: the same objects segmented from their true boxes scaled about the
centre by each of --scales (shift 0), and shifted by each of --shifts x the box's side in a random
direction (scale 1; the directions drawn from --seed, the same boxes for every method). A table of
mask mIoU in percent (share of objects with IoU > 0.5) per method and box, one of the drop from the
exact box, and, per method, the same two numbers from the detector's own boxes: the model's normal
inference, each object matched to its best prediction by mask IoU.

    python benchmarks/oracle_boxes.py out/accuracy_cpu/leaves128 \\
        --dataset 'leaves128=synthetic:leaves?image_size=128&num_train=100&num_val=10&num_test=30' \\
        --output out/accuracy_cpu/leaves128/oracle.md

``--scales 1 --shifts 0`` gives the exact-box table only.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# This checkout's package first, not another one installed in the same environment (a study worktree).
sys.path.insert(0, ROOT)

SCALES = (0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5)
SHIFTS = (0.0, 0.1, 0.2)


def get_parser() -> argparse.ArgumentParser:
    from objguided_d2.comparison.runs import add_compare_dir_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_compare_dir_arguments(p)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--trust-pickle", action="store_true", help="allow checkpoints that need full unpickling")
    p.add_argument("--output", default=None, help="markdown file to write (a .json with every object beside it)")
    p.add_argument("--scales", type=float, nargs="+", default=list(SCALES), metavar="S",
                   help="box scales about the centre, each with shift 0 (default: %(default)s)")
    p.add_argument("--shifts", type=float, nargs="+", default=list(SHIFTS), metavar="D",
                   help="centre shifts as a fraction of the box side, each with scale 1 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shift directions (default 0)")
    return p


def check_perturbations(scales: Sequence[float], shifts: Sequence[float]) -> Optional[str]:
    """The error line for bad --scales / --shifts, or None."""
    for s in scales:
        if not (math.isfinite(s) and s > 0):
            return f"--scales: expected numbers > 0 (e.g. 0.8 1.3), got {s:g}"
    for d in shifts:
        if not (math.isfinite(d) and d >= 0):
            return f"--shifts: expected fractions of the box side >= 0 (e.g. 0.1 0.2), got {d:g}"
    return None


def perturbations(scales: Sequence[float], shifts: Sequence[float]) -> List[Tuple[str, float, float]]:
    """``(label, scale, shift)`` per table column: the exact box first, then each scale != 1 (shift
    0) and each shift != 0 (scale 1), in the order given, repeats dropped."""
    cols = [("exact box", 1.0, 0.0)]
    for s in scales:
        if s != 1.0:
            cols.append((f"s {s:g}", float(s), 0.0))
    for d in shifts:
        if d != 0.0:
            cols.append((f"shift {d:g}", 1.0, float(d)))
    seen, out = set(), []
    for c in cols:
        if c[0] not in seen:
            seen.add(c[0])
            out.append(c)
    return out


def sensitivity_tables(names: Sequence[str], cols: Sequence[Tuple[str, float, float]],
                       summaries: Sequence[Sequence[Dict[str, float]]]) -> List[str]:
    """Markdown lines: mIoU (IoU>0.5 share) per method (row) and box (column), then the drop of
    both from the exact box (column 0). ``summaries[m][c]`` is :func:`summarize_oracle` output."""
    head = "| Method | " + " | ".join(c[0] for c in cols) + " |"
    rule = "|:---|" + "---:|" * len(cols)
    lines = ["Mask mIoU in percent (share of objects with IoU > 0.5) from the true box scaled about its centre "
             "by s, or shifted by a fraction of its side in a random direction:", "", head, rule]
    for name, row in zip(names, summaries):
        lines.append(f"| {name} | " + " | ".join(f"{s['all mIoU']:.1f} ({s['all IoU>0.5']:.0f}%)" for s in row) + " |")
    lines += ["", "Drop from the exact box: mIoU points (IoU > 0.5 share points):", "", head, rule]
    for name, row in zip(names, summaries):
        lines.append(f"| {name} | " + " | ".join(
            f"{s['all mIoU'] - row[0]['all mIoU']:+.1f} ({s['all IoU>0.5'] - row[0]['all IoU>0.5']:+.0f})"
            for s in row) + " |")
    return lines


def detected_table(names: Sequence[str], exact: Sequence[Dict[str, float]],
                   detected: Sequence[Dict[str, float]]) -> List[str]:
    """Markdown lines: per method, mIoU and the IoU > 0.5 share from the true boxes and from the
    detector's own boxes, and the gap of the share."""
    lines = ["Objects segmented from the true boxes against the detector's own boxes (normal inference, each "
             "object matched to its best prediction by mask IoU; percent):", "",
             "| Method | n | true boxes mIoU | true boxes IoU>0.5 | detector's boxes mIoU | detector's boxes IoU>0.5 "
             "| gap IoU>0.5 |", "|:---|" + "---:|" * 6]
    for name, e, d in zip(names, exact, detected):
        lines.append(f"| {name} | {int(e['all n'])} | {e['all mIoU']:.1f} | {e['all IoU>0.5']:.1f} | "
                     f"{d['all mIoU']:.1f} | {d['all IoU>0.5']:.1f} | {e['all IoU>0.5'] - d['all IoU>0.5']:.1f} |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    bad = check_perturbations(args.scales, args.shifts)
    if bad:
        print(f"oracle_boxes.py: error: {bad}", file=sys.stderr)
        sys.exit(2)
    import torch
    from detectron2.data import DatasetCatalog

    import objguided_d2  # noqa: F401  (registers the embedded datasets)
    from objguided_d2.comparison.runs import load_run, open_compare_dir, run_name, write_report
    from objguided_d2.evaluation.evaluator import max_dets_per_image
    from objguided_d2.evaluation.oracle import (THIN_THRESHOLD, detected_object_ious, oracle_object_ious,
                                                summarize_oracle)

    dataset, runs_dir, ids = open_compare_dir(args)
    dicts = DatasetCatalog.get(dataset)
    cols = perturbations(args.scales, args.shifts)
    rows, objects, names, sens, det = [], {}, [], [], []
    raw: Dict[str, Dict] = {"sensitivity": {}, "detected": {}, "names": {}}
    for mid in ids:
        run = os.path.join(runs_dir, mid)
        cfg, model = load_run(run, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""], trust_pickle=args.trust_pickle,
                              weights=os.path.join(run, "model_final.pth"))
        size = dict(min_size_test=cfg.INPUT.MIN_SIZE_TEST, max_size_test=cfg.INPUT.MAX_SIZE_TEST,
                    input_format=cfg.INPUT.FORMAT)
        objs = oracle_object_ious(model, dicts, **size)
        objects[mid] = objs
        name = run_name(runs_dir, mid)
        names.append(name)
        raw["names"][mid] = name
        rows.append((name, summarize_oracle(objs)))
        print(f"{name}: {rows[-1][1]}", flush=True)
        if len(cols) == 1:
            continue
        row, raw["sensitivity"][mid] = [rows[-1][1]], {}
        raw["sensitivity"][mid][cols[0][0]] = {"scale": 1.0, "shift": 0.0, "summary": rows[-1][1],
                                               "iou": [o["iou"] for o in objs]}
        for label, scale, shift in cols[1:]:
            # One generator per column, seeded alike: every method gets the same boxes.
            gen = torch.Generator().manual_seed(args.seed)
            p_objs = oracle_object_ious(model, dicts, scale=scale, shift=shift, generator=gen, **size)
            row.append(summarize_oracle(p_objs))
            raw["sensitivity"][mid][label] = {"scale": scale, "shift": shift, "summary": row[-1],
                                              "iou": [o["iou"] for o in p_objs]}
            print(f"{name} {label}: mIoU {row[-1]['all mIoU']:.1f}, IoU>0.5 {row[-1]['all IoU>0.5']:.1f}", flush=True)
        sens.append(row)
        d_objs = detected_object_ious(model, dicts, max_dets=max_dets_per_image(cfg), **size)
        det.append(summarize_oracle(d_objs))
        raw["detected"][mid] = {"summary": det[-1], "iou": [o["iou"] for o in d_objs]}
    keys = ["all n", "all mIoU", "all IoU>0.5", "all IoU>0.75", "thin n", "thin mIoU", "thin IoU>0.5", "compact mIoU"]
    lines: List[str] = [
        f"Mask quality given the ground-truth boxes on `{dataset}` ({len(dicts)} images): each object is "
        f"segmented from its own box; IoU in percent; thin = more than {int(THIN_THRESHOLD * 100)} % of "
        "the object's pixels in structures a 3x3 opening removes.",
        "",
        "| Method | " + " | ".join(keys) + " |",
        "|:---|" + "---:|" * len(keys),
    ]
    for name, s in rows:
        lines.append(f"| {name} | " + " | ".join(
            str(int(s[k])) if k.endswith(" n") else f"{s[k]:.1f}" for k in keys) + " |")
    data = {"dataset": dataset, "summary": dict(rows), "objects": objects}
    if len(cols) > 1:
        lines += ["", *sensitivity_tables(names, cols, sens), "", *detected_table(names, [r[1] for r in rows], det)]
        data.update(raw, seed=args.seed, perturbations=[{"label": c[0], "scale": c[1], "shift": c[2]} for c in cols])
    text = "\n".join(lines)
    print(text)
    if args.output:
        write_report(args.output, text, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())

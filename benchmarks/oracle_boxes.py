#!/usr/bin/env python
"""Mask quality given the ground-truth boxes, for every trained method of a comparison folder.

Each method segments every test object from the object's own ground-truth box
(``objguided_d2.evaluation.oracle``), so its mask head is judged apart from its detector. Prints
(and with --output writes) a markdown table: mean IoU and the shares of objects above IoU 0.5 /
0.75, for all objects and separately for thin ones (> 20 % of the pixels in <= 2-px structures).

    python benchmarks/oracle_boxes.py out/accuracy_cpu/leaves128 \\
        --dataset 'leaves128=synthetic:leaves?image_size=128&num_train=100&num_val=10&num_test=30' \\
        --output out/accuracy_cpu/leaves128/oracle.md
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# This checkout's package first, not another one installed in the same environment (a study worktree).
sys.path.insert(0, ROOT)


def get_parser() -> argparse.ArgumentParser:
    from objguided_d2.comparison.runs import add_compare_dir_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_compare_dir_arguments(p)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    p.add_argument("--trust-pickle", action="store_true", help="allow checkpoints that need full unpickling")
    p.add_argument("--output", default=None, help="markdown file to write (a .json with every object beside it)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    from detectron2.data import DatasetCatalog

    import objguided_d2  # noqa: F401  (registers the embedded datasets)
    from objguided_d2.comparison.runs import load_run, open_compare_dir, run_name, write_report
    from objguided_d2.evaluation.oracle import THIN_THRESHOLD, oracle_object_ious, summarize_oracle

    dataset, runs_dir, ids = open_compare_dir(args)
    dicts = DatasetCatalog.get(dataset)
    rows, objects = [], {}
    for mid in ids:
        run = os.path.join(runs_dir, mid)
        cfg, model = load_run(run, ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""], trust_pickle=args.trust_pickle,
                              weights=os.path.join(run, "model_final.pth"))
        objs = oracle_object_ious(model, dicts, min_size_test=cfg.INPUT.MIN_SIZE_TEST,
                                  max_size_test=cfg.INPUT.MAX_SIZE_TEST, input_format=cfg.INPUT.FORMAT)
        objects[mid] = objs
        name = run_name(runs_dir, mid)
        rows.append((name, summarize_oracle(objs)))
        print(f"{name}: {rows[-1][1]}", flush=True)
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
    text = "\n".join(lines)
    print(text)
    if args.output:
        write_report(args.output, text, {"dataset": dataset, "summary": dict(rows), "objects": objects})
    return 0


if __name__ == "__main__":
    sys.exit(main())

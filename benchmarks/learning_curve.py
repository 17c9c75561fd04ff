#!/usr/bin/env python
"""APseg / APdec / DET recall of every method of a comparison folder at its saved checkpoints.

Evaluates ``runs/<method>/model_<iter>.pth`` (Detectron2's periodic checkpoints) on the test split
with the same evaluators as ``tools/compare.py`` and prints one markdown table per metric
(rows: iterations, columns: methods): is a method still improving when the budget ends?

    python benchmarks/learning_curve.py out/accuracy_cpu/leaves128 \\
        --dataset 'leaves128=synthetic:leaves?image_size=128&num_train=100&num_val=10&num_test=30' \\
        --iters 199 399 599 799 999 --output out/accuracy_cpu/leaves128/learning_curve.md
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from typing import Dict, Optional, Sequence

# This checkout's package first, not another one installed in the same environment (a study worktree).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

METRICS = ("APseg", "APdec", "DET_recall")


def get_parser() -> argparse.ArgumentParser:
    from objguided_d2.comparison.runs import add_compare_dir_arguments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_compare_dir_arguments(p)
    p.add_argument("--iters", nargs="+", type=int, default=[199, 399, 599, 799, 999],
                   help="checkpoint iterations (model_<iter:07d>.pth; the last may be model_final.pth)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--trust-pickle", action="store_true", help="allow checkpoints that need full unpickling")
    p.add_argument("--output", default=None, help="markdown file (a .json beside it)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_parser().parse_args(argv)
    from detectron2.utils.logger import setup_logger

    import objguided_d2  # noqa: F401
    from objguided_d2.comparison.runs import load_run, open_compare_dir, run_name, write_report
    from objguided_d2.engine.trainer import Trainer
    from objguided_d2.evaluation import build_evaluators

    setup_logger(name="objguided_d2")
    dataset, runs_dir, ids = open_compare_dir(args)
    table: Dict[str, Dict[int, Dict[str, float]]] = {}
    for mid in ids:
        run = os.path.join(runs_dir, mid)
        opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "DATASETS.TEST", f"('{dataset}',)"]
        table[mid] = {}
        for it in args.iters:
            ckpt = os.path.join(run, f"model_{it:07d}.pth")
            if not os.path.isfile(ckpt) and it == max(args.iters):
                ckpt = os.path.join(run, "model_final.pth")
            if not os.path.isfile(ckpt):
                print(f"{mid}: no checkpoint for iteration {it}, skipped", flush=True)
                continue
            cfg, model = load_run(run, opts, trust_pickle=args.trust_pickle, weights=ckpt)
            with tempfile.TemporaryDirectory() as tmp:
                res = Trainer.test(cfg, model, evaluators=[build_evaluators(cfg, dataset, tmp)])
            paper = dict(res).get("paper", {})
            table[mid][it] = {k: float(paper.get(k, float("nan"))) for k in METRICS}
            print(f"{mid} @ {it + 1}: {table[mid][it]}", flush=True)
    lines = [f"Learning curves on `{dataset}` (paper metrics in percent, at the saved checkpoints).", ""]
    names = [run_name(runs_dir, m) for m in ids]
    for metric in METRICS:
        lines += [f"**{metric}**", "", "| iteration | " + " | ".join(names) + " |", "|---:|" + "---:|" * len(ids)]
        for it in args.iters:
            cells = [f"{table[m][it][metric]:.2f}" if it in table[m] else "–" for m in ids]
            lines.append(f"| {it + 1} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.output:
        write_report(args.output, text, {"dataset": dataset, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())

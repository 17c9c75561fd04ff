#!/usr/bin/env python
"""curves.png for training runs: loss against iteration, and APseg at evaluated checkpoints.

    python tools/plot_curves.py OUTPUT_DIR                   # one tools/train_net.py output folder
    python tools/plot_curves.py RUN_A RUN_B --output curves.png --overwrite

Reads each folder's Detectron2 ``metrics.json`` (``total_loss`` every 20 iterations; the
``paper/APseg`` rows written at ``TEST.EVAL_PERIOD``) and writes ``OUTPUT_DIR/curves.png`` (first
folder; ``--output`` elsewhere), atomically, refusing to replace an existing file without
``--overwrite``. ``tools/compare.py`` writes the same plot for all its methods.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dirs", nargs="+", metavar="OUTPUT_DIR", help="tools/train_net.py output folder(s)")
    p.add_argument("--output", help="PNG to write (default: FIRST_OUTPUT_DIR/curves.png)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing PNG")
    args = p.parse_args(argv)

    from objguided_d2.comparison.plots import plot_training_curves
    from objguided_d2.comparison.progress import read_metrics
    from objguided_d2.predict.writers import OutputExistsError

    runs = {}
    for d in args.run_dirs:
        path = os.path.join(d, "metrics.json")
        rows = read_metrics(path)
        if not any("total_loss" in r for r in rows):
            print(f"error: {path}: no training rows (expected Detectron2's metrics.json with total_loss)", file=sys.stderr)
            return 2
        name = os.path.basename(os.path.normpath(d))
        runs[name if name not in runs else d] = rows
    out = args.output or os.path.join(args.run_dirs[0], "curves.png")
    try:
        counts = plot_training_curves(runs, out, overwrite=args.overwrite)
    except OutputExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, n in counts.items():
        print(f"{name}: {n} evaluated checkpoints" if n else f"{name}: loss only (no evaluated checkpoint)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

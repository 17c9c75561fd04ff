#!/usr/bin/env python
"""Copy a ``tools/compare.py`` study folder without its checkpoints, to commit it and continue it.

A study longer than one session (benchmarks/run_accuracy_paperscale.sh) keeps its finished runs
this way: every finished, evaluated run is copied with its logs, metrics and evaluation but no
``*.pth`` (a tiny model's checkpoint is ~155 MB), marked ``weights_removed``. Copy the archive back
as the study folder in a fresh checkout and the same compare command reuses those runs (same run
key) and trains only the rest::

    python benchmarks/archive_study.py out/paperscale/leaves_seed0 benchmarks/results/paperscale/study/leaves_seed0
    # next session:
    cp -r benchmarks/results/paperscale/study out/paperscale && benchmarks/run_accuracy_paperscale.sh out/paperscale 2

Run the study's report step (oracle boxes, learning curves: they need the checkpoints) before the
checkpoints are gone.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

# This checkout's package first, not another one installed in the same environment (a study worktree).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("compare_dir", help="a tools/compare.py output folder (left unchanged)")
    p.add_argument("dest", help="the archive folder (created; its runs are updated)")
    args = p.parse_args(argv)
    from objguided_d2.comparison.records import archive_runs

    try:
        status = archive_runs(args.compare_dir, args.dest)
    except (ValueError, OSError) as e:
        print(f"archive_study: {e}", file=sys.stderr)
        return 2
    for rid, what in status.items():
        print(f"{rid}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

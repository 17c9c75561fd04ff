#!/usr/bin/env python
"""Side-by-side comparison: ours, ours w/o refine, Mask R-CNN and PointRend trained with one
budget and evaluated the same way (the paper's Table I, Fig. 4, Fig. 5).

    python tools/compare.py --preset demo --output demo_output      # `make demo`

Full usage: ``python tools/compare.py --help`` and objguided_d2/comparison/cli.py.
"""
import os
import sys

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from objguided_d2.comparison.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

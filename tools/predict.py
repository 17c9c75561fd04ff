#!/usr/bin/env python
"""Predict label images, object tables and COCO results; see objguided_d2/predict/cli.py."""
import os
import sys

# This checkout's package first, not another one installed in the same environment (a study worktree).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from objguided_d2.predict.cli import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Predict label images, object tables and COCO results; see objguided_d2/predict/cli.py."""
import sys

from objguided_d2.predict.cli import main

if __name__ == "__main__":
    sys.exit(main())

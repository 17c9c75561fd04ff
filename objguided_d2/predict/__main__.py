"""``python -m objguided_d2.predict IMAGES... --model-dir DIR --output OUT``: the same command
line as ``objguided-predict`` and ``tools/predict.py`` (:mod:`.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

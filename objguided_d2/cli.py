"""Console commands installed by setup.py: ``objguided-train``, ``objguided-predict`` and
``objguided-compare`` (the same as ``tools/train_net.py``, ``tools/predict.py`` and
``tools/compare.py``)."""
import sys


def train_main():
    from objguided_d2.engine.train_net import cli

    cli(sys.argv[1:])


def predict_main():
    from objguided_d2.predict.cli import main

    sys.exit(main())


def compare_main():
    from objguided_d2.comparison.cli import main

    sys.exit(main())

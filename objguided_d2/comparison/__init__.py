"""Side-by-side comparison of objguided-d2 with Mask R-CNN and PointRend under one training
budget (the paper's Table I, Fig. 4, Fig. 5): ``tools/compare.py`` / :func:`cli.main`.

Modules: :mod:`.presets` (methods and presets), :mod:`.runner` (training / evaluation
subprocesses, run reuse, progress), :mod:`.worker` (the evaluation process), :mod:`.speed`
(timing, parameter count), :mod:`.report` (tables, results.json, reproduce.md), :mod:`.plots`
(ap_vs_iou.png, qualitative.png), :mod:`.cli`.
"""
from .presets import PRESETS, Method, Preset, parse_methods
from .runner import Budget, EvalSettings, MethodResult, MethodRunner, run_key
from .speed import count_parameters, measure_speed

__all__ = [
    "PRESETS",
    "Budget",
    "EvalSettings",
    "Method",
    "MethodResult",
    "MethodRunner",
    "Preset",
    "count_parameters",
    "main",
    "measure_speed",
    "parse_methods",
    "run_key",
]


def main(argv=None) -> int:
    """``tools/compare.py`` (see :mod:`objguided_d2.comparison.cli`)."""
    from .cli import main as _main

    return _main(argv)

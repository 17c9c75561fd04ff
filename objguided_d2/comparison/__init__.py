"""Side-by-side comparison of objguided-d2 with Mask R-CNN and PointRend under one training
budget (the paper's Table I, Fig. 4, Fig. 5): ``tools/compare.py`` / :func:`cli.main`.

Modules: :mod:`.presets` (methods and presets), :mod:`.settings` (the shared budget and
evaluation settings), :mod:`.runner` (:class:`MethodRunner`: train, evaluate, reuse), built from
:mod:`.launch` (the subprocesses), :mod:`.records` (run keys, reuse, archives), :mod:`.progress`
(metrics.json, rate, ETA) and :mod:`.devices` (job slots); :mod:`.worker` (the evaluation
process), :mod:`.speed` (timing, parameter count), :mod:`.report` (tables, results.json,
reproduce.md), :mod:`.plots` (ap_vs_iou.png, qualitative.png), :mod:`.runs` (reading a finished
folder), :mod:`.cli`.
"""
from .presets import PRESETS, Method, Preset, parse_methods
from .records import run_key
from .runner import MethodResult, MethodRunner
from .settings import Budget, EvalSettings
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

"""What every compared method shares: the training budget and how each one is evaluated."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Optional, Union

__all__ = ["BEST_F1", "Budget", "EvalSettings", "SettingError", "vis_score_arg"]


class SettingError(ValueError):
    """A setting out of range, in the library's terms: ``name`` is the field (``iters``,
    ``input_size``, ``jobs``), ``problem`` what is wrong with ``value``; a CLI names its flag."""

    def __init__(self, name: str, value, problem: str):
        self.name, self.value, self.problem = name, value, problem
        super().__init__(f"{name} {problem}")


def _at_least(name: str, value: int, minimum: int, unit: str = "") -> None:
    if value < minimum:
        raise SettingError(name, value, f"must be >= {minimum}{unit}, got {value}")


@dataclass(frozen=True)
class Budget:
    """The one training budget shared by every method (its fields are part of the run key)."""

    iters: int
    batch: int
    input_size: Optional[int]  # None: each config's own INPUT sizes
    seed: int

    def __post_init__(self):
        _at_least("iters", self.iters, 1)
        _at_least("batch", self.batch, 1)
        if self.input_size is not None:
            _at_least("input_size", self.input_size, 16, " pixels")


# The vis score that draws each method at its own operating point (its scores need not be on
# another method's scale: ours' heatmap peaks stay below a box classifier's 0.5 for long).
BEST_F1 = "best-f1"


def vis_score_arg(value: str) -> Union[str, float]:
    """argparse type of a vis score: a number, or ``best-f1``."""
    if value == BEST_F1:
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a score (e.g. 0.5) or {BEST_F1!r}, got {value!r}") from None


@dataclass(frozen=True)
class EvalSettings:
    """How every method is evaluated and timed."""

    speed_images: int = 10
    warmup: int = 2
    repeats: int = 3
    vis_images: int = 3
    vis_score: Union[str, float] = BEST_F1  # or a fixed score

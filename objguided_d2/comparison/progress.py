"""Progress of a comparison: a training's iteration, rate and ETA read from its ``metrics.json``,
and the ETA of the methods not started yet."""
from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Callable, Dict, List, Optional, Sequence

__all__ = ["read_metrics", "iters_per_sec", "format_duration", "StageTimes", "watch_training"]


def read_metrics(path: str) -> List[Dict]:
    """Detectron2's ``metrics.json`` (one JSON object per line); partial lines are skipped."""
    out = []
    if not os.path.isfile(path):
        return out
    with open(path) as f:
        for ln in f:
            ln = ln.strip()
            if not ln:
                continue
            try:
                out.append(json.loads(ln))
            except json.JSONDecodeError:
                continue  # the line being written
    return out


def iters_per_sec(rows: Sequence[Dict]) -> Optional[float]:
    """Iterations per second from the ``time`` (seconds / iteration) of metrics rows."""
    times = [float(r["time"]) for r in rows if isinstance(r.get("time"), (int, float)) and r["time"] > 0]
    return len(times) / sum(times) if times else None


def format_duration(seconds: Optional[float]) -> str:
    """``H:MM:SS``; ``?`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(max(0.0, seconds)))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class StageTimes:
    """Wall times of the trainings and evaluations finished so far, for the ETA of the rest."""

    def __init__(self):
        self.train: List[float] = []
        self.eval: List[float] = []

    def rest(self, remaining_methods: int, iters: int, rate: float) -> float:
        """Seconds the ``remaining_methods`` not started yet will take: the mean training and
        evaluation time so far, or ``iters`` at ``rate`` each before the first training ended."""
        if remaining_methods <= 0:
            return 0.0
        if not self.train:
            return remaining_methods * iters / rate
        per_train = sum(self.train) / len(self.train)
        per_eval = (sum(self.eval) / len(self.eval)) if self.eval else 0.0
        return remaining_methods * (per_train + per_eval)


def watch_training(proc: subprocess.Popen, metrics_path: str, iters: int, t0: float, times: StageTimes,
                   remaining: int, say: Callable[[str], None], poll_s: float = 2.0) -> Optional[float]:
    """Wait for a training process, saying iteration, loss, it/s and ETAs from ``metrics.json``
    each time a new row appears (``remaining``: methods not started after this one).

    The rate is Detectron2's own seconds per iteration (``time``: median of the last 20
    iterations, data loading included), so start-up and polling delays do not distort it.
    Returns the mean rate over the run (None when no metrics were written).
    """
    last_iter = -1
    while True:
        done = proc.poll() is not None
        rows = [m for m in read_metrics(metrics_path) if "iteration" in m and "total_loss" in m]
        if rows and rows[-1]["iteration"] != last_iter:
            last_iter = rows[-1]["iteration"]
            it = int(last_iter) + 1
            rate = iters_per_sec(rows[-1:]) or (it / max(time.time() - t0, 1e-6))
            left = (iters - it) / rate
            rest = times.rest(remaining, iters, rate)
            loss = rows[-1].get("total_loss")
            say(f"iter {it}/{iters}{f', loss {loss:.3f}' if isinstance(loss, (int, float)) else ''}"
                f", {rate:.2f} it/s, ETA {format_duration(left)} (all methods {format_duration(left + rest)})")
        if done:
            return iters_per_sec(rows)
        time.sleep(poll_s)

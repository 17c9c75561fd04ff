"""Job slots: ``jobs`` methods trained and evaluated at once, each slot on its own device.

On a CPU machine a slot is a core (with one thread per subprocess); with a CUDA device slot ``i``
sees only GPU ``i`` through ``CUDA_VISIBLE_DEVICES``, or the ``i``-th of the devices it already
lists.
"""
from __future__ import annotations

import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Mapping, Optional, Sequence, TypeVar

from .settings import SettingError

__all__ = ["JobSlots", "slot_gpu"]

T = TypeVar("T")
R = TypeVar("R")


def slot_gpu(slot: int, visible: str = "") -> str:
    """``CUDA_VISIBLE_DEVICES`` of job slot ``slot``, given the devices already visible
    (``visible``, comma-separated; empty: every GPU)."""
    devices = [d for d in visible.split(",") if d.strip()]
    return devices[slot % len(devices)] if devices else str(slot)


class JobSlots:
    """Runs work ``jobs`` at a time; each worker thread holds one slot while it runs.

    Args:
        jobs: slots (>= 1).
        device: ``MODEL.DEVICE`` of the subprocesses; only ``cuda`` devices are split over slots.
    """

    def __init__(self, jobs: int, device: str):
        if int(jobs) < 1:
            raise SettingError("jobs", jobs, f"must be >= 1, got {jobs}")
        self.jobs = int(jobs)
        self.device = device
        self._local = threading.local()  # the slot of the calling worker thread

    @property
    def current(self) -> Optional[int]:
        """The calling thread's slot (None outside :meth:`map`)."""
        return getattr(self._local, "index", None)

    def cuda_visible(self, environ: Mapping[str, str] = os.environ) -> Optional[str]:
        """``CUDA_VISIBLE_DEVICES`` for a subprocess started from the calling thread; None (the
        environment as it is) with one job, on the CPU, or outside a slot."""
        slot = self.current
        if slot is None or self.jobs == 1 or not self.device.startswith("cuda"):
            return None
        return slot_gpu(slot, environ.get("CUDA_VISIBLE_DEVICES", ""))

    def map(self, fn: Callable[[int, T], R], items: Sequence[T]) -> List[R]:
        """``[fn(i, item) ...]``, ``jobs`` calls at a time, each in a free slot; in the order of
        ``items``. One job (or one item) runs in the calling thread, without a slot."""
        if self.jobs == 1 or len(items) <= 1:
            return [fn(i, x) for i, x in enumerate(items)]
        free: "queue.Queue[int]" = queue.Queue()
        for k in range(self.jobs):
            free.put(k)

        def work(i: int, x: T) -> R:
            self._local.index = free.get()
            try:
                return fn(i, x)
            finally:
                free.put(self._local.index)
                self._local.index = None

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            futures = [pool.submit(work, i, x) for i, x in enumerate(items)]
            return [f.result() for f in futures]

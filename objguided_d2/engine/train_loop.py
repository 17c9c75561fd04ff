"""Detectron2's ``SimpleTrainer`` / ``AMPTrainer`` with a non-finite loss check *before* the step.

Detectron2 notices a NaN/Inf only in ``_write_metrics`` (after ``backward``, main process only, and
naming no loss). Here every rank checks ``loss_dict`` right after the forward pass, the ranks agree
(one ``all_reduce`` of a flag, so DDP never deadlocks with one rank skipping ``backward``), and:

* ``SOLVER.NONFINITE_LOSS = "raise"`` (default): ``FloatingPointError`` such as
  ``"loss_mask is nan at iteration 12"`` -- the optimizer never sees the bad batch;
* ``"skip"``: no ``backward`` and no ``optimizer.step`` on that batch, a warning, and a count
  (``nonfinite_skips`` in the event storage and in the checkpoint); more than
  ``SOLVER.MAX_CONSECUTIVE_SKIPS`` non-finite batches in a row raise ``FloatingPointError``.
"""
import logging
import time
from typing import Dict

import torch
import torch.distributed as dist

from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

__all__ = ["NonFiniteLossGuard", "GuardedSimpleTrainer", "GuardedAMPTrainer", "NONFINITE_POLICIES"]

logger = logging.getLogger(__name__)

NONFINITE_POLICIES = ("raise", "skip")


class NonFiniteLossGuard:
    """Decides, identically on every rank, what to do with a step's losses.

    Args:
        policy: ``"raise"`` or ``"skip"`` (``SOLVER.NONFINITE_LOSS``).
        max_consecutive_skips: with ``"skip"``, the most batches in a row that may be skipped
            (``SOLVER.MAX_CONSECUTIVE_SKIPS``); one more raises.
    """

    def __init__(self, policy: str = "raise", max_consecutive_skips: int = 10):
        policy = str(policy).lower()
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"SOLVER.NONFINITE_LOSS={policy!r}: expected one of {NONFINITE_POLICIES}")
        if int(max_consecutive_skips) < 0:
            raise ValueError(f"SOLVER.MAX_CONSECUTIVE_SKIPS={max_consecutive_skips}: expected >= 0")
        self.policy = policy
        self.max_consecutive_skips = int(max_consecutive_skips)
        self.num_skipped = 0
        self.consecutive = 0

    @staticmethod
    def _describe(loss_dict: Dict[str, torch.Tensor]) -> str:
        bad = []
        for name, v in loss_dict.items():
            v = v.detach()
            if not bool(torch.isfinite(v).all()):
                bad.append(f"{name} is {'nan' if bool(torch.isnan(v).any()) else 'inf'}")
        return ", ".join(bad)

    def should_skip(self, loss_dict: Dict[str, torch.Tensor], iteration: int) -> bool:
        """True if this step must be skipped; raises ``FloatingPointError`` (see module doc)."""
        values = [v.detach() for v in loss_dict.values()]
        local_bad = not bool(torch.stack([torch.isfinite(v).all() for v in values]).all()) if values else False
        any_bad = local_bad
        if comm.get_world_size() > 1:
            flag = torch.tensor([int(local_bad)], device=values[0].device if values else "cpu")
            dist.all_reduce(flag)  # every rank takes the same branch
            any_bad = bool(flag.item() > 0)
        if not any_bad:
            self.consecutive = 0
            return False
        what = self._describe(loss_dict) if local_bad else "a loss is non-finite on another rank"
        msg = f"{what} at iteration {iteration}"
        if self.policy == "raise":
            raise FloatingPointError(
                f"{msg}. The optimizer was not stepped on this batch. Lower SOLVER.BASE_LR, enable "
                "SOLVER.CLIP_GRADIENTS, check the data, or set SOLVER.NONFINITE_LOSS 'skip' to skip such batches."
            )
        self.num_skipped += 1
        self.consecutive += 1
        if self.consecutive > self.max_consecutive_skips:
            raise FloatingPointError(
                f"{self.consecutive} consecutive batches had non-finite losses (last: {msg}); "
                f"aborting (SOLVER.MAX_CONSECUTIVE_SKIPS={self.max_consecutive_skips})"
            )
        logger.warning(
            "Skipping batch: %s (SOLVER.NONFINITE_LOSS='skip'; %d skipped so far, %d in a row)",
            msg, self.num_skipped, self.consecutive,
        )
        if _has_storage():
            get_event_storage().put_scalar("nonfinite_skips", self.num_skipped, smoothing_hint=False)
        return True

    def state_dict(self) -> dict:
        return {"num_skipped": self.num_skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.num_skipped = int(state.get("num_skipped", 0))
        self.consecutive = int(state.get("consecutive", 0))


def _has_storage() -> bool:
    try:
        get_event_storage()
    except AssertionError:
        return False
    return True


def _as_loss_dict(out):
    return {"total_loss": out} if isinstance(out, torch.Tensor) else out


class _NonFiniteGuardMixin:
    """Adds a :class:`NonFiniteLossGuard` (built from keyword arguments) to a Detectron2 trainer and
    keeps its skip counters in the trainer's checkpointed state."""

    def __init__(self, model, data_loader, optimizer, *, nonfinite_loss: str = "raise",
                 max_consecutive_skips: int = 10, **kwargs):
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.nonfinite_guard = NonFiniteLossGuard(nonfinite_loss, max_consecutive_skips)

    def state_dict(self):
        ret = super().state_dict()
        ret["nonfinite"] = self.nonfinite_guard.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.nonfinite_guard.load_state_dict(state_dict.get("nonfinite", {}))

    def _next_batch(self):
        """As Detectron2's run_step begins: the next batch, the time it took, and zero_grad when
        it comes before the forward."""
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        return data, data_time

    def _write_step_metrics(self, loss_dict, data_time):
        # As Detectron2's run_step: metrics are written synchronously or on its executor.
        if self.async_write_metrics:
            self.concurrent_executor.submit(self._write_metrics, loss_dict, data_time, iter=self.iter)
        else:
            self._write_metrics(loss_dict, data_time)


class GuardedSimpleTrainer(_NonFiniteGuardMixin, SimpleTrainer):
    """``SimpleTrainer`` whose ``run_step`` checks the losses before ``backward``.

    Args:
        model, data_loader, optimizer, **kwargs: as ``SimpleTrainer``.
        nonfinite_loss: ``"raise"`` | ``"skip"``; max_consecutive_skips: see :class:`NonFiniteLossGuard`.
    """

    def run_step(self):
        assert self.model.training, "[GuardedSimpleTrainer] model was changed to eval mode!"
        data, data_time = self._next_batch()
        loss_dict = _as_loss_dict(self.model(data))
        if self.nonfinite_guard.should_skip(loss_dict, self.iter):
            return
        losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_step_metrics(loss_dict, data_time)
        self.optimizer.step()


class GuardedAMPTrainer(_NonFiniteGuardMixin, AMPTrainer):
    """``AMPTrainer`` (CUDA mixed precision) with the same check as :class:`GuardedSimpleTrainer`."""

    def run_step(self):
        assert self.model.training, "[GuardedAMPTrainer] model was changed to eval mode!"
        assert torch.cuda.is_available(), "[GuardedAMPTrainer] CUDA is required for AMP training!"
        data, data_time = self._next_batch()
        with torch.autocast("cuda", dtype=self.precision):
            loss_dict = _as_loss_dict(self.model(data))
            if self.nonfinite_guard.should_skip(loss_dict, self.iter):
                return
            losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        if self.log_grad_scaler:
            get_event_storage().put_scalar("[metric]grad_scaler", self.grad_scaler.get_scale())
        self.after_backward()
        self._write_step_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()


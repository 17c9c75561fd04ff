"""Train and evaluate each compared method in its own subprocess, reusing finished runs.

Per method, under ``DIR/runs/<id>/`` (``<id>`` from :class:`~.presets.Method`), :class:`MethodRunner`
trains (:mod:`.launch`: ``tools/train_net.py``, its console in ``console.txt``), unless a finished
run with the same run key is there (:mod:`.records`; a run with the same key that stopped early
resumes), then evaluates with the worker (``eval/eval.json``, ``eval/qualitative.npz``), unless
a valid evaluation is there. Archived runs (weights removed) are reused with their stored
evaluation. Progress and ETAs come from :mod:`.progress`; ``jobs`` > 1 runs that many methods at
once in :mod:`.devices` job slots.

A failing method is recorded with its stage, the reason (the exception line of its console) and
the log path; the next method still runs.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from . import launch, records
from .devices import JobSlots
from .presets import Method
from .progress import StageTimes, format_duration, watch_training
from .settings import Budget, EvalSettings

__all__ = ["ARCHIVED_NO_REEVAL", "MethodResult", "MethodRunner"]


@dataclass
class MethodResult:
    """What happened to one method (JSON-serialisable with :func:`dataclasses.asdict`)."""

    id: str
    name: str
    config_file: str
    status: str = "pending"  # "ok" or "FAILED"
    stage: str = ""  # where it failed: "train" or "eval"
    reason: str = ""
    log: str = ""  # the file to read when it failed
    trained: bool = False  # trained (or resumed) in this invocation
    reused: bool = False  # a finished run was reused
    train_seconds: Optional[float] = None
    iters_per_sec: Optional[float] = None
    run_key: str = ""
    run_dir: str = ""  # DIR/runs/<id>
    eval: Dict = field(default_factory=dict)
    commands: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> Dict:
        return asdict(self)

    def fail(self, stage: str, reason: str, log: str) -> None:
        self.stage, self.reason, self.log = stage, reason, log


# Why an archived run fails when asked to evaluate again (a CLI points to its retrain flag).
ARCHIVED_NO_REEVAL = "an archived run (weights removed) cannot be evaluated again"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


class MethodRunner:
    """Trains and evaluates methods (see the module docstring).

    Args:
        output: the comparison folder ``DIR``.
        budget: shared training budget.
        datasets: dataset specs (``NAME=FORMAT:PATH``) the subprocesses register.
        train_name, test_name: registered dataset names of the splits.
        device: ``MODEL.DEVICE`` for training and evaluation.
        user_opts: config overrides for every method.
        eval_settings: evaluation / timing settings.
        threads: torch / OpenMP threads of the subprocesses (0: their default).
        jobs: methods trained and evaluated at once (see :mod:`.devices`).
        retrain: train even when a finished run exists.
        reeval: evaluate even when a valid evaluation exists.
        log: where progress lines go (default: print to stdout).
        poll_s: how often a running training's ``metrics.json`` is read.
    """

    def __init__(
        self,
        output: str,
        *,
        budget: Budget,
        datasets: Sequence[str],
        train_name: str,
        test_name: str,
        device: str,
        user_opts: Sequence[str] = (),
        eval_settings: EvalSettings = EvalSettings(),
        threads: int = 0,
        jobs: int = 1,
        retrain: bool = False,
        reeval: bool = False,
        log: Optional[Callable[[str], None]] = None,
        poll_s: float = 2.0,
    ):
        self.output = os.path.abspath(output)
        self.budget = budget
        self.datasets = list(datasets)
        self.train_name = train_name
        self.test_name = test_name
        self.device = device
        self.user_opts = list(user_opts)
        self.eval_settings = eval_settings
        self.threads = int(threads)
        self.slots = JobSlots(jobs, device)
        self.retrain = retrain
        self.reeval = reeval
        self.log = log or (lambda s: print(s, flush=True))
        self.poll_s = poll_s
        self.times = StageTimes()  # wall times so far, for the ETA of the rest

    @property
    def jobs(self) -> int:
        return self.slots.jobs

    def run_dir(self, method: Method) -> str:
        return os.path.join(self.output, "runs", method.id)

    def key(self, method: Method) -> str:
        return records.run_key(method.config_file, self.user_opts, self.budget, self.datasets, self.train_name)

    def is_finished(self, method: Method, key: Optional[str] = None) -> bool:
        """True when the method's run is finished with this run key (see :func:`.records.is_finished`)."""
        return records.is_finished(self.run_dir(method), key or self.key(method))

    def env(self) -> Dict[str, str]:
        """The environment of a subprocess started from the calling job slot."""
        return launch.subprocess_env(self.threads, self.slots.cuda_visible())

    # ------------------------------------------------------------------ training
    def train_command(self, method: Method, resume: bool = False) -> List[str]:
        opts = launch.train_opts(self.user_opts, self.budget, self.train_name, self.device)
        return launch.train_command(method.config_file, self.run_dir(method), opts, self.datasets, resume)

    def train(self, method: Method, res: MethodResult, position: str, remaining: int) -> bool:
        """Train ``method`` (or reuse / resume its run); ``remaining``: methods still waiting for
        a slot after this one (for the ETA). False when it failed (recorded in ``res``)."""
        d = self.run_dir(method)
        key = self.key(method)
        res.run_key = key
        meta = records.read_run_meta(d)
        if not self.retrain and records.is_finished(d, key):
            res.reused = True
            res.train_seconds = meta.get("train_seconds")
            res.iters_per_sec = meta.get("iters_per_sec")
            res.commands.append(meta.get("command", ""))
            self.log(f"{position} {method.name}: reusing the finished run in {d}")
            return True
        resume = not self.retrain and meta.get("key") == key and os.path.isfile(os.path.join(d, "last_checkpoint"))
        if not resume and os.path.isdir(d):
            shutil.rmtree(d)  # a stale run (other key, retrain, or no checkpoint): start clean
        os.makedirs(d, exist_ok=True)
        cmd = self.train_command(method, resume=resume)
        cmd_str = shlex.join(cmd)
        res.commands.append(cmd_str)
        records.write_run_meta(d, {"key": key, "config_file": method.config_file, "command": cmd_str,
                                   "finished": False, "started": _now()})
        console = os.path.join(d, "console.txt")
        self.log(f"{position} {method.name}: training {self.budget.iters} iterations"
                 f"{' (resuming)' if resume else ''}; log {os.path.join(d, 'log.txt')}")
        t0 = time.time()
        with open(console, "a") as out:
            proc = launch.start_logged(cmd, out, self.env())
            rate = watch_training(proc, os.path.join(d, "metrics.json"), self.budget.iters, t0, self.times,
                                  remaining, lambda s: self.log(f"{position} {method.name}: {s}"), self.poll_s)
        wall = time.time() - t0
        if proc.returncode != 0 or not os.path.isfile(os.path.join(d, "model_final.pth")):
            reason = (launch.failure_reason(console, proc.returncode) if proc.returncode != 0
                      else "training ended without writing model_final.pth")
            res.fail("train", reason, console)
            self.log(f"{position} {method.name}: training FAILED after {format_duration(wall)}: {reason} "
                     f"(see {console})")
            return False
        if rate is None:
            rate = self.budget.iters / wall if wall > 0 else None
        self.times.train.append(wall)
        res.trained, res.train_seconds, res.iters_per_sec = True, wall, rate
        records.write_run_meta(d, {**records.read_run_meta(d), "finished": True, "train_seconds": wall,
                                   "iters_per_sec": rate, "ended": _now()})
        speed = f" ({rate:.2f} it/s)" if rate else ""
        self.log(f"{position} {method.name}: training finished in {format_duration(wall)}{speed}")
        return True

    # ------------------------------------------------------------------ evaluation
    def eval_command(self, method: Method) -> List[str]:
        opts = launch.eval_opts(self.user_opts, self.budget, self.device)
        return launch.eval_command(method.config_file, self.run_dir(method), self.test_name, self.datasets,
                                   self.eval_settings, self.threads, opts)

    def _reuse_archived(self, method: Method, res: MethodResult, position: str) -> bool:
        """An archived run (weights removed): its stored evaluation, which cannot be redone."""
        d = self.run_dir(method)
        if self.reeval:
            res.fail("eval", ARCHIVED_NO_REEVAL, os.path.join(d, records.RUN_META))
            self.log(f"{position} {method.name}: evaluation FAILED: {res.reason}")
            return False
        with open(os.path.join(d, "eval", "eval.json")) as g:
            res.eval = json.load(g)
        self.log(f"{position} {method.name}: reusing the archived evaluation in {os.path.join(d, 'eval')} "
                 "(weights removed)")
        return True

    def evaluate(self, method: Method, res: MethodResult, position: str) -> bool:
        """Evaluate the trained ``method`` (or reuse a valid evaluation). False when it failed."""
        d = self.run_dir(method)
        eval_dir = os.path.join(d, "eval")
        if res.reused and records.is_archived(d):
            return self._reuse_archived(method, res, position)
        cmd = self.eval_command(method)
        key = records.eval_key(self.key(method), os.path.join(d, "model_final.pth"), cmd)
        res.commands.append(shlex.join(cmd))
        stored = None if (self.reeval or res.trained) else records.stored_eval(eval_dir, key)
        if stored is not None:
            res.eval = stored
            self.log(f"{position} {method.name}: reusing the evaluation in {eval_dir}")
            return True
        if os.path.isdir(eval_dir):
            shutil.rmtree(eval_dir)
        os.makedirs(eval_dir)
        console = os.path.join(eval_dir, "console.txt")
        self.log(f"{position} {method.name}: evaluating on {self.test_name} (metrics, speed, masks)")
        t0 = time.time()
        returncode = launch.run_logged(cmd, console, self.env())
        wall = time.time() - t0
        eval_json = os.path.join(eval_dir, "eval.json")
        if returncode != 0 or not os.path.isfile(eval_json):
            res.fail("eval", launch.failure_reason(console, returncode) if returncode != 0
                     else "evaluation ended without writing eval.json", console)
            self.log(f"{position} {method.name}: evaluation FAILED: {res.reason} (see {console})")
            return False
        self.times.eval.append(wall)
        with open(eval_json) as f:
            res.eval = json.load(f)
        records.save_eval_key(eval_dir, key)
        self.log(f"{position} {method.name}: evaluated in {format_duration(wall)}")
        return True

    # ------------------------------------------------------------------ all
    def _run_one(self, i: int, m: Method, n: int) -> MethodResult:
        res = MethodResult(id=m.id, name=m.name, config_file=m.config_file, run_dir=self.run_dir(m))
        position = f"[{i + 1}/{n}]"
        remaining = max(0, n - i - self.jobs)  # methods still waiting for a slot after this one
        try:
            ok = self.train(m, res, position, remaining=remaining) and self.evaluate(m, res, position)
        except Exception as e:  # noqa: BLE001  (one method's problem must not stop the others)
            ok = False
            res.fail(res.stage or "setup", f"{type(e).__name__}: {e}",
                     res.log or os.path.join(self.run_dir(m), "console.txt"))
            self.log(f"{position} {m.name}: FAILED: {res.reason}")
        res.status = "ok" if ok else "FAILED"
        return res

    def run(self, methods: Sequence[Method]) -> List[MethodResult]:
        """Train (or reuse) and evaluate every method, ``jobs`` at a time; the results come in
        the order of ``methods``. Never raises for one method's failure."""
        return self.slots.map(lambda i, m: self._run_one(i, m, len(methods)), list(methods))

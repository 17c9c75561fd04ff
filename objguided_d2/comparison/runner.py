"""Train and evaluate each compared method in its own subprocess, reusing finished runs.

Per method, under ``DIR/runs/<id>/`` (``<id>`` from :class:`~.presets.Method`):

* training: ``tools/train_net.py --config-file CFG [--dataset SPEC] <opts> <budget>`` with
  ``OUTPUT_DIR=DIR/runs/<id>``; Detectron2 writes its ``log.txt``, ``metrics.json`` and
  ``model_final.pth`` there; the process's stdout/stderr (tracebacks included) go to
  ``console.txt``. The run key (SHA-256 of the config file and its ``_BASE_`` files' contents,
  the opts, the budget, the seed and the dataset) is stored in ``compare_run.json``; a run is
  *finished* when ``model_final.pth`` exists and the stored key matches, and is then never trained
  again unless ``retrain``. A run with the same key that stopped early resumes (``--resume``).
* evaluation: ``python -m objguided_d2.comparison.worker`` (the same for every method) writes
  ``eval/eval.json`` (metrics, AP-vs-IoU curves, speed, parameter count) and
  ``eval/qualitative.npz``; its console goes to ``eval/console.txt``. Reused while the run key,
  the checkpoint and the evaluation settings are unchanged.
* archived runs (:func:`archive_runs`, ``benchmarks/archive_study.py``): a finished, evaluated run
  copied without its checkpoints, so that a study can be committed and continued in a fresh
  checkout. ``compare_run.json`` says ``weights_removed``; with the same run key the run counts as
  finished and its stored evaluation is reused (``--reeval`` cannot redo it: ``--retrain`` does).

A failing method is recorded with its stage, the reason (the exception line of its console) and
the log path; the next method still runs.

``jobs`` > 1 trains and evaluates that many methods at once, each in its own subprocesses (one
per core of a CPU machine with ``threads`` 1; one per GPU with ``device`` cuda: job slot i sees
only GPU i through ``CUDA_VISIBLE_DEVICES``, or the i-th of the devices it already lists).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Union

from objguided_d2.config import config_chain
from objguided_d2.utils.io import atomic_write, write_json

from .presets import REPO_ROOT, Method

__all__ = [
    "BEST_F1",
    "Budget",
    "EvalSettings",
    "MethodResult",
    "config_chain",
    "run_key",
    "train_opts",
    "eval_opts",
    "failure_reason",
    "read_metrics",
    "read_record",
    "archive_runs",
    "vis_score_arg",
    "MethodRunner",
]

TRAIN_NET = os.path.join(REPO_ROOT, "tools", "train_net.py")
RUN_META = "compare_run.json"


def read_record(path: str) -> Dict:
    """A JSON object the comparison wrote (``compare_run.json``, ``results.json``); ``{}`` when the
    file is missing, unreadable or not an object (a killed run may leave none)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Budget:
    """The one training budget shared by every method."""

    iters: int
    batch: int
    input_size: Optional[int]  # None: each config's own INPUT sizes
    seed: int

    def __post_init__(self):
        if self.iters < 1:
            raise ValueError(f"--iters must be >= 1, got {self.iters}")
        if self.batch < 1:
            raise ValueError(f"--batch must be >= 1, got {self.batch}")
        if self.input_size is not None and self.input_size < 16:
            raise ValueError(f"--input-size must be >= 16 pixels, got {self.input_size}")


# --vis-score value: draw each method at its own operating point (its scores need not be on
# another method's scale: ours' heatmap peaks stay below a box classifier's 0.5 for long).
BEST_F1 = "best-f1"


def vis_score_arg(value: str) -> Union[str, float]:
    """``--vis-score``: a number, or ``best-f1``."""
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


def file_sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def run_key(config_file: str, opts: Sequence[str], budget: Budget, datasets: Sequence[str], train_name: str) -> str:
    """SHA-256 identifying a training run: what the configs say, the opts, budget, seed, data."""
    payload = {
        "configs": [file_sha256(p) for p in config_chain(config_file)],
        "opts": [str(o) for o in opts],
        "budget": asdict(budget),
        "datasets": list(datasets),
        "train": train_name,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _tuple(name: str) -> str:
    return f"('{name}',)"


def _size_opts(budget: Budget) -> List[str]:
    if budget.input_size is None:
        return []
    s = str(budget.input_size)
    return ["INPUT.TRAIN_SIZE", s, "INPUT.MIN_SIZE_TEST", s, "INPUT.MAX_SIZE_TEST", s]


def train_opts(user_opts: Sequence[str], budget: Budget, train_name: str, device: str) -> List[str]:
    """Config overrides of a training run (the budget last, so it wins over ``user_opts``).

    Evaluation during training is off (``DATASETS.TEST=()``): every method is evaluated
    afterwards by the same worker.
    """
    return [
        *user_opts,
        "DATASETS.TRAIN", _tuple(train_name),
        "DATASETS.TEST", "()",
        "TEST.EVAL_PERIOD", "0",
        "SOLVER.MAX_ITER", str(budget.iters),
        "SOLVER.IMS_PER_BATCH", str(budget.batch),
        *_size_opts(budget),
        "SEED", str(budget.seed),
        "MODEL.DEVICE", device,
    ]


def eval_opts(user_opts: Sequence[str], budget: Budget, device: str) -> List[str]:
    """Config overrides of an evaluation (same test sizes as training, same device for all)."""
    return [*user_opts, *_size_opts(budget), "MODEL.DEVICE", device]


_EXC_RE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)|Killed|Segmentation fault)\b.*")


def failure_reason(console_path: str, returncode: Optional[int] = None) -> str:
    """The last exception line of a console log (e.g. ``KeyError: 'No object named ...'``)."""
    lines: List[str] = []
    if os.path.isfile(console_path):
        with open(console_path, errors="replace") as f:
            lines = [ln.rstrip() for ln in f]
    for ln in reversed(lines):
        if _EXC_RE.match(ln.strip()):
            return ln.strip()[:400]
    tail = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
    code = f"exit code {returncode}" if returncode is not None else "failed"
    if returncode is not None and returncode < 0:
        code = f"killed by signal {-returncode}"
    return f"{code}: {tail[:300]}" if tail else code


def _mark_failed(res, stage: str, console: str, returncode: int, missing_output: str) -> None:
    """Record a failed subprocess stage: its reason (the traceback's last line, or what output is
    missing when it exited 0) and its console log."""
    res.stage = stage
    res.reason = failure_reason(console, returncode) if returncode != 0 else missing_output
    res.log = console


def _is_archived(run_dir: str, meta: Dict) -> bool:
    """A finished run copied without its weights, its evaluation kept (see :func:`archive_runs`)."""
    return bool(meta.get("weights_removed")) and bool(meta.get("finished")) and os.path.isfile(
        os.path.join(run_dir, "eval", "eval.json"))


# Checkpoints and what points at them: left out of an archive (a tiny model's is ~155 MB).
_WEIGHT_FILES = re.compile(r"(\.pth|\.pkl|^last_checkpoint)$")


def archive_runs(compare_dir: str, dest: str) -> Dict[str, str]:
    """Copy a ``tools/compare.py`` folder to ``dest`` without checkpoints, for committing a study.

    Every finished, evaluated run (``model_final.pth`` and ``eval/eval.json``) is copied with
    ``weights_removed`` set in its ``compare_run.json``; runs still training or never evaluated are
    left out (they resume where their checkpoints are). The folder's own files (tables, plots,
    ``results.json``) are copied too. Nothing in ``compare_dir`` changes; a run already in ``dest``
    is kept when it is the same finished run, else replaced, and the status says so.

    Returns:
        run id -> "archived", "archived (replaced ...)", "unchanged" or why it was left out.
    """
    runs_src = os.path.join(compare_dir, "runs")
    if not os.path.isdir(runs_src):
        raise ValueError(f"{compare_dir}: not a tools/compare.py folder (no runs/)")
    if os.path.abspath(dest) == os.path.abspath(compare_dir):
        raise ValueError(f"archive destination {dest} is the study folder itself")
    os.makedirs(os.path.join(dest, "runs"), exist_ok=True)
    for name in sorted(os.listdir(compare_dir)):
        src = os.path.join(compare_dir, name)
        if os.path.isfile(src) and not _WEIGHT_FILES.search(name):
            shutil.copy2(src, os.path.join(dest, name))
    status: Dict[str, str] = {}
    for rid in sorted(os.listdir(runs_src)):
        src = os.path.join(runs_src, rid)
        meta = MethodRunner._read_meta(src)
        archived = _is_archived(src, meta)
        if not (archived or os.path.isfile(os.path.join(src, "model_final.pth"))):
            status[rid] = "left out: not finished (no model_final.pth)"
            continue
        if not os.path.isfile(os.path.join(src, "eval", "eval.json")):
            status[rid] = "left out: not evaluated (no eval/eval.json)"
            continue
        out = os.path.join(dest, "runs", rid)
        old = MethodRunner._read_meta(out)
        if old.get("key") == meta.get("key") and old.get("ended") == meta.get("ended") and _is_archived(out, old):
            status[rid] = "unchanged"
            continue
        tmp = out + ".archiving"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=lambda _d, names: [n for n in names if _WEIGHT_FILES.search(n)])
        MethodRunner._write_meta(tmp, {**meta, "finished": True, "weights_removed": True})
        status[rid] = "archived"
        if os.path.isdir(out):
            status[rid] += " (replaced an older copy" + ("" if old.get("key") == meta.get("key") else
                                                        " with another run key") + ")"
            shutil.rmtree(out)
        os.replace(tmp, out)
    return status


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


def _rate(rows: Sequence[Dict]) -> Optional[float]:
    """Iterations per second from the ``time`` (seconds / iteration) of metrics rows."""
    times = [float(r["time"]) for r in rows if isinstance(r.get("time"), (int, float)) and r["time"] > 0]
    return len(times) / sum(times) if times else None


def _fmt_eta(seconds: Optional[float]) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(max(0.0, seconds)))
    return f"{seconds // 3600:d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class MethodRunner:
    """Trains and evaluates methods one after the other (see the module docstring).

    Args:
        output: the comparison folder ``DIR``.
        budget: shared training budget.
        datasets: ``--dataset`` specs to pass to the subprocesses.
        train_name, test_name: registered dataset names of the splits.
        device: ``MODEL.DEVICE`` for training and evaluation.
        user_opts: config overrides for every method.
        eval_settings: evaluation / timing settings.
        threads: torch / OpenMP threads of the subprocesses (0: their default).
        jobs: methods trained and evaluated at once (see the module docstring).
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
        if int(jobs) < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = int(jobs)
        self._slot = threading.local()  # the job slot (GPU index) of the calling worker thread
        self.retrain = retrain
        self.reeval = reeval
        self.log = log or (lambda s: print(s, flush=True))
        self.poll_s = poll_s
        self._train_seconds: List[float] = []  # wall time of the trainings so far (for the ETA)
        self._eval_seconds: List[float] = []

    # ------------------------------------------------------------------ helpers
    def run_dir(self, method: Method) -> str:
        return os.path.join(self.output, "runs", method.id)

    def _env(self) -> Dict[str, str]:
        env = dict(os.environ)
        # The package must be importable by the subprocesses even when it is not installed.
        env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        if self.threads > 0:
            for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env[k] = str(self.threads)
        slot = getattr(self._slot, "index", None)
        if slot is not None and self.jobs > 1 and self.device.startswith("cuda"):
            visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
            env["CUDA_VISIBLE_DEVICES"] = visible[slot % len(visible)] if visible else str(slot)
        return env

    def _dataset_args(self) -> List[str]:
        return [a for spec in self.datasets for a in ("--dataset", spec)]

    def _eta_rest(self, remaining_methods: int) -> Optional[float]:
        """Seconds the methods not started yet will take: the mean training and evaluation
        wall time of the methods done so far (None before the first one finished)."""
        if remaining_methods <= 0:
            return 0.0
        if not self._train_seconds:
            return None
        per_train = sum(self._train_seconds) / len(self._train_seconds)
        per_eval = (sum(self._eval_seconds) / len(self._eval_seconds)) if self._eval_seconds else 0.0
        return remaining_methods * (per_train + per_eval)

    # ------------------------------------------------------------------ training
    def train_command(self, method: Method, resume: bool = False) -> List[str]:
        opts = train_opts(self.user_opts, self.budget, self.train_name, self.device)
        return [
            sys.executable, TRAIN_NET, "--config-file", method.config_file, *self._dataset_args(),
            *(["--resume"] if resume else []), *opts, "OUTPUT_DIR", self.run_dir(method),
        ]

    def key(self, method: Method) -> str:
        return run_key(method.config_file, self.user_opts, self.budget, self.datasets, self.train_name)

    def is_finished(self, method: Method, key: Optional[str] = None) -> bool:
        """True when ``model_final.pth`` exists (or an archived run's evaluation) and was trained
        with this run key."""
        d = self.run_dir(method)
        meta = self._read_meta(d)
        done = os.path.isfile(os.path.join(d, "model_final.pth")) or _is_archived(d, meta)
        return done and meta.get("key") == (key or self.key(method))

    @staticmethod
    def _read_meta(run_dir: str) -> Dict:
        return read_record(os.path.join(run_dir, RUN_META))

    @staticmethod
    def _write_meta(run_dir: str, meta: Dict) -> None:
        write_json(os.path.join(run_dir, RUN_META), meta, indent=2, overwrite=True)

    def train(self, method: Method, res: MethodResult, position: str, remaining: int) -> bool:
        d = self.run_dir(method)
        key = self.key(method)
        res.run_key = key
        meta = self._read_meta(d)
        if not self.retrain and self.is_finished(method, key):
            res.reused = True
            res.train_seconds = meta.get("train_seconds")
            res.iters_per_sec = meta.get("iters_per_sec")
            res.commands.append(meta.get("command", ""))
            self.log(f"{position} {method.name}: reusing the finished run in {d} (use --retrain to train again)")
            return True
        resume = (
            not self.retrain
            and meta.get("key") == key
            and os.path.isfile(os.path.join(d, "last_checkpoint"))
        )
        if not resume and os.path.isdir(d):
            shutil.rmtree(d)  # a stale run (other key, --retrain, or no checkpoint): start clean
        os.makedirs(d, exist_ok=True)
        cmd = self.train_command(method, resume=resume)
        cmd_str = shlex.join(cmd)
        res.commands.append(cmd_str)
        self._write_meta(d, {"key": key, "config_file": method.config_file, "command": cmd_str,
                             "finished": False, "started": time.strftime("%Y-%m-%d %H:%M:%S")})
        console = os.path.join(d, "console.txt")
        self.log(f"{position} {method.name}: training {self.budget.iters} iterations"
                 f"{' (resuming)' if resume else ''}; log {os.path.join(d, 'log.txt')}")
        t0 = time.time()
        with open(console, "a") as out:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=self._env(), stdout=out, stderr=subprocess.STDOUT)
            rate = self._monitor(proc, method, d, t0, position, remaining)
        wall = time.time() - t0
        if proc.returncode != 0 or not os.path.isfile(os.path.join(d, "model_final.pth")):
            _mark_failed(res, "train", console, proc.returncode, "training ended without writing model_final.pth")
            self.log(f"{position} {method.name}: training FAILED after {_fmt_eta(wall)}: {res.reason} (see {console})")
            return False
        if rate is None:
            rate = self.budget.iters / wall if wall > 0 else None
        self._train_seconds.append(wall)
        res.trained = True
        res.train_seconds = wall
        res.iters_per_sec = rate
        self._write_meta(d, {**self._read_meta(d), "finished": True, "train_seconds": wall,
                             "iters_per_sec": rate, "ended": time.strftime("%Y-%m-%d %H:%M:%S")})
        speed = f" ({rate:.2f} it/s)" if rate else ""
        self.log(f"{position} {method.name}: training finished in {_fmt_eta(wall)}{speed}")
        return True

    def _monitor(self, proc: subprocess.Popen, method: Method, run_dir: str, t0: float,
                 position: str, remaining: int) -> Optional[float]:
        """Wait for a training process, printing iteration, it/s and ETAs from ``metrics.json``.

        The rate is Detectron2's own seconds per iteration (``time``: median of the last 20
        iterations, data loading included), so start-up and polling delays do not distort it.
        Returns the mean rate over the run (None when no metrics were written).
        """
        metrics_path = os.path.join(run_dir, "metrics.json")
        last_iter = -1
        while True:
            done = proc.poll() is not None
            rows = [m for m in read_metrics(metrics_path) if "iteration" in m and "total_loss" in m]
            if rows and rows[-1]["iteration"] != last_iter:
                last_iter = rows[-1]["iteration"]
                it = int(last_iter) + 1
                rate = _rate(rows[-1:]) or (it / max(time.time() - t0, 1e-6))
                left = (self.budget.iters - it) / rate
                rest = self._eta_rest(remaining)
                if rest is None:  # no method finished yet: assume the others run at this rate
                    rest = remaining * self.budget.iters / rate
                loss = rows[-1].get("total_loss")
                self.log(f"{position} {method.name}: iter {it}/{self.budget.iters}"
                         f"{f', loss {loss:.3f}' if isinstance(loss, (int, float)) else ''}"
                         f", {rate:.2f} it/s, ETA {_fmt_eta(left)} (all methods {_fmt_eta(left + rest)})")
            if done:
                return _rate(rows)
            time.sleep(self.poll_s)

    # ------------------------------------------------------------------ evaluation
    def eval_command(self, method: Method) -> List[str]:
        s = self.eval_settings
        d = self.run_dir(method)
        return [
            sys.executable, "-m", "objguided_d2.comparison.worker",
            "--config-file", method.config_file,
            "--weights", os.path.join(d, "model_final.pth"),
            "--test-dataset", self.test_name,
            "--output", os.path.join(d, "eval"),
            *self._dataset_args(),
            "--speed-images", str(s.speed_images), "--warmup", str(s.warmup), "--repeats", str(s.repeats),
            "--vis-images", str(s.vis_images), "--vis-score", str(s.vis_score),
            "--threads", str(self.threads),
            *eval_opts(self.user_opts, self.budget, self.device), "OUTPUT_DIR", d,
        ]

    def _reuse_archived(self, method: Method, res: MethodResult, position: str) -> bool:
        """An archived run (weights removed): its stored evaluation, which cannot be redone."""
        eval_dir = os.path.join(self.run_dir(method), "eval")
        if self.reeval:
            res.stage, res.log = "eval", os.path.join(self.run_dir(method), RUN_META)
            res.reason = "an archived run (weights removed) cannot be evaluated again; use --retrain"
            self.log(f"{position} {method.name}: evaluation FAILED: {res.reason}")
            return False
        with open(os.path.join(eval_dir, "eval.json")) as g:
            res.eval = json.load(g)
        self.log(f"{position} {method.name}: reusing the archived evaluation in {eval_dir} (weights removed)")
        return True

    def _eval_key(self, method: Method, cmd: Sequence[str]) -> str:
        w = os.path.join(self.run_dir(method), "model_final.pth")
        st = os.stat(w)
        payload = {"run": self.key(method), "weights": [st.st_size, st.st_mtime_ns], "cmd": list(cmd[1:])}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def evaluate(self, method: Method, res: MethodResult, position: str) -> bool:
        eval_dir = os.path.join(self.run_dir(method), "eval")
        if res.reused and _is_archived(self.run_dir(method), self._read_meta(self.run_dir(method))):
            return self._reuse_archived(method, res, position)
        cmd = self.eval_command(method)
        key = self._eval_key(method, cmd)
        eval_json = os.path.join(eval_dir, "eval.json")
        key_file = os.path.join(eval_dir, "eval_key.txt")
        res.commands.append(shlex.join(cmd))
        if not (self.reeval or res.trained) and os.path.isfile(eval_json) and os.path.isfile(key_file):
            with open(key_file) as f:
                if f.read().strip() == key:
                    with open(eval_json) as g:
                        res.eval = json.load(g)
                    self.log(f"{position} {method.name}: reusing the evaluation in {eval_dir}")
                    return True
        if os.path.isdir(eval_dir):
            shutil.rmtree(eval_dir)
        os.makedirs(eval_dir)
        console = os.path.join(eval_dir, "console.txt")
        self.log(f"{position} {method.name}: evaluating on {self.test_name} (metrics, speed, masks)")
        t0 = time.time()
        with open(console, "w") as out:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, env=self._env(), stdout=out, stderr=subprocess.STDOUT)
        wall = time.time() - t0
        if proc.returncode != 0 or not os.path.isfile(eval_json):
            _mark_failed(res, "eval", console, proc.returncode, "evaluation ended without writing eval.json")
            self.log(f"{position} {method.name}: evaluation FAILED: {res.reason} (see {console})")
            return False
        self._eval_seconds.append(wall)
        with open(eval_json) as f:
            res.eval = json.load(f)
        atomic_write(key_file, lambda f: f.write(key + "\n"), mode="w", overwrite=True)
        self.log(f"{position} {method.name}: evaluated in {_fmt_eta(wall)}")
        return True

    # ------------------------------------------------------------------ all
    def _run_one(self, m: Method, i: int, n: int) -> MethodResult:
        res = MethodResult(id=m.id, name=m.name, config_file=m.config_file, run_dir=self.run_dir(m))
        position = f"[{i + 1}/{n}]"
        # Methods still waiting for a slot after this one (the ETA of the rest).
        remaining = max(0, n - i - self.jobs)
        try:
            ok = self.train(m, res, position, remaining=remaining) and self.evaluate(m, res, position)
        except Exception as e:  # noqa: BLE001  (one method's problem must not stop the others)
            ok = False
            res.stage = res.stage or "setup"
            res.reason = f"{type(e).__name__}: {e}"
            res.log = res.log or os.path.join(self.run_dir(m), "console.txt")
            self.log(f"{position} {m.name}: FAILED: {res.reason}")
        res.status = "ok" if ok else "FAILED"
        return res

    def run(self, methods: Sequence[Method]) -> List[MethodResult]:
        """Train (or reuse) and evaluate every method, ``jobs`` at a time; the results come in
        the order of ``methods``. Never raises for one method's failure."""
        n = len(methods)
        if self.jobs == 1 or n <= 1:
            return [self._run_one(m, i, n) for i, m in enumerate(methods)]
        slots: "queue.Queue[int]" = queue.Queue()
        for k in range(self.jobs):
            slots.put(k)

        def work(i: int, m: Method) -> MethodResult:
            self._slot.index = slots.get()
            try:
                return self._run_one(m, i, n)
            finally:
                slots.put(self._slot.index)
                self._slot.index = None

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            futures = [pool.submit(work, i, m) for i, m in enumerate(methods)]
            return [f.result() for f in futures]

"""The subprocesses of a comparison: their command lines, environment and console files, and why
one failed.

* training: ``tools/train_net.py --config-file CFG [--dataset SPEC] <opts> <budget>`` with
  ``OUTPUT_DIR`` the run folder; Detectron2 writes its ``log.txt``, ``metrics.json`` and
  ``model_final.pth`` there; the process's stdout/stderr (tracebacks included) go to ``console.txt``.
* evaluation: ``python -m objguided_d2.comparison.worker`` (the same for every method), its console
  in ``eval/console.txt``.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

from .presets import REPO_ROOT
from .settings import Budget, EvalSettings

__all__ = ["TRAIN_NET", "train_opts", "eval_opts", "train_command", "eval_command", "subprocess_env",
           "start_logged", "run_logged", "failure_reason"]

TRAIN_NET = os.path.join(REPO_ROOT, "tools", "train_net.py")


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


def _dataset_args(datasets: Sequence[str]) -> List[str]:
    return [a for spec in datasets for a in ("--dataset", spec)]


def train_command(config_file: str, run_dir: str, opts: Sequence[str], datasets: Sequence[str],
                  resume: bool = False) -> List[str]:
    """``tools/train_net.py`` training ``config_file`` into ``run_dir`` (``opts``: :func:`train_opts`)."""
    return [
        sys.executable, TRAIN_NET, "--config-file", config_file, *_dataset_args(datasets),
        *(["--resume"] if resume else []), *opts, "OUTPUT_DIR", run_dir,
    ]


def eval_command(config_file: str, run_dir: str, test_name: str, datasets: Sequence[str],
                 settings: EvalSettings, threads: int, opts: Sequence[str]) -> List[str]:
    """The worker evaluating ``run_dir/model_final.pth`` on ``test_name`` into ``run_dir/eval``
    (``opts``: :func:`eval_opts`)."""
    s = settings
    return [
        sys.executable, "-m", "objguided_d2.comparison.worker",
        "--config-file", config_file,
        "--weights", os.path.join(run_dir, "model_final.pth"),
        "--test-dataset", test_name,
        "--output", os.path.join(run_dir, "eval"),
        *_dataset_args(datasets),
        "--speed-images", str(s.speed_images), "--warmup", str(s.warmup), "--repeats", str(s.repeats),
        "--vis-images", str(s.vis_images), "--vis-score", str(s.vis_score),
        "--threads", str(threads),
        *opts, "OUTPUT_DIR", run_dir,
    ]


def subprocess_env(threads: int = 0, cuda_visible: Optional[str] = None) -> Dict[str, str]:
    """This process's environment for a subprocess: the package importable, ``threads`` torch /
    OpenMP threads (0: their default), ``CUDA_VISIBLE_DEVICES`` when given (a job slot's GPU)."""
    env = dict(os.environ)
    # The package must be importable by the subprocesses even when it is not installed.
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if threads > 0:
        for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[k] = str(threads)
    if cuda_visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible
    return env


def start_logged(cmd: Sequence[str], console, env: Dict[str, str]) -> subprocess.Popen:
    """Start ``cmd`` in the repository with stdout and stderr going to the open file ``console``."""
    return subprocess.Popen(list(cmd), cwd=REPO_ROOT, env=env, stdout=console, stderr=subprocess.STDOUT)


def run_logged(cmd: Sequence[str], console_path: str, env: Dict[str, str]) -> int:
    """Run ``cmd`` to the end, its console in ``console_path`` (replaced); its exit code."""
    with open(console_path, "w") as out:
        return subprocess.run(list(cmd), cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT).returncode


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

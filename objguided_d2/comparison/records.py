"""Run keys and the records that let a comparison reuse finished work.

* run key: SHA-256 of the config file and its ``_BASE_`` files' contents, the opts, the budget,
  the seed and the dataset; stored in the run folder's ``compare_run.json``. A run is *finished*
  when ``model_final.pth`` exists and the stored key matches.
* evaluation key (``eval/eval_key.txt``): the run key, the checkpoint's size and time and the
  evaluation command; ``eval/eval.json`` is reused while it matches.
* archived runs (:func:`archive_runs`, ``benchmarks/archive_study.py``): a finished, evaluated run
  copied without its checkpoints, so that a study can be committed and continued in a fresh
  checkout. ``compare_run.json`` says ``weights_removed``; with the same run key the run counts as
  finished and its stored evaluation is reused (it cannot be evaluated again: it can be retrained).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict
from typing import Dict, Optional, Sequence

from objguided_d2.config import config_chain
from objguided_d2.utils.io import atomic_write, write_json

from .settings import Budget

__all__ = [
    "RUN_META",
    "read_record",
    "read_run_meta",
    "write_run_meta",
    "file_sha256",
    "run_key",
    "is_archived",
    "is_finished",
    "eval_key",
    "stored_eval",
    "save_eval_key",
    "archive_runs",
]

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


def read_run_meta(run_dir: str) -> Dict:
    """``run_dir/compare_run.json`` (``{}`` when there is none)."""
    return read_record(os.path.join(run_dir, RUN_META))


def write_run_meta(run_dir: str, meta: Dict) -> None:
    """Replace ``run_dir/compare_run.json`` atomically (two writers never leave a broken file)."""
    write_json(os.path.join(run_dir, RUN_META), meta, indent=2, overwrite=True)


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


def is_archived(run_dir: str, meta: Optional[Dict] = None) -> bool:
    """A finished run copied without its weights, its evaluation kept (see :func:`archive_runs`);
    ``meta``: its ``compare_run.json`` when already read."""
    meta = read_run_meta(run_dir) if meta is None else meta
    return bool(meta.get("weights_removed")) and bool(meta.get("finished")) and os.path.isfile(
        os.path.join(run_dir, "eval", "eval.json"))


def is_finished(run_dir: str, key: str) -> bool:
    """True when ``model_final.pth`` exists (or an archived run's evaluation) and was trained with
    run key ``key``."""
    meta = read_run_meta(run_dir)
    done = os.path.isfile(os.path.join(run_dir, "model_final.pth")) or is_archived(run_dir, meta)
    return done and meta.get("key") == key


def eval_key(run: str, weights: str, cmd: Sequence[str]) -> str:
    """SHA-256 of an evaluation: run key ``run``, the checkpoint ``weights`` (size, time) and the
    evaluation command without its interpreter."""
    st = os.stat(weights)
    payload = {"run": run, "weights": [st.st_size, st.st_mtime_ns], "cmd": list(cmd[1:])}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def stored_eval(eval_dir: str, key: str) -> Optional[Dict]:
    """``eval_dir/eval.json`` when it was written with evaluation key ``key``, else None."""
    eval_json, key_file = os.path.join(eval_dir, "eval.json"), os.path.join(eval_dir, "eval_key.txt")
    if not (os.path.isfile(eval_json) and os.path.isfile(key_file)):
        return None
    with open(key_file) as f:
        if f.read().strip() != key:
            return None
    with open(eval_json) as g:
        return json.load(g)


def save_eval_key(eval_dir: str, key: str) -> None:
    """Mark ``eval_dir/eval.json`` as written with evaluation key ``key``."""
    atomic_write(os.path.join(eval_dir, "eval_key.txt"), lambda f: f.write(key + "\n"), mode="w", overwrite=True)


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
        meta = read_run_meta(src)
        if not (is_archived(src, meta) or os.path.isfile(os.path.join(src, "model_final.pth"))):
            status[rid] = "left out: not finished (no model_final.pth)"
            continue
        if not os.path.isfile(os.path.join(src, "eval", "eval.json")):
            status[rid] = "left out: not evaluated (no eval/eval.json)"
            continue
        out = os.path.join(dest, "runs", rid)
        old = read_run_meta(out)
        if old.get("key") == meta.get("key") and old.get("ended") == meta.get("ended") and is_archived(out, old):
            status[rid] = "unchanged"
            continue
        tmp = out + ".archiving"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp, ignore=lambda _d, names: [n for n in names if _WEIGHT_FILES.search(n)])
        write_run_meta(tmp, {**meta, "finished": True, "weights_removed": True})
        status[rid] = "archived"
        if os.path.isdir(out):
            status[rid] += " (replaced an older copy" + ("" if old.get("key") == meta.get("key") else
                                                        " with another run key") + ")"
            shutil.rmtree(out)
        os.replace(tmp, out)
    return status

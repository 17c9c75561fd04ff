"""Killed runs, with real tools/train_net.py subprocesses and SIGKILL.

(a) killed mid-training after periodic checkpoints: ``--resume`` continues from the last complete
    checkpoint with the same iteration counter, optimizer state (Adam step counts) and LR schedule.
(b) killed while writing a checkpoint (the save is stalled deterministically after half of the
    temporary file is written): the previous checkpoint stays the latest, resume works, and the
    leftover temporary file is removed.
"""
import json
import os
import subprocess
import sys
import textwrap
import time

import torch

from objguided_d2.engine.checkpoint import PARTIAL_SUFFIX, is_complete_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
SPEC = "kill=synthetic:nuclei?image_size=128&num_train=4&num_val=1&num_test=1"
BASE_LR, WARMUP = 1e-4, 6
FAST = [
    "--config-file", "configs/tiny/mask_rcnn_R18_tiny.yaml", "--dataset", SPEC,
    "DATASETS.TRAIN", '("kill_train",)', "DATASETS.TEST", "()", "INPUT.TRAIN_SIZE", "128",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "2", "MODEL.DEVICE", "cpu",
    # Adam keeps a per-parameter step count; the warmup makes the LR depend on the iteration
    # (Detectron2 caps the warmup at MAX_ITER, so it is kept below both runs' MAX_ITER).
    "SOLVER.OPTIMIZER", "ADAM", "SOLVER.BASE_LR", str(BASE_LR), "SOLVER.WARMUP_ITERS", str(WARMUP),
]


def _env(cache):
    return dict(os.environ, OBJGUIDED_CACHE=str(cache), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def _run(args, cache):
    p = subprocess.run([sys.executable, TRAIN_NET, *args], cwd=ROOT, env=_env(cache), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    return p.stdout + p.stderr


def _start_and_kill(cmd, cache, log, ready, timeout=240):
    """Start ``cmd``, wait until ``ready()`` holds, SIGKILL it. Returns the exit status."""
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=ROOT, env=_env(cache), stdout=f, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + timeout
            while not ready():
                assert p.poll() is None, open(log).read()[-4000:]
                assert time.time() < deadline, "timed out waiting for the run to get there"
                time.sleep(0.05)
        finally:
            p.kill()  # SIGKILL: no cleanup handler runs
            p.wait()
    return p.returncode


def _tag(out):
    try:
        return (out / "last_checkpoint").read_text().strip()
    except FileNotFoundError:
        return ""


def _warmup_lr(i):
    """Detectron2's linear warmup (WARMUP_FACTOR 0.001) of a constant schedule at iteration i."""
    alpha = min(i / WARMUP, 1.0)
    return BASE_LR * (0.001 * (1 - alpha) + alpha)


def test_sigkill_mid_training_then_resume(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    common = [*FAST, "OUTPUT_DIR", str(out)]
    rc = _start_and_kill([sys.executable, TRAIN_NET, *common, "SOLVER.MAX_ITER", "500"], cache,
                         tmp_path / "killed.log", lambda: _tag(out) not in ("", "model_0000001.pth"))
    assert rc == -9
    tag = _tag(out)
    k = int(tag[len("model_"):-len(".pth")])
    assert k >= 3 and not (out / "model_final.pth").exists()
    last = torch.load(out / tag, weights_only=True)  # complete, and plain (no unpickling needed)
    assert last["iteration"] == k

    log = _run(["--resume", *common, "SOLVER.MAX_ITER", str(k + 3)], cache)
    assert f"Starting training from iteration {k + 1}" in log
    assert _tag(out) == "model_final.pth"
    final = torch.load(out / "model_final.pth", weights_only=True)
    assert final["iteration"] == k + 2
    # optimizer restored: every Adam state counts all k + 3 steps (k + 1 before the kill, 2 after)
    steps = {int(s["step"]) for s in final["trainer"]["_trainer"]["optimizer"]["state"].values()}
    assert steps == {k + 3}, steps
    # scheduler restored: the LR continues the schedule instead of restarting the warmup
    assert final["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == k + 3
    with open(out / "metrics.json") as f:
        lrs = {m["iteration"]: m["lr"] for m in map(json.loads, f) if "lr" in m}
    assert abs(lrs[k + 2] - _warmup_lr(k + 2)) < 1e-3 * _warmup_lr(k + 2), (lrs, _warmup_lr(k + 2))


STALL = textwrap.dedent("""
    import os, sys, time
    import objguided_d2  # noqa: F401
    from objguided_d2.engine.train_net import cli
    from objguided_d2.utils import io as atomic_io

    def stalled_fsync(f):
        # Killed mid-write of model_0000003.pth: half of its temporary file is on disk.
        if os.path.basename(f.name).startswith(".model_0000003.pth."):
            f.truncate(f.tell() // 2)
            f.flush()
            open(os.environ["STALL_MARKER"], "w").close()
            time.sleep(600)
        os.fsync(f.fileno())

    atomic_io._fsync = stalled_fsync
    cli(sys.argv[1:])
""")


def test_sigkill_while_writing_checkpoint(tmp_path):
    out, cache, marker = tmp_path / "out", tmp_path / "cache", tmp_path / "stalled"
    driver = tmp_path / "stall_train_net.py"
    driver.write_text(STALL)
    common = [*FAST, "OUTPUT_DIR", str(out)]
    os.environ["STALL_MARKER"] = str(marker)
    try:
        rc = _start_and_kill([sys.executable, str(driver), *common, "SOLVER.MAX_ITER", "500"], cache,
                             tmp_path / "killed.log", marker.exists)
    finally:
        del os.environ["STALL_MARKER"]
    assert rc == -9
    partial = [n for n in os.listdir(out) if n.endswith(PARTIAL_SUFFIX)]
    assert len(partial) == 1 and partial[0].startswith(".model_0000003.pth.")
    assert not is_complete_checkpoint(str(out / partial[0]))
    assert not (out / "model_0000003.pth").exists()
    assert _tag(out) == "model_0000001.pth"  # the previous complete checkpoint is still the latest

    log = _run(["--resume", *common, "SOLVER.MAX_ITER", "4"], cache)
    assert "Starting training from iteration 2" in log
    assert "left by a run killed while writing a checkpoint" in log
    assert not [n for n in os.listdir(out) if n.endswith(PARTIAL_SUFFIX)]
    assert _tag(out) == "model_final.pth"
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 3

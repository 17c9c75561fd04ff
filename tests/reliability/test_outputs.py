"""tools/train_net.py never silently overwrites a finished run: fresh training into an OUTPUT_DIR
that holds one is refused (nothing in it is touched) unless --resume or --overwrite."""
import hashlib
import os
import subprocess
import sys

import torch
from torch import nn

from objguided_d2.engine.checkpoint import ObjGuidedCheckpointer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
SPEC = "outs=synthetic:nuclei?image_size=128&num_train=2&num_val=1&num_test=1"
FAST = [
    "--config-file", "configs/tiny/mask_rcnn_R18_tiny.yaml", "--dataset", SPEC,
    "DATASETS.TRAIN", '("outs_train",)', "DATASETS.TEST", "()", "INPUT.TRAIN_SIZE", "128",
    "SOLVER.IMS_PER_BATCH", "1", "SOLVER.WARMUP_ITERS", "0", "MODEL.DEVICE", "cpu", "SOLVER.MAX_ITER", "1",
]


def _run(args, tmp_path):
    env = dict(os.environ, OBJGUIDED_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, TRAIN_NET, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def _digest(folder):
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in sorted(os.listdir(folder))}


def test_finished_run_is_not_overwritten(tmp_path):
    out = tmp_path / "out"
    # a previous run's results (content irrelevant: the refusal happens before anything is loaded)
    ObjGuidedCheckpointer(nn.Linear(2, 2), str(out)).save("model_final", iteration=99)
    (out / "config.yaml").write_text("# the previous run's config\n")
    before = _digest(out)

    p = _run([*FAST, "OUTPUT_DIR", str(out)], tmp_path)
    assert p.returncode != 0
    assert "FileExistsError" in p.stderr and "already holds a training run" in p.stderr, p.stderr[-3000:]
    assert "Pass --resume to continue that run, --overwrite to start over" in p.stderr
    assert _digest(out) == before  # not even config.yaml / log.txt were written

    p = _run(["--overwrite", *FAST, "OUTPUT_DIR", str(out)], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert torch.load(out / "model_final.pth", weights_only=True)["iteration"] == 0
    assert (out / "last_checkpoint").read_text() == "model_final.pth"

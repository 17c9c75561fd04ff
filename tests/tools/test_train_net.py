"""End to end: tools/train_net.py trains ours and the baselines a few iterations on a tiny embedded dataset,
evaluates in COCO format, resumes from its checkpoint, and trains with two processes through
Detectron2's ``launch`` on the CPU (gloo)."""
import json
import os
import subprocess
import sys

import pytest
import torch

from detectron2.engine import launch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
SPEC = "e2e=synthetic:nuclei?image_size=128&num_train=4&num_val=2&num_test=2"
FAST = [
    "DATASETS.TRAIN", '("e2e_train",)', "DATASETS.TEST", '("e2e_test",)',
    "INPUT.TRAIN_SIZE", "128", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "1",
    "MODEL.DEVICE", "cpu",
]


def _run(args, cache, timeout=600):
    env = dict(os.environ, OBJGUIDED_CACHE=str(cache), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, TRAIN_NET, *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-6000:]
    return p.stdout + p.stderr


def _metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.parametrize(
    "config",
    ["configs/tiny/objguided_R18_tiny.yaml", "configs/tiny/mask_rcnn_R18_tiny.yaml", "configs/tiny/pointrend_R18_tiny.yaml"],
)
def test_train_eval_resume_baseline(tmp_path, config):
    out = tmp_path / "out"
    common = ["--config-file", config, "--dataset", SPEC, *FAST, "OUTPUT_DIR", str(out)]
    log = _run([*common, "SOLVER.MAX_ITER", "2"], tmp_path / "cache")
    # trained, checkpointed and evaluated in COCO format (bbox + segm) on the test split
    assert (out / "model_final.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    size = json.loads((out / "object_size.json").read_text())  # what --diameter rescales to
    assert size["num_objects"] > 0 and size["median_diameter_input"] > 0
    assert "copypaste: Task: segm" in log and "copypaste: Task: bbox" in log
    assert (out / "inference" / "e2e_test" / "coco_instances_results.json").is_file()
    iters = [m["iteration"] for m in _metrics(out) if "total_loss" in m]
    assert iters and max(iters) == 1
    # --resume continues from the checkpoint's iteration instead of starting over
    log = _run(["--resume", *common, "SOLVER.MAX_ITER", "4"], tmp_path / "cache")
    assert "Starting training from iteration 2" in log
    iters = [m["iteration"] for m in _metrics(out) if "total_loss" in m]
    assert iters == [1, 3], iters
    # --eval-only with the trained weights
    log = _run(["--eval-only", "--config-file", config, "--dataset", SPEC, *FAST, "OUTPUT_DIR",
                str(tmp_path / "ev"), "MODEL.WEIGHTS", str(out / "model_final.pth")], tmp_path / "cache")
    assert "copypaste: Task: segm" in log


def test_eval_only_with_nothing_to_evaluate_is_an_error(tmp_path):
    # A run folder's config.yaml as tools/compare.py writes it: evaluation during training off.
    from objguided_d2.config import load_config

    run = tmp_path / "run"
    run.mkdir()
    cfg = load_config(os.path.join(ROOT, "configs/tiny/objguided_R18_tiny.yaml"), ["DATASETS.TEST", "()"])
    (run / "config.yaml").write_text(cfg.dump())
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, TRAIN_NET, "--eval-only", "--config-file", str(run / "config.yaml"),
                        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", str(run / "model_final.pth"),
                        "OUTPUT_DIR", str(tmp_path / "ev")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stdout[-2000:] + p.stderr[-3000:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("ConfigError")]
    assert len(errors) == 1 and "DATASETS.TEST" in errors[0] and "config.yaml" in errors[0], p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "ev").exists()  # refused before any weights are read or anything is written


def _ddp_worker(config, opts, out_dir, cache):
    os.environ["OBJGUIDED_CACHE"] = cache
    import objguided_d2  # noqa: F401
    from detectron2.utils import comm
    from objguided_d2.data.register import register_dataset_spec
    from objguided_d2.engine import Trainer
    from objguided_d2.engine.train_net import load_config

    register_dataset_spec(SPEC)
    cfg = load_config(config, opts)
    cfg.freeze()
    trainer = Trainer(cfg)
    assert isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel)
    trainer.resume_or_load(resume=False)
    trainer.train()
    params = {k: v.detach().clone() for k, v in trainer.model.module.named_parameters()}
    torch.save(params, os.path.join(out_dir, f"rank{comm.get_rank()}.pth"))


def test_two_process_cpu_training(tmp_path):
    """--num-gpus 2 with no GPU: two gloo processes through detectron2's launch; DDP keeps the
    two ranks' weights identical after training."""
    cache = tmp_path / "cache"
    opts = [*FAST, "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2",
            "TEST.EVAL_PERIOD", "0", "DATASETS.TEST", "()"]
    launch(_ddp_worker, 2, dist_url="auto",
           args=(os.path.join(ROOT, "configs/tiny/mask_rcnn_R18_tiny.yaml"), opts, str(tmp_path), str(cache)))
    r0 = torch.load(tmp_path / "rank0.pth", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pth", weights_only=True)
    assert r0.keys() == r1.keys() and len(r0) > 50
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k

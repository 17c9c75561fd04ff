"""Non-finite losses: checked before backward / optimizer.step. "raise" names the loss and the
iteration; "skip" drops the batch (no optimizer step), warns and counts, and aborts after
SOLVER.MAX_CONSECUTIVE_SKIPS in a row; in DDP all ranks take the same decision.

A test-only meta-architecture returns a NaN ``loss_mask`` at chosen iterations (deterministic)."""
import logging
import os

import pytest
import torch
from torch import nn

from detectron2.engine import launch
from detectron2.modeling import META_ARCH_REGISTRY

from objguided_d2.engine.train_loop import GuardedSimpleTrainer, NonFiniteLossGuard

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs/tiny/mask_rcnn_R18_tiny.yaml")
SPEC = "nan=synthetic:nuclei?image_size=128&num_train=4&num_val=1&num_test=1"
NAN_AT = set()  # iterations (forward calls) whose loss_mask is NaN


@META_ARCH_REGISTRY.register()
class ReliabilityNaNModel(nn.Module):
    """Two losses from one small parameter; ``loss_mask`` is NaN at the iterations in NAN_AT."""

    def __init__(self, cfg):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))
        self.calls = 0

    def forward(self, batched_inputs):
        it, self.calls = self.calls, self.calls + 1
        x = torch.stack([b["image"].float().mean() for b in batched_inputs]).mean() / 255.0
        loss_mask = self.w.abs().mean()
        if it in NAN_AT:
            loss_mask = loss_mask * float("nan")
        return {"loss_cls": ((self.w - x) ** 2).mean(), "loss_mask": loss_mask}


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    os.environ["OBJGUIDED_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    import objguided_d2  # noqa: F401
    from objguided_d2.data.register import register_dataset_spec

    register_dataset_spec(SPEC)


def _trainer(tmp_path, nan_at, *opts):
    from objguided_d2.engine import Trainer
    from objguided_d2.engine.train_net import load_config

    NAN_AT.clear()
    NAN_AT.update(nan_at)
    cfg = load_config(CONFIG, [
        "MODEL.META_ARCHITECTURE", "ReliabilityNaNModel", "MODEL.DEVICE", "cpu",
        "DATASETS.TRAIN", '("nan_train",)', "DATASETS.TEST", "()", "INPUT.TRAIN_SIZE", "64",
        "SOLVER.IMS_PER_BATCH", "1", "SOLVER.OPTIMIZER", "ADAM", "SOLVER.BASE_LR", "0.01",
        "SOLVER.WARMUP_ITERS", "0", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.MAX_ITER", "6",
        "OUTPUT_DIR", str(tmp_path / "out"), *opts,
    ])
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    return trainer


def _adam_steps(trainer):
    return {int(s["step"]) for s in trainer.optimizer.state.values()}


def test_raise_names_loss_and_iteration(registered, tmp_path):
    trainer = _trainer(tmp_path, {3})
    with pytest.raises(FloatingPointError, match=r"^loss_mask is nan at iteration 3\. The optimizer was not stepped"):
        trainer.train()
    assert _adam_steps(trainer) == {3}  # iterations 0, 1, 2 stepped; not the NaN batch
    assert torch.isfinite(trainer.model.w).all()
    out = tmp_path / "out"
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (out / "model_final.pth").exists() and not (out / "model_0000003.pth").exists()


def test_skip_drops_batch_warns_and_counts(registered, tmp_path, caplog):
    trainer = _trainer(tmp_path, {2, 4}, "SOLVER.NONFINITE_LOSS", "skip")
    with caplog.at_level(logging.WARNING, logger="objguided_d2.engine.train_loop"):
        trainer.train()
    assert _adam_steps(trainer) == {4}  # 6 iterations, 2 skipped
    assert trainer._trainer.nonfinite_guard.num_skipped == 2
    warnings = [r.getMessage() for r in caplog.records if "Skipping batch" in r.getMessage()]
    assert len(warnings) == 2 and "loss_mask is nan at iteration 2" in warnings[0]
    assert "loss_mask is nan at iteration 4" in warnings[1] and "2 skipped so far" in warnings[1]
    final = torch.load(tmp_path / "out" / "model_final.pth", weights_only=True)
    assert final["trainer"]["_trainer"]["nonfinite"]["num_skipped"] == 2
    assert final["iteration"] == 5


def test_too_many_consecutive_skips_abort(registered, tmp_path):
    trainer = _trainer(tmp_path, {1, 2, 3, 4, 5}, "SOLVER.NONFINITE_LOSS", "skip", "SOLVER.MAX_CONSECUTIVE_SKIPS", "2")
    expected = (r"3 consecutive batches had non-finite losses \(last: loss_mask is nan at iteration 3\); "
                r"aborting \(SOLVER.MAX_CONSECUTIVE_SKIPS=2\)")
    with pytest.raises(FloatingPointError, match=expected):
        trainer.train()
    assert _adam_steps(trainer) == {1}


def test_bad_policy_is_rejected():
    with pytest.raises(ValueError, match="SOLVER.NONFINITE_LOSS='ignore'"):
        NonFiniteLossGuard("ignore")


class _RankNaN(nn.Module):
    """Rank 1 alone has an Inf loss at iteration 1."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.calls = 0

    def forward(self, x):
        it, self.calls = self.calls, self.calls + 1
        loss = self.lin(x).pow(2).mean()
        from detectron2.utils import comm

        if it == 1 and comm.get_rank() == 1:
            loss = loss * float("inf")
        return {"loss_box_reg": loss}


def _ddp_worker(out_dir):
    from detectron2.utils import comm

    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(_RankNaN())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = [torch.full((3, 2), float(i + comm.get_rank())) for i in range(3)]
    trainer = GuardedSimpleTrainer(model, data, opt, nonfinite_loss="skip")
    trainer.train(0, 3)
    torch.save({"skipped": trainer.nonfinite_guard.num_skipped,
                "weight": model.module.lin.weight.detach().clone()},
               os.path.join(out_dir, f"rank{comm.get_rank()}.pth"))


def test_ddp_ranks_skip_together(tmp_path):
    """Only rank 1 sees the Inf; both skip that step (no deadlock in backward) and stay in sync."""
    launch(_ddp_worker, 2, dist_url="auto", args=(str(tmp_path),))
    r0 = torch.load(tmp_path / "rank0.pth", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pth", weights_only=True)
    assert r0["skipped"] == r1["skipped"] == 1
    assert torch.equal(r0["weight"], r1["weight"])

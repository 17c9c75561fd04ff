"""The Detectron2 trainer used by ``tools/train_net.py`` for ours and the baselines alike.

It overrides only what must change in ``DefaultTrainer``:

* the train/test loaders use :class:`ObjGuidedDatasetMapper` (16-bit / RGBA / TIFF images, the
  paper's square-crop augmentation), so every method sees the same data;
* ``build_evaluator`` returns COCO (bbox + segm) plus the paper's metrics;
* ``build_optimizer`` adds Adam (the paper's optimizer) next to Detectron2's SGD, both with
  torch's fused kernels where the parameters allow (same update rule, one kernel per step: a
  tiny model's Adam step is ~3x faster on the CPU);
* DDP on CPU: Detectron2 passes ``device_ids=[local_rank]`` to DistributedDataParallel, which
  torch rejects for CPU modules; here ``device_ids`` is ``None`` when the model is on the CPU, so
  ``launch(..., num_gpus_per_machine=2)`` trains with the gloo backend on a machine with no GPU;
* reliability: non-finite losses are caught before the optimizer step (``SOLVER.NONFINITE_LOSS``),
  checkpoints are atomic and never hold NaNs, and weights load with ``weights_only=True``
  (:class:`ObjGuidedCheckpointer`, ``MODEL.TRUST_PICKLE``); see ``docs/reliability.md``.
"""
import logging
import os
import weakref
from typing import Optional

import torch

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, create_ddp_model
from detectron2.engine.train_loop import TrainerBase
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .checkpoint import ObjGuidedCheckpointer
from .train_loop import GuardedAMPTrainer, GuardedSimpleTrainer

__all__ = ["Trainer", "build_optimizer"]


def _fused_ok(params) -> Optional[bool]:
    """``True`` when torch's fused optimizer kernels take these parameters (floating point, on
    the CPU or a CUDA device); ``None`` (torch's default path) otherwise."""
    params = list(params)
    ok = bool(params) and all(
        p.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        and p.device.type in ("cpu", "cuda")
        for p in params
    )
    return True if ok else None


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD as in Detectron2, or Adam / AdamW (``SOLVER.OPTIMIZER``), with Detectron2's parameter
    groups (norm / bias weight decay) and gradient clipping."""
    name = cfg.SOLVER.OPTIMIZER.upper()
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    # torch's default on the CPU is a Python loop over the tensors (~50 ms per step for a
    # 13.5M-parameter tiny model); the fused kernel computes the same update in one call.
    fused = _fused_ok(p for g in params for p in g["params"])
    if name == "SGD":
        opt = torch.optim.SGD(
            params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
            nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY, fused=fused,
        )
    elif name == "ADAM":
        opt = torch.optim.Adam(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, fused=fused)
    elif name == "ADAMW":
        opt = torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, fused=fused)
    else:
        raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r}: expected 'SGD', 'ADAM' or 'ADAMW'")
    return maybe_add_gradient_clipping(cfg, opt)


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` with the project's data mapper, evaluators, optimizer and CPU DDP."""

    def __init__(self, cfg):
        # Same construction order as DefaultTrainer.__init__; only the DDP wrapping differs.
        TrainerBase.__init__(self)
        logger = logging.getLogger("detectron2")
        if not logger.isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        on_cpu = next(model.parameters()).device.type == "cpu"
        ddp_kwargs = {"broadcast_buffers": False}
        if on_cpu:
            ddp_kwargs["device_ids"] = None
        model = create_ddp_model(model, **ddp_kwargs)
        # Reliability (docs/reliability.md): losses checked before the step (SOLVER.NONFINITE_LOSS),
        # atomic finite-only checkpoints, weights_only loading unless MODEL.TRUST_PICKLE.
        self._trainer = (GuardedAMPTrainer if cfg.SOLVER.AMP.ENABLED else GuardedSimpleTrainer)(
            model, data_loader, optimizer, nonfinite_loss=cfg.SOLVER.NONFINITE_LOSS,
            max_consecutive_skips=cfg.SOLVER.MAX_CONSECUTIVE_SKIPS,
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = ObjGuidedCheckpointer(
            model, cfg.OUTPUT_DIR, trust_pickle=cfg.MODEL.TRUST_PICKLE, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        from objguided_d2.data.dataset_mapper import ObjGuidedDatasetMapper

        return build_detection_train_loader(cfg, mapper=ObjGuidedDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        from objguided_d2.data.dataset_mapper import ObjGuidedDatasetMapper

        return build_detection_test_loader(
            cfg, dataset_name, mapper=ObjGuidedDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from objguided_d2.evaluation import build_evaluators

        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluators(cfg, dataset_name, output_folder)

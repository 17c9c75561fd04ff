import copy

import pytest
import torch

from detectron2.config import get_cfg

from objguided_d2 import add_objguided_config
from objguided_d2.engine import build_optimizer


def _cfg(name, lr=0.01):
    cfg = get_cfg()
    add_objguided_config(cfg)
    cfg.SOLVER.OPTIMIZER = name
    cfg.SOLVER.BASE_LR = lr
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    return cfg


def _model():
    # No bias before the norm: its gradient is zero up to rounding, where Adam's update is noise.
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=False), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 2, 1))


def _steps(model, opt, n=3):
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(1))
    for _ in range(n):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _unfused(opt):
    """``opt`` as earlier versions built it (torch's default per-tensor path)."""
    for g in opt.param_groups:
        g["fused"] = None
    opt.defaults["fused"] = None
    return opt


@pytest.mark.parametrize("name", ["SGD", "ADAM", "ADAMW"])
def test_optimizer_is_fused_and_updates_like_torch_default(name):
    model = _model()
    ref = copy.deepcopy(model)
    opt = build_optimizer(_cfg(name), model)
    assert opt.defaults["fused"] is True  # one kernel per step on the CPU, not a Python loop
    # The same rule as torch's default (per-tensor) implementation with Detectron2's groups.
    ref_opt = _unfused(build_optimizer(_cfg(name), ref))
    got, want = _steps(model, opt), _steps(ref, ref_opt)
    assert not torch.equal(got, torch.cat([p.detach().flatten() for p in _model().parameters()]))
    # Up to float rounding: Adam's steps here are ~lr = 1e-2 per parameter.
    torch.testing.assert_close(got, want, rtol=1e-4, atol=5e-5)


def test_resume_from_unfused_state():
    # A checkpoint written before the fused kernels (same state layout) resumes; torch restores
    # the checkpoint's own ``fused`` setting with its groups, so the math goes on unchanged.
    model = _model()
    old = _unfused(build_optimizer(_cfg("ADAM", 1e-3), model))
    _steps(model, old, 1)
    opt = build_optimizer(_cfg("ADAM", 1e-3), model)
    opt.load_state_dict(old.state_dict())
    _steps(model, opt, 1)
    assert opt.state and all(int(s["step"]) == 2 for s in opt.state.values())


def test_bad_optimizer_name_is_one_clear_error():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER='RMS'"):
        build_optimizer(_cfg("RMS"), _model())

"""Untrusted files: weights load with torch.load(weights_only=True); pickles need an explicit
--trust-pickle / MODEL.TRUST_PICKLE and the error says why and how; configs are YAML only and
parsed without executing anything."""
import os
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

from objguided_d2.engine.checkpoint import ObjGuidedCheckpointer
from objguided_d2.engine.safe_load import UntrustedFileError, safe_torch_load
from objguided_d2.engine.train_net import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs/tiny/mask_rcnn_R18_tiny.yaml")


class _Evil:
    """Unpickling this opens (creates) a file: stands for any code a pickle may run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _model():
    return nn.Sequential(nn.Linear(3, 2))


def test_pth_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": _model().state_dict(), "payload": _Evil(marker)}, path)
    with pytest.raises(UntrustedFileError, match=r"weights_only=True.*execute arbitrary code.*--trust-pickle"):
        ObjGuidedCheckpointer(_model()).load(str(path))
    assert not marker.exists()
    # trusted on purpose: it loads, and the payload ran -- which is why it is opt-in
    safe_torch_load(str(path), trust_pickle=True)
    assert marker.exists()


def test_pkl_needs_trust_and_says_how(tmp_path):
    src = _model()
    path = tmp_path / "zoo.pkl"
    with open(path, "wb") as f:  # Detectron2 model-zoo layout: numpy arrays + __author__
        pickle.dump({"model": {k: v.numpy() for k, v in src.state_dict().items()}, "__author__": "test"}, f)
    dst = _model()
    with pytest.raises(UntrustedFileError) as e:
        ObjGuidedCheckpointer(dst).load(str(path))
    msg = str(e.value)
    assert "zoo.pkl" in msg and "execute arbitrary code" in msg
    assert "--trust-pickle" in msg and "MODEL.TRUST_PICKLE True" in msg
    ObjGuidedCheckpointer(dst, trust_pickle=True).load(str(path))
    assert torch.equal(dst[0].weight, src[0].weight)


def test_model_zoo_url_refused_before_download():
    """The configs' real-use default: refused up front (no download is attempted)."""
    with pytest.raises(UntrustedFileError, match=r"R-50\.pkl: \.pkl weights are Python pickles.*--trust-pickle"):
        ObjGuidedCheckpointer(_model()).load("detectron2://ImageNetPretrained/MSRA/R-50.pkl")


def test_plain_pth_loads_without_trust(tmp_path):
    src = _model()
    ObjGuidedCheckpointer(src, str(tmp_path)).save("model_final", iteration=7)
    dst = _model()
    extra = ObjGuidedCheckpointer(dst).load(str(tmp_path / "model_final.pth"))
    assert extra["iteration"] == 7 and torch.equal(dst[0].weight, src[0].weight)


def test_config_must_be_yaml(tmp_path):
    py = tmp_path / "cfg.py"
    py.write_text(f"open({str(tmp_path / 'pwned')!r}, 'w')\n")
    with pytest.raises(ValueError, match=r"expected a \.yaml/\.yml file \(Python configs are not executed\)"):
        load_config(str(py))
    # YAML is parsed with safe_load: a python tag is an error, not code
    bad = tmp_path / "cfg.yaml"
    bad.write_text(f"SEED: !!python/object/apply:os.system ['touch {tmp_path / 'pwned'}']\n")
    with pytest.raises(Exception, match="python/object/apply"):
        load_config(str(bad))
    assert not (tmp_path / "pwned").exists()


def _train_net(args, tmp_path):
    env = dict(os.environ, OBJGUIDED_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_net.py"), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def test_train_net_trust_pickle_flag(tmp_path):
    """--eval-only with .pkl weights: refused with the fix in the message; --trust-pickle loads them."""
    import objguided_d2  # noqa: F401
    from objguided_d2.engine import Trainer

    cfg = load_config(CONFIG, ["MODEL.DEVICE", "cpu"])
    state = Trainer.build_model(cfg).state_dict()
    path = tmp_path / "R18.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test"}, f)
    # --eval-only needs something to evaluate: one 64-px synthetic test image.
    common = ["--eval-only", "--config-file", CONFIG,
              "--dataset", "untr=synthetic:nuclei?image_size=64&num_train=1&num_val=1&num_test=1",
              "MODEL.DEVICE", "cpu", "DATASETS.TEST", '("untr_test",)',
              "MODEL.WEIGHTS", str(path), "OUTPUT_DIR", str(tmp_path / "ev")]
    p = _train_net(common, tmp_path)
    assert p.returncode != 0
    assert "UntrustedFileError" in p.stderr and "adding --trust-pickle" in p.stderr, p.stderr[-3000:]
    p = _train_net(["--trust-pickle", *common], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Reading a file from 'test'" in p.stdout + p.stderr

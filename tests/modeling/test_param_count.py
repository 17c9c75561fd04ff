"""The paper's R-50 configuration has the authors' parameter count (62.3 M) within 1%."""
import os

from detectron2.modeling import build_model

from objguided_d2.engine.train_net import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_paper_config_parameter_count():
    cfg = load_config(os.path.join(ROOT, "configs/neural/objguided_R_50.yaml"),
                      ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - 62.3e6) / 62.3e6 < 0.01, n
    # the segmentation branch crops the detector's decoder features (object guidance)
    assert list(cfg.MODEL.OBJGUIDED.SEG_IN_FEATURES) == ["c0", "c1", "d2", "d3", "d4"]

"""Importing the plugin registers every component, and needs no compiled detectron2 op."""
import importlib
import pkgutil

import objguided_d2
from detectron2.config import get_cfg
from detectron2.modeling import (
    BACKBONE_REGISTRY,
    META_ARCH_REGISTRY,
    PROPOSAL_GENERATOR_REGISTRY,
    ROI_HEADS_REGISTRY,
    ROI_MASK_HEAD_REGISTRY,
)


def test_every_module_imports():
    names = [m.name for m in pkgutil.walk_packages(objguided_d2.__path__, "objguided_d2.")]
    try:
        import napari  # noqa: F401
    except ImportError:  # the napari plugin needs the [napari] extra
        names = [n for n in names if not n.startswith("objguided_d2.napari.")]
    assert len(names) > 10
    for name in names:
        importlib.import_module(name)


def test_components_registered():
    assert "build_objguided_resnet_backbone" in BACKBONE_REGISTRY
    assert "CenterNetProposalGenerator" in PROPOSAL_GENERATOR_REGISTRY
    assert "ObjGuidedROIHeads" in ROI_HEADS_REGISTRY
    assert "ObjGuidedMaskHead" in ROI_MASK_HEAD_REGISTRY
    assert "ObjGuidedRCNN" in META_ARCH_REGISTRY
    # PointRend's heads come with add_objguided_config's import of detectron2.projects.point_rend
    cfg = objguided_d2.add_objguided_config(get_cfg())
    assert "PointRendROIHeads" in ROI_HEADS_REGISTRY
    assert cfg.MODEL.OBJGUIDED.REFINE_ON is True


def test_add_config_twice_is_safe():
    cfg = objguided_d2.add_objguided_config(get_cfg())
    cfg.MODEL.OBJGUIDED.TOPK = 7
    objguided_d2.add_objguided_config(cfg)
    assert cfg.MODEL.OBJGUIDED.TOPK == 7


def test_paper_defaults():
    og = objguided_d2.add_objguided_config(get_cfg()).MODEL.OBJGUIDED
    assert (og.REFINE_OVERSAMPLE_RATIO, og.REFINE_IMPORTANCE_SAMPLE_RATIO, og.REFINE_POINT_DIVISOR) == (3, 0.75, 8)
    assert (og.WH_LOSS_WEIGHT, og.SEG_LOSS_WEIGHT, og.GAUSSIAN_MIN_OVERLAP, og.TOPK) == (0.1, 2.0, 0.7, 500)
    assert og.SCORE_THRESH_TEST == 0.3 and og.ROI_ENLARGE == 1.1


SCRIPTS = ("tools/train_net.py", "tools/predict.py", "tools/compare.py", "benchmarks/learning_curve.py",
           "benchmarks/oracle_boxes.py", "benchmarks/archive_study.py", "benchmarks/error_breakdown.py")


def test_scripts_import_their_own_checkout(tmp_path):
    # Another objguided_d2 ahead in the path (as a second checkout installed in the same
    # environment would be): every script must still run the package of the checkout it is in.
    import os
    import subprocess
    import sys

    fake = tmp_path / "objguided_d2"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the other checkout was imported')\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    for script in SCRIPTS:
        proc = subprocess.run([sys.executable, os.path.join(root, script), "--help"], cwd=str(tmp_path), env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "other checkout" not in proc.stderr, (script, proc.stderr[-2000:])


def test_data_does_not_import_predict():
    # Layers run downward: data is read by training and prediction, so it must not need predict.
    import ast
    import os

    root = os.path.dirname(objguided_d2.__file__)
    offenders = []
    for folder, _, files in os.walk(os.path.join(root, "data")):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            pkg = "objguided_d2" + folder[len(root):].replace(os.sep, ".")
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    base = pkg.rsplit(".", node.level - 1)[0] if node.level else ""
                    mod = ".".join(p for p in (base, node.module) if p)
                    mods = [mod] + [f"{mod}.{a.name}" for a in node.names]  # `from objguided_d2 import predict`
                else:
                    continue
                offenders += [f"{path}:{node.lineno} {m}" for m in mods
                              if m == "objguided_d2.predict" or m.startswith("objguided_d2.predict.")]
    assert not offenders, offenders

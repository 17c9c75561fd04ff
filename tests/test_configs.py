"""Every committed config loads, and the configs that encode an experiment say what they claim."""
import glob
import os

import pytest
import torch
from detectron2.modeling import build_model

from objguided_d2.comparison.presets import PRESETS, parse_methods
from objguided_d2.engine.train_net import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)

# The paper's Table II: strategy -> (k, beta); "W.O. sampling" is refinement off.
TABLE_II = {
    "uniform_small_k1_b1": (1, 1.0),
    "biased_small_k1_b0.5": (1, 0.5),
    "uniform_k3_b3": (3, 3.0),
    "mildly_biased_k3_b2": (3, 2.0),
    "slightly_biased_k3_b1": (3, 1.0),
    "objguided_R18_tiny": (3, 0.75),  # moderately biased: the paper's choice
    "greatly_biased_k5_b0.75": (5, 0.75),
    "heavily_biased_k10_b0.75": (10, 0.75),
}


def _load(path):
    return load_config(os.path.join(ROOT, path), ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])


def test_configs_found():
    assert len(CONFIGS) >= 20, CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_config_loads(path):
    cfg = _load(path)
    assert cfg.MODEL.META_ARCHITECTURE in ("ObjGuidedRCNN", "GeneralizedRCNN"), path
    assert cfg.SOLVER.MAX_ITER > 0


def test_sampling_ablation_preset_is_table_ii():
    methods = parse_methods(PRESETS["ablation-sampling"].configs)
    assert len(methods) == 9  # W.O. sampling + the 8 strategies
    seen = {}
    base = load_config(os.path.join(ROOT, "configs/tiny/objguided_R18_tiny.yaml"))
    for m in methods:
        cfg = load_config(m.config_file)
        og = cfg.MODEL.OBJGUIDED
        if m.id.endswith("norefine"):
            assert not og.REFINE_ON
            continue
        assert og.REFINE_ON, m.id
        seen[m.id] = (og.REFINE_OVERSAMPLE_RATIO, og.REFINE_IMPORTANCE_SAMPLE_RATIO)
        # Apart from the sampling, each variant is the tiny model trained the same way.
        for key in ("MODEL.RESNETS.DEPTH", "SOLVER.BASE_LR", "SOLVER.OPTIMIZER", "INPUT.TRAIN_SIZE",
                    "MODEL.OBJGUIDED.MASK_HEAD_CHANNELS"):
            a, b = cfg, base
            for part in key.split("."):
                a, b = getattr(a, part), getattr(b, part)
            assert a == b, (m.id, key)
    assert seen == TABLE_II


def test_fast_cpu_config_differs_from_tiny_only_in_the_model():
    fast, tiny = _load("configs/fast/objguided_R18_fast_cpu.yaml"), _load("configs/tiny/objguided_R18_tiny.yaml")
    for key in ("BASE_LR", "OPTIMIZER", "IMS_PER_BATCH", "WEIGHT_DECAY", "STEPS", "WARMUP_ITERS"):
        assert getattr(fast.SOLVER, key) == getattr(tiny.SOLVER, key), key
    assert fast.SOLVER.CLIP_GRADIENTS == tiny.SOLVER.CLIP_GRADIENTS
    assert fast.INPUT.TRAIN_SIZE == tiny.INPUT.TRAIN_SIZE
    assert fast.MODEL.RESNETS.DEPTH == tiny.MODEL.RESNETS.DEPTH == 18
    # ... and the fast model is the smaller one.
    torch.manual_seed(0)
    n_fast = sum(p.numel() for p in build_model(fast).parameters())
    n_tiny = sum(p.numel() for p in build_model(tiny).parameters())
    assert n_fast < n_tiny, (n_fast, n_tiny)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_opts_apply_to_every_method(name):
    preset = PRESETS[name]
    assert len(preset.opts) % 2 == 0
    for m in parse_methods(preset.configs):
        cfg = load_config(m.config_file, list(preset.opts))
        for key, value in zip(preset.opts[::2], preset.opts[1::2]):
            node = cfg
            for part in key.split("."):
                node = getattr(node, part)
            assert str(node).replace(" ", "") == value.replace(" ", ""), (m.id, key)


def _diff(a, b, prefix=""):
    """Dotted keys whose values differ between two configs."""
    out = set()
    for k in set(a) | set(b):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out |= _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.add(prefix + k)
    return out


def test_detector_ablation_rows_change_one_option_each():
    methods = parse_methods(PRESETS["ablation-detector"].configs)
    base = load_config(os.path.join(ROOT, "configs/tiny/objguided_R18_tiny.yaml"))
    changed = {}
    for m in methods:
        d = _diff(base, load_config(m.config_file)) - {"OUTPUT_DIR"}
        changed[m.id] = d
    assert changed.pop("objguided_R18_tiny") == set()
    assert changed == {
        "min_radius1": {"MODEL.OBJGUIDED.MIN_GAUSSIAN_RADIUS"},
        "positive_radius1": {"MODEL.OBJGUIDED.POSITIVE_RADIUS"},
        "giou": {"MODEL.OBJGUIDED.GIOU_LOSS_WEIGHT"},
        "prior0.01": {"MODEL.OBJGUIDED.HEATMAP_PRIOR"},
        "wh7x7": {"MODEL.OBJGUIDED.WH_KERNEL_SIZE"},
    }
    # The paper-scale protocol: native-scale crops, whole test images at their size.
    opts = dict(zip(PRESETS["ablation-detector"].opts[::2], PRESETS["ablation-detector"].opts[1::2]))
    assert opts["INPUT.NATIVE_CROP_SIZE"] == "192"


def test_ours_plus_is_the_tiny_model_with_named_options():
    (m,) = parse_methods(["configs/tiny/objguided_R18_tiny_plus.yaml"])
    assert m.name == "Ours+" and m.id == "objguided_R18_tiny_plus"
    base = load_config(os.path.join(ROOT, "configs/tiny/objguided_R18_tiny.yaml"))
    assert _diff(base, load_config(m.config_file)) - {"OUTPUT_DIR"} == {
        "MODEL.OBJGUIDED.GIOU_LOSS_WEIGHT", "MODEL.OBJGUIDED.POSITIVE_RADIUS", "MODEL.OBJGUIDED.RECROP_EXPAND_TEST"}


def test_run_folder_config_from_before_one_segmentation_path_still_loads():
    """A run folder's config.yaml written when ``MODEL.OBJGUIDED.BATCHED_SEG`` existed (every
    archived study run has it) loads and builds the same model; the key is ignored."""
    path = os.path.join(ROOT, "benchmarks/results/paperscale/study/nuclei_seed0/runs/objguided_R18_tiny/config.yaml")
    with open(path) as f:
        assert "BATCHED_SEG: true" in f.read()
    cfg = load_config(path, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    assert "BATCHED_SEG" not in cfg.MODEL.OBJGUIDED
    with pytest.raises(Exception, match="NOT_A_KEY"):
        load_config(path, ["MODEL.OBJGUIDED.NOT_A_KEY", "1"])


def test_every_objguided_key_is_documented():
    """docs/configs.md has a row for every key add_objguided_config adds under MODEL.OBJGUIDED."""
    from detectron2.config import get_cfg

    from objguided_d2 import add_objguided_config

    with open(os.path.join(ROOT, "docs", "configs.md"), encoding="utf-8") as f:
        doc = f.read()
    keys = list(add_objguided_config(get_cfg()).MODEL.OBJGUIDED.keys())
    assert len(keys) > 30
    missing = [k for k in keys if f"`MODEL.OBJGUIDED.{k}`" not in doc]
    assert not missing, f"docs/configs.md lacks {missing}"

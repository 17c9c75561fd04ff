"""The methods compared and the presets of ``tools/compare.py``.

A *method* is one config file trained under the shared budget; its id (a folder name under
``DIR/runs``) and its display name come from the config file name unless given as
``NAME=PATH`` on the command line. A *preset* fixes the dataset, the four configs and the budget.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["Method", "MethodSpecError", "Preset", "PRESETS", "REPO_ROOT", "display_name", "parse_methods",
           "default_configs"]

# The configs live in the repository next to the package (editable install).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_ID_RE = re.compile(r"[^A-Za-z0-9_.\-]+")


@dataclass(frozen=True)
class Method:
    """One compared method: ``id`` names its run folder, ``name`` its table row."""

    id: str
    name: str
    config_file: str  # absolute path


@dataclass(frozen=True)
class Preset:
    """Dataset, configs and the shared budget of a named comparison."""

    dataset: str  # embedded base name: <dataset>_train / <dataset>_test are registered
    configs: Tuple[str, ...]  # paths relative to the repository root
    iters: int
    batch: int
    input_size: int
    description: str
    # KEY VALUE config overrides for every method (before the command line's --opts).
    opts: Tuple[str, ...] = ()


def _tiny(*names: str) -> Tuple[str, ...]:
    return tuple(f"configs/tiny/{n}.yaml" for n in names)


TINY_CONFIGS = _tiny("objguided_R18_tiny", "objguided_R18_tiny_norefine", "mask_rcnn_R18_tiny", "pointrend_R18_tiny")


def paper_configs(family: str) -> Tuple[str, ...]:
    """The paper-size (ResNet-50) configs of one dataset family (``nuclei``, ``neural``, ``leaves``)."""
    return tuple(
        f"configs/{family}/{n}.yaml"
        for n in ("objguided_R_50", "objguided_R_50_norefine", "mask_rcnn_R_50_FPN", "pointrend_R_50_FPN")
    )


# The paper's Table II sampling strategies (k, beta), in the paper's order. "W.O. sampling" is the
# no-refine config and "Moderately biased" (k 3, beta 0.75, the paper's choice) the default tiny
# config, so an ablation run in the same output folder as a family comparison with the same budget
# and dataset reuses those two runs.
SAMPLING_ABLATION_CONFIGS: Tuple[str, ...] = (
    "configs/tiny/objguided_R18_tiny_norefine.yaml",
    *(
        f"configs/ablation/sampling/{n}.yaml"
        for n in (
            "uniform_small_k1_b1",
            "biased_small_k1_b0.5",
            "uniform_k3_b3",
            "mildly_biased_k3_b2",
            "slightly_biased_k3_b1",
        )
    ),
    "configs/tiny/objguided_R18_tiny.yaml",
    "configs/ablation/sampling/greatly_biased_k5_b0.75.yaml",
    "configs/ablation/sampling/heavily_biased_k10_b0.75.yaml",
)


def cpu_protocol_opts(iters: int) -> Tuple[str, ...]:
    """The CPU comparison protocol of benchmarks/RESULTS.md, for every method alike: ours keeps
    detections down to the baselines' AP score threshold (0.05; the paper decodes at 0.3), and
    the learning rate drops x0.1 at 80 % of the iterations."""
    return ("MODEL.OBJGUIDED.SCORE_THRESH_TEST", "0.05", "SOLVER.STEPS", f"({int(0.8 * iters)},)")


# Candidates for a detector that converges within a CPU budget (options beyond the paper), one
# ablation row each against the paper-faithful tiny model, on paper-scale leaves.
DETECTOR_ABLATION_CONFIGS: Tuple[str, ...] = (
    "configs/tiny/objguided_R18_tiny.yaml",
    *(
        f"configs/ablation/detector/{n}.yaml"
        for n in ("min_radius1", "positive_radius1", "giou", "prior0.01", "wh7x7")
    ),
)

# Paper-scale synthetic data (``synth_<family>_paperscale``): image sizes, in pixels.
PAPER_SCALE_SIZES = {"leaves": 384, "neural": 256, "nuclei": 512}
# Side of the native-scale training crops on paper-scale data (INPUT.NATIVE_CROP_SIZE).
PAPER_SCALE_CROP = 192


def paper_scale_opts(iters: int, checkpoint_period: int = 0, crop: int = PAPER_SCALE_CROP) -> Tuple[str, ...]:
    """The CPU protocol on paper-scale data: :func:`cpu_protocol_opts` plus training on
    native-scale crops of ``crop`` px (testing on whole images at native size);
    ``checkpoint_period`` > 0 overrides the configs' (a tiny model's checkpoint is ~155 MB)."""
    ckpt = ("SOLVER.CHECKPOINT_PERIOD", str(checkpoint_period)) if checkpoint_period > 0 else ()
    return cpu_protocol_opts(iters) + ("INPUT.NATIVE_CROP_SIZE", str(crop)) + ckpt


# The demo's budget (iterations, crop side): what two rounds of two trainings fit in ~15 minutes.
DEMO_ITERS = 800
DEMO_CROP = 128
# The demo's learning-rate schedule, for every method: a cosine decay instead of the x0.1 step at
# 80 % (SOLVER.STEPS is then unused). Within 800 iterations Adam at a constant 1e-3 left ours' AP
# noisy; the cosine decay settles it (benchmarks/RESULTS.md, section 8).
DEMO_SCHEDULE = ("SOLVER.LR_SCHEDULER_NAME", "WarmupCosineLR")

PRESETS: Dict[str, Preset] = {
    # `make demo`: the four tiny models on paper-scale leaves (objects at the paper's sizes, so the
    # centre detector has real Gaussian targets), trained on DEMO_CROP-px native-scale crops and
    # tested on whole 384-px images. Budget sized for <= 15 min on 2 CPU cores with --jobs 2
    # (measured from a fresh clone: README, "Comparison report").
    "demo": Preset(
        dataset="synth_leaves_demo",
        configs=TINY_CONFIGS,
        iters=DEMO_ITERS,
        batch=2,
        input_size=PAPER_SCALE_SIZES["leaves"],
        description="4 tiny ResNet-18 models, paper-scale leaves (384 px, 40/2/12, "
                    f"{DEMO_CROP}-px native crops), ~12-14 min on 2 CPU cores with --jobs 2",
        # One checkpoint half-way (resume point) and the final one, not the tiny configs' every 100.
        opts=paper_scale_opts(DEMO_ITERS, DEMO_ITERS // 2, crop=DEMO_CROP) + DEMO_SCHEDULE,
    ),
    "paper-cpu": Preset(
        dataset="synth_neural",
        configs=TINY_CONFIGS,
        iters=3000,
        batch=4,
        input_size=256,
        description="4 tiny ResNet-18 models, full embedded neural-cell data (256 px, 200/50/50), hours on a CPU",
        opts=cpu_protocol_opts(3000),
    ),
    "ablation-sampling": Preset(
        dataset="synth_neural",
        configs=SAMPLING_ABLATION_CONFIGS,
        iters=1000,
        batch=2,
        input_size=256,
        description="Table II: the 9 refinement sampling strategies (k, beta) of the tiny model on neural cells (256 px)",
        opts=cpu_protocol_opts(1000),
    ),
    "ablation-detector": Preset(
        dataset="synth_leaves_paperscale",
        configs=DETECTOR_ABLATION_CONFIGS,
        iters=1500,
        batch=2,
        input_size=PAPER_SCALE_SIZES["leaves"],
        description="detector options beyond the paper, one row each, tiny model on paper-scale leaves "
                    "(384 px, 192-px native crops)",
        opts=paper_scale_opts(1500),
    ),
    **{
        f"paperscale-{fam}": Preset(
            dataset=f"synth_{fam}_paperscale",
            configs=TINY_CONFIGS,
            iters=3000,
            batch=2,
            input_size=size,
            description=f"4 tiny ResNet-18 models on paper-scale {fam} ({size} px, 192-px native crops), hours on a CPU",
            opts=paper_scale_opts(3000, checkpoint_period=500),
        )
        for fam, size in PAPER_SCALE_SIZES.items()
    },
    "paper-gpu": Preset(
        dataset="synth_neural",
        configs=paper_configs("neural"),
        iters=18000,
        batch=8,
        input_size=512,
        description="the paper's ResNet-50 models at 512 px (Adam 1.25e-4 for ours), one GPU",
    ),
}


def default_configs() -> Tuple[str, ...]:
    """Ours, ours w/o refine, Mask R-CNN, PointRend (the tiny CPU configs)."""
    return TINY_CONFIGS


def display_name(config_file: str) -> str:
    """Table row name from a config file name (``objguided_*_norefine`` -> ``Ours w/o refine``)."""
    stem = os.path.splitext(os.path.basename(config_file))[0].lower()
    if stem.startswith("objguided"):
        if "norefine" in stem:
            return "Ours w/o refine"
        return "Ours+" if stem.endswith("_plus") else "Ours"
    if stem.startswith("mask_rcnn"):
        return "Mask R-CNN"
    if stem.startswith("pointrend"):
        return "PointRend"
    return os.path.splitext(os.path.basename(config_file))[0]


def _resolve(path: str) -> str:
    """A config path as given, or relative to the repository root when it is not found as given."""
    if os.path.isfile(path):
        return os.path.abspath(path)
    alt = os.path.join(REPO_ROOT, path)
    if os.path.isfile(alt):
        return alt
    raise FileNotFoundError(f"config file {path!r} not found (also looked in {REPO_ROOT})")


class MethodSpecError(ValueError):
    """A method entry that cannot be used (``entry``: the entry, None when there are none)."""

    def __init__(self, entry: Optional[str], problem: str):
        self.entry = entry
        super().__init__(problem)


def parse_methods(entries: Sequence[str]) -> List[Method]:
    """``PATH`` or ``NAME=PATH`` entries -> methods with unique ids.

    Raises:
        FileNotFoundError: a config file does not exist.
        MethodSpecError: an empty NAME, no usable folder name, two entries sharing a run folder,
            or no entry.
    """
    methods: List[Method] = []
    seen: Dict[str, str] = {}
    for entry in entries:
        name: Optional[str] = None
        path = entry
        if "=" in entry and not os.path.isfile(entry):
            name, path = entry.split("=", 1)
            name = name.strip()
            if not name:
                raise MethodSpecError(entry, f"entry {entry!r}: empty NAME before '='")
        config = _resolve(path.strip())
        mid = _ID_RE.sub("_", name if name else os.path.splitext(os.path.basename(config))[0]).strip("_")
        if not mid:
            raise MethodSpecError(entry, f"entry {entry!r}: cannot make a folder name from it")
        if mid in seen:
            raise MethodSpecError(
                entry, f"{entry!r} and {seen[mid]!r} both map to run folder 'runs/{mid}'; name them with NAME=PATH"
            )
        seen[mid] = entry
        methods.append(Method(id=mid, name=name or display_name(config), config_file=config))
    if not methods:
        raise MethodSpecError(None, "no config given")
    return methods

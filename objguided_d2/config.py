"""All configuration keys of objguided-d2, added by :func:`add_objguided_config`.

Defaults are the paper's / the authors' code's values (docs/method.md);
where paper and code differ the code is the default and the paper's choice is an option.

:func:`load_config` is the one way a config file is read (safe YAML, ``_BASE_`` files included).
"""
import logging
import os
from typing import List, Sequence

from detectron2.config import CfgNode as CN


def add_objguided_config(cfg: CN) -> CN:
    """Add the ``MODEL.OBJGUIDED`` subtree (and the PointRend / data keys the baselines and tools
    need) to ``cfg`` in place. Safe to call twice. Returns ``cfg``.
    """
    # PointRend keys, so one train_net.py trains ours, Mask R-CNN and PointRend.
    if not hasattr(cfg.MODEL, "POINT_HEAD"):
        from detectron2.projects.point_rend import add_pointrend_config

        add_pointrend_config(cfg)
    if hasattr(cfg.MODEL, "OBJGUIDED"):
        return cfg

    _C = cfg
    # ------------------------------------------------------------ data augmentation (docs/method.md §6)
    # Train with the paper's augmentation (ObjGuidedDatasetMapper): square crop + flip + warp to
    # INPUT.TRAIN_SIZE. False = Detectron2's default (ResizeShortestEdge + INPUT.RANDOM_FLIP).
    _C.INPUT.SQUARE_CROP_ON = True
    # Square-crop side = max(H, W) * s, s drawn uniformly from this list (unitless scale factors).
    _C.INPUT.SQUARE_CROP_SCALES = [0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3]
    # Side (pixels) of the square training input every crop is resized to (paper: 512).
    _C.INPUT.TRAIN_SIZE = 512
    # Beyond the paper (0 = off, the paper's crop-and-resize): > 0 trains on random square crops of
    # this side (pixels) at native scale, flipped, never resized (cheap iterations on large images
    # without shrinking the objects). Test on whole images at native size: INPUT.MIN_SIZE_TEST equal
    # to the images' short side, or 0.
    _C.INPUT.NATIVE_CROP_SIZE = 0
    # ------------------------------------------------------------------------ training
    # Optimizer: "SGD" (Detectron2's, used by the Mask R-CNN / PointRend baselines) or "ADAM"
    # (the paper: Adam, lr 1.25e-4, constant, no weight decay) or "ADAMW".
    _C.SOLVER.OPTIMIZER = "SGD"
    # A NaN/Inf loss (checked before backward): "raise" = stop with FloatingPointError naming the
    # loss and iteration; "skip" = drop that batch (no backward / optimizer step) with a warning.
    _C.SOLVER.NONFINITE_LOSS = "raise"
    # With NONFINITE_LOSS "skip": most batches in a row that may be skipped; one more aborts.
    _C.SOLVER.MAX_CONSECUTIVE_SKIPS = 10
    # Allow weights that need full unpickling (.pkl, e.g. detectron2:// model zoo, or non-plain
    # .pth): unpickling can execute code. Also set by tools/train_net.py --trust-pickle.
    _C.MODEL.TRUST_PICKLE = False

    _C.MODEL.OBJGUIDED = CN()
    og = _C.MODEL.OBJGUIDED

    # ---------------------------------------------------------------- backbone (docs/method.md §1)
    # Output channels of c0: two 3x3 conv+ReLU on the input image (3 -> C0 -> C0), stride 1.
    og.C0_CHANNELS = 64
    # Output channels of the detection decoder d2, d3, d4 (strides 4, 8, 16). Empty list = same as
    # the ResNet skip it merges into (res2, res3, res4: 256/512/1024 for R-50, the paper's widths).
    og.DECODER_CHANNELS = []
    # Normalisation in the decoder's "B" merge modules ("BN" in the paper; "GN", "SyncBN", "" ok).
    og.DECODER_NORM = "BN"

    # ---------------------------------------------------- center-point detector (docs/method.md §2)
    # Feature the heatmap / wh / offset heads read (stride = output stride n, the "down ratio").
    og.DET_IN_FEATURE = "d2"
    # Hidden channels of the heatmap, wh and offset heads.
    og.HEAD_CHANNELS = 256
    # Kernel size of the heatmap head's first conv.
    og.HEATMAP_KERNEL_SIZE = 3
    # Kernel size of both wh convs (the authors' code: two 7x7 convs; the paper's figure puts the
    # 7x7 on the offset head instead).
    og.WH_KERNEL_SIZE = 7
    # Kernel size of the offset head's first conv.
    og.OFFSET_KERNEL_SIZE = 3
    # Prior probability of the heatmap's final bias, b = -log((1 - p) / p) = -2.19 for p = 0.1.
    og.HEATMAP_PRIOR = 0.1
    # Minimum IoU overlap o of CornerNet's gaussian_radius() for the Gaussian targets.
    og.GAUSSIAN_MIN_OVERLAP = 0.7
    # Penalty-reduced focal loss exponents: alpha on (1 - p), beta on (1 - y).
    og.FOCAL_ALPHA = 2.0
    og.FOCAL_BETA = 4.0
    # Regression loss for wh and offset: "l1" (the authors' code) or "smooth_l1" (the paper).
    og.REG_LOSS = "l1"
    # Objects whose box is <= this many input pixels in either side get no heatmap target.
    og.MIN_BOX_SIZE = 2.0
    # Beyond the paper (0 = off): every Gaussian radius is at least this many cells (a radius-0
    # object has one positive cell with full-weight negatives right next to it).
    og.MIN_GAUSSIAN_RADIUS = 0
    # Beyond the paper (0 = off): the (2r+1)^2 cells around each centre are positives of the
    # focal loss (heatmap 1) and regress wh / offset too (FCOS-style centre sampling), r in cells.
    og.POSITIVE_RADIUS = 0
    # Beyond the paper (0 = off): weight of a GIoU loss between the box decoded from the predicted
    # wh and offset at each positive cell and the object's box (beside the L1 wh loss).
    og.GIOU_LOSS_WEIGHT = 0.0
    # Loss weights (code): total = hm + 0.1*wh + off + 2*seg + refine.
    og.HEATMAP_LOSS_WEIGHT = 1.0
    og.WH_LOSS_WEIGHT = 0.1
    og.OFFSET_LOSS_WEIGHT = 1.0
    # Decoding: keep the top-K peaks after 3x3 max-pool NMS (K never exceeds the number of cells).
    og.TOPK = 500
    # Decoding: keep peaks with heatmap score > this threshold (inference).
    og.SCORE_THRESH_TEST = 0.3

    # --------------------------------------------- object-guided segmentation (docs/method.md §3)
    # Features cropped per instance, shallow to deep, at strides 1, 2, 4, 8, 16 (the deep levels
    # are the detector's decoder: the "object guidance").
    og.SEG_IN_FEATURES = ["c0", "c1", "d2", "d3", "d4"]
    # Output channels of the S merge modules S0..S3 (S_i merges level i+1 into level i). Empty
    # list = same as the skip feature of that level (paper: 64, 64, 256, 512 for R-50).
    og.SEG_CHANNELS = []
    # Boxes are enlarged by this factor about their centre before cropping.
    og.ROI_ENLARGE = 1.1
    # A level is used only while both ROI sides are >= this many cells; an instance whose
    # level-0 ROI is smaller is skipped.
    og.MIN_ROI_SIZE = 2
    # Hidden channels of the mask head on e1 (conv3x3 -> ReLU -> conv3x3 -> 1 per class).
    og.MASK_HEAD_CHANNELS = 64
    # Train the segmentation branch on the largest 4-connected component's box of each GT mask.
    og.GT_LARGEST_COMPONENT_ON = True
    # Segmentation (BCE) loss weight.
    og.SEG_LOSS_WEIGHT = 2.0
    # Training: segment at most this many GT instances per image (random sample; 0 = all). Caps
    # the segmentation branch's time and memory on crowded images.
    # Default 500: never triggers on the paper's datasets (<= ~375 nuclei per image) but bounds
    # time and memory on pathological images with thousands of objects.
    og.MAX_TRAIN_INSTANCES = 500
    # Gone: the segmentation branch has one implementation (all ROIs on packed canvases). Config
    # files written before (every run folder's config.yaml) still load; the key is ignored.
    cfg.register_deprecated_key("MODEL.OBJGUIDED.BATCHED_SEG")
    # Beyond the paper (off by default): train the segmentation branch on boxes like the
    # detector's, not only on exact GT boxes (modeling/roi_heads/train_boxes.py). (a) Jitter: each
    # GT box's width and height are scaled by factors drawn uniformly from [lo, hi] ([1, 1] = off)
    og.TRAIN_BOX_JITTER_SCALE = [1.0, 1.0]
    # ... and its centre shifted by up to this fraction of its width / height along each axis.
    og.TRAIN_BOX_JITTER_SHIFT = 0.0
    # (b) Detector boxes: this share of the GT objects (0 = off) is segmented from the detector's
    # own decoded box where one overlaps the object's box with IoU >= TRAIN_DETECTED_BOXES_IOU, as
    # Mask R-CNN's mask head trains on proposals. Applied after the jitter (a matched box is not jittered).
    og.TRAIN_DETECTED_BOXES_PROB = 0.0
    og.TRAIN_DETECTED_BOXES_IOU = 0.5
    # ... from this iteration on (the detector's early boxes are noise).
    og.TRAIN_DETECTED_BOXES_WARMUP = 500

    # ------------------------------------------ auxiliary point refinement (docs/method.md §4)
    # Train with the auxiliary refinement loss; False gives "Ours w/o refine".
    og.REFINE_ON = True
    # k: draw k*N random points per ROI, N = H*W // D.
    og.REFINE_OVERSAMPLE_RATIO = 3
    # beta: keep the beta*N most uncertain of them (k*beta >= k keeps all: "uniform").
    og.REFINE_IMPORTANCE_SAMPLE_RATIO = 0.75
    # D: one point per D ROI pixels.
    og.REFINE_POINT_DIVISOR = 8
    # Refinement loss weight.
    og.REFINE_LOSS_WEIGHT = 1.0

    # ------------------------------------------------------------ inference (docs/method.md §5)
    # Probability threshold of a pasted mask.
    og.MASK_THRESHOLD = 0.5
    # Mask NMS: suppress a mask whose IoU with a higher-scored one exceeds this (<= 0 disables).
    og.MASK_NMS_THRESH = 0.2
    # Beyond the paper (0 = off): at test time an instance whose mask reaches the margin between its
    # box and its enlarged ROI (a box too small for the object truncates the mask) is segmented once
    # more from its box grown by this fraction of its width / height on every side it reaches.
    og.RECROP_EXPAND_TEST = 0.0
    # Beyond the paper (0 = off): let the box follow the mask. An instance is segmented again from
    # its predicted mask's own box (enlarged as usual) when an edge of that box lies more than this
    # fraction of the box's width / height from the ROI box's edge: it shrinks as well as grows.
    # Runs after RECROP_EXPAND_TEST.
    og.RECROP_FOLLOW_MASK_TEST = 0.0
    # At most this many rounds of RECROP_FOLLOW_MASK_TEST (each re-segments only the boxes that moved).
    og.RECROP_ROUNDS_TEST = 1
    # Beyond the paper (False = off): rank by mask quality, as Mask Scoring R-CNN does: an
    # instance's score (its heatmap peak) is multiplied by the mean probability of its mask's pixels.
    og.MASK_RESCORE_TEST = False

    # ------------------------------------------------------------ evaluation (docs/method.md §7)
    # Run the paper's APseg/APdec + CTC/LSC challenge metrics beside COCO AP (build_evaluators).
    _C.TEST.PAPER_METRICS_ON = True
    # Score threshold of predictions painted into the challenge metrics' label maps (AP uses all).
    _C.TEST.PAPER_METRICS_SCORE_THRESH = 0.0
    return cfg


# ================================================================================ loading
# The one way configs come in: tools/train_net.py, tools/predict.py (also a model folder's
# config.yaml), tools/compare.py and its worker, benchmarks/ and the diagnostics all call
# load_config; the comparison's run keys hash the files of config_chain.

_POINTREND_DEFAULT_NUM_CLASSES = 80


class ConfigError(ValueError):
    """A config file (or one of its ``_BASE_`` files, or an override) is missing, not YAML, holds a
    YAML Python tag, or sets a key / value the config does not have. The message names the file
    (or the override) in one line."""


def _read_yaml(path: str, child: str) -> dict:
    import yaml

    where = path if path == child else f"{path} (a _BASE_ of {child})"
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: config file not found")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)  # never yaml.unsafe_load: a tag must not construct objects
    except yaml.constructor.ConstructorError as e:
        tag = f" {e.problem.split('tag', 1)[-1].strip()}" if e.problem and "tag" in e.problem else ""
        line = f" (line {e.problem_mark.line + 1})" if e.problem_mark is not None else ""
        raise ConfigError(f"{where}: YAML Python tag{tag}{line} refused: config files are plain YAML and "
                          "are never allowed to construct Python objects or run code") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        msg = " ".join(str(e).split())
        raise ConfigError(f"{where}: not valid YAML ({msg})") from None
    except OSError as e:
        raise ConfigError(f"{where}: cannot read config ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a YAML mapping of config keys, got a {type(data).__name__}")
    return data


def config_chain(config_file: str) -> List[str]:
    """``config_file`` and every ``_BASE_`` it inherits from (absolute paths, child first), each read
    with ``yaml.safe_load`` and checked; ``_BASE_`` is resolved as Detectron2 does (relative to the
    file that names it, ``~`` expanded; a list of bases allowed). URLs are not fetched.

    Raises:
        ConfigError: naming the file that is missing, not YAML or has a Python tag, or a cycle.
    """
    top = os.path.abspath(config_file)
    chain: List[str] = []
    todo = [top]
    while todo:
        path = todo.pop()
        if path in chain:
            raise ConfigError(f"{config_file}: _BASE_ cycle through {path}")
        data = _read_yaml(path, top)
        chain.append(path)
        bases = data.get("_BASE_") or []
        for base in [bases] if isinstance(bases, str) else bases:
            if not isinstance(base, str):
                raise ConfigError(f"{path}: _BASE_ must be a file name or a list of them, got {base!r}")
            if base.startswith(("http://", "https://")):
                raise ConfigError(f"{path}: _BASE_ {base} is a URL; config files are not downloaded")
            base = os.path.expanduser(base)
            todo.append(os.path.normpath(base if os.path.isabs(base) else os.path.join(os.path.dirname(path), base)))
    return chain


_CUDA_FALLBACK_WARNED: list = []


def load_config(config_file: str, opts: Sequence[str] = (), *, allow_cuda_fallback: bool = True) -> CN:
    """get_cfg -> :func:`add_objguided_config` -> the YAML file (and its ``_BASE_`` files) -> ``opts``;
    not frozen.

    Every file of the chain is read with ``yaml.safe_load`` first (:func:`config_chain`), and
    Detectron2's ``merge_from_file`` runs with ``allow_unsafe=False`` (its default falls back to
    ``yaml.unsafe_load``, which runs ``!!python/object/apply:`` tags). Python (``.py``) configs are
    not executed. ``MODEL.POINT_HEAD.NUM_CLASSES`` is derived from ``MODEL.ROI_HEADS.NUM_CLASSES``
    (or a conflict refused). With ``allow_cuda_fallback``, ``MODEL.DEVICE cuda`` without CUDA
    becomes ``cpu`` with a warning.

    Raises:
        ConfigError: one line naming the file (or the override) and the problem.
    """
    from detectron2.config import get_cfg

    if not config_file:
        raise ConfigError("--config-file is required (a YAML file under configs/)")
    if not os.path.isfile(config_file):
        raise ConfigError(f"--config-file {config_file}: file not found")
    if os.path.splitext(config_file)[1].lower() not in (".yaml", ".yml"):
        raise ConfigError(f"--config-file {config_file}: expected a .yaml/.yml file (Python configs are not executed)")
    config_chain(config_file)
    cfg = get_cfg()
    add_objguided_config(cfg)
    try:
        cfg.merge_from_file(config_file, allow_unsafe=False)
    except Exception as e:  # unknown key, wrong type, old version: Detectron2 / yacs raise many types
        raise ConfigError(f"{config_file}: {_one_line(e)}") from None
    try:
        cfg.merge_from_list(list(opts or []))
    except Exception as e:
        raise ConfigError(f"config overrides {' '.join(map(str, opts))!r}: {_one_line(e)}") from None
    if allow_cuda_fallback and cfg.MODEL.DEVICE.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            if not _CUDA_FALLBACK_WARNED:  # once per process: a tool reading four configs says it once
                _CUDA_FALLBACK_WARNED.append(True)
                logging.getLogger("objguided_d2").warning(
                    "MODEL.DEVICE=%s but CUDA is not available: using the CPU", cfg.MODEL.DEVICE)
            cfg.MODEL.DEVICE = "cpu"
    # One NUM_CLASSES: PointRend keeps a second copy in POINT_HEAD; derive it, or refuse a conflict.
    n = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    if cfg.MODEL.POINT_HEAD.NUM_CLASSES != n:
        if cfg.MODEL.POINT_HEAD.NUM_CLASSES == _POINTREND_DEFAULT_NUM_CLASSES:
            cfg.MODEL.POINT_HEAD.NUM_CLASSES = n
        else:
            raise ConfigError(
                f"{config_file}: MODEL.POINT_HEAD.NUM_CLASSES={cfg.MODEL.POINT_HEAD.NUM_CLASSES} differs from "
                f"MODEL.ROI_HEADS.NUM_CLASSES={n}; set only MODEL.ROI_HEADS.NUM_CLASSES"
            )
    return cfg


def _one_line(e: Exception) -> str:
    msg = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__

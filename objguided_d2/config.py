"""All configuration keys of objguided-d2, added by :func:`add_objguided_config`.

Defaults are the paper's / the authors' code's values (method card, ``../shared/method-card.md``);
where paper and code differ the code is the default and the paper's choice is an option.
"""
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
    # ------------------------------------------------------------ data augmentation (method card §6)
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

    # ---------------------------------------------------------------- backbone (method card §1)
    # Output channels of c0: two 3x3 conv+ReLU on the input image (3 -> C0 -> C0), stride 1.
    og.C0_CHANNELS = 64
    # Output channels of the detection decoder d2, d3, d4 (strides 4, 8, 16). Empty list = same as
    # the ResNet skip it merges into (res2, res3, res4: 256/512/1024 for R-50, the paper's widths).
    og.DECODER_CHANNELS = []
    # Normalisation in the decoder's "B" merge modules ("BN" in the paper; "GN", "SyncBN", "" ok).
    og.DECODER_NORM = "BN"

    # ---------------------------------------------------- center-point detector (method card §2)
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

    # --------------------------------------------- object-guided segmentation (method card §3)
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
    # the per-ROI loop's time and memory on crowded images.
    # Default 500: never triggers on the paper's datasets (<= ~375 nuclei per image) but bounds
    # time and memory on pathological images with thousands of objects.
    og.MAX_TRAIN_INSTANCES = 500
    # Segment all ROIs at once on one zero-separated canvas per level (per-ROI InstanceNorm; same
    # results as the paper's one-ROI-at-a-time loop, which False selects as the reference). Speed only.
    og.BATCHED_SEG = True

    # ------------------------------------------ auxiliary point refinement (method card §4)
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

    # ------------------------------------------------------------ inference (method card §5)
    # Probability threshold of a pasted mask.
    og.MASK_THRESHOLD = 0.5
    # Mask NMS: suppress a mask whose IoU with a higher-scored one exceeds this (<= 0 disables).
    og.MASK_NMS_THRESH = 0.2

    # ------------------------------------------------------------ evaluation (method card §7)
    # Run the paper's APseg/APdec + CTC/LSC challenge metrics beside COCO AP (build_evaluators).
    _C.TEST.PAPER_METRICS_ON = True
    # Score threshold of predictions painted into the challenge metrics' label maps (AP uses all).
    _C.TEST.PAPER_METRICS_SCORE_THRESH = 0.0
    return cfg

"""Object-guided ROI heads (docs/method.md §3, §4): no second box stage, and no segmentation maths.
They select the instances to segment (GT instances in training, detections at inference; one
rule for both), crop [c0, c1, d2, d3, d4] and the GT masks on each instance's ROI grid
(:class:`~.roi_pooler.ROIGridPooler`: all ROIs packed into one zero-separated canvas per level),
and call the mask head (:class:`~.mask_head.ObjGuidedMaskHead`), which returns the losses
(``loss_seg``, ``loss_refine``) or the variable-size mask probabilities that
:class:`ObjGuidedRCNN` pastes into full images.

Shapes: N images, R instances of one image, L levels, (h, w) level-0 ROI size.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, ROIHeads
from detectron2.modeling.roi_heads.mask_head import build_mask_head
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import get_event_storage

from ...structures import ROIMaskProbs, gt_bitmasks
from .roi_pooler import ROIGridPooler
from .train_boxes import jitter_boxes, match_detections

__all__ = ["ObjGuidedROIHeads"]


@ROI_HEADS_REGISTRY.register()
class ObjGuidedROIHeads(ROIHeads):
    """Crops [c0, c1, d2, d3, d4] at each instance's enlarged box with a per-level ROI size and
    lets the mask head segment the crops."""

    @configurable
    def __init__(
        self,
        *,
        mask_head: torch.nn.Module,
        in_features: Sequence[str],
        pooler: ROIGridPooler,
        max_train_instances: int = 0,
        detections_per_image: int = 0,
        recrop_expand: float = 0.0,
        recrop_follow_mask: float = 0.0,
        recrop_rounds: int = 1,
        mask_rescore: bool = False,
        train_box_jitter_scale: Sequence[float] = (1.0, 1.0),
        train_box_jitter_shift: float = 0.0,
        train_detected_boxes_prob: float = 0.0,
        train_detected_boxes_iou: float = 0.5,
        train_detected_boxes_warmup: int = 0,
        mask_threshold: float = 0.5,
        **kwargs,
    ):
        """
        Args:
            mask_head: an :class:`ObjGuidedMaskHead` (``forward(rois, classes, gt_roi_masks)``).
            in_features: L feature names, shallow to deep (c0, c1, d2, d3, d4).
            pooler: the ROI grid of those L levels (strides, box enlargement, smallest side).
            max_train_instances: at most this many GT instances per image are segmented in
                training (random sample; 0 = all).
            detections_per_image: keep the top-scoring detections per image at inference (0 = all).
            recrop_expand: beyond the paper (0 = off): at inference, an instance whose mask
                (``>= mask_threshold``) reaches its ROI's margin is segmented once more from its box
                grown by this fraction of its side on every touched side
                (:func:`~.roi_grid.grow_boxes_at_touched_borders`).
            recrop_follow_mask / recrop_rounds: beyond the paper (0 = off): at inference, an
                instance whose mask's own box (:func:`~.roi_grid.mask_boxes`) has an edge more than
                this fraction of the box side away from its ROI box's is segmented again from the
                mask's box, up to ``recrop_rounds`` times.
            mask_rescore: beyond the paper: multiply each score by the mean probability of the
                instance's mask pixels.
            train_box_jitter_scale / train_box_jitter_shift: beyond the paper ((1, 1) / 0 = off):
                train on GT boxes jittered by :func:`~.train_boxes.jitter_boxes`.
            train_detected_boxes_prob / _iou / _warmup: beyond the paper (0 = off): this share of
                the GT objects trains on the detector's matching box
                (:func:`~.train_boxes.match_detections`) from iteration ``_warmup`` on.
            kwargs: for :class:`ROIHeads` (``num_classes``, ...).
        """
        super().__init__(**kwargs)
        if len(in_features) != len(pooler.strides):
            raise ValueError(f"ObjGuidedROIHeads: {len(in_features)} features but {len(pooler.strides)} strides")
        self.mask_head = mask_head
        self.in_features = list(in_features)
        self.pooler = pooler
        self.max_train_instances = int(max_train_instances)
        self.detections_per_image = int(detections_per_image)
        self.recrop_expand = float(recrop_expand)
        self.recrop_follow_mask = float(recrop_follow_mask)
        self.recrop_rounds = int(recrop_rounds)
        self.mask_rescore = bool(mask_rescore)
        self.train_box_jitter = (tuple(float(x) for x in train_box_jitter_scale), float(train_box_jitter_shift))
        if len(self.train_box_jitter[0]) != 2 or not 0 < self.train_box_jitter[0][0] <= self.train_box_jitter[0][1]:
            raise ValueError("ObjGuidedROIHeads: MODEL.OBJGUIDED.TRAIN_BOX_JITTER_SCALE must be [lo, hi] "
                             f"with 0 < lo <= hi, got {list(train_box_jitter_scale)}")
        if self.train_box_jitter[1] < 0 or not 0 <= train_detected_boxes_prob <= 1:
            raise ValueError("ObjGuidedROIHeads: need TRAIN_BOX_JITTER_SHIFT >= 0 and 0 <= "
                             f"TRAIN_DETECTED_BOXES_PROB <= 1, got {train_box_jitter_shift}, "
                             f"{train_detected_boxes_prob}")
        self.train_detected_boxes = (float(train_detected_boxes_prob), float(train_detected_boxes_iou),
                                     int(train_detected_boxes_warmup))
        self.mask_threshold = float(mask_threshold)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        ret = super().from_config(cfg)
        og = cfg.MODEL.OBJGUIDED
        in_features = list(og.SEG_IN_FEATURES)
        missing = [f for f in in_features if f not in input_shape]
        if missing:
            raise ValueError(
                f"ObjGuidedROIHeads: MODEL.OBJGUIDED.SEG_IN_FEATURES names {missing}, not among "
                f"the backbone outputs {sorted(input_shape)}"
            )
        if not cfg.MODEL.MASK_ON:
            raise ValueError("ObjGuidedROIHeads: the method segments; set MODEL.MASK_ON True")
        ret.update(
            mask_head=build_mask_head(cfg, {f: input_shape[f] for f in in_features}),
            in_features=in_features,
            pooler=ROIGridPooler([input_shape[f].stride for f in in_features], og.ROI_ENLARGE,
                                 og.MIN_ROI_SIZE),
            max_train_instances=og.MAX_TRAIN_INSTANCES,
            detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            recrop_expand=og.RECROP_EXPAND_TEST,
            recrop_follow_mask=og.RECROP_FOLLOW_MASK_TEST,
            recrop_rounds=og.RECROP_ROUNDS_TEST,
            mask_rescore=og.MASK_RESCORE_TEST,
            train_box_jitter_scale=list(og.TRAIN_BOX_JITTER_SCALE),
            train_box_jitter_shift=og.TRAIN_BOX_JITTER_SHIFT,
            train_detected_boxes_prob=og.TRAIN_DETECTED_BOXES_PROB,
            train_detected_boxes_iou=og.TRAIN_DETECTED_BOXES_IOU,
            train_detected_boxes_warmup=og.TRAIN_DETECTED_BOXES_WARMUP,
            mask_threshold=og.MASK_THRESHOLD,
        )
        return ret

    def forward(
        self,
        images,
        features: Dict[str, torch.Tensor],
        proposals: List[Instances],
        targets: Optional[List[Instances]] = None,
    ) -> Tuple[List[Instances], Dict[str, torch.Tensor]]:
        """
        Args:
            images: unused (the ROI grids are in input pixels, the features carry their strides).
            features: name -> (N, C, H_i, W_i); must contain ``in_features``.
            proposals: N Instances with ``proposal_boxes`` (or ``pred_boxes``) and ``scores`` /
                ``pred_classes`` (or ``objectness_logits``).
            targets: N Instances with ``gt_boxes``, ``gt_classes``, ``gt_masks`` (training).
        Returns:
            training: (proposals, {"loss_seg", ["loss_refine"]});
            inference: (N Instances with ``pred_boxes``, ``scores``, ``pred_classes``,
            ``pred_mask_probs`` (:class:`ROIMaskProbs`), ``pred_mask_boxes`` (Boxes spanned by
            the maps, enlarged, input pixels), {}).
        """
        del images
        feats = self._select_features(features)
        if self.training:
            if targets is None:
                raise ValueError("ObjGuidedROIHeads: training needs `targets` (gt instances)")
            return proposals, self._forward_train(feats, targets, proposals)
        return [self._predict(feats, i, p) for i, p in enumerate(proposals)], {}

    def forward_with_given_boxes(
        self, features: Dict[str, torch.Tensor], instances: List[Instances]
    ) -> List[Instances]:
        """Add mask probabilities to detections that have ``pred_boxes``, ``pred_classes`` (and
        ``scores``); instances too small to segment are dropped."""
        assert not self.training
        feats = self._select_features(features)
        return [self._predict(feats, i, p) for i, p in enumerate(instances)]

    def _select_features(self, features: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise ValueError(f"ObjGuidedROIHeads: features {missing} missing; got {sorted(features)}")
        return [features[f] for f in self.in_features]

    def _select(self, boxes: torch.Tensor, order: torch.Tensor):
        """The instances ``order`` names (GT sample or top detections, in segmentation order)
        that are large enough for a level-0 ROI: their indices, their level sizes and how many
        were too small."""
        level_sizes = self.pooler.level_sizes(boxes[order])
        ok = [k for k, s in enumerate(level_sizes) if s]
        idx = order[torch.as_tensor(ok, dtype=torch.int64, device=order.device)]
        return idx, [level_sizes[k] for k in ok], len(level_sizes) - len(ok)

    def _forward_train(self, feats: List[torch.Tensor], targets: List[Instances],
                       proposals: Optional[List[Instances]] = None) -> Dict[str, torch.Tensor]:
        picked, sizes, num_skipped = [], [], 0  # picked: per image (its index, GT indices, masks, boxes)
        for i, t in enumerate(targets):
            if len(t) == 0:
                continue
            n, dev = len(t), t.gt_boxes.tensor.device
            cap = self.max_train_instances
            order = torch.randperm(n, device=dev)[:cap] if 0 < cap < n else torch.arange(n, device=dev)
            boxes = self._training_boxes(t, proposals[i] if proposals else None)
            idx, s, skipped = self._select(boxes, order)
            num_skipped += skipped
            if s:
                picked.append((i, idx, gt_bitmasks(t), boxes))
                sizes.extend(s)
        _log_num_segmented(len(sizes), num_skipped)
        if not sizes:  # nothing to segment: the head's zero losses
            return self.mask_head(None, torch.zeros(0, dtype=torch.int64), feats[0].new_zeros(0))
        boxes = torch.cat([b[js] for _, js, _, b in picked])
        classes = torch.cat([targets[i].gt_classes[js] for i, js, _, _ in picked])
        image_index = torch.cat([torch.full((len(js),), i, dtype=torch.int64, device=boxes.device)
                                 for i, js, _, _ in picked])
        rois = self.pooler.crop(feats, boxes, image_index, sizes)
        gt = self.pooler.crop_gt_masks(rois, [m[js] for _, js, m, _ in picked], boxes, feats[0].dtype)
        return self.mask_head(rois, classes, gt)

    def _training_boxes(self, targets: Instances, proposals: Optional[Instances]) -> torch.Tensor:
        """(n, 4) the boxes one image's GT objects are segmented from in training: the GT boxes (the
        paper), or jittered / the detector's (beyond the paper; :mod:`.train_boxes`). Draws no
        random numbers when both options are off, so the paper's training is unchanged."""
        boxes = targets.gt_boxes.tensor
        (lo, hi), shift = self.train_box_jitter
        if (lo, hi) != (1.0, 1.0) or shift > 0:
            boxes = jitter_boxes(boxes, (lo, hi), shift, targets.image_size)
        prob, iou, warmup = self.train_detected_boxes
        if prob > 0 and proposals is not None and _iteration() >= warmup:
            det, matched = match_detections(targets.gt_boxes.tensor, _detections(proposals)[0], iou)
            use = matched & (torch.rand(len(boxes), device=boxes.device) < prob)
            boxes = torch.where(use[:, None], det, boxes)
            _put_scalar("roi_heads/detected_box_share", float(use.float().mean()) if len(use) else 0.0)
        return boxes

    def _predict(self, feats: List[torch.Tensor], image_index: int, proposals: Instances) -> Instances:
        boxes, scores, classes = _detections(proposals)
        order = torch.argsort(scores, descending=True)
        if self.detections_per_image > 0:
            order = order[: self.detections_per_image]
        idx, sizes, _ = self._select(boxes, order)  # < 2 px at level 0: cannot be segmented, dropped
        boxes, scores, classes = boxes[idx], scores[idx], classes[idx]
        image = torch.full((len(idx),), image_index, dtype=torch.int64, device=boxes.device)
        probs = self.mask_head(self.pooler.crop(feats, boxes, image, sizes), classes) if sizes else []
        if self.recrop_expand > 0 and sizes:
            boxes, probs = self._recrop(feats, boxes, classes, image, probs, proposals.image_size)
        if self.recrop_follow_mask > 0 and sizes:
            for _ in range(self.recrop_rounds):
                boxes, probs, moved = self._follow_masks(feats, boxes, classes, image, probs)
                if not moved:
                    break
        if self.mask_rescore and sizes:
            scores = scores * torch.stack([_mean_mask_prob(p, self.mask_threshold) for p in probs]).to(scores)
        res = Instances(proposals.image_size)
        res.pred_boxes = Boxes(boxes)
        res.scores = scores
        res.pred_classes = classes
        res.pred_mask_probs = ROIMaskProbs(probs)
        res.pred_mask_boxes = Boxes(self.pooler.enlarged(boxes))
        return res

    def _recrop(self, feats, boxes, classes, image, probs, image_size):
        """Segment the instances whose masks touch their ROI border again from grown boxes."""
        grown, changed = self.pooler.grow_at_touched_borders(boxes, probs, self.mask_threshold,
                                                             self.recrop_expand, image_size)
        return self._resegment(feats, boxes, grown, changed, classes, image, probs)[:2]

    def _follow_masks(self, feats, boxes, classes, image, probs):
        """Segment the instances whose mask's own box is far from their ROI box again from the
        mask's box; returns the boxes, the maps and how many moved."""
        mboxes, found = self.pooler.mask_boxes(boxes, probs, self.mask_threshold)
        side = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2).clamp(min=1e-6)
        far = ((mboxes - boxes).abs() / side > self.recrop_follow_mask).any(dim=1) & found
        return self._resegment(feats, boxes, mboxes, far, classes, image, probs)

    def _resegment(self, feats, boxes, new_boxes, which, classes, image, probs):
        """Replace the boxes and maps of the instances ``which`` marks by ``new_boxes`` and their
        maps (those too small to segment keep theirs)."""
        idx, sizes, _ = self._select(new_boxes, which.nonzero().flatten())
        if not sizes:
            return boxes, probs, 0
        new = self.mask_head(self.pooler.crop(feats, new_boxes[idx], image[idx], sizes), classes[idx])
        probs = list(probs)
        for k, p in zip(idx.tolist(), new):
            probs[k] = p
        boxes = boxes.clone()
        boxes[idx] = new_boxes[idx]
        return boxes, probs, len(idx)


def _detections(proposals: Instances) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(R, 4) boxes, (R,) scores and (R,) classes of proposals or detections."""
    if proposals.has("proposal_boxes"):
        boxes = proposals.proposal_boxes.tensor
    elif proposals.has("pred_boxes"):
        boxes = proposals.pred_boxes.tensor
    else:
        raise ValueError("ObjGuidedROIHeads: proposals need `proposal_boxes` or `pred_boxes`")
    if proposals.has("scores"):
        scores = proposals.scores
    elif proposals.has("objectness_logits"):
        scores = proposals.objectness_logits.sigmoid()
    else:
        raise ValueError("ObjGuidedROIHeads: proposals need `scores` or `objectness_logits`")
    classes = (
        proposals.pred_classes if proposals.has("pred_classes")
        else torch.zeros(len(boxes), dtype=torch.int64, device=boxes.device)
    )
    return boxes, scores, classes


def _mean_mask_prob(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """Mean probability of a map's mask pixels (``>= threshold``); 0 for an empty mask."""
    on = probs >= threshold
    return probs[on].mean() if bool(on.any()) else probs.new_zeros(())


def _iteration() -> float:
    """The trainer's iteration (infinite outside a trainer: no warm-up to wait for)."""
    try:
        return get_event_storage().iter
    except AssertionError:
        return float("inf")


def _put_scalar(name: str, value: float) -> None:
    try:
        storage = get_event_storage()
    except AssertionError:  # no EventStorage outside a trainer: nothing to log to
        return
    storage.put_scalar(name, value)


def _log_num_segmented(num_segmented: int, num_skipped: int) -> None:
    _put_scalar("roi_heads/num_segmented", num_segmented)
    _put_scalar("roi_heads/num_skipped_small", num_skipped)

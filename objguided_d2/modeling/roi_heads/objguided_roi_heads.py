"""Object-guided ROI heads (method card §3, §4): no second box stage. Training crops every GT
instance at its GT box and trains the segmentation branch (``loss_seg``) and the auxiliary point
refinement (``loss_refine``); inference turns the proposals into final instances carrying
variable-size ROI mask probabilities, which :class:`ObjGuidedRCNN` pastes into full images.

Shapes: N images, R instances of one image, L levels, (h, w) level-0 ROI size.
"""
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, ROIHeads
from detectron2.modeling.roi_heads.mask_head import build_mask_head
from detectron2.structures import BitMasks, Boxes, Instances, PolygonMasks
from detectron2.utils.events import get_event_storage

from .batched import check_batchable, draw_refine_points
from .canvas import (
    class_logits_at_pixels,
    crop_masks_at_pixels,
    mask_head_forward_canvas,
    pack_canvas,
    refine_logits_canvas,
)
from .point_refine import num_refine_points, roi_refine_logits
from .roi_sampling import crop_mask_roi, crop_roi, enlarge_boxes, roi_level_sizes

__all__ = ["ObjGuidedROIHeads", "ROIMaskProbs", "gt_bitmasks"]


class ROIMaskProbs:
    """A list of variable-size ROI mask probability maps that ``Instances`` can hold: indexing by
    int, slice, bool mask or int tensor, ``len``, ``to`` and ``cat`` like Detectron2 structures.

    Each item is an (h_r, w_r) float tensor spanning the instance's ``pred_mask_boxes``.
    """

    def __init__(self, masks: Sequence[torch.Tensor]):
        self.masks = list(masks)

    def __len__(self) -> int:
        return len(self.masks)

    def __iter__(self):
        return iter(self.masks)

    def __getitem__(self, item: Union[int, slice, torch.Tensor]) -> Union[torch.Tensor, "ROIMaskProbs"]:
        if isinstance(item, int):
            return self.masks[item]
        if isinstance(item, slice):
            return ROIMaskProbs(self.masks[item])
        item = torch.as_tensor(item)
        if item.dtype == torch.bool:
            if item.ndim != 1 or len(item) != len(self.masks):
                raise IndexError(f"ROIMaskProbs: bool index of shape {tuple(item.shape)} for "
                                 f"{len(self.masks)} masks")
            item = item.nonzero().flatten()
        return ROIMaskProbs([self.masks[i] for i in item.flatten().tolist()])

    def to(self, *args, **kwargs) -> "ROIMaskProbs":
        return ROIMaskProbs([m.to(*args, **kwargs) for m in self.masks])

    @classmethod
    def cat(cls, lists: List["ROIMaskProbs"]) -> "ROIMaskProbs":
        return cls([m for x in lists for m in x.masks])

    def __repr__(self) -> str:
        return f"ROIMaskProbs(num={len(self)}, sizes={[tuple(m.shape) for m in self.masks[:5]]}...)"


def gt_bitmasks(instances: Instances) -> torch.Tensor:
    """(R, H, W) bool GT masks of ``instances`` at its image size, from BitMasks, PolygonMasks or a
    tensor in ``gt_masks``."""
    if not instances.has("gt_masks"):
        raise ValueError("ObjGuidedROIHeads: training targets need `gt_masks` (set MODEL.MASK_ON)")
    m = instances.gt_masks
    h, w = instances.image_size
    if isinstance(m, BitMasks):
        t = m.tensor
    elif isinstance(m, PolygonMasks):
        t = BitMasks.from_polygon_masks(m, h, w).tensor if len(m) else torch.zeros(0, h, w)
    elif isinstance(m, torch.Tensor):
        t = m
    else:
        raise ValueError(f"ObjGuidedROIHeads: unsupported gt_masks type {type(m).__name__}; "
                         "expected BitMasks, PolygonMasks or a (R, H, W) tensor")
    if t.ndim != 3 or t.shape[0] != len(instances):
        raise ValueError(f"ObjGuidedROIHeads: gt_masks must be ({len(instances)}, H, W), "
                         f"got {tuple(t.shape)}")
    return t.to(device=instances.gt_boxes.device).bool()


@ROI_HEADS_REGISTRY.register()
class ObjGuidedROIHeads(ROIHeads):
    """Crops [c0, c1, d2, d3, d4] at each instance's enlarged box with a per-level ROI size and
    segments it with the mask head: all ROIs at once, packed into one zero-separated canvas per
    level (``batched_seg``, :mod:`.canvas`), or one ROI at a time (the reference loop)."""

    @configurable
    def __init__(
        self,
        *,
        mask_head: torch.nn.Module,
        in_features: Sequence[str],
        strides: Sequence[int],
        roi_enlarge: float = 1.1,
        min_roi_size: int = 2,
        seg_loss_weight: float = 2.0,
        refine_on: bool = True,
        refine_loss_weight: float = 1.0,
        refine_point_divisor: int = 8,
        refine_oversample_ratio: float = 3.0,
        refine_importance_sample_ratio: float = 0.75,
        max_train_instances: int = 0,
        detections_per_image: int = 0,
        batched_seg: bool = True,
        **kwargs,
    ):
        """
        Args:
            mask_head: an :class:`ObjGuidedMaskHead` (``forward_single``, ``class_index``,
                ``refine_head``).
            in_features: L feature names, shallow to deep (c0, c1, d2, d3, d4).
            strides: their L strides.
            roi_enlarge: box enlargement about its centre before cropping.
            min_roi_size: a level is used while both ROI sides are >= this.
            seg_loss_weight / refine_loss_weight: loss weights.
            refine_on: compute ``loss_refine``.
            refine_point_divisor / refine_oversample_ratio / refine_importance_sample_ratio:
                D, k, beta of the point sampling.
            max_train_instances: at most this many GT instances per image are segmented in
                training (random sample; 0 = all).
            detections_per_image: keep the top-scoring detections per image at inference (0 = all).
            batched_seg: segment all ROIs at once on per-level canvases (same results as the
                per-ROI loop, which is used when False).
            kwargs: for :class:`ROIHeads` (``num_classes``, ...).
        """
        super().__init__(**kwargs)
        if len(in_features) != len(strides):
            raise ValueError(f"ObjGuidedROIHeads: {len(in_features)} features but {len(strides)} strides")
        self.mask_head = mask_head
        self.in_features = list(in_features)
        self.strides = [int(s) for s in strides]
        self.roi_enlarge = float(roi_enlarge)
        self.min_roi_size = int(min_roi_size)
        self.seg_loss_weight = seg_loss_weight
        self.refine_on = refine_on and getattr(mask_head, "refine_head", None) is not None
        self.refine_loss_weight = refine_loss_weight
        self.refine_point_divisor = int(refine_point_divisor)
        self.refine_oversample_ratio = refine_oversample_ratio
        self.refine_importance_sample_ratio = refine_importance_sample_ratio
        self.max_train_instances = int(max_train_instances)
        self.detections_per_image = int(detections_per_image)
        self.batched_seg = bool(batched_seg)
        if self.batched_seg:
            check_batchable(mask_head)

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
            strides=[input_shape[f].stride for f in in_features],
            roi_enlarge=og.ROI_ENLARGE,
            min_roi_size=og.MIN_ROI_SIZE,
            seg_loss_weight=og.SEG_LOSS_WEIGHT,
            refine_on=og.REFINE_ON,
            refine_loss_weight=og.REFINE_LOSS_WEIGHT,
            refine_point_divisor=og.REFINE_POINT_DIVISOR,
            refine_oversample_ratio=og.REFINE_OVERSAMPLE_RATIO,
            refine_importance_sample_ratio=og.REFINE_IMPORTANCE_SAMPLE_RATIO,
            max_train_instances=og.MAX_TRAIN_INSTANCES,
            detections_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
            batched_seg=og.BATCHED_SEG,
        )
        return ret

    # ------------------------------------------------------------------------------ forward
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
            return proposals, self._forward_train(feats, targets)
        return [self._predict_instances(feats, i, p) for i, p in enumerate(proposals)], {}

    def forward_with_given_boxes(
        self, features: Dict[str, torch.Tensor], instances: List[Instances]
    ) -> List[Instances]:
        """Add mask probabilities to detections that have ``pred_boxes``, ``pred_classes`` (and
        ``scores``); instances too small to segment are dropped."""
        assert not self.training
        feats = self._select_features(features)
        return [self._predict_instances(feats, i, p) for i, p in enumerate(instances)]

    def _select_features(self, features: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
        missing = [f for f in self.in_features if f not in features]
        if missing:
            raise ValueError(f"ObjGuidedROIHeads: features {missing} missing; got {sorted(features)}")
        return [features[f] for f in self.in_features]

    def _crop_levels(
        self, feats: List[torch.Tensor], image_index: int, box: torch.Tensor,
        sizes: List[Tuple[int, int]],
    ) -> List[torch.Tensor]:
        """Crops of one ROI at its levels: list of (1, C_i, h_i, w_i)."""
        return [
            crop_roi(feats[l], box, hw, self.strides[l], enlarge=self.roi_enlarge,
                     batch_index=image_index)[None]
            for l, hw in enumerate(sizes)
        ]

    # ------------------------------------------------------------------------------ training
    def _forward_train(
        self, feats: List[torch.Tensor], targets: List[Instances]
    ) -> Dict[str, torch.Tensor]:
        if self.batched_seg:
            return self._forward_train_batched(feats, targets)
        seg_losses: List[torch.Tensor] = []
        refine_logits: List[torch.Tensor] = []
        refine_labels: List[torch.Tensor] = []
        num_skipped = 0
        for i, t in enumerate(targets):
            if len(t) == 0:
                continue
            boxes = t.gt_boxes.tensor
            classes = t.gt_classes
            masks = gt_bitmasks(t)
            keep = torch.arange(len(t), device=boxes.device)
            if 0 < self.max_train_instances < len(t):
                keep = torch.randperm(len(t), device=boxes.device)[: self.max_train_instances]
            level_sizes = roi_level_sizes(boxes[keep], self.strides, self.roi_enlarge, self.min_roi_size)
            for j, sizes in zip(keep.tolist(), level_sizes):
                if not sizes:
                    num_skipped += 1
                    continue
                out = self.mask_head.forward_single(self._crop_levels(feats, i, boxes[j], sizes))
                c = self.mask_head.class_index(int(classes[j]))
                logits = out.mask_logits[:, c : c + 1]  # (1, 1, h, w)
                target = crop_mask_roi(masks[j], boxes[j], sizes[0], enlarge=self.roi_enlarge)
                seg_losses.append(
                    F.binary_cross_entropy_with_logits(logits[0, 0], target.to(logits.dtype))
                )
                if self.refine_on:
                    ref = roi_refine_logits(
                        self.mask_head.refine_head, out.e1, out.e2, logits.detach().sigmoid(),
                        target, c,
                        point_divisor=self.refine_point_divisor,
                        oversample_ratio=self.refine_oversample_ratio,
                        importance_sample_ratio=self.refine_importance_sample_ratio,
                    )
                    if ref is not None:
                        refine_logits.append(ref[0])
                        refine_labels.append(ref[1])
        self._log_num_segmented(len(seg_losses), num_skipped)
        return self._combine_losses(seg_losses, refine_logits, refine_labels)

    def _combine_losses(
        self, seg_losses: List[torch.Tensor], refine_logits: List[torch.Tensor],
        refine_labels: List[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """Mean per-ROI BCE (``seg_losses``: scalars or (B,) per-ROI vectors) and the refinement
        BCE over all point entries, weighted."""
        seg_losses = [x.reshape(-1) for x in seg_losses]
        seg_losses = [x for x in seg_losses if x.numel()]
        # A zero that still reaches every head parameter: finite, backward-able losses (and no
        # unused parameters under DDP) when an image batch has nothing to segment.
        zero = sum(p.sum() for p in self.mask_head.parameters()) * 0.0
        loss_seg = torch.cat(seg_losses).mean() + zero if seg_losses else zero
        losses = {"loss_seg": loss_seg * self.seg_loss_weight}
        if self.refine_on:
            if refine_logits and sum(x.numel() for x in refine_logits) > 0:
                loss_ref = F.binary_cross_entropy_with_logits(
                    torch.cat(refine_logits), torch.cat(refine_labels)
                ) + zero
            else:
                loss_ref = zero
            losses["loss_refine"] = loss_ref * self.refine_loss_weight
        return losses

    def _forward_train_batched(
        self, feats: List[torch.Tensor], targets: List[Instances]
    ) -> Dict[str, torch.Tensor]:
        """:meth:`_forward_train` on per-level canvases (:mod:`.canvas`): same instances, same
        random draws (in the same order), same losses up to float rounding."""
        boxes_l, img_l, cls_l, mask_j_l, sizes_l, draws = [], [], [], [], [], []
        gt_masks: Dict[int, torch.Tensor] = {}
        num_skipped = 0
        for i, t in enumerate(targets):
            if len(t) == 0:
                continue
            boxes = t.gt_boxes.tensor
            keep = torch.arange(len(t), device=boxes.device)
            if 0 < self.max_train_instances < len(t):
                keep = torch.randperm(len(t), device=boxes.device)[: self.max_train_instances]
            level_sizes = roi_level_sizes(boxes[keep], self.strides, self.roi_enlarge, self.min_roi_size)
            ok = [(j, s) for j, s in zip(keep.tolist(), level_sizes) if s]
            num_skipped += len(level_sizes) - len(ok)
            if not ok:
                continue
            js = [j for j, _ in ok]
            gt_masks[i] = gt_bitmasks(t)
            if self.refine_on:  # drawn per image, in ROI order: the loop's RNG sequence
                draws.extend(draw_refine_points(
                    [s[0] for _, s in ok], self.refine_point_divisor, self.refine_oversample_ratio))
            js_t = torch.as_tensor(js, device=boxes.device)
            boxes_l.append(boxes[js_t])
            cls_l.append(t.gt_classes[js_t])
            img_l.append(torch.full((len(js),), i, dtype=torch.int64, device=boxes.device))
            mask_j_l.append(js_t)
            sizes_l.extend(s for _, s in ok)
        self._log_num_segmented(len(sizes_l), num_skipped)
        seg_losses: List[torch.Tensor] = []
        refine_logits: List[torch.Tensor] = []
        refine_labels: List[torch.Tensor] = []
        if not sizes_l:
            return self._combine_losses(seg_losses, refine_logits, refine_labels)
        boxes, classes = torch.cat(boxes_l), torch.cat(cls_l)
        img, mask_j = torch.cat(img_l), torch.cat(mask_j_l)
        dev = boxes.device
        layout = pack_canvas(sizes_l, device=dev)
        out = mask_head_forward_canvas(self.mask_head, feats, self.strides, boxes, img, layout,
                                       enlarge=self.roi_enlarge)
        cidx = self._class_indices(classes)
        lay0 = layout.levels[0]
        logits = class_logits_at_pixels(out, cidx)  # (P_0,)
        target = torch.zeros_like(logits)
        rois_of = torch.arange(len(sizes_l), device=dev)
        for i in gt_masks:  # GT masks of one image at a time
            sel = rois_of[img == i]
            pix, vals = crop_masks_at_pixels(gt_masks[i][mask_j[sel]], boxes[sel],
                                             layout.slots[sel, 0], lay0, enlarge=self.roi_enlarge)
            target[pix] = vals.to(target.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        per_slot = bce.new_zeros(len(lay0.rois)).index_add(0, lay0.pix_slot, bce)
        per_slot = per_slot / (lay0.h * lay0.w).to(bce.dtype)
        seg_losses.append(per_slot)  # the mean over ROIs is order-free
        if self.refine_on:
            counts = [0 if d is None else len(d) for d in draws]
            drawn = [d for d in draws if d is not None and len(d)]
            if drawn:
                pts = torch.cat(drawn).to(dev)
                owner = torch.repeat_interleave(
                    torch.arange(len(draws)), torch.as_tensor(counts, dtype=torch.int64)).to(dev)
                kept = []  # beta * N of each ROI, at most what was drawn
                for s, c in zip(sizes_l, counts):
                    n = num_refine_points(s[0][0], s[0][1], self.refine_point_divisor)
                    kept.append(min(int(self.refine_importance_sample_ratio * n), c))
                kept = torch.as_tensor(kept, dtype=torch.int64, device=dev)
                ref = refine_logits_canvas(self.mask_head.refine_head, out, logits, target, cidx,
                                           pts, owner, kept)
                if ref is not None:
                    refine_logits.append(ref[0])
                    refine_labels.append(ref[1])
        return self._combine_losses(seg_losses, refine_logits, refine_labels)

    def _class_indices(self, classes: torch.Tensor) -> torch.Tensor:
        """(B,) logit channel of each class (``mask_head.class_index``, vectorised)."""
        if self.mask_head.num_mask_classes == 1:
            return torch.zeros_like(classes, dtype=torch.int64)
        return classes.long()

    @staticmethod
    def _log_num_segmented(num_segmented: int, num_skipped: int) -> None:
        try:
            storage = get_event_storage()
        except AssertionError:  # no EventStorage outside a trainer: nothing to log to
            return
        storage.put_scalar("roi_heads/num_segmented", num_segmented)
        storage.put_scalar("roi_heads/num_skipped_small", num_skipped)

    # ------------------------------------------------------------------------------ inference
    def _predict_instances(
        self, feats: List[torch.Tensor], image_index: int, proposals: Instances
    ) -> Instances:
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
        order = torch.argsort(scores, descending=True)
        if self.detections_per_image > 0:
            order = order[: self.detections_per_image]
        boxes, scores, classes = boxes[order], scores[order], classes[order]

        level_sizes = roi_level_sizes(boxes, self.strides, self.roi_enlarge, self.min_roi_size)
        if self.batched_seg:
            probs, kept = self._predict_masks_batched(feats, image_index, boxes, classes, level_sizes)
        else:
            probs, kept = self._predict_masks_loop(feats, image_index, boxes, classes, level_sizes)
        kept_t = torch.as_tensor(kept, dtype=torch.int64, device=boxes.device)
        res = Instances(proposals.image_size)
        res.pred_boxes = Boxes(boxes[kept_t])
        res.scores = scores[kept_t]
        res.pred_classes = classes[kept_t]
        res.pred_mask_probs = ROIMaskProbs(probs)
        res.pred_mask_boxes = Boxes(enlarge_boxes(boxes[kept_t], self.roi_enlarge))
        return res

    def _predict_masks_batched(self, feats, image_index, boxes, classes, level_sizes):
        """(probs, kept): the (h, w) probability map of each segmentable ROI, by increasing ROI
        index (views into the level-0 probability canvas)."""
        kept = [r for r, s in enumerate(level_sizes) if s]
        if not kept:
            return [], kept
        dev = boxes.device
        kept_t = torch.as_tensor(kept, dtype=torch.int64, device=dev)
        sizes = [level_sizes[r] for r in kept]
        layout = pack_canvas(sizes, device=dev)
        img = torch.full((len(kept),), image_index, dtype=torch.int64, device=dev)
        out = mask_head_forward_canvas(self.mask_head, feats, self.strides, boxes[kept_t], img,
                                       layout, enlarge=self.roi_enlarge)
        lg = out.mask_logits[0]
        if lg.shape[0] == 1:
            probs = lg[0].sigmoid()
        else:  # each pixel's own ROI class channel
            lay0 = layout.levels[0]
            cls_px = self._class_indices(classes[kept_t])[lay0.rois]
            cls_px = torch.cat([cls_px, cls_px.new_zeros(1)])[lay0.slot_map]
            probs = lg.reshape(lg.shape[0], -1).gather(0, cls_px[None])[0].reshape(lg.shape[1:]).sigmoid()
        lay0 = layout.levels[0]
        slot = layout.slots[:, 0].tolist()
        y0, x0, h, w = (t.tolist() for t in (lay0.y0, lay0.x0, lay0.h, lay0.w))
        maps = [probs[y0[k] : y0[k] + h[k], x0[k] : x0[k] + w[k]] for k in slot]
        return maps, kept

    def _predict_masks_loop(self, feats, image_index, boxes, classes, level_sizes):
        """The per-ROI reference of :meth:`_predict_masks_batched`."""
        probs, kept = [], []
        for r, sizes in enumerate(level_sizes):
            if not sizes:  # < 2 px at level 0: cannot be segmented, dropped
                continue
            out = self.mask_head.forward_single(self._crop_levels(feats, image_index, boxes[r], sizes))
            c = self.mask_head.class_index(int(classes[r]))
            probs.append(out.mask_logits[0, c].sigmoid())
            kept.append(r)
        return probs, kept

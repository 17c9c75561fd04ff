"""Dataset mapper: reads any microscopy / plant image and applies the paper's augmentation.

Differences from Detectron2's ``DatasetMapper``:

* images are read with :func:`objguided_d2.data.io.read_image`, so 16-bit, RGBA and TIFF files
  work (Detectron2's PIL reader mangles 16-bit data);
* training augmentation (``INPUT.SQUARE_CROP_ON``): :class:`RandomSquareCrop` with
  ``INPUT.SQUARE_CROP_SCALES``, a random flip (``INPUT.RANDOM_FLIP``, horizontal in the paper,
  p = 0.5) and a resize to ``INPUT.TRAIN_SIZE`` x ``INPUT.TRAIN_SIZE``; with
  ``INPUT.NATIVE_CROP_SIZE`` > 0 (beyond the paper) a random fixed-size crop at native scale and
  the flip, no resize; otherwise, and always at test time, Detectron2's default augmentation
  (``ResizeShortestEdge``; ``INPUT.MIN_SIZE_TEST`` 0 keeps the native size);
* boxes are recomputed from the transformed masks (tight after a crop) and instances whose mask
  became empty are dropped;
* RLE masks are always processed as bitmasks (a polygon would erase one-pixel-wide protrusions);
  an image without objects still gets ``gt_masks`` (zero masks) when masks are used;
* in training, an RLE / array mask whose size is not its image's raises ``DataError`` naming the
  file and the annotation (instead of a failure inside a transform).

Output per image: ``"image"`` (3, H, W) uint8 tensor in ``INPUT.FORMAT`` channel order and, in
training, ``"instances"`` with ``gt_boxes`` (R, 4) XYXY, ``gt_classes`` (R,), ``gt_masks`` (R, H, W).
"""
import copy
import logging
from typing import List, Union

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, PolygonMasks

from .io import DataError, read_image
from .transforms import RandomNativeCrop, RandomSquareCrop

__all__ = ["ObjGuidedDatasetMapper", "build_objguided_augmentation"]

logger = logging.getLogger(__name__)


def build_objguided_augmentation(cfg, is_train: bool) -> List[T.Augmentation]:
    """The augmentation list of :class:`ObjGuidedDatasetMapper` (see the module docstring)."""
    if not (is_train and cfg.INPUT.SQUARE_CROP_ON):
        augs = utils.build_augmentation(cfg, is_train)
        if is_train and cfg.INPUT.CROP.ENABLED:
            augs.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
        return augs
    native = int(cfg.INPUT.get("NATIVE_CROP_SIZE", 0))
    if native > 0:  # beyond the paper: fixed-size crops at native scale, no resize
        augs: List[T.Augmentation] = [RandomNativeCrop(native)]
    else:
        augs = [RandomSquareCrop(cfg.INPUT.SQUARE_CROP_SCALES)]
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    if native <= 0:
        size = int(cfg.INPUT.TRAIN_SIZE)
        augs.append(T.Resize((size, size)))
    return augs


class ObjGuidedDatasetMapper(DatasetMapper):
    """Detectron2 ``DatasetMapper`` with robust image reading and the paper's augmentation."""

    @configurable
    def __init__(
        self,
        is_train: bool,
        *,
        augmentations: List[Union[T.Augmentation, T.Transform]],
        image_format: str = "BGR",
        use_instance_mask: bool = True,
        instance_mask_format: str = "bitmask",
        recompute_boxes: bool = True,
        **kwargs,
    ):
        """
        Args:
            is_train: training (annotations kept and transformed) or inference.
            augmentations: applied in order to image, boxes and masks.
            image_format: "BGR" (Detectron2's default) or "RGB".
            use_instance_mask: produce ``gt_masks``.
            instance_mask_format: "bitmask" or "polygon" (RLE annotations force "bitmask").
            recompute_boxes: tight boxes from the transformed masks (needs masks).
            kwargs: further :class:`DatasetMapper` arguments (keypoints, proposals).
        """
        if image_format not in ("BGR", "RGB"):
            raise ValueError(f"ObjGuidedDatasetMapper supports INPUT.FORMAT 'BGR' or 'RGB', got {image_format!r}")
        super().__init__(
            is_train,
            augmentations=augmentations,
            image_format=image_format,
            use_instance_mask=use_instance_mask,
            instance_mask_format=instance_mask_format,
            recompute_boxes=recompute_boxes and use_instance_mask,
            **kwargs,
        )
        self._warned_rle = False

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        ret["augmentations"] = build_objguided_augmentation(cfg, is_train)
        ret["recompute_boxes"] = bool(cfg.MODEL.MASK_ON)
        return ret

    def _transform_annotations(self, dataset_dict: dict, transforms, image_shape) -> None:
        # Own version: Detectron2's crashes on an image without objects when recompute_boxes is
        # set (no gt_masks field), and we want gt_masks present even then.
        annos = []
        for obj in dataset_dict.pop("annotations"):
            if obj.get("iscrowd", 0) != 0:
                continue
            if not self.use_instance_mask:
                obj.pop("segmentation", None)
            if not self.use_keypoint:
                obj.pop("keypoints", None)
            annos.append(utils.transform_instance_annotations(
                obj, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices))
        instances = utils.annotations_to_instances(annos, image_shape, mask_format=self.instance_mask_format)
        if self.use_instance_mask and not instances.has("gt_masks"):
            h, w = image_shape
            instances.gt_masks = (
                BitMasks(torch.zeros((0, h, w), dtype=torch.bool))
                if self.instance_mask_format == "bitmask"
                else PolygonMasks([])
            )
        if self.recompute_boxes and len(instances):
            # A crop cuts objects: the box of the visible part, not the clipped original box.
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)

    @staticmethod
    def _check_mask_sizes(dataset_dict: dict, image_hw) -> None:
        """An RLE / array mask of another size than its image would otherwise fail deep inside a
        transform (a bare assert or a crop's shape error); say which file and annotation."""
        for j, obj in enumerate(dataset_dict.get("annotations", [])):
            segm = obj.get("segmentation")
            if isinstance(segm, dict) and "size" in segm:
                hw = tuple(int(s) for s in segm["size"])
            elif isinstance(segm, np.ndarray):
                hw = tuple(segm.shape[:2])
            else:
                continue  # polygons have no size of their own (clipped to the image)
            if hw != tuple(image_hw):
                raise DataError(
                    f"{dataset_dict.get('file_name', '?')}: annotation {j} (id {obj.get('id', '?')}) has a "
                    f"{hw[1]}x{hw[0]} (WxH) mask but the image is {image_hw[1]}x{image_hw[0]}"
                )

    def _read(self, dataset_dict: dict) -> np.ndarray:
        image = read_image(dataset_dict["file_name"])  # (H, W, 3) uint8 BGR
        if self.image_format == "RGB":
            image = np.ascontiguousarray(image[:, :, ::-1])
        utils.check_image_size(dataset_dict, image)
        return image

    def __call__(self, dataset_dict: dict) -> dict:
        """
        Args:
            dataset_dict: one image in Detectron2's dataset format.

        Returns:
            dict with "image" (3, H, W) uint8 and, in training, "instances".
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self._read(dataset_dict)
        if self.is_train:
            self._check_mask_sizes(dataset_dict, image.shape[:2])
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))

        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk)
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict

        if "annotations" in dataset_dict:
            annos = dataset_dict["annotations"]
            if (
                self.use_instance_mask
                and self.instance_mask_format == "polygon"
                and any(isinstance(a.get("segmentation"), dict) for a in annos)
            ):
                if not self._warned_rle:
                    logger.warning("RLE mask annotations: using INPUT.MASK_FORMAT 'bitmask' instead of 'polygon'")
                    self._warned_rle = True
                self.instance_mask_format = "bitmask"
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict

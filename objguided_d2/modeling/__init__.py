"""Model components, registered in Detectron2's registries on import:

- ``build_objguided_resnet_backbone`` (BACKBONE_REGISTRY): U-shaped ResNet with c0, c1, d2..d4;
- ``CenterNetProposalGenerator`` (PROPOSAL_GENERATOR_REGISTRY): heatmap / wh / offset detector;
- ``ObjGuidedROIHeads`` (ROI_HEADS_REGISTRY): selects and crops variable-size grid-sampled ROIs;
  ``ObjGuidedMaskHead`` (ROI_MASK_HEAD_REGISTRY): the segmentation branch (instance-norm merges,
  mask predictor, auxiliary point refinement), its forward passes and losses;
- ``ObjGuidedRCNN`` (META_ARCH_REGISTRY): largest-component GT boxes, full-image output;
- :mod:`.postprocessing`: pasting of the variable-size masks, mask NMS, full-image instances.

Structures (ROI mask probabilities, GT bitmasks, largest-component boxes): ``objguided_d2.structures``.
"""
from . import backbone, proposal_generator, roi_heads, meta_arch, postprocessing  # noqa: F401

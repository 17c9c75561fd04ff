"""Model components, registered in Detectron2's registries on import:

- ``build_objguided_resnet_backbone`` (BACKBONE_REGISTRY): U-shaped ResNet with c0, c1, d2..d4;
- ``CenterNetProposalGenerator`` (PROPOSAL_GENERATOR_REGISTRY): heatmap / wh / offset detector;
- ``ObjGuidedROIHeads`` (ROI_HEADS_REGISTRY) and ``ObjGuidedMaskHead`` (ROI_MASK_HEAD_REGISTRY):
  variable-size grid-sampled ROIs, instance-norm merges, auxiliary point refinement;
- ``ObjGuidedRCNN`` (META_ARCH_REGISTRY): pastes variable-size masks at full resolution.
"""
from . import backbone, proposal_generator, roi_heads, meta_arch  # noqa: F401

"""Meta-architecture (registers ``ObjGuidedRCNN``)."""
from .objguided_rcnn import ObjGuidedRCNN, mask_nms, postprocess_instances

__all__ = ["ObjGuidedRCNN", "mask_nms", "postprocess_instances"]

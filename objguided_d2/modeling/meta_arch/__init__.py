"""Meta-architecture (registers ``ObjGuidedRCNN``)."""
from .objguided_rcnn import ObjGuidedRCNN

__all__ = ["ObjGuidedRCNN"]

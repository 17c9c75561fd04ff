"""Backbones (importing registers them in ``BACKBONE_REGISTRY``)."""

from .unet_resnet import UNetResNet, build_objguided_resnet_backbone

__all__ = ["UNetResNet", "build_objguided_resnet_backbone"]

"""U-shaped ResNet backbone (docs/method.md §1): Detectron2's own ResNet plus the image-level c0
branch, the pre-max-pool c1, and the detection decoder d4 -> d3 -> d2 ("B" merge modules).

Shapes: N images, (H, W) the padded input size (a multiple of 32).

    name  what                                         channels            stride
    c0    two 3x3 conv+ReLU on the normalised image    C0_CHANNELS (64)    1
    c1    ResNet stem conv1 + norm + ReLU (pre-pool)   stem (64)           2
    d4    B(res5 -> res4)                              DECODER_CHANNELS[2] 16
    d3    B(d4 -> res3)                                DECODER_CHANNELS[1] 8
    d2    B(d3 -> res2)                                DECODER_CHANNELS[0] 4
"""

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import CfgNode
from detectron2.layers import Conv2d, ShapeSpec
from detectron2.modeling.backbone import BACKBONE_REGISTRY, Backbone, ResNet
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from ..layers import MergeModule

__all__ = ["UNetResNet", "build_objguided_resnet_backbone"]

_RESNET_FEATURES = ("res2", "res3", "res4", "res5")
# (output name, deep input, skip input) in the order the decoder runs.
_DECODER = (("d4", "res5", "res4"), ("d3", "d4", "res3"), ("d2", "d3", "res2"))


class UNetResNet(Backbone):
    """Detectron2 ResNet (``bottom_up``) with c0, c1 and the U-shaped detection decoder.

    The ResNet lives unchanged under ``bottom_up`` so Detectron2 / torchvision ImageNet
    checkpoints load through ``DetectionCheckpointer`` with no missing ``bottom_up`` keys; c1
    reuses ``bottom_up.stem.conv1`` (and its norm) so it is pretrained too.
    """

    def __init__(
        self,
        *,
        bottom_up: ResNet,
        in_channels: int = 3,
        c0_channels: int = 64,
        decoder_channels: Sequence[int] = (),
        decoder_norm: str = "BN",
    ):
        """
        Args:
            bottom_up: a Detectron2 ``ResNet`` whose stem has ``conv1`` (``BasicStem``) and whose
                out_features include res2..res5.
            in_channels: channels of the input image.
            c0_channels: channels of c0.
            decoder_channels: widths of (d2, d3, d4); empty = the width of the skip each merges
                into (res2, res3, res4).
            decoder_norm: norm of the B modules ("BN", "GN", "SyncBN", "").
        """
        super().__init__()
        if not isinstance(bottom_up, ResNet):
            raise TypeError(
                f"UNetResNet: bottom_up must be a detectron2 ResNet, got {type(bottom_up)}"
            )
        if not hasattr(bottom_up.stem, "conv1"):
            raise ValueError("UNetResNet: bottom_up.stem must have a 'conv1' (BasicStem) for c1")
        res_shapes = bottom_up.output_shape()
        missing = [f for f in _RESNET_FEATURES if f not in res_shapes]
        if missing:
            raise ValueError(
                f"UNetResNet: bottom_up must output res2..res5 (MODEL.RESNETS.OUT_FEATURES); "
                f"missing {missing}"
            )
        decoder_channels = list(decoder_channels)
        if len(decoder_channels) == 0:
            decoder_channels = [res_shapes[s].channels for s in ("res2", "res3", "res4")]
        if len(decoder_channels) != 3 or any(int(c) <= 0 for c in decoder_channels):
            raise ValueError(
                "MODEL.OBJGUIDED.DECODER_CHANNELS must be [] or three positive widths for "
                f"(d2, d3, d4), got {decoder_channels}"
            )
        self.bottom_up = bottom_up

        # c0 sees the image at full resolution: no pretrained weights exist for it.
        self.c0 = nn.Sequential(
            Conv2d(in_channels, c0_channels, kernel_size=3, padding=1, activation=F.relu),
            Conv2d(c0_channels, c0_channels, kernel_size=3, padding=1, activation=F.relu),
        )
        for m in self.c0:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

        widths = dict(zip(("d2", "d3", "d4"), (int(c) for c in decoder_channels)))
        shapes = dict(res_shapes)
        self.decoder = nn.ModuleDict()
        for out_name, deep, skip in _DECODER:
            self.decoder[out_name] = MergeModule(
                shapes[deep].channels, shapes[skip].channels, widths[out_name], norm=decoder_norm
            )
            shapes[out_name] = ShapeSpec(channels=widths[out_name], stride=shapes[skip].stride)

        stem_conv = bottom_up.stem.conv1
        self._out_features = ["c0", "c1", "d2", "d3", "d4"]
        self._out_feature_channels = {
            "c0": c0_channels,
            "c1": stem_conv.out_channels,
            **{k: shapes[k].channels for k in ("d2", "d3", "d4")},
        }
        self._out_feature_strides = {
            "c0": 1,
            "c1": stem_conv.stride[0],
            **{k: shapes[k].stride for k in ("d2", "d3", "d4")},
        }

    @property
    def size_divisibility(self) -> int:
        return 32

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: (N, 3, H, W) normalised images, H and W multiples of 32.
        Returns:
            {"c0": (N, C0, H, W), "c1": (N, 64, H/2, W/2), "d2": (N, D2, H/4, W/4),
             "d3": (N, D3, H/8, W/8), "d4": (N, D4, H/16, W/16)}.
        """
        if x.dim() != 4:
            raise ValueError(
                f"UNetResNet expects an (N, C, H, W) input, got shape {tuple(x.shape)}"
            )
        out = {"c0": self.c0(x)}
        stem = self.bottom_up.stem
        # Run the stem in two halves to expose c1 before the max-pool (same maths as BasicStem).
        c1 = F.relu(stem.conv1(x))
        out["c1"] = c1
        feats = {}
        y = F.max_pool2d(c1, kernel_size=3, stride=2, padding=1)
        for name, stage in zip(self.bottom_up.stage_names, self.bottom_up.stages):
            y = stage(y)
            feats[name] = y
        for out_name, deep, skip in _DECODER:
            feats[out_name] = self.decoder[out_name](feats[deep], feats[skip])
            out[out_name] = feats[out_name]
        return out

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_objguided_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> UNetResNet:
    """Build :class:`UNetResNet` from ``MODEL.RESNETS`` (depth 18/34/50/101; R-18/34 need
    ``RES2_OUT_CHANNELS = 64``), ``MODEL.BACKBONE.FREEZE_AT`` and ``MODEL.OBJGUIDED``."""
    if cfg.MODEL.RESNETS.DEPTH not in (18, 34, 50, 101, 152):
        raise ValueError(
            "MODEL.RESNETS.DEPTH must be one of 18, 34, 50, 101, 152; got "
            f"{cfg.MODEL.RESNETS.DEPTH}"
        )
    if cfg.MODEL.RESNETS.DEPTH in (18, 34) and cfg.MODEL.RESNETS.RES2_OUT_CHANNELS != 64:
        raise ValueError(
            "MODEL.RESNETS.RES2_OUT_CHANNELS must be 64 for MODEL.RESNETS.DEPTH 18/34, got "
            f"{cfg.MODEL.RESNETS.RES2_OUT_CHANNELS}"
        )
    # The decoder needs every stage regardless of what the config's OUT_FEATURES asks for.
    res_cfg = cfg.clone()
    res_cfg.defrost()
    res_cfg.MODEL.RESNETS.OUT_FEATURES = list(_RESNET_FEATURES)
    bottom_up = build_resnet_backbone(res_cfg, input_shape)
    og = cfg.MODEL.OBJGUIDED
    return UNetResNet(
        bottom_up=bottom_up,
        in_channels=input_shape.channels,
        c0_channels=og.C0_CHANNELS,
        decoder_channels=list(og.DECODER_CHANNELS),
        decoder_norm=og.DECODER_NORM,
    )

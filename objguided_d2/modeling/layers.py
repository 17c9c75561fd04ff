"""Building blocks shared by the detection decoder ("B" modules) and the segmentation branch
("S" modules): the paper's merge module M (docs/method.md §1, §3).

Shapes: N = batch (or ROIs), C_* = channels, (H_d, W_d) deep size, (H_s, W_s) skip size.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, get_norm

__all__ = ["MergeModule", "get_merge_norm"]


def get_merge_norm(norm: str, channels: int) -> Optional[nn.Module]:
    """Like Detectron2's ``get_norm`` plus ``"IN"``: InstanceNorm2d(affine=False), which normalises
    each ROI by its own statistics in train and eval alike (the S modules)."""
    if norm == "IN":
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return get_norm(norm, channels)


class MergeModule(nn.Module):
    """M(x_deep, x_skip): upsample x_deep bilinearly to x_skip's size, conv3x3 + norm + ReLU,
    concatenate with x_skip, conv1x1 + norm + ReLU.

    Args:
        deep_channels: C_d of ``x_deep``.
        skip_channels: C_s of ``x_skip``.
        out_channels: C_o of the output (the paper uses C_o = C_s).
        norm: "BN", "GN", "SyncBN", "IN" (InstanceNorm, affine=False) or "" for none.
    """

    def __init__(self, deep_channels: int, skip_channels: int, out_channels: int, norm: str = "BN"):
        super().__init__()
        use_bias = norm == ""
        self.up_conv = Conv2d(
            deep_channels, out_channels, kernel_size=3, padding=1, bias=use_bias,
            norm=get_merge_norm(norm, out_channels), activation=F.relu,
        )
        self.cat_conv = Conv2d(
            skip_channels + out_channels, out_channels, kernel_size=1, bias=use_bias,
            norm=get_merge_norm(norm, out_channels), activation=F.relu,
        )
        for m in (self.up_conv, self.cat_conv):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x_deep: torch.Tensor, x_skip: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x_deep: (N, C_d, H_d, W_d).
            x_skip: (N, C_s, H_s, W_s).
        Returns:
            (N, C_o, H_s, W_s).
        """
        up = F.interpolate(x_deep, size=x_skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.merge_upsampled(up, x_skip)

    def merge_upsampled(self, up: torch.Tensor, x_skip: torch.Tensor,
                        run_conv: Optional[Callable] = None) -> torch.Tensor:
        """The module after its upsampling: conv3x3 on ``up``, concatenation with ``x_skip``,
        conv1x1.

        Args:
            up: (N, C_d, H_s, W_s) the upsampled deep input; x_skip: (N, C_s, H_s, W_s).
            run_conv: ``run_conv(conv, x)`` runs one of this module's convs on ``x`` (a tensor, or
                the list of tensors whose channel concatenation is the input); by default
                ``conv(x)``. The packed-canvas segmentation passes its canvas-aware runner.
        Returns:
            (N, C_o, H_s, W_s).
        """
        run = run_conv or _run_conv
        return run(self.cat_conv, [x_skip, run(self.up_conv, up)])


def _run_conv(conv: nn.Module, x) -> torch.Tensor:
    return conv(torch.cat(x, dim=1) if isinstance(x, (list, tuple)) else x)

"""Auxiliary point refinement (method card §4; training only).

At uncertain points of a predicted ROI mask, point features of e1 and e2 are read by bilinear
interpolation and two 1x1 "RefineHead"s classify them against the GT ROI mask read at the same
points (soft labels). The heads are discarded at inference: they only shape e1 and e2.

Points are box-normalised (x, y) in [0, 1]: 0 and 1 are the enlarged box's edges, which are the
corner samples of every ROI map (``roi_sampling`` module docstring), hence ``align_corners=True``.

Shapes: P points, (h, w) ROI size, C1 / C2 channels of e1 / e2.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "calculate_uncertainty",
    "point_sample",
    "sample_uncertain_points",
    "num_refine_points",
    "PointRefineHead",
    "roi_refine_logits",
]


def calculate_uncertainty(mask_probs: torch.Tensor) -> torch.Tensor:
    """u = -|2x - 1| (paper eq. 8): 0 at x = 0.5, -1 where the mask is certain. Detached.

    Args:
        mask_probs: probabilities of any shape.
    Returns:
        same shape.
    """
    return -(2.0 * mask_probs.detach() - 1.0).abs()


def point_sample(maps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly read ROI maps at box-normalised points.

    Args:
        maps: (N, C, h, w) ROI maps spanning the enlarged box (corner samples on its edges).
        coords: (N, P, 2) (x, y) in [0, 1].
    Returns:
        (N, C, P).
    """
    if maps.ndim != 4 or coords.ndim != 3 or coords.shape[-1] != 2:
        raise ValueError(
            f"point_sample: expected maps (N, C, h, w) and coords (N, P, 2), got "
            f"{tuple(maps.shape)} and {tuple(coords.shape)}"
        )
    grid = (2.0 * coords - 1.0).to(maps.dtype)[:, :, None, :]  # (N, P, 1, 2)
    return F.grid_sample(maps, grid, mode="bilinear", align_corners=True)[..., 0]


def num_refine_points(h: int, w: int, point_divisor: int) -> int:
    """N = h * w // D: the point budget of an (h, w) ROI."""
    return (h * w) // point_divisor


def sample_uncertain_points(
    mask_probs: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Draw k*N uniform random points in the ROI, keep the beta*N most uncertain (method card §4).

    When beta >= k every drawn point is kept (the paper's "uniform" strategies).

    Args:
        mask_probs: (1, 1, h, w) predicted ROI mask probabilities (read detached).
        num_points: N.
        oversample_ratio: k.
        importance_sample_ratio: beta.
        generator: optional RNG for the uniform draw.
    Returns:
        (P, 2) box-normalised (x, y) in [0, 1], P = min(int(beta*N), int(k*N)).
    """
    if mask_probs.ndim != 4 or mask_probs.shape[:2] != (1, 1):
        raise ValueError(f"sample_uncertain_points: mask_probs must be (1, 1, h, w), got "
                         f"{tuple(mask_probs.shape)}")
    if num_points < 0 or oversample_ratio <= 0 or importance_sample_ratio <= 0:
        raise ValueError(
            f"sample_uncertain_points: need N >= 0, k > 0, beta > 0; got N={num_points}, "
            f"k={oversample_ratio}, beta={importance_sample_ratio}"
        )
    num_drawn = int(oversample_ratio * num_points)
    num_kept = min(int(importance_sample_ratio * num_points), num_drawn)
    coords = torch.rand(num_drawn, 2, generator=generator, dtype=torch.float32)
    coords = coords.to(mask_probs.device)
    if num_kept == num_drawn:
        return coords
    u = calculate_uncertainty(point_sample(mask_probs.float(), coords[None]))[0, 0]  # (k*N,)
    top = torch.topk(u, k=num_kept, sorted=False).indices
    return coords[top]


class PointRefineHead(nn.Module):
    """The two 1x1 RefineHeads: Conv1d(C1 -> K) on e1 points and Conv1d(C1 + C2 -> K) on
    cat(e1, e2) points (the authors' code; the paper says "two 1x1 conv layers")."""

    def __init__(self, e1_channels: int, e2_channels: int, num_classes: int = 1):
        super().__init__()
        self.e1_head = nn.Conv1d(e1_channels, num_classes, kernel_size=1)
        self.e12_head = nn.Conv1d(e1_channels + e2_channels, num_classes, kernel_size=1)
        for m in (self.e1_head, self.e12_head):
            nn.init.normal_(m.weight, std=0.001)
            nn.init.zeros_(m.bias)

    def forward(
        self, e1_points: torch.Tensor, e2_points: Optional[torch.Tensor]
    ) -> List[torch.Tensor]:
        """
        Args:
            e1_points: (N, C1, P).
            e2_points: (N, C2, P), or None when the ROI has no level 1 (then only the e1 head).
        Returns:
            one or two (N, K, P) logits.
        """
        out = [self.e1_head(e1_points)]
        if e2_points is not None:
            out.append(self.e12_head(torch.cat([e1_points, e2_points], dim=1)))
        return out


def roi_refine_logits(
    head: PointRefineHead,
    e1: torch.Tensor,
    e2: Optional[torch.Tensor],
    mask_probs: torch.Tensor,
    gt_roi_mask: torch.Tensor,
    class_index: int,
    *,
    point_divisor: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """Refinement logits and soft labels of one ROI.

    Args:
        e1: (1, C1, h, w) level-0 segmentation feature.
        e2: (1, C2, h1, w1) level-1 feature, or None.
        mask_probs: (1, 1, h, w) predicted mask probabilities (the instance's class).
        gt_roi_mask: (h, w) GT mask sampled on the ROI grid.
        class_index: channel of the heads' output to use (0 when they are class-agnostic).
    Returns:
        (logits (M,), labels (M,)) over both heads' entries, or None when N = h*w // D is 0.
    """
    h, w = gt_roi_mask.shape
    n = num_refine_points(h, w, point_divisor)
    if n == 0:
        return None
    coords = sample_uncertain_points(mask_probs, n, oversample_ratio, importance_sample_ratio)
    if len(coords) == 0:
        return None
    coords = coords[None]
    e2_points = point_sample(e2, coords) if e2 is not None else None
    logits = [x[:, class_index] for x in head(point_sample(e1, coords), e2_points)]  # (1, P) each
    labels = point_sample(gt_roi_mask[None, None].to(e1.dtype), coords)[:, 0]  # (1, P)
    return torch.cat(logits, dim=1).flatten(), labels.repeat(1, len(logits)).flatten()

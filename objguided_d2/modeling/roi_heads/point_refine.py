"""Auxiliary point refinement (docs/method.md §4; training only): one place for the paper's
point rule, its two heads and its logits, on the packed ROI canvases.

At uncertain points of a predicted ROI mask, point features of e1 and e2 are read by bilinear
interpolation and two 1x1 "RefineHead"s classify them against the GT ROI mask read at the same
points (soft labels). The heads are discarded at inference: they only shape e1 and e2.

Points are box-normalised (x, y) in [0, 1]: 0 and 1 are the enlarged box's edges, which are the
corner samples of every ROI map (:mod:`.roi_grid`), hence PointRend's ``point_sample`` with
``align_corners=True``. The point rule is the paper's, not PointRend's: per ROI, k*N uniform draws,
the beta*N most uncertain kept, no random fill (:func:`point_refine_logits`).

Shapes: P points, (h, w) ROI size, C1 / C2 channels of e1 / e2, R ROIs, D drawn / M kept points.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from .canvas_layout import LevelLayout
from .canvas_ops import scatter_pixels
from .roi_grid import bilinear_read, linear_taps

__all__ = [
    "calculate_uncertainty",
    "num_refine_points",
    "draw_refine_points",
    "select_uncertain_points",
    "sample_canvas_points",
    "PointRefineHead",
    "point_refine_logits",
]


def calculate_uncertainty(mask_probs: torch.Tensor) -> torch.Tensor:
    """u = -|2x - 1| (paper eq. 8): 0 at x = 0.5, -1 where the mask is certain. Detached.

    Args:
        mask_probs: probabilities of any shape.
    Returns:
        same shape.
    """
    return -(2.0 * mask_probs.detach() - 1.0).abs()


def num_refine_points(h: int, w: int, point_divisor: int) -> int:
    """N = h * w // D: the point budget of an (h, w) ROI."""
    return (h * w) // point_divisor


def draw_refine_points(
    level0_sizes: Sequence[Tuple[int, int]],
    point_divisor: int,
    oversample_ratio: float,
    generator: Optional[torch.Generator] = None,
) -> List[Optional[torch.Tensor]]:
    """The uniform draws of the point rule for many ROIs in one RNG call.

    One CPU draw of the summed length yields the same numbers as ``torch.rand(int(k*N), 2)`` per
    ROI with N > 0, in ROI order (what the one-ROI reference in the tests draws), so both see
    identical points under the same seed.

    Returns:
        per ROI a (int(k*N), 2) CPU tensor, or None where N = 0.
    """
    counts = []
    for h, w in level0_sizes:
        n = num_refine_points(h, w, point_divisor)
        counts.append(int(oversample_ratio * n) if n > 0 else -1)
    total = sum(c for c in counts if c > 0)
    draws = torch.rand(total, 2, generator=generator, dtype=torch.float32)
    out, start = [], 0
    for c in counts:
        if c < 0:
            out.append(None)
            continue
        out.append(draws[start : start + c])
        start += c
    return out


def select_uncertain_points(
    u: torch.Tensor, owner: torch.Tensor, kept: torch.Tensor, num_owners: int
) -> torch.Tensor:
    """Per owner, the ``kept[owner]`` entries of largest ``u`` (a ragged top-k).

    Args:
        u: (D,) scores; owner: (D,) int64 in [0, num_owners), non-decreasing; kept: (num_owners,).
    Returns:
        (M,) int64 indices into u, grouped by owner, most uncertain first.
    """
    by_u = torch.argsort(u, descending=True, stable=True)
    order = by_u[torch.argsort(owner[by_u], stable=True)]
    counts = torch.bincount(owner, minlength=num_owners)
    start = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(u), device=u.device) - start[owner[order]]
    return order[rank < kept[owner[order]]]


def sample_canvas_points(canvas: torch.Tensor, lay: LevelLayout, slot: torch.Tensor,
                         coords: torch.Tensor) -> torch.Tensor:
    """``point_sample`` (``align_corners=True`` over each ROI, zeros outside) on a canvas.

    Args:
        canvas: (1, C, H, W), 0 in the gaps; slot: (M,) slot of each point; coords: (M, 2)
            box-normalised (x, y) in [0, 1].
    Returns:
        (C, M).
    """
    C = canvas.shape[1]
    flat = canvas[0].reshape(C, -1)
    h, w = lay.h[slot], lay.w[slot]
    g = (2.0 * coords - 1.0).to(canvas.dtype)

    def axis(gc, size):  # grid_sample, align_corners=True: ((g + 1) / 2) * (size - 1)
        return linear_taps(((gc + 1) / 2) * (size - 1).to(gc.dtype), size - 1)

    Y, X = lay.y0[slot], lay.x0[slot]

    def tap(ys, xs):
        return flat.index_select(1, (Y + ys) * lay.width + X + xs)

    return bilinear_read(tap, axis(g[:, 0], w), axis(g[:, 1], h))


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


def point_refine_logits(
    refine_head: PointRefineHead,
    layout,
    e1: torch.Tensor,
    e2: Optional[torch.Tensor],
    level0_sizes: Sequence[Tuple[int, int]],
    pixel_logits: torch.Tensor,
    pixel_targets: torch.Tensor,
    class_index: torch.Tensor,
    *,
    point_divisor: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """Refinement logits and soft labels of every ROI of a packed canvas: per ROI k*N uniform
    draws (:func:`draw_refine_points`, N = h*w // D), its beta*N most uncertain points
    (:func:`calculate_uncertainty` of the predicted mask), point features of e1 / e2, the two
    heads, and the GT ROI mask read at the same points as soft labels.

    Args:
        layout: the ROIs' ``CanvasLayout``; e1: (1, C1, H_0, W_0) and e2: (1, C2, H_1, W_1)
            canvases (e2 None when no ROI has level 1).
        level0_sizes: R level-0 ROI sizes, in ROI order.
        pixel_logits: (P_0,) class logits at the level-0 pixels (``class_logits_at_pixels``).
        pixel_targets: (P_0,) GT ROI masks at those pixels.
        class_index: (R,) int64.
    Returns:
        (logits (M',), labels (M',)) over all entries (e1 head, then e12 head), or None when no
        point is kept.
    """
    draws = draw_refine_points(level0_sizes, point_divisor, oversample_ratio)
    counts = [0 if d is None else len(d) for d in draws]
    drawn = [d for d in draws if d is not None and len(d)]
    if not drawn:
        return None
    dev = pixel_logits.device
    pts = torch.cat(drawn).to(dev)
    draw_roi = torch.repeat_interleave(
        torch.arange(len(draws)), torch.as_tensor(counts, dtype=torch.int64)).to(dev)
    kept = [min(int(importance_sample_ratio * num_refine_points(h, w, point_divisor)), c)
            for (h, w), c in zip(level0_sizes, counts)]  # beta * N of each ROI, at most drawn
    kept = torch.as_tensor(kept, dtype=torch.int64, device=dev)
    if int(kept.sum()) == 0:
        return None
    lay0 = layout.levels[0]
    dt = pixel_logits.dtype

    def canvas_of(vals):
        return scatter_pixels(vals[None].to(dt), lay0)

    slot0 = layout.slots[draw_roi, 0]
    probs = canvas_of(pixel_logits.detach().sigmoid())
    u = calculate_uncertainty(sample_canvas_points(probs, lay0, slot0, pts))[0]
    sel = select_uncertain_points(u, draw_roi, kept, len(kept))
    pts, roi, slot0 = pts[sel], draw_roi[sel], slot0[sel]
    e1_points = sample_canvas_points(e1, lay0, slot0, pts)  # (C1, M)
    labels = sample_canvas_points(canvas_of(pixel_targets), lay0, slot0, pts)[0]
    cls = class_index[roi]
    lg1 = refine_head(e1_points[None], None)[0][0]  # (K, M)
    logits = [lg1.gather(0, cls[None])[0]]
    labs = [labels]
    has2 = (layout.num_levels[roi] >= 2).nonzero().flatten()
    if len(has2) and e2 is not None:
        slot1 = layout.slots[roi[has2], 1]
        e2_points = sample_canvas_points(e2, layout.levels[1], slot1, pts[has2])
        lg12 = refine_head(e1_points[:, has2][None], e2_points[None])[1][0]
        logits.append(lg12.gather(0, cls[has2][None])[0])
        labs.append(labels[has2])
    return torch.cat(logits), torch.cat(labs)

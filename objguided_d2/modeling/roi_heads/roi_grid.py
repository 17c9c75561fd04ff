"""The ROI grid (docs/method.md §3, §5): the one place of its geometry. The packed-canvas crops
(:mod:`.canvas_ops`), the GT-mask sampling, the refinement points and the pasting use it; the
settings (strides, enlargement, minimum size) are given once, to :class:`~.roi_pooler.ROIGridPooler`.

Pixel-coordinate convention (Detectron2's, used for every box here): input pixel (y, x) covers
[x, x + 1) x [y, y + 1) and has its centre at (x + 0.5, y + 0.5). A feature cell i at stride s
covers input pixels [s*i, s*(i + 1)) with centre s*(i + 0.5); a feature map is read as the bilinear
interpolant of its cell centres over its extent [0, s*W] (clamped to the border cells inside that
extent, zero outside it).

ROI grid: a box is enlarged by ``enlarge`` (1.1) about its centre to [X0, Y0, X1, Y1]
(:func:`enlarge_boxes`); at a level where the ROI is (h, w) (:func:`roi_level_sizes`) the samples
lie at x_j = X0 + j * (X1 - X0) / (w - 1), j = 0..w-1 (:func:`grid_positions`: the endpoints are
the enlarged box's edges, align_corners=True semantics over the box), likewise y. Every level of
one ROI therefore spans the same box, and a box-normalised coordinate t in [0, 1]
(x = X0 + t * (X1 - X0)) addresses any level's ROI map with ``align_corners=True``; the point
refinement and the pasting rely on it.

Taps: :func:`linear_taps` and :func:`bilinear_read` are the bilinear read of a map at fractional
indices, as ``grid_sample`` computes it; the canvas path uses them where it reads by gathers.

Shapes: R ROIs, L levels, C channels, (H, W) map size, (h, w) ROI size.
"""
from typing import Callable, List, Sequence, Tuple, Union

import torch

__all__ = [
    "check_boxes",
    "enlarge_boxes",
    "grow_boxes_at_touched_borders",
    "scale_shift_boxes",
    "mask_boxes",
    "roi_level_sizes",
    "grid_positions",
    "feature_grid",
    "border_index",
    "linear_taps",
    "bilinear_read",
]

# ROI sizes are int(enlarge * side / stride); boxes arrive as float32 XYXY, so side lengths carry
# ~1e-5 rounding error that must not flip int(22.0) into 21.
_SIZE_EPS = 1e-4


def check_boxes(boxes: torch.Tensor, name: str = "boxes") -> None:
    """Raise a clear error unless ``boxes`` is an (R, 4) tensor."""
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name}: expected an (R, 4) XYXY tensor, got shape {tuple(boxes.shape)}")


def enlarge_boxes(boxes: torch.Tensor, enlarge: float) -> torch.Tensor:
    """
    Args:
        boxes: (R, 4) XYXY, input pixels.
        enlarge: scale factor about each box's centre.
    Returns:
        (R, 4) XYXY: the boxes the ROI grids span (their edges are the grids' endpoints).
    """
    check_boxes(boxes)
    ctr = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    half = (boxes[:, 2:] - boxes[:, :2]) * (0.5 * enlarge)
    return torch.cat([ctr - half, ctr + half], dim=1)


def grow_boxes_at_touched_borders(
    boxes: torch.Tensor, probs: Sequence[torch.Tensor], threshold: float, expand: float,
    image_size: Tuple[int, int], enlarge: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """A box too small for its object truncates the mask. Each side of a box whose mask
    (``p >= threshold``) reaches into the ROI's margin on that side moves out by ``expand`` times
    the box's width (left/right) or height (top/bottom), within the image.

    The margin is the band between the box and the ROI it was enlarged to (``enlarge``): the
    outer ``(1 - 1/enlarge) / 2`` of the map on each side, at least one pixel. (A trained head
    keeps that band near 0 for an object inside its box, so the map's last row alone would
    almost never be reached.)

    Args:
        boxes: (R, 4) XYXY, input pixels.
        probs: R (h_r, w_r) mask probability maps spanning the boxes' ROIs.
        threshold: mask threshold.
        expand: growth per touched side, a fraction of the box side.
        image_size: (H, W) that bounds the grown boxes.
        enlarge: factor the maps' ROIs were enlarged by about the boxes.
    Returns:
        (R, 4) grown boxes and (R,) bool: which boxes changed.
    """
    if len(probs) != len(boxes):
        raise ValueError(f"grow_boxes_at_touched_borders: {len(boxes)} boxes but {len(probs)} maps")
    if not len(boxes):
        return boxes.clone(), torch.zeros(0, dtype=torch.bool, device=boxes.device)
    frac = (1.0 - 1.0 / float(enlarge)) / 2.0

    def sides(m: torch.Tensor) -> torch.Tensor:
        bh, bw = max(1, int(round(frac * m.shape[0]))), max(1, int(round(frac * m.shape[1])))
        on = m >= threshold
        return torch.stack([on[:, :bw].any(), on[:bh, :].any(), on[:, -bw:].any(), on[-bh:, :].any()])

    touch = torch.stack([sides(m) for m in probs]).to(boxes.device)  # (R, 4): left, top, right, bottom
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2) * float(expand)
    sign = torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=boxes.dtype, device=boxes.device)
    grown = boxes + touch.to(boxes.dtype) * sign * wh
    h, w = image_size
    grown[:, 0::2] = grown[:, 0::2].clamp(0, w)
    grown[:, 1::2] = grown[:, 1::2].clamp(0, h)
    return grown, (grown - boxes).abs().amax(dim=1) > 1e-6


def scale_shift_boxes(boxes: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                      image_size: Tuple[int, int]) -> torch.Tensor:
    """Boxes as wrong as a detector's: each side scaled about the box's centre, the centre moved
    by a fraction of the side, clipped to the image.

    Args:
        boxes: (R, 4) XYXY, input pixels.
        scale: (R, 2) factors of width and height (> 0), or a broadcastable scalar tensor.
        shift: (R, 2) centre displacement along x and y, in box widths / heights.
        image_size: (H, W).
    Returns:
        (R, 4) XYXY, same dtype (computed in float64).
    """
    check_boxes(boxes)
    b = boxes.double()
    size = b[:, 2:] - b[:, :2]
    centre = (b[:, :2] + b[:, 2:]) / 2 + shift.double() * size
    half = size * scale.double() / 2
    out = torch.cat([centre - half, centre + half], dim=1)
    h, w = image_size
    out[:, 0::2] = out[:, 0::2].clamp(0, w)
    out[:, 1::2] = out[:, 1::2].clamp(0, h)
    return out.to(boxes.dtype)


def mask_boxes(boxes: torch.Tensor, probs: Sequence[torch.Tensor], threshold: float,
               enlarge: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """The box of each predicted mask (``p >= threshold``), in input pixels: the ROI map's samples
    lie on the grid spanning the enlarged box (:func:`grid_positions`), each covering one grid
    step around it.

    Args:
        boxes: (R, 4) XYXY the maps were segmented from (before enlargement).
        probs: R (h_r, w_r) mask probability maps.
    Returns:
        (R, 4) mask boxes (the input box where the mask is empty) and (R,) bool: mask not empty.
    """
    if len(probs) != len(boxes):
        raise ValueError(f"mask_boxes: {len(boxes)} boxes but {len(probs)} maps")
    out = boxes.clone()
    found = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    eb = enlarge_boxes(boxes.double(), enlarge)
    for r, m in enumerate(probs):
        on = m >= threshold
        rows, cols = on.any(dim=1).nonzero().flatten(), on.any(dim=0).nonzero().flatten()
        if not len(rows):
            continue
        h, w = m.shape
        step_x = (eb[r, 2] - eb[r, 0]) / max(w - 1, 1)
        step_y = (eb[r, 3] - eb[r, 1]) / max(h - 1, 1)
        x0 = eb[r, 0] + step_x * (int(cols[0]) - 0.5)
        x1 = eb[r, 0] + step_x * (int(cols[-1]) + 0.5)
        y0 = eb[r, 1] + step_y * (int(rows[0]) - 0.5)
        y1 = eb[r, 1] + step_y * (int(rows[-1]) + 0.5)
        out[r] = torch.stack([x0, y0, x1, y1]).to(boxes.dtype)
        found[r] = True
    return out, found


def roi_level_sizes(
    boxes: torch.Tensor,
    strides: Sequence[int],
    enlarge: float,
    min_size: int,
) -> List[List[Tuple[int, int]]]:
    """ROI size (h, w) of each box at each level, level 0 first.

    h = int(enlarge * box_h / stride) (likewise w); the list of a box stops before the first level
    where a side is < ``min_size`` and is empty when level 0 already is (the instance is skipped).

    Args:
        boxes: (R, 4) XYXY, input pixels.
        strides: L strides, shallow to deep (e.g. [1, 2, 4, 8, 16]).
    Returns:
        R lists of at most L (h, w) tuples.
    """
    check_boxes(boxes)
    if len(boxes) == 0:
        return []
    hw = torch.stack([boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]], dim=1).double().cpu()
    s = torch.as_tensor(list(strides), dtype=torch.float64)
    sizes = torch.floor(enlarge * hw[:, None, :] / s[None, :, None] + _SIZE_EPS).long()  # (R, L, 2)
    # A level counts only if it and every shallower level are large enough.
    ok = (sizes >= min_size).all(dim=2).long().cumprod(dim=1).bool()  # (R, L)
    counts = ok.sum(dim=1).tolist()
    sizes_list = sizes.tolist()
    return [[tuple(sizes_list[r][l]) for l in range(counts[r])] for r in range(len(counts))]


def grid_positions(lo, hi, j: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Input-pixel position of grid sample ``j`` of ``n`` spanning [lo, hi] (endpoints included),
    in float64: x = lo + (hi - lo) * j / max(n - 1, 1).

    Args:
        lo, hi: enlarged-box edges (floats or float64 tensors broadcastable with ``j``).
        j: sample indices; n: the ROI side (int64 tensor broadcastable with ``j``).
    """
    t = j.double() / (n - 1).clamp(min=1).double()
    return lo + (hi - lo) * t


def feature_grid(x: torch.Tensor, extent: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """``grid_sample`` coordinates (align_corners=False) of input-pixel positions ``x`` on a map
    whose extent is [0, extent] input pixels, and whether each lies inside that extent.

    Cell i (centre s*(i + 0.5)) sits at normalised 2*(i + 0.5)/W - 1 = 2*x/(s*W) - 1.
    """
    g = 2.0 * x / extent - 1.0
    return g, (x >= 0) & (x <= extent)


def border_index(g: torch.Tensor, size: int) -> torch.Tensor:
    """``grid_sample``'s unnormalisation of coordinates ``g`` with align_corners=False and
    "border" padding: the fractional cell index, clamped to [0, size - 1] (float32)."""
    ix = ((g.float() + 1) * size - 1) / 2
    return ix.clamp(0, size - 1)


def linear_taps(ix: torch.Tensor, last: Union[int, torch.Tensor]):
    """The two taps of linear interpolation at fractional indices ``ix`` >= 0 of a line of cells
    0..last: (i0, i1) int64 and their weights (w0, w1). A tap beyond ``last`` is read at ``last``
    and only ever has weight 0 there (ix = last), which equals zero padding."""
    last = torch.as_tensor(last, device=ix.device)
    i0 = ix.floor()
    w1 = ix - i0
    i0 = torch.minimum(i0.long(), last)
    return i0, torch.minimum(i0 + 1, last), 1 - w1, w1


def bilinear_read(tap: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x_taps, y_taps):
    """Bilinear interpolation from :func:`linear_taps` along x and y; ``tap(ys, xs)`` reads the
    map at integer indices."""
    x0, x1, wx0, wx1 = x_taps
    y0, y1, wy0, wy1 = y_taps
    return (wy0 * (wx0 * tap(y0, x0) + wx1 * tap(y0, x1))
            + wy1 * (wx0 * tap(y1, x0) + wx1 * tap(y1, x1)))

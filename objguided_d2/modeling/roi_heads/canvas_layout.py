"""Canvas layout: where the ROIs of each level lie when they are packed into one 2-D canvas
(the batched segmentation path, :mod:`.canvas_ops`).

At each level, the ROIs that have that level are shelf-packed (rows of ROIs sorted by height)
with >= 1 zero pixel between any two ROIs. Canvas of level i: its ROIs that have a deeper level
("merged": they receive S_i's output) fill rows [0, Hm_i), the ROIs whose deepest level is i
fill rows [Hm_i + 1, H_i) (their level-i crop is their x). The merged ROIs of level i are exactly
the ROIs of the level-(i+1) canvas.

Shapes: R ROIs, n ROIs of a level, P valid pixels of a level, (H, W) a canvas, S shelves.
"""
import math
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

__all__ = ["LevelLayout", "CanvasLayout", "pack_canvas"]


@dataclass
class LevelLayout:
    """Where the ROIs of one level lie in its canvas.

    rois: (n,) int64 global ROI index of each slot (merged ROIs first).
    y0, x0, h, w: (n,) int64 top-left corner and size of each slot.
    height, width: canvas size; merged_rows: Hm (rows [0, Hm) hold the merged ROIs).
    num_merged: how many slots are merged ROIs (the first ones).
    pix_flat: (P,) int64 canvas index (y * W + x) of each valid pixel, slot-major, row-major.
    pix_slot, pix_y, pix_x: (P,) int64 slot and local (row, col) of each valid pixel.
    slot_map: (H * W,) int64 slot of each canvas pixel, n in the gaps.
    mask: (1, 1, H, W) float validity.
    slot_shelf: (n,) int64 shelf of each slot; row_shelf: (H,) int64 shelf of each row.
    col_slot: (S * W,) int64 slot spanning each column of each shelf, n where none.
    shelf_spans: per shelf its rows [start, end) (a gap row belongs to the shelf above), as
        Python ints so that per-shelf slicing never syncs with a device.
    """

    rois: torch.Tensor
    y0: torch.Tensor
    x0: torch.Tensor
    h: torch.Tensor
    w: torch.Tensor
    height: int
    width: int
    merged_rows: int
    num_merged: int
    pix_flat: torch.Tensor
    pix_slot: torch.Tensor
    pix_y: torch.Tensor
    pix_x: torch.Tensor
    slot_map: torch.Tensor
    mask: torch.Tensor
    slot_shelf: torch.Tensor
    row_shelf: torch.Tensor
    col_slot: torch.Tensor
    shelf_spans: List[Tuple[int, int]]


@dataclass
class CanvasLayout:
    """All levels' layouts plus, per ROI, its slot at every level it has.

    levels: L' layouts, level 0 first (L' = the most levels any ROI has).
    slots: (R, L') int64 slot of each ROI at each level, -1 where it has no such level.
    num_levels: (R,) int64 levels per ROI.
    """

    levels: List[LevelLayout]
    slots: torch.Tensor
    num_levels: torch.Tensor


def _shelf_pack(sizes: List[Tuple[int, int]], groups: List[List[int]], width: int):
    """Greedy shelf packing with 1-px gaps; a new shelf starts at each group.

    Returns per item (y0, x0) and its shelf, the shelves' top rows, the canvas height and, per
    group, the first row after it.
    """
    pos = [(0, 0)] * len(sizes)
    shelf_of = [0] * len(sizes)
    tops: List[int] = []
    top, group_ends = 0, []
    for items in groups:
        x, shelf_h = 0, 0
        for k in items:
            h, w = sizes[k]
            if x > 0 and x + w > width:  # next shelf
                top += shelf_h + 1
                x, shelf_h = 0, 0
            if x == 0:
                tops.append(top)
            pos[k] = (top, x)
            shelf_of[k] = len(tops) - 1
            x += w + 1
            shelf_h = max(shelf_h, h)
        if items:
            top += shelf_h + 1
        group_ends.append(top)
    return pos, shelf_of, tops, max(top - 1, 1), group_ends


def pack_canvas(level_sizes: Sequence[Sequence[Tuple[int, int]]], device=None) -> CanvasLayout:
    """Pack ROIs with per-level sizes into one canvas per level.

    Args:
        level_sizes: per ROI its (h, w) at levels 0..n_r-1 (n_r >= 1; ``roi_level_sizes``).
    Returns:
        :class:`CanvasLayout`.
    """
    R = len(level_sizes)
    nlev = [len(s) for s in level_sizes]
    if R == 0 or min(nlev) < 1:
        raise ValueError("pack_canvas: need >= 1 ROI, each with >= 1 level")
    L = max(nlev)
    slots = torch.full((R, L), -1, dtype=torch.int64)
    levels = []
    for l in range(L):
        merged = [r for r in range(R) if nlev[r] > l + 1]
        entry = [r for r in range(R) if nlev[r] == l + 1]
        rois = merged + entry
        sizes = [tuple(level_sizes[r][l]) for r in rois]
        # Tall ROIs first inside each group: shelves waste little height.
        order_m = sorted(range(len(merged)), key=lambda k: (-sizes[k][0], -sizes[k][1]))
        order_e = sorted(range(len(merged), len(rois)), key=lambda k: (-sizes[k][0], -sizes[k][1]))
        area = sum((h + 1) * (w + 1) for h, w in sizes)
        width = max(max(w for _, w in sizes), int(math.ceil(math.sqrt(area))))
        pos, shelf_of, tops, height, ends = _shelf_pack(sizes, [order_m, order_e], width)
        merged_rows = max(ends[0] - 1, 0) if merged else 0
        width = max(x + w for (_, x), (_, w) in zip(pos, sizes))
        # Row -> shelf (a gap row belongs to the shelf above it; it is 0 wherever it is read).
        row_shelf = torch.bucketize(torch.arange(height), torch.as_tensor(tops), right=True) - 1
        spans = list(zip(tops, tops[1:] + [height]))
        levels.append(_level_layout(rois, pos, sizes, height, width, merged_rows, len(merged),
                                    shelf_of, row_shelf, spans, device))
        slots[torch.as_tensor(rois), l] = torch.arange(len(rois))
    return CanvasLayout(levels=levels, slots=slots.to(device),
                        num_levels=torch.as_tensor(nlev, dtype=torch.int64, device=device))


def _level_layout(rois, pos, sizes, height, width, merged_rows, num_merged, shelf_of, row_shelf,
                  shelf_spans, device) -> LevelLayout:
    n = len(rois)
    t = torch.as_tensor
    y0 = t([p[0] for p in pos], dtype=torch.int64)
    x0 = t([p[1] for p in pos], dtype=torch.int64)
    h = t([s[0] for s in sizes], dtype=torch.int64)
    w = t([s[1] for s in sizes], dtype=torch.int64)
    counts = h * w
    slot = torch.repeat_interleave(torch.arange(n), counts)
    start = torch.cumsum(counts, 0) - counts
    off = torch.arange(int(counts.sum())) - start[slot]
    py, px = off // w[slot], off % w[slot]
    flat = (y0[slot] + py) * width + x0[slot] + px
    slot_map = torch.full((height * width,), n, dtype=torch.int64)
    slot_map[flat] = slot
    mask = (slot_map < n).float().reshape(1, 1, height, width)
    # Shelf column -> slot (n where no slot spans it): per-slot values become shelf rows.
    sh = t(shelf_of, dtype=torch.int64)
    num_shelves = int(row_shelf[-1]) + 1
    cslot = torch.repeat_interleave(torch.arange(n), w)
    cstart = torch.cumsum(w, 0) - w
    ccol = x0[cslot] + torch.arange(int(w.sum())) - cstart[cslot]
    col_slot = torch.full((num_shelves * width,), n, dtype=torch.int64)
    col_slot[sh[cslot] * width + ccol] = cslot
    d = device
    return LevelLayout(
        rois=t(rois, dtype=torch.int64, device=d), y0=y0.to(d), x0=x0.to(d), h=h.to(d), w=w.to(d),
        height=int(height), width=int(width), merged_rows=int(merged_rows), num_merged=num_merged,
        pix_flat=flat.to(d), pix_slot=slot.to(d), pix_y=py.to(d), pix_x=px.to(d),
        slot_map=slot_map.to(d), mask=mask.to(d),
        slot_shelf=t(shelf_of, dtype=torch.int64, device=d), row_shelf=row_shelf.to(d),
        col_slot=col_slot.to(d), shelf_spans=[(int(a), int(b)) for a, b in shelf_spans],
    )

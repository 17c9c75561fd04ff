"""Tiled inference for images larger than the model's test size, and stitching across tiles.

Coordinates are pixels, rows before columns: boxes are ``(y0, x0, y1, x1)``, half-open.

Stitching scheme (objects cut by tile borders become one instance, none is reported twice):

1. The image is covered by tiles of ``tile_size`` whose starts are spread evenly so that
   neighbours overlap by at least ``overlap`` pixels; the last tile ends on the image border.
   Each tile also has a *core*: the tile minus half of the overlap on every interior side.
   Cores partition the image.
2. Every instance a tile predicts becomes a candidate in image coordinates. It is *cut* if its
   mask touches an interior side of its tile (a side that is not the image border), else
   *complete*.
3. Candidates of two overlapping tiles are compared only inside the two tiles' shared region:
   they are the same object if their mask IoU there exceeds ``match_iou``, or if a *cut*
   candidate has more than ``match_iou`` of its pixels in the shared region covered by the
   other one (the model may segment a sliver at a border a little differently). Pairs are
   joined best first, and a group never takes two candidates from one tile, so objects the
   model separated inside a tile stay separate and chains cannot form.
4. Each group gives one object. If some member is complete, it is used as is: the one whose
   centre lies in its tile's core (else the highest scoring). If every member is cut (the
   object is larger than the overlap), the object is the union of their masks, with the
   highest member score and its class.

So an object smaller than the overlap is always taken whole from one tile, and a larger one is
merged from its pieces. Overlaps between the final objects are resolved when the label image
is drawn (higher score wins).
"""
import math
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = [
    "Detection",
    "Tile",
    "tile_grid",
    "instances_to_detections",
    "stitch_tiles",
    "predict_tiled",
]


@dataclass
class Detection:
    """One predicted object in image coordinates.

    Attributes:
        box: (y0, x0, y1, x1) half-open, the tight box of the mask, image pixels.
        mask: (y1 - y0, x1 - x0) bool, the mask inside ``box``.
        score: confidence in [0, 1].
        category: contiguous class index (0-based, Detectron2's ``pred_classes``).
    """

    box: Tuple[int, int, int, int]
    mask: np.ndarray
    score: float
    category: int

    @property
    def area(self) -> int:
        return int(self.mask.sum())


@dataclass
class Tile:
    """A tile ``box`` = (y0, x0, y1, x1) and its ``core`` (same frame); ``interior`` flags the
    sides (top, left, bottom, right) that lie inside the image."""

    box: Tuple[int, int, int, int]
    core: Tuple[int, int, int, int]
    interior: Tuple[bool, bool, bool, bool]


def _starts(length: int, tile: int, overlap: int) -> List[int]:
    if length <= tile:
        return [0]
    stride = tile - overlap
    n = math.ceil((length - tile) / stride) + 1
    # Evenly spread: every overlap is >= the requested one, the last tile ends at the border.
    return [int(round(v)) for v in np.linspace(0, length - tile, n)]


def _cores(starts: List[int], length: int, tile: int) -> List[Tuple[int, int]]:
    cuts = [(starts[i + 1] + starts[i] + tile) // 2 for i in range(len(starts) - 1)]
    lo = [0] + cuts
    hi = cuts + [length]
    return list(zip(lo, hi))


def tile_grid(height: int, width: int, tile_size: int, overlap: int) -> List[Tile]:
    """Tiles covering an image of (height, width), row-major order.

    Args:
        tile_size: tile side in pixels; a side of the image shorter than it gives one tile.
        overlap: minimum overlap of neighbouring tiles in pixels, 0 <= overlap < tile_size.
    """
    if tile_size < 1:
        raise ValueError(f"tile_size must be >= 1, got {tile_size}")
    if not 0 <= overlap < tile_size:
        raise ValueError(f"tile overlap must be in [0, tile_size={tile_size}), got {overlap}")
    ys, xs = _starts(height, tile_size, overlap), _starts(width, tile_size, overlap)
    ycores, xcores = _cores(ys, height, tile_size), _cores(xs, width, tile_size)
    tiles = []
    for y, (cy0, cy1) in zip(ys, ycores):
        for x, (cx0, cx1) in zip(xs, xcores):
            y1, x1 = min(y + tile_size, height), min(x + tile_size, width)
            tiles.append(
                Tile(
                    box=(y, x, y1, x1),
                    core=(cy0, cx0, cy1, cx1),
                    interior=(y > 0, x > 0, y1 < height, x1 < width),
                )
            )
    return tiles


def instances_to_detections(instances, offset: Tuple[int, int] = (0, 0)) -> List[Detection]:
    """Convert Detectron2 ``Instances`` (fields ``pred_masks`` (N, H, W), ``scores`` (N,),
    ``pred_classes`` (N,)) to :class:`Detection` s shifted by ``offset`` = (dy, dx).
    Empty masks are dropped; boxes are recomputed from the masks."""
    if len(instances) == 0:
        return []
    if not instances.has("pred_masks"):
        raise ValueError("the model predicts no masks (Instances has no 'pred_masks'); "
                         "an instance-segmentation model is required")
    masks = instances.pred_masks
    masks = masks.cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks)
    if masks.ndim == 4:  # (N, 1, H, W)
        masks = masks[:, 0]
    masks = masks > 0.5 if masks.dtype != np.bool_ else masks
    scores = instances.scores.cpu().numpy() if instances.has("scores") else np.ones(len(masks))
    classes = (
        instances.pred_classes.cpu().numpy() if instances.has("pred_classes") else np.zeros(len(masks), int)
    )
    dy, dx = offset
    out = []
    for m, s, c in zip(masks, scores, classes):
        rows = np.flatnonzero(m.any(axis=1))
        if rows.size == 0:
            continue
        cols = np.flatnonzero(m.any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        out.append(
            Detection(
                box=(int(y0 + dy), int(x0 + dx), int(y1 + dy), int(x1 + dx)),
                mask=np.ascontiguousarray(m[y0:y1, x0:x1]),
                score=float(s),
                category=int(c),
            )
        )
    return out


def _intersect(a, b):
    y0, x0 = max(a[0], b[0]), max(a[1], b[1])
    y1, x1 = min(a[2], b[2]), min(a[3], b[3])
    return (y0, x0, y1, x1) if y0 < y1 and x0 < x1 else None


def _crop(det: Detection, region) -> np.ndarray:
    """The part of ``det.mask`` inside ``region`` (which must lie inside det.box)."""
    y0, x0 = det.box[0], det.box[1]
    return det.mask[region[0] - y0 : region[2] - y0, region[1] - x0 : region[3] - x0]


def _area_in(det: Detection, region) -> int:
    r = _intersect(det.box, region)
    return 0 if r is None else int(_crop(det, r).sum())


def _is_cut(det: Detection, tile: Tile) -> bool:
    ty0, tx0, ty1, tx1 = tile.box
    top, left, bottom, right = tile.interior
    y0, x0, y1, x1 = det.box
    return (top and y0 <= ty0) or (left and x0 <= tx0) or (bottom and y1 >= ty1) or (right and x1 >= tx1)


def _centre_in_core(det: Detection, tile: Tile) -> bool:
    ys, xs = np.nonzero(det.mask)
    cy, cx = ys.mean() + det.box[0], xs.mean() + det.box[1]
    c = tile.core
    return c[0] <= cy < c[2] and c[1] <= cx < c[3]


def _union(dets: Sequence[Detection]) -> np.ndarray:
    box = (
        min(d.box[0] for d in dets),
        min(d.box[1] for d in dets),
        max(d.box[2] for d in dets),
        max(d.box[3] for d in dets),
    )
    mask = np.zeros((box[2] - box[0], box[3] - box[1]), bool)
    for d in dets:
        mask[d.box[0] - box[0] : d.box[2] - box[0], d.box[1] - box[1] : d.box[3] - box[1]] |= d.mask
    return box, mask


def stitch_tiles(
    tiles: Sequence[Tile], per_tile: Sequence[Sequence[Detection]], match_iou: float = 0.5
) -> List[Detection]:
    """Merge per-tile detections (image coordinates) into one list; see the module docstring.

    Args:
        tiles: the tiles, as from :func:`tile_grid`.
        per_tile: for each tile, its detections already shifted to image coordinates.
        match_iou: the same-object threshold (IoU in the shared region, or coverage of a cut
            candidate's shared-region pixels).
    Returns:
        detections sorted by decreasing score.
    """
    cands: List[Detection] = []
    tile_of: List[int] = []
    for t, dets in enumerate(per_tile):
        cands.extend(dets)
        tile_of.extend([t] * len(dets))
    cut = [_is_cut(d, tiles[t]) for d, t in zip(cands, tile_of)]
    by_tile: List[List[int]] = [[] for _ in tiles]
    for i, t in enumerate(tile_of):
        by_tile[t].append(i)

    # Candidate pairs from overlapping tiles, compared inside the tiles' shared region.
    edges = []
    for a in range(len(tiles)):
        for b in range(a + 1, len(tiles)):
            shared = _intersect(tiles[a].box, tiles[b].box)
            if shared is None:
                continue
            ia = [i for i in by_tile[a] if _intersect(cands[i].box, shared)]
            ib = [j for j in by_tile[b] if _intersect(cands[j].box, shared)]
            area_a = {i: _area_in(cands[i], shared) for i in ia}
            area_b = {j: _area_in(cands[j], shared) for j in ib}
            ia = [i for i in ia if area_a[i] > 0]
            ib = [j for j in ib if area_b[j] > 0]
            if not ia or not ib:
                continue
            # Vectorised box test first: only box-overlapping pairs get a mask comparison.
            ba = np.array([cands[i].box for i in ia]).reshape(-1, 1, 4)
            bb = np.array([cands[j].box for j in ib]).reshape(1, -1, 4)
            hit = (np.maximum(ba[..., 0], bb[..., 0]) < np.minimum(ba[..., 2], bb[..., 2])) & (
                np.maximum(ba[..., 1], bb[..., 1]) < np.minimum(ba[..., 3], bb[..., 3])
            )
            for p, q in zip(*np.nonzero(hit)):
                i, j = ia[p], ib[q]
                r = _intersect(_intersect(cands[i].box, cands[j].box), shared)
                if r is None:
                    continue
                inter = int(np.logical_and(_crop(cands[i], r), _crop(cands[j], r)).sum())
                if inter == 0:
                    continue
                value = inter / (area_a[i] + area_b[j] - inter)
                if cut[i]:
                    value = max(value, inter / area_a[i])
                if cut[j]:
                    value = max(value, inter / area_b[j])
                if value > match_iou:
                    edges.append((value, i, j))

    # Union-find, best pairs first, at most one candidate per tile in a group.
    parent = list(range(len(cands)))
    tiles_in = [{t} for t in tile_of]

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for _, i, j in sorted(edges, key=lambda e: (-e[0], e[1], e[2])):
        ri, rj = find(i), find(j)
        if ri == rj or tiles_in[ri] & tiles_in[rj]:
            continue
        parent[rj] = ri
        tiles_in[ri] |= tiles_in[rj]

    groups = {}
    for i in range(len(cands)):
        groups.setdefault(find(i), []).append(i)

    out = []
    for members in groups.values():
        complete = [i for i in members if not cut[i]]
        if complete:
            in_core = [i for i in complete if _centre_in_core(cands[i], tiles[tile_of[i]])]
            pool = in_core or complete
            best = max(pool, key=lambda i: (cands[i].score, -i))
            out.append(cands[best])
        else:
            best = max(members, key=lambda i: (cands[i].score, -i))
            box, mask = _union([cands[i] for i in members])
            out.append(Detection(box=box, mask=mask, score=cands[best].score, category=cands[best].category))
    out.sort(key=lambda d: -d.score)
    return out


def predict_tiled(
    image: np.ndarray,
    predict_fn: Callable[[np.ndarray], "object"],
    *,
    tile_size: int,
    overlap: int,
    match_iou: float = 0.5,
    progress: Optional[Callable[[Iterable], Iterable]] = None,
) -> List[Detection]:
    """Predict ``image`` (H, W, 3) whole if it fits in one tile, else tile by tile, and stitch.

    Args:
        predict_fn: maps an (h, w, 3) uint8 BGR array to Detectron2 ``Instances`` with
            ``pred_masks`` (N, h, w), ``scores`` and ``pred_classes`` in that array's frame.
        tile_size, overlap: see :func:`tile_grid`.
        progress: optional wrapper for the tile iterator (e.g. a tqdm factory).
    Returns:
        detections in image coordinates, sorted by decreasing score.
    """
    h, w = image.shape[:2]
    if h <= tile_size and w <= tile_size:
        dets = instances_to_detections(predict_fn(image))
        return sorted(dets, key=lambda d: -d.score)
    tiles = tile_grid(h, w, tile_size, overlap)
    it = progress(tiles) if progress is not None else tiles
    per_tile = []
    for t in it:
        y0, x0, y1, x1 = t.box
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        per_tile.append(instances_to_detections(predict_fn(crop), offset=(y0, x0)))
    return stitch_tiles(tiles, per_tile, match_iou=match_iou)

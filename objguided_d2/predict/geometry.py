"""Exact vector outlines of label-image objects, shared by the ImageJ ROI and GeoJSON exporters.

Coordinates are **pixel corners** with x to the right and y down, the convention of ImageJ /
Fiji polygon ROIs (the wand tool's traced outlines) and of QuPath: pixel (row r, column c) is the
unit square ``[c, c + 1] x [r, r + 1]``. A polygon of such corners, filled by the rule both tools
use (a pixel belongs to it when its centre ``(c + 0.5, r + 0.5)`` is inside), gives back exactly
the object's pixels: the outline follows pixel edges, so no pixel centre lies on it.

The outline is the union of the object's horizontal pixel runs (shapely, GEOS), which is always a
valid OGC geometry: a Polygon, or a MultiPolygon for an object in several 4-connected parts;
holes are interior rings; rings that would touch themselves at a corner are split validly.
"""
from typing import List, Tuple

import numpy as np

__all__ = ["mask_geometry", "polygon_parts", "keyhole_ring"]


def mask_geometry(crop: np.ndarray, offset: Tuple[int, int] = (0, 0)):
    """Outline of the True pixels of ``crop`` (h, w) bool, placed at ``offset`` = (row, col).

    Returns a shapely Polygon or MultiPolygon with pixel-corner coordinates (see the module
    docstring), collinear vertices removed, exteriors counter-clockwise in (x, y) and holes
    clockwise (shapely ``orient``); ``None`` for an empty mask.
    """
    import shapely
    from shapely.geometry.polygon import orient

    crop = np.asarray(crop, dtype=bool)
    if not crop.any():
        return None
    # Runs of True per row: starts where the row switches on, ends where it switches off.
    pad = np.zeros((crop.shape[0], crop.shape[1] + 2), np.int8)
    pad[:, 1:-1] = crop
    d = np.diff(pad, axis=1)
    r0, c0 = np.nonzero(d == 1)
    r1, c1 = np.nonzero(d == -1)  # same row order as the starts (both row-major)
    y, x = offset
    boxes = shapely.box(c0 + x, r0 + y, c1 + x, r0 + y + 1)
    geom = shapely.simplify(shapely.unary_union(boxes), 0)  # drop the runs' collinear corners
    if geom.geom_type == "Polygon":
        return orient(geom, 1.0)
    return shapely.MultiPolygon([orient(p, 1.0) for p in geom.geoms])


def polygon_parts(geom) -> List:
    """The Polygons of a Polygon / MultiPolygon, largest first (ties: top-left first)."""
    if geom is None:
        return []
    parts = [geom] if geom.geom_type == "Polygon" else list(geom.geoms)
    return sorted(parts, key=lambda p: (-p.area, p.bounds[1], p.bounds[0]))


def keyhole_ring(polygon) -> np.ndarray:
    """One closed ring (K, 2) float (x, y) tracing ``polygon``'s exterior and every hole.

    ImageJ polygon ROIs have no holes; each hole is joined to the ring by a zero-width vertical
    cut from its top-most vertex straight up to the nearest edge above. The cut lies on a pixel
    edge line (integer x), so it covers no pixel centre: filled with the centre rule (even-odd or
    non-zero: the holes run the other way), the ring gives exactly the polygon's pixels.
    The last point is not repeated.
    """
    ring = [tuple(p) for p in np.asarray(polygon.exterior.coords)[:-1]]
    holes = [np.asarray(h.coords)[:-1] for h in polygon.interiors]
    # Top-most holes first: a cut going up can only meet holes that are already joined.
    holes.sort(key=lambda h: h[:, 1].min())
    for h in holes:
        top = int(np.lexsort((h[:, 0], h[:, 1]))[0])  # min y, then min x
        hx, hy = h[top]
        best, at = None, None
        n = len(ring)
        for i in range(n):
            (ax, ay), (bx, by) = ring[i], ring[(i + 1) % n]
            if ay == by and ay <= hy and min(ax, bx) <= hx <= max(ax, bx):
                if best is None or ay > best:
                    best, at = ay, i
        if at is None:  # cannot happen for a hole inside its exterior; keep the pixels exact anyway
            raise ValueError("keyhole_ring: no edge above a hole (hole outside its polygon?)")
        hit = (float(hx), float(best))
        loop = [tuple(p) for p in np.roll(h, -top, axis=0)] + [(float(hx), float(hy))]
        ring = ring[: at + 1] + [hit] + loop + [hit] + ring[at + 1:]
    return np.asarray(ring, dtype=np.float64)

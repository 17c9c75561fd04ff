"""ImageJ / Fiji ROI sets (``--roi-zip``): ``<name>_rois.zip``, read by Fiji's ROI Manager
(*File > Open* the zip, or drag it onto Fiji) and by ``roifile``.

One polygon ROI per object and 4-connected part, in pixel-corner coordinates (the outline of
the label image's pixels, as Fiji's wand tool traces it; see :mod:`.geometry`), so Fiji's
*Measure* gives the same area as ``objects.csv``. Names carry the label id and the score:

* ``0007_s0.931``: object 7 (label id in ``<name>_labels.tif`` and ``objects.csv``), score 0.931;
* ``0007-1_s0.931``, ``0007-2_s0.931``: the parts of an object in several pieces (part 1 is the
  largest). Every part is a separate ROI (ImageJ's polygon ROIs are single outlines);
* a hole stays a hole: it is joined to its part's outline by a zero-width cut (a "keyhole"),
  which covers no pixel, so the ROI holds exactly the object's pixels.

Ids are zero-padded to the width of the largest id so that the ROI Manager's order is the id
order. The ROI position is the page (1-based) for a page of a multi-page TIFF.
"""
from typing import Optional, Sequence

import numpy as np
from skimage.measure import regionprops

from .geometry import keyhole_ring, mask_geometry, polygon_parts
from .writers import atomic_write

__all__ = ["roi_name", "label_rois", "write_roi_zip"]


def roi_name(label_id: int, score: float, part: Optional[int] = None, width: int = 4) -> str:
    """``<id>_s<score>`` or ``<id>-<part>_s<score>`` (id zero-padded to ``width``)."""
    base = f"{int(label_id):0{width}d}" + (f"-{part}" if part is not None else "")
    return f"{base}_s{float(score):.3f}"


def label_rois(labels: np.ndarray, scores: Sequence[float], *, position: Optional[int] = None):
    """``roifile.ImagejRoi`` polygons of every object of ``labels`` (H, W).

    Args:
        labels: label image, 0 = background; ``scores[k]`` is the score of label ``k + 1``.
        position: 0-based stack position to store (a page of a multi-page TIFF), or None.
    """
    from roifile import ROI_TYPE, ImagejRoi

    width = max(4, len(str(int(labels.max())))) if labels.size else 4
    rois = []
    for r in regionprops(labels):
        parts = polygon_parts(mask_geometry(r.image, r.bbox[:2]))
        for k, poly in enumerate(parts, start=1):
            ring = np.round(keyhole_ring(poly)).astype(np.int32)  # corners are integers
            name = roi_name(r.label, scores[r.label - 1], k if len(parts) > 1 else None, width)
            roi = ImagejRoi.frompoints(ring, name=name, position=position)
            roi.roitype = ROI_TYPE.POLYGON  # frompoints makes FREEHAND; a traced outline is a polygon
            rois.append(roi)
    return rois


def write_roi_zip(path: str, labels: np.ndarray, scores: Sequence[float], *, position: Optional[int] = None,
                  overwrite: bool = False) -> int:
    """Write the ROI set of ``labels`` to ``path`` (atomic, refuses to overwrite unless asked).

    Returns the number of ROIs. An image without objects gets a zip with no ROI.
    """
    import zipfile

    rois = label_rois(labels, scores, position=position)

    def write(tmp):
        # roifile.roiwrite appends to an existing zip; the temporary file must start empty.
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for roi in rois:
                zf.writestr(roi.name + ".roi", roi.tobytes())

    atomic_write(path, write, overwrite=overwrite)
    return len(rois)

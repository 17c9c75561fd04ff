"""QuPath GeoJSON (``--geojson``): ``<name>.geojson``, a FeatureCollection with one Feature per
object, which QuPath (0.3 and later) imports with *File > Import objects from file* or by
dragging the file onto the open image.

* geometry: ``Polygon`` (exterior + holes) or ``MultiPolygon`` for an object in several
  4-connected parts; coordinates in pixels of the original image, **pixel corners, x to the right,
  y down**, origin at the top-left corner of the image (QuPath's image coordinates; pixel (row r,
  column c) is the square [c, c+1] x [r, r+1]). Outlines follow pixel edges (:mod:`.geometry`),
  so QuPath's area equals ``objects.csv``'s and rasterising gives back the label image;
* ``properties.objectType`` = ``"detection"``: QuPath's light-weight object for thousands of
  automatically found objects (listed in *Measure > Show detection measurements*). To edit them
  by hand, select them and run *Objects > Annotations... > Convert detections to annotations*;
* ``properties.name``: the label id (as in ``<name>_labels.tif``); ``properties.classification``:
  the class name; ``properties.measurements``: the numeric columns of ``objects.csv`` for that
  object (``score``, ``area``, centroid, bounding box, ``perimeter``, ``eccentricity``; pixels).
"""
from typing import Dict, Sequence

import numpy as np
from skimage.measure import regionprops

from .geometry import mask_geometry
from .writers import CSV_COLUMNS, atomic_write

__all__ = ["OBJECT_TYPE", "label_features", "write_geojson"]

OBJECT_TYPE = "detection"
_NOT_MEASUREMENTS = ("image", "id", "class_id", "class")


def _coords(geom) -> Dict:
    """GeoJSON geometry with integer corner coordinates (exact: outlines follow pixel edges)."""
    import shapely

    g = shapely.geometry.mapping(geom)

    def ints(c):
        if isinstance(c[0], (int, float)):
            return [int(round(c[0])), int(round(c[1]))]
        return [ints(x) for x in c]

    return {"type": g["type"], "coordinates": ints(g["coordinates"])}


def label_features(labels: np.ndarray, rows: Sequence[Dict]) -> list:
    """GeoJSON Features of the objects of ``labels``; ``rows`` are the ``objects.csv`` rows of
    this image (``measure_objects``), matched by ``id`` = label id."""
    by_id = {int(r["id"]): r for r in rows}
    feats = []
    for r in regionprops(labels):
        row = by_id[int(r.label)]
        geom = mask_geometry(r.image, r.bbox[:2])
        feats.append({
            "type": "Feature",
            "geometry": _coords(geom),
            "properties": {
                "objectType": OBJECT_TYPE,
                "name": str(r.label),
                "classification": {"name": str(row["class"])},
                "isLocked": False,
                "measurements": {k: row[k] for k in CSV_COLUMNS if k not in _NOT_MEASUREMENTS},
            },
        })
    return feats


def write_geojson(path: str, labels: np.ndarray, rows: Sequence[Dict], *, overwrite: bool = False) -> int:
    """Write the FeatureCollection of ``labels`` to ``path`` (atomic, no silent overwrite).
    Returns the number of features."""
    import json

    feats = label_features(labels, rows)

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump({"type": "FeatureCollection", "features": feats}, f)

    atomic_write(path, write, overwrite=overwrite)
    return len(feats)

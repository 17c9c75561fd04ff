"""npe2 writers for Labels layers: predict's label TIFF, ``objects.csv``, Fiji ROI zip and QuPath
GeoJSON writers, fed with the layer as it is now (hand edits included).

Measurements are taken from the current labels; score and class come from the layer's
``features`` (the segmentation's table), objects painted by hand get score 1. Existing files
are never replaced (choose another name).
"""
from typing import Dict, List

import numpy as np

from ._layers import measure_rows, plane_name, planes

__all__ = ["write_label_tif", "write_objects_csv", "write_roi_zip", "write_geojson"]


def _known(meta: Dict) -> Dict[int, Dict]:
    feats = meta.get("features")
    if feats is None or len(feats) == 0 or "index" not in feats:
        return {}
    return {int(r["index"]): r for r in feats.to_dict("records")}


def _labels(data) -> np.ndarray:
    lab = np.asarray(data)
    if not np.issubdtype(lab.dtype, np.integer) or (lab.size and lab.min() < 0):
        raise ValueError(f"labels dtype {lab.dtype} / negative ids: expected non-negative integer ids")
    return lab


def _per_plane(path: str, data, meta: Dict):
    lab = _labels(data)
    name, known = meta.get("name") or "labels", _known(meta)
    ps = list(planes(lab, False))
    return [(k, p, measure_rows(p, plane_name(name, k, len(ps)), known)) for k, p in enumerate(ps)]


def write_label_tif(path: str, data, meta: Dict) -> List[str]:
    from objguided_d2.predict.writers import write_label_tif as write

    lab = _labels(data)
    write(path, lab.astype(np.uint16 if (lab.max() if lab.size else 0) <= 65535 else np.uint32))
    return [path]


def write_objects_csv(path: str, data, meta: Dict) -> List[str]:
    from objguided_d2.predict.writers import write_csv

    write_csv(path, [r for _, _, rows in _per_plane(path, data, meta) for r in rows])
    return [path]


def _scores(lab2d: np.ndarray, rows) -> List[float]:
    scores = [1.0] * (int(lab2d.max()) if lab2d.size else 0)
    for r in rows:
        scores[r["id"] - 1] = r["score"]
    return scores


def write_roi_zip(path: str, data, meta: Dict) -> List[str]:
    """One ROI per object; in a stack each ROI's position is its plane (Fiji's slice)."""
    from objguided_d2.predict import export_roi

    parts = _per_plane(path, data, meta)
    if len(parts) == 1:
        export_roi.write_roi_zip(path, parts[0][1], _scores(parts[0][1], parts[0][2]))
        return [path]
    from roifile import roiwrite

    from objguided_d2.utils.io import atomic_write

    rois = [r for k, lab, rows in parts for r in export_roi.label_rois(lab, _scores(lab, rows), position=k)]
    atomic_write(path, lambda tmp: roiwrite(tmp, rois, mode="w"))
    return [path]


def write_geojson(path: str, data, meta: Dict) -> List[str]:
    from objguided_d2.predict import export_geojson

    parts = _per_plane(path, data, meta)
    if len(parts) != 1:
        raise ValueError(f"{path}: QuPath GeoJSON holds one 2D image; this labels layer is a stack of "
                         f"{len(parts)} planes (save a single plane, or use the folder widget)")
    export_geojson.write_geojson(path, parts[0][1], parts[0][2])
    return [path]

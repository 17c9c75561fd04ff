"""Object-size statistics of a training set, at the scale the network saw them.

A centre-point detector at stride 4 learns objects of the sizes it was trained on. This module
measures that size so that ``objguided-predict --diameter D`` can rescale other images to it:

* each object's **equivalent diameter** ``sqrt(4 * area / pi)`` (the diameter of the disc of the
  same area, as Cellpose's ``--diameter``), in pixels of its image;
* times the **scale the training mapper applies** to that image (:func:`train_scales`): with
  ``INPUT.SQUARE_CROP_ON`` a square of side ``max(H, W) * s`` (``s`` from
  ``INPUT.SQUARE_CROP_SCALES``, uniform) resized to ``INPUT.TRAIN_SIZE``, i.e.
  ``TRAIN_SIZE / (max(H, W) * s)``; with ``INPUT.NATIVE_CROP_SIZE`` > 0 (native-scale crops) 1;
  otherwise Detectron2's ``ResizeShortestEdge``
  (``INPUT.MIN_SIZE_TRAIN`` / ``MAX_SIZE_TRAIN``);
* the median over every (object, scale) pair is ``median_diameter_input``: the typical object
  diameter in pixels at the network input. It is written to ``object_size.json`` in the model
  folder (``OUTPUT_DIR``) when training starts.
"""
import logging
import math
import os
from typing import Dict, List, Sequence

import numpy as np

__all__ = ["SIZE_FILE", "equivalent_diameter", "train_scales", "training_size_stats", "write_size_stats",
           "read_size_stats"]

logger = logging.getLogger(__name__)

SIZE_FILE = "object_size.json"


def equivalent_diameter(area: float) -> float:
    """Diameter of the disc of area ``area`` (pixels)."""
    return math.sqrt(4.0 * float(area) / math.pi)


def train_scales(cfg, height: int, width: int) -> List[float]:
    """The resize factors (network input / image) the training mapper can apply to an image of
    ``height`` x ``width``, each equally likely (see the module docstring)."""
    if cfg.INPUT.SQUARE_CROP_ON and int(cfg.INPUT.get("NATIVE_CROP_SIZE", 0)) > 0:
        return [1.0]  # native-scale crops: never resized
    if cfg.INPUT.SQUARE_CROP_ON:
        side = max(height, width)
        return [float(cfg.INPUT.TRAIN_SIZE) / (side * float(s)) for s in cfg.INPUT.SQUARE_CROP_SCALES]
    sizes = list(cfg.INPUT.MIN_SIZE_TRAIN)
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range":
        sizes = list(np.linspace(sizes[0], sizes[1], 9))
    max_size = float(cfg.INPUT.MAX_SIZE_TRAIN)
    return [min(float(s) / min(height, width), max_size / max(height, width)) for s in sizes]


def _areas(record: Dict) -> List[float]:
    import pycocotools.mask as mask_util

    h, w = int(record["height"]), int(record["width"])
    out = []
    for obj in record.get("annotations", []):
        if obj.get("iscrowd", 0):
            continue
        seg = obj.get("segmentation")
        if isinstance(seg, dict):
            rle = mask_util.frPyObjects(seg, h, w) if isinstance(seg.get("counts"), list) else seg
            out.append(float(mask_util.area(rle)))
        elif isinstance(seg, list) and seg:
            out.append(float(mask_util.area(mask_util.merge(mask_util.frPyObjects(seg, h, w)))))
        elif isinstance(seg, np.ndarray):
            out.append(float(np.count_nonzero(seg)))
    return [a for a in out if a > 0]


def training_size_stats(cfg, dataset_dicts: Sequence[Dict]) -> Dict:
    """``{"median_diameter_input", "median_diameter_image", "num_objects", ...}`` of a training
    set (Detectron2 dataset dicts with masks). ``median_diameter_input`` is None without masks."""
    d_img, d_in = [], []
    for rec in dataset_dicts:
        diams = [equivalent_diameter(a) for a in _areas(rec)]
        if not diams:
            continue
        scales = train_scales(cfg, int(rec["height"]), int(rec["width"]))
        d_img.extend(diams)
        d_in.extend(d * s for d in diams for s in scales)
    med = lambda v: float(np.median(v)) if v else None  # noqa: E731
    return {
        "median_diameter_input": med(d_in),
        "median_diameter_image": med(d_img),
        "num_objects": len(d_img),
        "num_images": len(dataset_dicts),
        "definition": "equivalent diameter sqrt(4*area/pi) in pixels; _input: at the network input "
                      "(after the training mapper's resize), median over objects and resize factors",
        "input": {"SQUARE_CROP_ON": bool(cfg.INPUT.SQUARE_CROP_ON), "TRAIN_SIZE": int(cfg.INPUT.TRAIN_SIZE),
                  "SQUARE_CROP_SCALES": [float(s) for s in cfg.INPUT.SQUARE_CROP_SCALES]},
    }


def write_size_stats(cfg) -> str:
    """Measure ``cfg.DATASETS.TRAIN`` and write ``OUTPUT_DIR/object_size.json`` (atomic; a new
    training run in the folder replaces it, as it replaces ``config.yaml``). Returns the path."""
    from detectron2.data import DatasetCatalog

    from objguided_d2.utils.io import write_json

    dicts = [d for name in cfg.DATASETS.TRAIN for d in DatasetCatalog.get(name)]
    stats = training_size_stats(cfg, dicts)
    stats["datasets"] = list(cfg.DATASETS.TRAIN)
    path = os.path.join(cfg.OUTPUT_DIR, SIZE_FILE)
    write_json(path, stats, overwrite=True)
    logger.info("Training object size: median equivalent diameter %s px at the network input (%s)",
                None if stats["median_diameter_input"] is None else round(stats["median_diameter_input"], 2), path)
    return path


def read_size_stats(folder: str) -> Dict:
    """``object_size.json`` of a model folder; ValueError naming the file when it is missing or
    has no usable ``median_diameter_input``."""
    import json

    path = os.path.join(folder, SIZE_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: not found; --diameter needs the object size that tools/train_net.py "
                         "records in the model folder when training starts (a model trained before it: retrain)")
    try:
        with open(path) as f:
            stats = json.load(f)
        d = float(stats["median_diameter_input"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: expected JSON with a number 'median_diameter_input' ({type(e).__name__}: {e})") from e
    if not (d > 0 and math.isfinite(d)):
        raise ValueError(f"{path}: median_diameter_input {d}: expected a positive number")
    stats["median_diameter_input"] = d
    return stats

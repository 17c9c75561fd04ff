"""Prediction for end users: images in; label images, object tables, COCO results and overlays
out. The library is :mod:`.pipeline` (``load_predictor``, ``segment_image``, ``predict_to_folder``);
the command line is :func:`objguided_d2.predict.cli.main` (``objguided-predict``,
``python -m objguided_d2.predict``)."""
from .inputs import InputPage, collect_inputs, iter_pages
from .pipeline import (
    LoadedModel, PredictOptions, PredictSummary, default_tiling, load_predictor, predict_to_folder, segment_image,
)
from .predictor import InstancePredictor, ModelError, load_predict_config, load_weights, resolve_model_dir
from .tiling import Detection, Tile, instances_to_detections, predict_tiled, stitch_tiles, tile_grid
from .writers import OutputExistsError, atomic_write, label_image, measure_objects

__all__ = [
    "LoadedModel", "PredictOptions", "PredictSummary", "default_tiling", "load_predictor", "predict_to_folder",
    "segment_image",
    "InputPage", "collect_inputs", "iter_pages",
    "InstancePredictor", "ModelError", "load_predict_config", "load_weights", "resolve_model_dir",
    "Detection", "Tile", "instances_to_detections", "predict_tiled", "stitch_tiles", "tile_grid",
    "OutputExistsError", "atomic_write", "label_image", "measure_objects",
]

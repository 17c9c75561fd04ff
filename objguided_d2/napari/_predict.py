"""The one door from the napari widgets to predict's code paths (``objguided_d2.predict.pipeline``)."""
from objguided_d2.predict.pipeline import (  # noqa: F401
    LoadedModel, ModelError, PredictOptions, PredictSummary, default_tiling, load_predictor, predict_to_folder,
    segment_image,
)

__all__ = [
    "ModelError", "LoadedModel", "load_predictor", "default_tiling", "segment_image",
    "PredictOptions", "PredictSummary", "predict_to_folder",
]

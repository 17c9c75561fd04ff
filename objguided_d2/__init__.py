"""objguided-d2: Object-Guided Instance Segmentation with Auxiliary Feature Refinement
(Yi et al., IEEE TMI 2021) as a Detectron2 plugin.

Importing this package registers every component (backbone, proposal generator, ROI heads,
meta-architecture, datasets, evaluators) in Detectron2's registries.
"""
from .config import add_objguided_config
from . import data  # noqa: F401  (registers datasets)
from . import modeling  # noqa: F401  (registers model components)
from . import evaluation  # noqa: F401

__version__ = "0.1.0"
__all__ = ["add_objguided_config"]

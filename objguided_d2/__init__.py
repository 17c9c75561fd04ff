"""objguided-d2: Object-Guided Instance Segmentation with Auxiliary Feature Refinement
(Yi et al., IEEE TMI 2021) as a Detectron2 plugin.

Importing this package registers every component (backbone, proposal generator, ROI heads,
meta-architecture, datasets, evaluators) in Detectron2's registries.
"""
import sys as _sys

# Loaded into a running napari (the plugin): torchvision imports triton through torch._dynamo, and
# triton's bundled LLVM segfaults a process whose OpenGL canvas already loaded Mesa's LLVM
# (llvmpipe, Xvfb, radeonsi). Prediction never uses triton; the training subprocess is unaffected.
if "napari" in _sys.modules and "triton" not in _sys.modules:
    _sys.modules["triton"] = None

# Before anything imports Detectron2: see _quiet.py (one dependency warning, at import only).
from ._quiet import import_quietly as _import_quietly

_import_quietly()

from .config import add_objguided_config  # noqa: E402
from . import data  # noqa: F401,E402  (registers datasets)
from . import modeling  # noqa: F401,E402  (registers model components)
from . import evaluation  # noqa: F401,E402

__version__ = "0.1.0"
__all__ = ["add_objguided_config"]

"""Import the two dependencies that call ``torch.jit.script`` at import time without the
``torch.jit.script is deprecated`` FutureWarning each of those calls prints (torch >= 2.10).

The calls are in fvcore's ``nn/focal_loss.py`` (imported by Detectron2) and Detectron2's
``modeling/box_regression.py``; a user can do nothing about them. Only that one message, only
while those two modules are first imported, is filtered: the same warning from any other code
(e.g. a user's own ``torch.jit.script``) and every other warning are shown as usual.
"""
import importlib
import warnings

_MODULES = ("fvcore.nn.focal_loss", "detectron2.modeling.box_regression")
_MESSAGE = r"`torch\.jit\.script` is deprecated"


def import_quietly() -> None:
    """Import :data:`_MODULES` with the deprecation warning above filtered (idempotent)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_MESSAGE, category=FutureWarning)
        for name in _MODULES:
            try:
                importlib.import_module(name)
            except ImportError:  # the package's own imports report a missing dependency
                pass

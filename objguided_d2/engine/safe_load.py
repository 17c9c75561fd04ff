"""Loading weight files without running code from them.

``torch.load(weights_only=True)`` reads tensors and plain containers (dict, list, tuple, str,
numbers) and refuses anything else, so a ``.pth`` file cannot execute code while it is read.
Python pickles (``.pkl``: Detectron2's model zoo, Caffe2 / Detectron1 weights) and ``.pth`` files
holding arbitrary Python objects need full unpickling, which can execute arbitrary code; they are
read only when the user says they trust the file (``--trust-pickle`` / ``MODEL.TRUST_PICKLE``).
"""
import logging
import pickle
from typing import Any
from urllib.parse import urlparse

import torch

__all__ = ["UntrustedFileError", "is_pickle_path", "require_trust", "safe_torch_load", "TRUST_HINT"]

logger = logging.getLogger(__name__)

TRUST_HINT = (
    "If you trust where this file comes from (e.g. Detectron2's model zoo, "
    "detectron2://ImageNetPretrained/MSRA/R-50.pkl), allow it by adding --trust-pickle to the "
    "tools/train_net.py command line, or MODEL.TRUST_PICKLE True to the config / command line."
)


class UntrustedFileError(RuntimeError):
    """A weight file needs full (code-executing) unpickling and pickles are not trusted."""


def is_pickle_path(path: str) -> bool:
    """Whether ``path`` (a file path or URL, query ignored) names a raw Python pickle (``.pkl``)."""
    return urlparse(str(path)).path.lower().endswith(".pkl")


def require_trust(path: str, trust_pickle: bool) -> None:
    """Raise :class:`UntrustedFileError` for a ``.pkl`` file unless ``trust_pickle``."""
    if is_pickle_path(path) and not trust_pickle:
        raise UntrustedFileError(
            f"{path}: .pkl weights are Python pickles, and loading a pickle can execute arbitrary "
            f"code, so it is refused by default. {TRUST_HINT}"
        )


def safe_torch_load(path: str, *, trust_pickle: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU.

    A file that holds more than tensors and plain containers is loaded with full unpickling only
    when ``trust_pickle`` (with a warning); otherwise :class:`UntrustedFileError` says why and how
    to allow it.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise UntrustedFileError(
                f"{path}: cannot be read with torch.load(weights_only=True): it holds Python objects "
                f"besides tensors and plain containers, and unpickling them can execute arbitrary "
                f"code. {TRUST_HINT} (torch said: {str(e).splitlines()[0]})"
            ) from e
    logger.warning("%s: loading with full unpickling (trusted by --trust-pickle / MODEL.TRUST_PICKLE)", path)
    return torch.load(path, map_location="cpu", weights_only=False)

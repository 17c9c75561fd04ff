"""Loading weight files without running code from them.

``torch.load(weights_only=True)`` reads tensors and plain containers (dict, list, tuple, str,
numbers) and refuses anything else, so a ``.pth`` file cannot execute code while it is read.
Python pickles (``.pkl``: Detectron2's model zoo, Caffe2 / Detectron1 weights) and ``.pth`` files
holding arbitrary Python objects need full unpickling, which can execute arbitrary code; they are
read only when the user says they trust the file (``--trust-pickle`` / ``MODEL.TRUST_PICKLE``).
Every tool loads weights through :class:`~objguided_d2.engine.checkpoint.ObjGuidedCheckpointer`,
which uses these functions, so the rule and the message are the same everywhere.
"""
import logging
import pickle
from typing import Any
from urllib.parse import urlparse

import torch

__all__ = ["UntrustedFileError", "is_pickle_path", "require_trust", "safe_torch_load", "TRUST_HINT"]

logger = logging.getLogger(__name__)

# The one hint every tool gives (train_net, predict, compare and its worker, the diagnostics).
TRUST_HINT = (
    "If you trust where this file comes from (e.g. Detectron2's model zoo, "
    "detectron2://ImageNetPretrained/MSRA/R-50.pkl), allow it by adding --trust-pickle to the "
    "command line (tools/train_net.py, tools/predict.py, benchmarks/*.py), or MODEL.TRUST_PICKLE True "
    "to the config / its opts (tools/train_net.py, tools/compare.py --opts)."
)


class UntrustedFileError(RuntimeError):
    """A file a user was handed is refused because reading it could run code (weights that need
    full unpickling while pickles are not trusted) or would reach outside its folder (a
    ``last_checkpoint`` tag naming ``../x.pth``). The message names the file."""


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

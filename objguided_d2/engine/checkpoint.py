"""Checkpoints that survive killed runs and never run code from untrusted files.

:class:`ObjGuidedCheckpointer` is Detectron2's ``DetectionCheckpointer`` with four changes:

* **atomic writes** -- a checkpoint and the ``last_checkpoint`` tag are written to a temporary
  file in the same folder, flushed, fsync'ed and moved into place with ``os.replace``; a run
  killed while saving leaves the previous checkpoint and tag intact (and a ``.*.partial`` file
  that is removed on the next ``resume_or_load``);
* **only complete checkpoints are resumed** -- a tag naming a missing or truncated file (e.g.
  written by plain Detectron2 before a crash) falls back to the newest complete ``model_*.pth``;
* **no NaN checkpoints** -- saving refuses (``FloatingPointError`` naming the parameter) when a
  model parameter or buffer is not finite, and refuses anything that would not load with
  ``torch.load(weights_only=True)``;
* **untrusted files** -- weights load with ``weights_only=True``; ``.pkl`` pickles and ``.pth``
  files that need full unpickling are read only with ``trust_pickle=True``; a ``last_checkpoint``
  tag naming a file outside its folder is refused (:func:`tagged_checkpoint`).

It is the one weight loader of the package: training, ``--eval-only``, prediction, the comparison
worker and the diagnostics all load through it (prediction with ``save_to_disk=False`` and
``log_incompatible=False``, reading :attr:`incompatible` itself).

:func:`check_output_dir` keeps a fresh training run from silently overwriting a previous one.
"""
import logging
import os
import re
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Optional

import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer

from objguided_d2.utils.io import PARTIAL_SUFFIX, atomic_write, path_inside, remove_partial_files

from .safe_load import UntrustedFileError, require_trust, safe_torch_load

__all__ = [
    "ObjGuidedCheckpointer",
    "atomic_write",
    "atomic_torch_save",
    "check_finite_state_dict",
    "check_output_dir",
    "is_complete_checkpoint",
    "remove_partial_files",
    "tagged_checkpoint",
    "to_plain",
    "PARTIAL_SUFFIX",
]

logger = logging.getLogger(__name__)

TAG_FILE = "last_checkpoint"
_MODEL_RE = re.compile(r"^model_.*\.pth$")


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through :func:`~objguided_d2.utils.io.atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f), mode="wb", overwrite=True)


def tagged_checkpoint(folder: str) -> str:
    """The checkpoint named by ``folder/last_checkpoint`` ("" without a tag or with an empty one).

    Raises:
        UntrustedFileError: the tag names a file outside ``folder`` (``../x.pth``, an absolute
            path): a tag only ever names a file next to it.
    """
    tag = os.path.join(folder, TAG_FILE)
    try:
        with open(tag) as f:
            name = f.read().strip()
    except OSError:
        return ""
    if not name:
        return ""
    path = path_inside(folder, name)
    if path is None or os.path.dirname(path) != os.path.abspath(folder):
        raise UntrustedFileError(
            f"{tag}: names {name!r}, which is not a file in {folder}; a last_checkpoint tag names a "
            "checkpoint next to it (e.g. model_final.pth), so it is refused"
        )
    return path


def is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` is a non-empty file and, if it is a zip (``torch.save``'s format), one with
    its central directory (which is written last, so a truncated file lacks it)."""
    try:
        if os.path.getsize(path) == 0:
            return False
        with open(path, "rb") as f:
            is_zip_header = f.read(2) == b"PK"
    except OSError:
        return False
    return zipfile.is_zipfile(path) if is_zip_header else True


def check_finite_state_dict(state_dict: Dict[str, Any], where: str = "checkpoint") -> None:
    """Raise ``FloatingPointError`` naming the first floating-point tensor with NaN / Inf values."""
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                kind = "NaN" if bool(torch.isnan(value).any()) else "Inf"
                raise FloatingPointError(
                    f"refusing to write {where}: model parameter/buffer '{name}' has {bad} non-finite "
                    f"value(s) ({kind}); the previous checkpoint is kept"
                )


def to_plain(obj: Any, key: str = "") -> Any:
    """Return ``obj`` with numpy arrays / scalars turned into tensors / Python numbers, so that it
    loads with ``torch.load(weights_only=True)``; raise ``TypeError`` naming the entry for any other
    kind of object (it would need unpickling to be read back)."""
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, (torch.dtype, torch.device, torch.Size)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = OrderedDict() if isinstance(obj, OrderedDict) else {}
        for k, v in obj.items():
            out[k] = to_plain(v, f"{key}/{k}")
        if isinstance(out, OrderedDict) and hasattr(obj, "_metadata"):  # state_dict's module versions
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)) and type(obj) in (list, tuple):
        return type(obj)(to_plain(v, f"{key}[{i}]") for i, v in enumerate(obj))
    raise TypeError(
        f"checkpoint entry '{key or '/'}' is a {type(obj).__module__}.{type(obj).__qualname__}: only "
        "tensors, numbers, strings and dict/list/tuple are saved, so the file can be read back with "
        "torch.load(weights_only=True)"
    )


def check_output_dir(output_dir: str, *, resume: bool, overwrite: bool) -> None:
    """Refuse to train from scratch into ``output_dir`` when it already holds a run.

    Detectron2 would start over and overwrite ``model_final.pth`` and the periodic checkpoints.
    With ``resume`` nothing is checked (the run is continued); with ``overwrite`` the old
    ``last_checkpoint`` tag is removed so a later ``--resume`` cannot mix the two runs, and the old
    checkpoints are overwritten as the new run writes its own.
    """
    if resume or not output_dir or not os.path.isdir(output_dir):
        return
    names = sorted(os.listdir(output_dir))
    found = [n for n in names if n == TAG_FILE or _MODEL_RE.match(n)]
    if not found:
        return
    if not overwrite:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        raise FileExistsError(
            f"OUTPUT_DIR {output_dir} already holds a training run ({shown}); training from scratch "
            "would overwrite it. Pass --resume to continue that run, --overwrite to start over in the "
            "same folder, or choose another OUTPUT_DIR."
        )
    tag = os.path.join(output_dir, TAG_FILE)
    if os.path.isfile(tag):
        os.unlink(tag)
    logger.warning("--overwrite: starting a new run in %s; its old checkpoints will be overwritten", output_dir)


class ObjGuidedCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with atomic saves, finite-only checkpoints, resuming from complete
    checkpoints only, and ``weights_only`` loading (see the module docstring).

    Args:
        model, save_dir, save_to_disk, checkpointables: as ``DetectionCheckpointer``.
        trust_pickle: allow ``.pkl`` files and ``.pth`` files that need full unpickling (these can
            execute code when loaded). Config: ``MODEL.TRUST_PICKLE``; CLI: ``--trust-pickle``.
    """

    def __init__(self, model, save_dir: str = "", *, trust_pickle: bool = False,
                 save_to_disk: Optional[bool] = None, log_incompatible: bool = True, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.trust_pickle = bool(trust_pickle)
        self.log_incompatible = log_incompatible
        self.incompatible = None  # the last load's missing / unexpected / mis-shaped keys

    # ----------------------------------------------------------------------------- saving
    def _local(self) -> bool:
        # Atomic writes need a local folder; remote PathManager URLs keep fvcore's writer.
        return "://" not in str(self.save_dir)

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name {name!r} must be a plain file name")
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        check_finite_state_dict(data["model"], where=save_file)
        data = to_plain(data)
        if not self._local():
            return super().save(name, **kwargs)
        os.makedirs(self.save_dir, exist_ok=True)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self._local():
            return super().tag_last_checkpoint(last_filename_basename)
        atomic_write(os.path.join(self.save_dir, TAG_FILE), lambda f: f.write(last_filename_basename.encode()),
                     mode="wb", overwrite=True)

    # ---------------------------------------------------------------------------- resuming
    def _newest_complete(self) -> str:
        if not self._local() or not os.path.isdir(self.save_dir):
            return ""
        paths = [os.path.join(self.save_dir, n) for n in os.listdir(self.save_dir) if _MODEL_RE.match(n)]
        paths.sort(key=lambda p: os.path.getmtime(p), reverse=True)
        return next((p for p in paths if is_complete_checkpoint(p)), "")

    def get_checkpoint_file(self) -> str:
        """The file named by ``last_checkpoint`` if it is complete; else the newest complete
        ``model_*.pth`` in ``save_dir`` (with a warning); else ``""``."""
        if not self._local():
            return super().get_checkpoint_file()
        path = tagged_checkpoint(self.save_dir)
        tagged = bool(path)
        if tagged and is_complete_checkpoint(path):
            return path
        fallback = self._newest_complete()
        if tagged or fallback:
            self.logger.warning(
                "%s: %s; resuming from %s instead",
                os.path.join(self.save_dir, TAG_FILE),
                f"names {path}, which is missing or incomplete" if tagged else "missing",
                fallback or "nothing (no complete model_*.pth)",
            )
        return fallback

    def has_checkpoint(self) -> bool:
        """Whether a complete checkpoint exists to resume from."""
        if not self._local():
            return super().has_checkpoint()
        return bool(self.get_checkpoint_file())

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        if self.save_to_disk and self.save_dir and self._local():
            for p in remove_partial_files(self.save_dir):
                self.logger.warning("Removed %s, left by a run killed while writing a checkpoint", p)
        return super().resume_or_load(path, resume=resume)

    # ----------------------------------------------------------------------------- loading
    def load(self, path: str, *args, **kwargs) -> Dict[str, Any]:
        # Refuse pickles before a URL is downloaded.
        if path:
            require_trust(path, self.trust_pickle)
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        require_trust(filename, self.trust_pickle)
        return super()._load_file(filename)

    def _torch_load(self, f: str) -> Dict[str, Any]:
        return safe_torch_load(f, trust_pickle=self.trust_pickle)

    def _load_model(self, checkpoint: Any):
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        if self.log_incompatible:
            super()._log_incompatible_keys(incompatible)

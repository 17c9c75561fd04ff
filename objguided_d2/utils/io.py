"""The one way out for files, and the one containment rule for names read from files.

* :func:`atomic_write`: every file the package writes goes to a temporary file with a unique name
  in the target's folder (``.<name>.<8 random chars>.partial``, plus the target's extension when
  the writer needs a file name), is flushed, fsync'ed and renamed over the target with
  ``os.replace``. Readers see the old file or the complete new one; two processes writing the same
  target never share a temporary file; on any error the temporary file is removed.
* :func:`write_json`: strict JSON (NaN / Inf become ``null``, see :func:`json_sanitize`) through
  :func:`atomic_write`.
* :func:`path_inside`: a relative name taken from a file (a ``last_checkpoint`` tag, a COCO
  ``file_name``, a split-file entry) resolved inside its folder, or ``None`` when it would leave it.
"""
import contextlib
import json
import math
import os
import re
import tempfile
from typing import Any, Callable, List, Optional

__all__ = [
    "OutputExistsError",
    "PARTIAL_SUFFIX",
    "atomic_write",
    "json_sanitize",
    "path_inside",
    "remove_partial_files",
    "write_json",
]

PARTIAL_SUFFIX = ".partial"
_PARTIAL_RE = re.compile(r"^\..+\.[A-Za-z0-9_]{8}" + re.escape(PARTIAL_SUFFIX) + r"(\.[A-Za-z0-9]+)?$")


class OutputExistsError(FileExistsError):
    """An output file exists and overwriting was not allowed."""


def _fsync(f) -> None:
    """fsync an open file (module-level so tests can stall a write here, mid-write)."""
    os.fsync(f.fileno())


def _fsync_dir(path: str) -> None:
    # Makes the rename itself durable; not possible on every OS / file system, so best effort.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exists_error(path: str) -> OutputExistsError:
    return OutputExistsError(f"{path}: output file exists (pass --overwrite to replace it)")


def atomic_write(path: str, write: Callable[[Any], None], *, mode: Optional[str] = None,
                 overwrite: bool = False) -> None:
    """Write ``path`` atomically (module docstring).

    Args:
        write: with ``mode`` None, ``write(tmp_path)`` writes the temporary file by name (it ends
            with ``path``'s extension, for writers that choose the format from it: tifffile, cv2,
            numpy); with ``mode`` ``"wb"`` or ``"w"``, ``write(f)`` fills the open temporary file.
        overwrite: replace an existing ``path``; False (the default: nothing a user has is
            replaced unasked) refuses it, checked before writing and again before the rename.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False (nothing is written).
    """
    path = os.fspath(path)
    if not overwrite and os.path.exists(path):
        raise _exists_error(path)
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    ext = os.path.splitext(name)[1] if mode is None else ""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=PARTIAL_SUFFIX + ext, dir=folder)
    os.close(fd)
    try:
        if mode is None:
            write(tmp)
            with open(tmp, "rb+") as f:
                _fsync(f)
        else:
            with open(tmp, mode) as f:
                write(f)
                f.flush()
                _fsync(f)
        if not overwrite and os.path.exists(path):  # appeared while we were writing
            raise _exists_error(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def remove_partial_files(folder: str) -> List[str]:
    """Delete the temporary files :func:`atomic_write` leaves behind when a process is killed
    mid-write. Returns the removed paths. Other files are never touched."""
    removed = []
    if not os.path.isdir(folder):
        return removed
    for name in sorted(os.listdir(folder)):
        p = os.path.join(folder, name)
        if _PARTIAL_RE.match(name) and os.path.isfile(p):
            with contextlib.suppress(OSError):
                os.unlink(p)
                removed.append(p)
    return removed


def json_sanitize(x: Any) -> Any:
    """Strict-JSON form of ``x``: NaN / Inf -> None (``null``), tuples -> lists, dict keys -> str,
    numpy / torch scalars -> Python numbers, numpy arrays -> lists."""
    if isinstance(x, dict):
        return {str(k): json_sanitize(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_sanitize(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        x = x.tolist()  # numpy arrays and scalars, torch tensors
        if isinstance(x, list):
            return json_sanitize(x)
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    return x


def write_json(path: str, obj: Any, *, overwrite: bool = False, indent: Optional[int] = None,
               sort_keys: bool = False, compact: bool = False) -> None:
    """``obj`` as strict JSON (:func:`json_sanitize`) to ``path`` through :func:`atomic_write`;
    the folder is created if missing. ``compact``: no spaces after separators."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = json_sanitize(obj)
    separators = (",", ":") if compact else None
    atomic_write(path, lambda f: json.dump(data, f, indent=indent, sort_keys=sort_keys, separators=separators,
                                           allow_nan=False), mode="w", overwrite=overwrite)


def path_inside(root: str, name: str) -> Optional[str]:
    """``name`` (relative to ``root``, or absolute) as an absolute path if it lies inside
    ``root``, else None (``../x``, ``/etc/x``). Lexical: symbolic links inside ``root`` are the
    folder owner's choice and are not followed here."""
    root = os.path.abspath(root)
    p = os.path.normpath(os.path.join(root, name))
    return p if p == root or p.startswith(root.rstrip(os.sep) + os.sep) else None

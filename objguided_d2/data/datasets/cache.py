"""The cache of converted and generated datasets, and its one write transaction.

A cache entry is a folder holding the dataset's files and a ``manifest.json`` describing how it
was made. Entries are only ever published whole: :func:`cache_transaction` gives a temporary
sibling folder to write into and moves it into place in one ``rename``, so concurrent processes
(several trainings starting together) never read a half-written dataset, and a failure midway
leaves neither a published entry nor a temporary folder behind.
"""
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional

__all__ = [
    "CONVERTER_VERSION",
    "ConvertedDataset",
    "cache_root",
    "cache_transaction",
    "converted_dir",
    "fingerprint",
    "read_manifest",
]

MANIFEST = "manifest.json"
# Bump when the conversion's output changes, so cached JSONs are rebuilt.
CONVERTER_VERSION = 1


@dataclass
class ConvertedDataset:
    """Result of a conversion: COCO json per split, the image root and the class names."""

    json_files: Dict[str, str]
    image_root: str
    class_names: List[str]


def cache_root() -> str:
    """``$OBJGUIDED_CACHE`` if set, else ``~/.cache/objguided_d2``."""
    return os.path.abspath(os.path.expanduser(os.environ.get("OBJGUIDED_CACHE") or "~/.cache/objguided_d2"))


def fingerprint(path: str, payload: dict) -> str:
    """Hash of the source path, every file's relative path/size/mtime, and the options."""
    h = hashlib.sha1(json.dumps(payload, sort_keys=True).encode())
    h.update(os.path.abspath(path).encode())
    if os.path.isfile(path):
        st = os.stat(path)
        h.update(f"|{st.st_size}|{st.st_mtime_ns}".encode())
    else:
        for d, dirs, files in os.walk(path):
            dirs.sort()
            for f in sorted(files):
                p = os.path.join(d, f)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                h.update(f"|{os.path.relpath(p, path)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def converted_dir(kind: str, path: str, payload: dict, root: Optional[str] = None) -> str:
    """``<cache>/converted/<kind>-<source name>-<fingerprint>``: one folder per source and options."""
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(os.path.abspath(path)))
    return os.path.join(root or cache_root(), "converted", f"{kind}-{base}-{fingerprint(path, payload)}")


def read_manifest(folder: str) -> Optional[dict]:
    """The manifest of a published entry, or None if ``folder`` holds none (or a broken one)."""
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


@contextmanager
def cache_transaction(
    out_dir: str,
    manifest: dict,
    *,
    ready: Optional[Callable[[str], bool]] = None,
    drop_stale: bool = False,
) -> Iterator[str]:
    """Yield a temporary folder to write an entry into; publish it as ``out_dir`` on success.

    On a normal exit the manifest is written and the folder renamed to ``out_dir``. If
    ``out_dir`` already exists, it is kept when ``ready(out_dir)`` (another process published the
    same entry first; default: its manifest equals ``manifest``) and replaced otherwise. On any
    exception the temporary folder is removed and nothing is published. ``drop_stale`` removes
    older entries of the same source and options (``<kind>-<name>-*`` siblings of ``out_dir``
    whose manifest has the same ``source`` and ``options``): their data have changed since.
    """
    ready = ready or (lambda d: read_manifest(d) == manifest)
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    # A hidden sibling: same file system (atomic rename), ignored by readers of the parent.
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out_dir)}.tmp-")
    try:
        yield tmp
        with open(os.path.join(tmp, MANIFEST), "w") as f:
            json.dump(manifest, f, sort_keys=True)
        _publish(tmp, out_dir, ready)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if drop_stale:
        _drop_stale(out_dir, manifest)


def _publish(tmp: str, out_dir: str, ready: Callable[[str], bool]) -> None:
    if os.path.isdir(out_dir):
        if ready(out_dir):  # a concurrent process published the same entry first
            shutil.rmtree(tmp)
            return
        shutil.rmtree(out_dir)  # an entry made with other parameters, or a broken one
    try:
        os.rename(tmp, out_dir)
    except OSError:  # lost a race between the check above and the rename
        if not ready(out_dir):
            raise
        shutil.rmtree(tmp)


def _drop_stale(out_dir: str, manifest: dict) -> None:
    prefix = os.path.basename(out_dir).rsplit("-", 1)[0] + "-"
    parent = os.path.dirname(out_dir)
    for d in os.listdir(parent):
        full = os.path.join(parent, d)
        if d.startswith(prefix) and full != out_dir and not d.startswith("."):
            m = read_manifest(full)
            if m is not None and m.get("source") == manifest["source"] and m.get("options") == manifest["options"]:
                shutil.rmtree(full, ignore_errors=True)

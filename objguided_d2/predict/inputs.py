"""Collect input image files and read them page by page for prediction.

An input argument is a file, a folder (its image files; ``recursive`` to descend) or a glob
pattern. Every problem is reported as a :class:`~objguided_d2.data.io.DataError` whose message
names the file, so the command line can list failures and go on with the other inputs.
"""
import glob
import os
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

import numpy as np

from objguided_d2.data.io import IMAGE_EXTENSIONS, DataError, read_image_pages, to_bgr_uint8

__all__ = ["InputPage", "collect_inputs", "check_complete", "iter_pages"]

_GLOB_CHARS = set("*?[")


@dataclass
class InputPage:
    """One image to predict: a file, or one page of a multi-page TIFF.

    Attributes:
        path: the file it was read from.
        page: page index in that file (0 for single-page files).
        num_pages: number of pages of the file.
        name: output name stem, ``<stem>`` or ``<stem>_p<page>`` for multi-page stacks.
        image: (H, W, 3) uint8 BGR, normalised like the training data (:func:`to_bgr_uint8`).
    """

    path: str
    page: int
    num_pages: int
    name: str
    image: np.ndarray


def collect_inputs(args: Sequence[str], recursive: bool = False) -> Tuple[List[str], List[str]]:
    """Expand files, folders and glob patterns into a sorted, de-duplicated file list.

    Files named explicitly are kept whatever their extension (an unknown one fails when read,
    with a clear message); files found in folders or by patterns are kept only if their
    extension is one of :data:`IMAGE_EXTENSIONS`.

    Returns:
        (files, errors): files to read, and one message per argument that matched nothing.
    """
    files: List[str] = []
    errors: List[str] = []
    for arg in args:
        if os.path.isdir(arg):
            pattern = os.path.join(arg, "**", "*") if recursive else os.path.join(arg, "*")
            found = [f for f in glob.glob(pattern, recursive=recursive) if _is_image_file(f)]
            if not found:
                errors.append(
                    f"{arg}: folder holds no image files {IMAGE_EXTENSIONS}"
                    + ("" if recursive else " (use --recursive to search sub-folders)")
                )
            files.extend(found)
        elif os.path.exists(arg):
            files.append(arg)
        elif _GLOB_CHARS & set(arg):
            found = [f for f in glob.glob(arg, recursive=True) if _is_image_file(f)]
            if not found:
                errors.append(f"{arg}: pattern matches no image file")
            files.extend(found)
        else:
            errors.append(f"{arg}: no such file or folder")
    seen = set()
    unique = []
    for f in sorted(files):
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, errors


def _is_image_file(path: str) -> bool:
    return os.path.isfile(path) and os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def check_complete(path: str) -> None:
    """Raise DataError if a JPEG file is truncated.

    OpenCV decodes a truncated JPEG into a partly grey image with only a warning; a complete
    JPEG has an end-of-image marker (FF D9) after its last start-of-scan marker (FF DA). Entropy
    coded data cannot contain either (0xFF is byte-stuffed), so the test is exact. PNG and TIFF
    readers already fail on truncated files.
    """
    if os.path.splitext(path)[1].lower() not in (".jpg", ".jpeg"):
        return
    with open(path, "rb") as f:
        data = f.read()
    sos = data.rfind(b"\xff\xda")
    if sos < 0 or data.find(b"\xff\xd9", sos) < 0:
        raise DataError(f"{path}: JPEG file is truncated (no end-of-image marker after the last scan)")


def read_pages(path: str) -> List[np.ndarray]:
    """All pages of ``path`` as (H, W, 3) uint8 BGR; raises DataError naming the file."""
    check_complete(path)
    pages = read_image_pages(path)
    out = []
    for k, p in enumerate(pages):
        try:
            out.append(to_bgr_uint8(p))
        except DataError as e:
            where = f" page {k}" if len(pages) > 1 else ""
            raise DataError(f"{path}{where}: {e}") from None
    return out


def iter_pages(path: str) -> Iterator[InputPage]:
    """Yield the pages of one file as :class:`InputPage` (names ``<stem>`` / ``<stem>_p<k>``)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    pages = read_pages(path)
    for k, img in enumerate(pages):
        name = stem if len(pages) == 1 else f"{stem}_p{k}"
        yield InputPage(path=path, page=k, num_pages=len(pages), name=name, image=img)

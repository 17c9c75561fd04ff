"""Reading microscopy / plant images and instance label maps from disk.

Every reader raises :class:`DataError` naming the file and what was expected, never a deep
numpy/cv2 error. Images come back as (H, W, 3) uint8 BGR (Detectron2's default input format);
label maps as (H, W) int64 with 0 = background.
"""
import os
from typing import List

import cv2
import numpy as np

__all__ = [
    "DataError",
    "IMAGE_EXTENSIONS",
    "read_image",
    "read_image_pages",
    "to_bgr_uint8",
    "read_label_map",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class DataError(ValueError):
    """A data file is missing, unreadable or inconsistent. The message names the file."""


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    ext = os.path.splitext(path)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        raise DataError(f"{path}: unknown image extension {ext!r}; expected one of {IMAGE_EXTENSIONS}")


def _check_jpeg_complete(path: str) -> None:
    """cv2 decodes a truncated JPEG "successfully" (the missing part grey, a warning on stderr);
    PIL's full decode notices the missing data, so a cut-off file is an error, not a grey image."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            # A huge (whole-slide) JPEG is legitimate here: cv2 already decoded it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
    except Image.DecompressionBombError:
        return  # too large for PIL's guard; cv2's own decode is all we have
    except OSError as e:
        raise DataError(f"{path}: truncated or corrupt JPEG ({e})") from e


def read_image_pages(path: str) -> List[np.ndarray]:
    """Read every page of an image file without changing its dtype.

    Returns a list of arrays (H, W) or (H, W, C), C in {3, 4}; colour pages are RGB(A) order.
    A multi-page TIFF gives one array per page; other formats give one array.
    """
    _check_file(path)
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                if len(tif.series) == 0:
                    raise DataError(f"{path}: TIFF holds no image")
                arr = tif.series[0].asarray()
            # (Z, H, W) or (Z, H, W, C) stacks -> one image per page; (H, W, C) with C <= 4 is colour.
            if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
                pages = [arr]
            elif arr.ndim == 3:
                pages = list(arr)
            elif arr.ndim == 4 and arr.shape[-1] in (3, 4):
                pages = list(arr)
            else:
                raise DataError(f"{path}: unsupported TIFF shape {arr.shape}; expected (H,W), (H,W,C) or a stack")
        else:
            arr = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            if arr is None:
                raise DataError(f"{path}: cannot decode image (corrupt or truncated file?)")
            if ext in (".jpg", ".jpeg"):
                _check_jpeg_complete(path)
            if arr.ndim == 3 and arr.shape[2] == 3:
                arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
            elif arr.ndim == 3 and arr.shape[2] == 4:
                arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
            pages = [arr]
    except DataError:
        raise
    except Exception as e:  # tifffile / cv2 raise many types on truncated files
        raise DataError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
    for p in pages:
        if p.size == 0 or min(p.shape[:2]) == 0:
            raise DataError(f"{path}: image has zero size {p.shape}")
    return pages


def to_bgr_uint8(arr: np.ndarray) -> np.ndarray:
    """Convert one page (H, W) / (H, W, 1|3|4) of any dtype to (H, W, 3) uint8 BGR.

    8-bit data is kept as is. Other integer and float data are linearly rescaled from their
    0.1st..99.9th percentile to 0..255 (a 16-bit microscope image that uses 0..4095 is stretched,
    never clipped at 255). The same function is used for training, evaluation and prediction.
    """
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]  # drop alpha
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise DataError(f"unsupported image shape {arr.shape}; expected (H,W) or (H,W,1|3|4)")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype != np.uint8:
        a = arr.astype(np.float32)
        finite = np.isfinite(a)
        if not finite.all():
            a = np.where(finite, a, 0.0)
        lo, hi = np.percentile(a, [0.1, 99.9]) if a.size else (0.0, 1.0)
        if hi <= lo:
            lo, hi = float(a.min()), float(a.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        arr = np.clip((a - lo) * scale, 0, 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    else:
        arr = arr[:, :, ::-1]  # RGB -> BGR
    return np.ascontiguousarray(arr)


def read_image(path: str) -> np.ndarray:
    """Read the first page of an image file as (H, W, 3) uint8 BGR (see :func:`to_bgr_uint8`)."""
    pages = read_image_pages(path)
    try:
        return to_bgr_uint8(pages[0])
    except DataError as e:
        raise DataError(f"{path}: {e}") from None


def read_label_map(path: str) -> np.ndarray:
    """Read an instance label map (0 = background, one positive integer id per object).

    Accepts 8/16/32-bit integer PNG/TIFF, and float files whose values are all integers.
    Returns (H, W) int64. Raises DataError for colour images (use the CVPPP colour decoder),
    non-integer values or negative ids.
    """
    pages = read_image_pages(path)
    lab = pages[0]
    if lab.ndim == 3:
        if lab.shape[2] in (3, 4) and np.all(lab[..., :3] == lab[..., :1]):
            lab = lab[..., 0]
        else:
            raise DataError(
                f"{path}: label map is a colour image {lab.shape}; expected a single-channel "
                "integer image with one id per object (colour-coded labels: use the 'cvppp' format)"
            )
    if np.issubdtype(lab.dtype, np.floating):
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise DataError(f"{path}: label map has non-integer values; expected integer object ids")
    elif not (np.issubdtype(lab.dtype, np.integer) or lab.dtype == np.bool_):
        raise DataError(f"{path}: label map dtype {lab.dtype} is not an integer type")
    lab = lab.astype(np.int64)
    if lab.min() < 0:
        raise DataError(f"{path}: label map has negative ids (min {lab.min()}); expected 0 = background and positive ids")
    return lab

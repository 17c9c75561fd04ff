"""Reading microscopy / plant images and instance label maps from disk.

Every reader raises :class:`DataError` naming the file and what was expected, never a deep
numpy/cv2 error. Images come back as (H, W, 3) uint8 BGR (Detectron2's default input format);
label maps as (H, W) int64 with 0 = background.

Size limit: a file whose header claims more than :func:`max_image_pixels` pixels (all planes of
a TIFF stack together; default 2**30 = 1,073,741,824, e.g. 32768 x 32768) is refused before
anything is decoded, so a few-byte file cannot make a reader allocate gigabytes. Raise it with
the environment variable ``OBJGUIDED_MAX_IMAGE_PIXELS`` (``0``: no limit). PNG / JPEG / BMP files
beyond 2**30 px also need OpenCV's own ``OPENCV_IO_MAX_IMAGE_PIXELS``.
"""
import os
from typing import List

import cv2
import numpy as np

__all__ = [
    "DataError",
    "IMAGE_EXTENSIONS",
    "check_same_size",
    "is_image_name",
    "require_dir",
    "MAX_IMAGE_PIXELS_ENV",
    "max_image_pixels",
    "read_image",
    "read_image_pages",
    "to_bgr_uint8",
    "read_label_map",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MAX_IMAGE_PIXELS_ENV = "OBJGUIDED_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 2**30  # OpenCV's own default limit (CV_IO_MAX_IMAGE_PIXELS)


class DataError(ValueError):
    """A data file is missing, unreadable or inconsistent. The message names the file."""


def is_image_name(name: str) -> bool:
    """True for a visible file name with an image extension (folder scanners skip the rest)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise DataError(f"{path}: {what} folder not found")


def check_same_size(img_path: str, image: np.ndarray, other_path: str, other: np.ndarray) -> None:
    """A label or mask must cover its image pixel for pixel."""
    if image.shape[:2] != other.shape[:2]:
        raise DataError(
            f"{other_path}: size {other.shape[1]}x{other.shape[0]} (WxH) differs from its image "
            f"{img_path} ({image.shape[1]}x{image.shape[0]})"
        )


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    ext = os.path.splitext(path)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        raise DataError(f"{path}: unknown image extension {ext!r}; expected one of {IMAGE_EXTENSIONS}")


def max_image_pixels() -> int:
    """The pixel limit of one image file (module docstring); 0 means no limit."""
    raw = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_IMAGE_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        value = -1
    if value < 0:
        raise DataError(f"{MAX_IMAGE_PIXELS_ENV}={raw!r}: expected a whole number of pixels (0: no limit)")
    return value


def _check_pixels(path: str, width: int, height: int, planes: int = 1) -> None:
    limit = max_image_pixels()
    n = int(width) * int(height) * int(planes)
    if limit and n > limit:
        stack = f" x {planes} planes" if planes > 1 else ""
        raise DataError(
            f"{path}: image header claims {width}x{height} px{stack} ({n:,} pixels), more than the limit of "
            f"{limit:,}; refused before decoding (set {MAX_IMAGE_PIXELS_ENV} to raise the limit)"
        )


def _check_header_size(path: str) -> None:
    """Refuse a PNG / JPEG / BMP / TIFF whose header claims too many pixels, reading only the
    header (the file's content decides its format, as for OpenCV, not its extension)."""
    from PIL import BmpImagePlugin, JpegImagePlugin, PngImagePlugin

    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            _check_tiff_size(path, tif)
        return
    signatures = ((b"\x89PNG\r\n\x1a\n", PngImagePlugin.PngImageFile), (b"\xff\xd8\xff", JpegImagePlugin.JpegImageFile),
                  (b"BM", BmpImagePlugin.BmpImageFile))
    factory = next((cls for sig, cls in signatures if head.startswith(sig)), None)
    if factory is None:
        return  # another format OpenCV knows: its own limit (OPENCV_IO_MAX_IMAGE_PIXELS) applies
    try:
        # The plugin class parses the header only (no decoding, and not Image.open's bomb check).
        with factory(path) as im:
            width, height = im.size
    except Exception:  # noqa: BLE001  (a corrupt header: the decoder below reports it)
        return
    _check_pixels(path, width, height)


def _check_tiff_size(path: str, tif) -> None:
    if len(tif.series) == 0:
        return
    s = tif.series[0]
    axes, shape = s.axes, s.shape
    if "Y" not in axes or "X" not in axes:
        return
    height, width = shape[axes.index("Y")], shape[axes.index("X")]
    planes = 1
    for a, n in zip(axes, shape):
        if a not in "YXS":
            planes *= int(n)
    _check_pixels(path, width, height, planes)


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
                _check_tiff_size(path, tif)
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
            _check_header_size(path)
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

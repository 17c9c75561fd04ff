"""Folder datasets (``labelfolder``, ``dsb2018``, ``cvppp``) -> cached, split COCO JSON.

Each format module says how to find its samples (``scan``) and how to read one sample's objects
(``annotations``); this module does the rest once for all of them: splits, the cache, the JSON.

Rules shared by all formats: an id made of several disconnected blobs is ONE object; ids need not
be contiguous; an image without any object is a valid sample (an image entry, no annotation).
Bad data raise :class:`~objguided_d2.data.io.DataError` naming the file.
"""
import logging
import os
from typing import Optional, Tuple

from objguided_d2.utils.io import write_json

from ..io import read_image, require_dir
from . import cvppp, dsb2018, labelfolder
from .cache import CONVERTER_VERSION, ConvertedDataset, cache_transaction, converted_dir, fingerprint, read_manifest
from .coco import make_coco_dict
from .splits import SPLITS, resolve_splits

__all__ = ["REAL_FORMATS", "convert_to_coco"]

logger = logging.getLogger(__name__)

_FORMATS = {"labelfolder": labelfolder, "dsb2018": dsb2018, "cvppp": cvppp}
REAL_FORMATS = tuple(_FORMATS)


def convert_to_coco(
    fmt: str,
    path: str,
    *,
    splits: Optional[str] = None,
    seed: int = 0,
    ratios: Tuple[float, float, float] = (0.6, 0.2, 0.2),
    class_name: Optional[str] = None,
    cache: Optional[str] = None,
) -> ConvertedDataset:
    """Convert a ``labelfolder`` / ``dsb2018`` / ``cvppp`` dataset to three COCO JSON files.

    The JSONs live in ``<cache>/converted/<fmt>-<folder name>-<hash>/`` (``cache`` defaults to
    :func:`~.cache.cache_root`), the hash covering the folder's path, every file's size and mtime,
    and the options: a second call reuses them, any change to the data or options rebuilds them.
    Nothing is written into ``path``. ``file_name`` entries are relative to ``path`` (the image root).
    """
    if fmt not in _FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {REAL_FORMATS}")
    reader = _FORMATS[fmt]
    path = os.path.abspath(os.path.expanduser(path))
    require_dir(path, f"{fmt} dataset")
    class_names = [class_name or reader.DEFAULT_CLASS]
    options = {"splits": splits and os.path.abspath(splits), "seed": int(seed), "ratios": list(ratios),
               "class_names": class_names}
    # The payload decides the cache folder's name: changing it orphans every existing cache.
    payload = {"format": fmt, "version": CONVERTER_VERSION, "options": options}
    if splits and os.path.exists(splits) and not os.path.abspath(splits).startswith(path + os.sep):
        payload["split_fingerprint"] = fingerprint(splits, {})
    out_dir = converted_dir(fmt, path, payload, cache)
    result = ConvertedDataset({s: os.path.join(out_dir, f"{s}.json") for s in SPLITS}, path, class_names)
    if read_manifest(out_dir) is not None:
        logger.info(f"Reusing converted {fmt} dataset {path} from {out_dir}")
        return result

    samples = reader.scan(path)
    assignment = resolve_splits(list(samples), path, splits=splits, seed=seed, ratios=ratios)
    manifest = {"source": path, "format": fmt, "options": options,
                "counts": {s: len(assignment[s]) for s in SPLITS}}
    with cache_transaction(out_dir, manifest, drop_stale=True) as tmp:
        logger.info(f"Converting {fmt} dataset {path} to COCO json in {out_dir}")
        for s in SPLITS:
            images, anns = [], []
            for i, key in enumerate(assignment[s]):
                img_path, target = samples[key]
                image = read_image(img_path)  # full decode: catches truncated / unsupported files now
                anns.extend(reader.annotations(img_path, image, target, i + 1, len(anns) + 1))
                h, w = image.shape[:2]
                images.append({"id": i + 1, "height": int(h), "width": int(w),
                               "file_name": os.path.relpath(img_path, path).replace(os.sep, "/")})
            info = {"description": f"{fmt} dataset {path}", "split": s}
            write_json(os.path.join(tmp, f"{s}.json"), make_coco_dict(images, anns, class_names, info),
                       sort_keys=True, compact=True)
    return result

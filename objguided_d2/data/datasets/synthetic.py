"""Embedded synthetic datasets that are hard in the ways the paper's data are.

Three families, each mirroring one of the paper's datasets (docs/method.md §6):

* ``nuclei`` (DSB2018): round / elliptical nuclei with wobbly outlines, many in touching
  clusters (touching nuclei share a boundary with only a faint intensity dip), sizes from 2 px
  to ~20 px radius, fluorescence (dark background, gray or tinted) or brightfield/H&E-like RGB.
* ``neural`` (neural cells, grayscale): a soma with thin, curved, branching, tapering
  protrusions (1-4 px, many 1 px wide), fan-shaped lamellipodia at some tips, low contrast
  protrusions that grow into neighbouring cells, unlabeled debris.
* ``leaves`` (CVPPP rosettes, RGB): leaves on long thin petioles from the rosette centre, younger
  leaves on top of older ones (overlap), cast shadows, similar greens, blurry boundaries, soil
  texture and unlabeled moss specks.

All images get uneven illumination, blur, noise and per-object intensity variation; some images
(~4 %) have no object. Overlaps: the label map keeps the top object and the COCO annotation of an
occluded object is its visible part (which may be split into several blobs: still one object).

Files: ``root/<split>/images/<split>_<i>.png`` (8-bit; neural gray, leaves and nuclei RGB),
``root/<split>/labels/<split>_<i>.tif`` (uint16 instance maps, 0 = background) and
``root/<split>.json`` (COCO instances, compressed RLE). Every image is generated from its own
``SeedSequence([seed, family, split, index])``: deterministic and independent of the split sizes.
"""
import logging
import os
from typing import Callable, Dict, Tuple

import cv2
import numpy as np
import tifffile

from objguided_d2.utils.io import write_json

from .cache import cache_transaction, read_manifest
from .coco import label_map_to_annotations, make_coco_dict
from .splits import SPLITS
from .synthetic_shapes import join_diagonal_pieces, render_leaves, render_neural, render_nuclei

__all__ = [
    "FAMILIES",
    "FAMILY_CLASSES",
    "generate_synthetic_dataset",
    "synthetic_dataset_ready",
    "render_sample",
]

logger = logging.getLogger(__name__)

FAMILIES = ("nuclei", "neural", "leaves")
FAMILY_CLASSES = {"nuclei": ["nucleus"], "neural": ["cell"], "leaves": ["leaf"]}
# Bump when the generator's output changes, so cached datasets are regenerated.
GENERATOR_VERSION = 2  # 2: thin structures 4-connected (as painted annotations are)

_RENDERERS: Dict[str, Callable[..., Tuple[np.ndarray, np.ndarray]]] = {
    "nuclei": render_nuclei,
    "neural": render_neural,
    "leaves": render_leaves,
}


def render_sample(family: str, image_size: int, seed: int, split: str, index: int,
                  min_object_size: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Render one sample in memory.

    Object sizes are drawn relative to ``image_size`` (a larger image shows the same scene at a
    larger scale, as the paper's resize to 512 px does). ``min_object_size`` (pixels, 0 = the
    generator's own floor) raises the smallest drawn object: a nucleus' or soma's diameter, a
    leaf's length; line widths (protrusions, petioles: 1-3 px) are never scaled. With 0 the output
    is bit-identical to earlier versions.

    Returns:
        image: (S, S) uint8 for ``neural``, (S, S, 3) uint8 **RGB** otherwise.
        label: (S, S) uint16 instance map, 0 = background, ids 1..K.
    """
    _check_family(family)
    ss = np.random.SeedSequence([int(seed), FAMILIES.index(family), SPLITS.index(split), int(index)])
    image, label = _RENDERERS[family](np.random.default_rng(ss), int(image_size), float(min_object_size))
    return image, join_diagonal_pieces(label)


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown synthetic family {family!r}; expected one of {FAMILIES}")


def _params(family, image_size, num_train, num_val, num_test, seed, min_object_size=0) -> dict:
    params = {
        "family": family,
        "image_size": int(image_size),
        "num": {"train": int(num_train), "val": int(num_val), "test": int(num_test)},
        "seed": int(seed),
        "version": GENERATOR_VERSION,
    }
    if min_object_size:  # recorded only when set, so datasets cached before the option stay valid
        params["min_object_size"] = int(min_object_size)
    return params


def synthetic_dataset_ready(root: str, **params) -> bool:
    """True if ``root`` holds a complete dataset generated with exactly these parameters."""
    return read_manifest(root) == _params(**params) and all(
        os.path.isfile(os.path.join(root, f"{s}.json")) for s in SPLITS)


def generate_synthetic_dataset(
    family: str,
    root: str,
    *,
    image_size: int = 256,
    num_train: int = 200,
    num_val: int = 50,
    num_test: int = 50,
    seed: int = 0,
    min_object_size: int = 0,
) -> Dict[str, str]:
    """Write a synthetic dataset of ``family`` under ``root`` and return {split: COCO json path}.

    ``min_object_size``: see :func:`render_sample` (0 = the generator's own sizes).

    Idempotent: ``root/manifest.json`` records the parameters; an existing dataset with the same
    parameters is reused as is, one with different parameters is replaced. Files are written to a
    temporary sibling folder and moved in place at the end, so concurrent callers (e.g. several
    training processes) never read a half-written dataset.
    """
    _check_family(family)
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16, got {image_size}")
    for k, v in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test),
                 ("min_object_size", min_object_size)):
        if v < 0:
            raise ValueError(f"{k} must be >= 0, got {v}")
    root = os.path.abspath(root)
    kw = dict(family=family, image_size=image_size, num_train=num_train, num_val=num_val, num_test=num_test, seed=seed,
              min_object_size=min_object_size)
    out = {s: os.path.join(root, f"{s}.json") for s in SPLITS}
    if synthetic_dataset_ready(root, **kw):
        return out
    params = _params(**kw)
    with cache_transaction(root, params, ready=lambda d: synthetic_dataset_ready(d, **kw)) as tmp:
        logger.info(f"Generating synthetic '{family}' dataset ({params['num']}, {image_size}px) in {root}")
        for split in SPLITS:
            _write_split(tmp, family, split, params, min_object_size)
    return out


def _write_split(tmp: str, family: str, split: str, params: dict, min_object_size: int) -> None:
    """Images, label maps and the COCO JSON of one split, under the unpublished folder ``tmp``."""
    image_size, seed = params["image_size"], params["seed"]
    img_dir, lab_dir = os.path.join(tmp, split, "images"), os.path.join(tmp, split, "labels")
    os.makedirs(img_dir)
    os.makedirs(lab_dir)
    images, anns = [], []
    for i in range(params["num"][split]):
        img, label = render_sample(family, image_size, seed, split, i, min_object_size)
        stem = f"{split}_{i:05d}"
        if img.ndim == 3:
            img = img[:, :, ::-1]  # cv2 writes BGR
        cv2.imwrite(os.path.join(img_dir, stem + ".png"), img)
        tifffile.imwrite(os.path.join(lab_dir, stem + ".tif"), label, compression="zlib")
        images.append({"id": i + 1, "file_name": f"{split}/images/{stem}.png", "height": image_size, "width": image_size})
        anns.extend(label_map_to_annotations(label, i + 1, len(anns) + 1))
    info = {"description": f"objguided-d2 synthetic {family}", "split": split, **params}
    write_json(os.path.join(tmp, f"{split}.json"), make_coco_dict(images, anns, FAMILY_CLASSES[family], info),
               sort_keys=True, compact=True)

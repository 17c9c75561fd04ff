"""Real-data formats, each converted once to COCO instances JSON (cached) and split.

Formats (``PATH`` is the dataset folder unless said otherwise):

* ``labelfolder``: ``PATH/images/*`` and ``PATH/labels/*`` matched by file stem; the label of
  ``images/a.png`` is ``labels/a{,_label,_labels,_mask,_masks}.<ext>`` (exactly one of them).
  Labels are 8/16/32-bit TIFF/PNG maps, 0 = background, one id per object; images may be
  gray/RGB/RGBA, 8- or 16-bit. Keys (for split files) are image stems.
* ``dsb2018``: Kaggle DSB2018 stage1 layout ``PATH/<id>/images/<id>.png`` +
  ``PATH/<id>/masks/*.png`` (one binary mask per nucleus; an empty ``masks/`` folder = no nucleus,
  an all-zero mask file is skipped with a warning). Keys are the sample ids.
* ``cvppp``: CVPPP leaf layout, searched recursively: ``<stem>_rgb.png`` + ``<stem>_label.png``.
  Labels are index-coded (palette or gray: the index is the leaf id) or colour-coded (each
  distinct RGB colour is one leaf, black is background). Keys are paths relative to ``PATH``
  without the suffix (``A1/plant001``); a split file may also use the bare stem if unique.
* ``coco``: see :func:`prepare_coco`.

Rules shared by all formats: an id made of several disconnected blobs is ONE object; ids need not
be contiguous; an image without any object is a valid sample (an image entry, no annotation).
Bad data raise :class:`~objguided_d2.data.io.DataError` naming the file. COCO files must have
unique image / annotation / category ids and only known ``category_id`` values (Detectron2 would
silently merge two images sharing an id).

Splits: ``PATH/splits.json`` (``{"train": [keys], "val": [...], "test": [...]}``) or
``PATH/train.txt`` / ``val.txt`` / ``test.txt`` (one key per line, ``#`` comments) when present,
or the file given by the ``splits`` option; otherwise a seeded random 60/20/20 split
(:func:`~objguided_d2.data.coco_json.seeded_split`). Samples listed in no split file are unused.

Containment: a split-file entry or a COCO ``file_name`` that points outside the dataset root
(``../other/a.png``, an absolute path elsewhere) is refused with a DataError naming the file;
names are resolved lexically against the root (``a/../b.png`` is ``b.png``).
"""
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .coco_json import (
    label_map_to_annotations,
    make_coco_dict,
    masks_to_annotations,
    seeded_split,
)
from objguided_d2.utils.io import path_inside, write_json

from .io import IMAGE_EXTENSIONS, DataError, read_image, read_image_pages, read_label_map
from .synthetic import SPLITS

__all__ = [
    "REAL_FORMATS",
    "LABEL_SUFFIXES",
    "ConvertedDataset",
    "cache_root",
    "convert_to_coco",
    "prepare_coco",
    "read_cvppp_label",
    "resolve_splits",
]

logger = logging.getLogger(__name__)

REAL_FORMATS = ("labelfolder", "dsb2018", "cvppp")
LABEL_SUFFIXES = ("", "_label", "_labels", "_mask", "_masks")
DEFAULT_CLASS = {"labelfolder": "object", "dsb2018": "nucleus", "cvppp": "leaf", "coco": None}
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


# ----------------------------------------------------------------------------- scanning
def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise DataError(f"{path}: {what} folder not found")


def _scan_labelfolder(root: str) -> Dict[str, Tuple[str, str]]:
    """key -> (image path, label path)."""
    img_dir, lab_dir = os.path.join(root, "images"), os.path.join(root, "labels")
    _require_dir(img_dir, "'images/'")
    _require_dir(lab_dir, "'labels/'")
    images: Dict[str, str] = {}
    for f in sorted(os.listdir(img_dir)):
        if not _is_image(f):
            continue
        stem = os.path.splitext(f)[0]
        if stem in images:
            raise DataError(f"{os.path.join(img_dir, f)}: two images with stem {stem!r} ({os.path.basename(images[stem])})")
        images[stem] = os.path.join(img_dir, f)
    if not images:
        raise DataError(f"{img_dir}: no image files (expected {', '.join(IMAGE_EXTENSIONS)})")
    labels: Dict[str, List[str]] = {}
    for f in sorted(os.listdir(lab_dir)):
        if _is_image(f):
            labels.setdefault(os.path.splitext(f)[0], []).append(os.path.join(lab_dir, f))
    out = {}
    for stem, img in images.items():
        cands = [p for suf in LABEL_SUFFIXES for p in labels.get(stem + suf, [])]
        if not cands:
            raise DataError(
                f"{img}: no label file in {lab_dir} (looked for {stem}{{{','.join(LABEL_SUFFIXES)}}} with an image extension)"
            )
        if len(cands) > 1:
            raise DataError(f"{img}: several label files match: {[os.path.basename(c) for c in cands]}")
        out[stem] = (img, cands[0])
    return out


def _scan_dsb2018(root: str) -> Dict[str, Tuple[str, str]]:
    """key (sample id) -> (image path, masks folder)."""
    out = {}
    for sid in sorted(os.listdir(root)):
        d = os.path.join(root, sid)
        if sid.startswith(".") or not os.path.isdir(d):
            continue
        img_dir = os.path.join(d, "images")
        _require_dir(img_dir, f"sample {sid!r}: 'images/'")
        cands = [os.path.join(img_dir, f) for f in sorted(os.listdir(img_dir)) if _is_image(f)]
        preferred = [c for c in cands if os.path.splitext(os.path.basename(c))[0] == sid]
        if preferred:
            cands = preferred
        if len(cands) != 1:
            raise DataError(f"{img_dir}: expected exactly one image ({sid}.png), found {len(cands)}")
        masks = os.path.join(d, "masks")
        if not os.path.isdir(masks):
            raise DataError(f"{cands[0]}: image has no 'masks/' folder ({masks}); stage1_test has no labels")
        out[sid] = (cands[0], masks)
    if not out:
        raise DataError(f"{root}: no DSB2018 sample folders (<id>/images/<id>.png + <id>/masks/*.png)")
    return out


def _scan_cvppp(root: str) -> Dict[str, Tuple[str, str]]:
    """key (relative path without '_rgb.png') -> (image path, label path)."""
    out = {}
    for img in sorted(glob.glob(os.path.join(root, "**", "*_rgb.png"), recursive=True)):
        key = os.path.relpath(img, root)[: -len("_rgb.png")].replace(os.sep, "/")
        lab = img[: -len("_rgb.png")] + "_label.png"
        if not os.path.isfile(lab):
            raise DataError(f"{img}: no label file {os.path.basename(lab)} next to it")
        out[key] = (img, lab)
    if not out:
        raise DataError(f"{root}: no CVPPP images (*_rgb.png with *_label.png)")
    return out


_SCANNERS = {"labelfolder": _scan_labelfolder, "dsb2018": _scan_dsb2018, "cvppp": _scan_cvppp}


# ----------------------------------------------------------------------------- label readers
def read_cvppp_label(path: str) -> np.ndarray:
    """Decode a CVPPP ``*_label.png`` into an (H, W) int64 instance map (0 = background).

    Palette PNGs give their indices; gray maps their values; colour-coded maps one id per
    distinct RGB colour (black = background), numbered in increasing packed-RGB order.
    """
    pages = read_image_pages(path)  # validates existence / decoding / truncation
    if path.lower().endswith(".png"):
        from PIL import Image

        try:
            with Image.open(path) as im:
                if im.mode == "P":
                    return np.asarray(im, dtype=np.int64)
        except OSError as e:
            raise DataError(f"{path}: cannot read label ({e})") from e
    lab = pages[0]
    if lab.ndim == 3:
        rgb = lab[..., :3].astype(np.int64)
        if np.all(rgb == rgb[..., :1]):
            lab = lab[..., 0]
        else:
            packed = (rgb[..., 0] << 32) | (rgb[..., 1] << 16) | rgb[..., 2]
            colours, inv = np.unique(packed, return_inverse=True)
            inv = inv.reshape(packed.shape)
            if colours[0] == 0:
                return inv.astype(np.int64)
            return (inv + 1).astype(np.int64)
    if not np.issubdtype(lab.dtype, np.integer):
        return read_label_map(path)  # float maps: reuse the integer / sign checks
    return lab.astype(np.int64)


def _check_size(img_path: str, image: np.ndarray, other_path: str, other: np.ndarray) -> None:
    if image.shape[:2] != other.shape[:2]:
        raise DataError(
            f"{other_path}: size {other.shape[1]}x{other.shape[0]} (WxH) differs from its image "
            f"{img_path} ({image.shape[1]}x{image.shape[0]})"
        )


def _load_sample(fmt: str, img_path: str, target: str, image_id: int, first_ann_id: int) -> Tuple[dict, List[dict]]:
    image = read_image(img_path)  # full decode: catches truncated / unsupported files now
    if fmt == "labelfolder":
        label = read_label_map(target)
        _check_size(img_path, image, target, label)
        anns = label_map_to_annotations(label, image_id, first_ann_id)
    elif fmt == "cvppp":
        label = read_cvppp_label(target)
        _check_size(img_path, image, target, label)
        anns = label_map_to_annotations(label, image_id, first_ann_id)
    else:  # dsb2018
        masks = []
        for f in sorted(os.listdir(target)):
            if not _is_image(f):
                continue
            p = os.path.join(target, f)
            m = read_image_pages(p)[0]
            _check_size(img_path, image, p, m)
            m = (m[..., :3].max(axis=-1) if m.ndim == 3 else m) > 0
            if not m.any():
                logger.warning(f"{p}: empty mask, skipped")
                continue
            masks.append(m)
        anns = masks_to_annotations(masks, image_id, first_ann_id)
    h, w = image.shape[:2]
    return {"id": image_id, "height": int(h), "width": int(w)}, anns


# ----------------------------------------------------------------------------- splits
def _read_split_file(path: str) -> Dict[str, List[str]]:
    if path.lower().endswith(".json"):
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read split file ({e})") from e
        if not isinstance(data, dict) or not set(data) <= set(SPLITS) or not all(
            isinstance(v, list) and all(isinstance(k, str) for k in v) for v in data.values()
        ):
            raise DataError(f'{path}: expected {{"train": [keys], "val": [keys], "test": [keys]}}')
        return {s: list(data.get(s, [])) for s in SPLITS}
    raise DataError(f"{path}: split file must be a .json file or a folder with train.txt/val.txt/test.txt")


def _read_txt_splits(folder: str) -> Dict[str, List[str]]:
    out = {}
    for s in SPLITS:
        p = os.path.join(folder, f"{s}.txt")
        keys = []
        if os.path.isfile(p):
            with open(p) as f:
                for line in f:
                    line = line.split("#", 1)[0].strip()
                    if line:
                        keys.append(line)
        out[s] = keys
    return out


def _find_split_source(root: str, splits: Optional[str]) -> Optional[str]:
    if splits:
        if not os.path.exists(splits):
            raise DataError(f"{splits}: split file not found")
        return os.path.abspath(splits)
    if os.path.isfile(os.path.join(root, "splits.json")):
        return os.path.join(root, "splits.json")
    if any(os.path.isfile(os.path.join(root, f"{s}.txt")) for s in SPLITS):
        return root
    return None


def resolve_splits(
    keys: Sequence[str],
    root: str,
    *,
    splits: Optional[str] = None,
    seed: int = 0,
    ratios: Tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> Dict[str, List[str]]:
    """Assign sample keys to train/val/test (see the module docstring for the rules)."""
    src = _find_split_source(root, splits)
    if src is None:
        return seeded_split(keys, seed, ratios)
    listed = _read_txt_splits(src) if os.path.isdir(src) else _read_split_file(src)
    by_base: Dict[str, List[str]] = {}
    for k in keys:
        by_base.setdefault(k.rsplit("/", 1)[-1], []).append(k)
    key_set, seen, out = set(keys), {}, {}
    for s in SPLITS:
        out[s] = []
        for entry in listed[s]:
            if path_inside(root, entry) is None:
                where = src if os.path.isfile(src) else os.path.join(src, f"{s}.txt")
                raise DataError(f"{where}: {s} entry {entry!r} points outside the dataset root {root}; entries are "
                                "sample keys or file names relative to it")
            k = entry if entry in key_set else None
            if k is None:
                # Allow file names / bare stems in split files, as long as they are unambiguous.
                e = os.path.splitext(entry)[0] if _is_image(entry) else entry
                e = e[: -len("_rgb")] if e.endswith("_rgb") else e
                cands = [e] if e in key_set else by_base.get(e, [])
                if len(cands) != 1:
                    where = src if os.path.isfile(src) else os.path.join(src, f"{s}.txt")
                    why = "matches no sample" if not cands else f"is ambiguous ({cands})"
                    raise DataError(f"{where}: {s} entry {entry!r} {why}")
                k = cands[0]
            if k in seen:
                raise DataError(f"{src}: sample {k!r} listed in both {seen[k]} and {s}")
            seen[k] = s
            out[s].append(k)
    unused = len(key_set) - len(seen)
    if unused:
        logger.info(f"{src}: {unused} samples are in no split and are not used")
    return out


# ----------------------------------------------------------------------------- caching
def _fingerprint(path: str, payload: dict) -> str:
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


def _cache_dir(kind: str, path: str, payload: dict, root: Optional[str]) -> str:
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in os.path.basename(os.path.abspath(path)))
    return os.path.join(root or cache_root(), "converted", f"{kind}-{base}-{_fingerprint(path, payload)}")


def _cached(out_dir: str) -> Optional[dict]:
    try:
        with open(os.path.join(out_dir, "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _publish(tmp: str, out_dir: str, manifest: dict) -> None:
    """Move a finished temp folder into place; drop stale conversions of the same source."""
    with open(os.path.join(tmp, "manifest.json"), "w") as f:
        json.dump(manifest, f, sort_keys=True)
    try:
        os.rename(tmp, out_dir)
    except OSError:  # a concurrent process published the same conversion first
        shutil.rmtree(tmp, ignore_errors=True)
        if _cached(out_dir) is None:
            raise
    prefix = os.path.basename(out_dir).rsplit("-", 1)[0] + "-"
    parent = os.path.dirname(out_dir)
    for d in os.listdir(parent):
        full = os.path.join(parent, d)
        if d.startswith(prefix) and full != out_dir and not d.startswith("."):
            m = _cached(full)
            if m is not None and m.get("source") == manifest["source"] and m.get("options") == manifest["options"]:
                shutil.rmtree(full, ignore_errors=True)


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
    :func:`cache_root`), the hash covering the folder's path, every file's size and mtime, and the
    options: a second call reuses them, any change to the data or options rebuilds them. Nothing
    is written into ``path``. ``file_name`` entries are relative to ``path`` (the image root).
    """
    if fmt not in _SCANNERS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {REAL_FORMATS}")
    path = os.path.abspath(os.path.expanduser(path))
    _require_dir(path, f"{fmt} dataset")
    class_names = [class_name or DEFAULT_CLASS[fmt]]
    options = {"splits": splits and os.path.abspath(splits), "seed": int(seed), "ratios": list(ratios),
               "class_names": class_names}
    payload = {"format": fmt, "version": CONVERTER_VERSION, "options": options}
    if splits and os.path.exists(splits) and not os.path.abspath(splits).startswith(path + os.sep):
        payload["split_fingerprint"] = _fingerprint(splits, {})
    out_dir = _cache_dir(fmt, path, payload, cache)
    result = ConvertedDataset({s: os.path.join(out_dir, f"{s}.json") for s in SPLITS}, path, class_names)
    if _cached(out_dir) is not None:
        logger.info(f"Reusing converted {fmt} dataset {path} from {out_dir}")
        return result

    samples = _SCANNERS[fmt](path)
    assignment = resolve_splits(list(samples), path, splits=splits, seed=seed, ratios=ratios)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=".tmp-")
    try:
        logger.info(f"Converting {fmt} dataset {path} to COCO json in {out_dir}")
        for s in SPLITS:
            images, anns = [], []
            for i, key in enumerate(assignment[s]):
                img_path, target = samples[key]
                entry, a = _load_sample(fmt, img_path, target, i + 1, len(anns) + 1)
                entry["file_name"] = os.path.relpath(img_path, path).replace(os.sep, "/")
                images.append(entry)
                anns.extend(a)
            info = {"description": f"{fmt} dataset {path}", "split": s}
            write_json(os.path.join(tmp, f"{s}.json"), make_coco_dict(images, anns, class_names, info),
                       sort_keys=True, compact=True)
        _publish(tmp, out_dir, {"source": path, "format": fmt, "options": options,
                                "counts": {s: len(assignment[s]) for s in SPLITS}})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


# ----------------------------------------------------------------------------- coco
def _load_coco(path: str, image_root: str) -> dict:
    if not os.path.isfile(path):
        raise DataError(f"{path}: COCO json not found")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot parse COCO json ({e})") from e
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations", "categories")):
        raise DataError(f"{path}: not a COCO instances file (expected lists 'images', 'annotations', 'categories')")
    if not data["categories"]:
        raise DataError(f"{path}: 'categories' is empty")
    _check_coco_ids(path, data)
    for im in data["images"]:
        if not isinstance(im["file_name"], str) or path_inside(image_root, im["file_name"]) is None:
            raise DataError(f"{path}: image id {im['id']!r} has file_name {im['file_name']!r}, which points outside "
                            f"the image root {image_root}; file names must lie inside it")
    return data


def _first_duplicate(values) -> Optional[object]:
    seen = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def _check_coco_ids(path: str, data: dict) -> None:
    """Ids Detectron2's ``load_coco_json`` would otherwise mishandle: pycocotools indexes images
    by id, so two images with one id silently become one image carrying both images' objects
    (wrong labels); duplicate annotation ids trip a bare assert, unknown category ids a KeyError."""
    for kind, key in (("images", "image"), ("annotations", "annotation"), ("categories", "category")):
        for i, item in enumerate(data[kind]):
            if not isinstance(item, dict) or "id" not in item:
                raise DataError(f"{path}: {kind}[{i}] has no 'id'")
        dup = _first_duplicate(item["id"] for item in data[kind])
        if dup is not None:
            users = [str(x.get("file_name", x.get("name", i))) for i, x in enumerate(data[kind]) if x["id"] == dup]
            raise DataError(f"{path}: {key} id {dup!r} is used more than once ({', '.join(users[:5])}); "
                            f"{key} ids must be unique")
    for i, im in enumerate(data["images"]):
        missing = [k for k in ("file_name", "height", "width") if k not in im]
        if missing:
            raise DataError(f"{path}: image id {im['id']!r} (images[{i}]) lacks {missing}")
    cat_ids = {c["id"] for c in data["categories"]}
    for a in data["annotations"]:
        if a.get("category_id") not in cat_ids:
            raise DataError(f"{path}: annotation id {a['id']!r} has category_id {a.get('category_id')!r}, "
                            f"not among the categories {sorted(cat_ids)}")


def _class_names(data: dict) -> List[str]:
    return [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]


def _coco_image_root(folder: str, image_root: Optional[str]) -> str:
    root = image_root or (os.path.join(folder, "images") if os.path.isdir(os.path.join(folder, "images")) else folder)
    return os.path.abspath(root)


def prepare_coco(
    path: str,
    *,
    image_root: Optional[str] = None,
    seed: int = 0,
    ratios: Tuple[float, float, float] = (0.6, 0.2, 0.2),
    cache: Optional[str] = None,
) -> ConvertedDataset:
    """An existing COCO instances dataset.

    ``path`` is either a folder holding ``train.json``, ``val.json`` and ``test.json`` (used as
    they are, nothing is written), or a single COCO JSON file (or a folder holding exactly one
    ``*.json``) which is split 60/20/20 by image with ``seed`` into the cache. ``image_root``
    defaults to ``<folder>/images`` when it exists, else the folder itself. Every image's
    ``file_name`` must lie inside the image root (``../x.png`` or an absolute path elsewhere is a
    DataError naming the JSON): a dataset never reads files outside its folder.
    """
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(path):
        folder = path
        split_files = {s: os.path.join(path, f"{s}.json") for s in SPLITS}
        present = [s for s in SPLITS if os.path.isfile(split_files[s])]
        if len(present) == 3:
            names = None
            root = _coco_image_root(folder, image_root)
            for s in SPLITS:
                n = _class_names(_load_coco(split_files[s], root))
                if names is not None and n != names:
                    raise DataError(f"{split_files[s]}: categories {n} differ from train.json's {names}")
                names = n
            return ConvertedDataset(split_files, root, names)
        if present:
            raise DataError(f"{path}: has {[s + '.json' for s in present]} but not all of train.json, val.json, test.json")
        jsons = sorted(f for f in os.listdir(path) if f.lower().endswith(".json"))
        if len(jsons) != 1:
            raise DataError(f"{path}: expected train.json/val.json/test.json or exactly one COCO json, found {jsons}")
        single = os.path.join(path, jsons[0])
    else:
        single, folder = path, os.path.dirname(path)
    root = _coco_image_root(folder, image_root)
    data = _load_coco(single, root)
    names = _class_names(data)
    payload = {"format": "coco", "version": CONVERTER_VERSION, "options": {"seed": int(seed), "ratios": list(ratios)}}
    out_dir = _cache_dir("coco", single, payload, cache)
    result = ConvertedDataset({s: os.path.join(out_dir, f"{s}.json") for s in SPLITS}, root, names)
    if _cached(out_dir) is not None:
        return result
    ids = [str(im["id"]) for im in data["images"]]
    assignment = seeded_split(ids, seed, ratios)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(out_dir), prefix=".tmp-")
    try:
        for s in SPLITS:
            keep = set(assignment[s])
            sub = dict(data)
            sub["images"] = [im for im in data["images"] if str(im["id"]) in keep]
            sub["annotations"] = [a for a in data["annotations"] if str(a.get("image_id")) in keep]
            write_json(os.path.join(tmp, f"{s}.json"), sub, sort_keys=True, compact=True)
        _publish(tmp, out_dir, {"source": single, "format": "coco", "options": payload["options"]})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result

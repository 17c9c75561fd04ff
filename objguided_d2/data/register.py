"""Registering datasets without writing Python.

Every dataset is registered as three Detectron2 datasets ``<NAME>_train``, ``<NAME>_val`` and
``<NAME>_test`` in COCO instances form (``MetadataCatalog`` gets ``thing_classes``, ``json_file``,
``image_root`` and ``evaluator_type="coco"``), so Detectron2's ``COCOEvaluator`` works as is.

Built-in synthetic datasets (generated on first ``DatasetCatalog.get``, never at import):

=========================================  ======================================  =============
name                                        what                                    size
=========================================  ======================================  =============
``synth_nuclei_{train,val,test}``           touching nuclei (DSB2018-like), RGB     256 px 200/50/50
``synth_neural_{train,val,test}``           neural cells with thin protrusions, gray 256 px 200/50/50
``synth_leaves_{train,val,test}``           overlapping rosette leaves (CVPPP-like)  256 px 200/50/50
``synth_<family>_tiny_{train,val,test}``    the same, for tests                      128 px 16/4/4
``synth_<family>_paperscale_{...}``         objects at the paper's sizes             256-512 px 100/10/30
``synth_leaves_demo_{train,val,test}``      paper-scale leaves for ``make demo``      384 px 40/2/12
=========================================  ======================================  =============

Your own data: pass ``--dataset NAME=FORMAT:PATH[?key=value&key=value...]`` to the tools
(repeatable), or call ``register_dataset_spec("NAME=FORMAT:PATH")``. Formats:

* ``labelfolder:PATH`` -- ``PATH/images/*`` and ``PATH/labels/*`` matched by file stem; the label
  of ``images/a.png`` may be named ``a``, ``a_label``, ``a_labels``, ``a_mask`` or ``a_masks``
  (any image extension). Labels: 8/16/32-bit PNG/TIFF instance maps, 0 = background, one integer
  id per object. Images: gray, RGB, RGBA, 8- or 16-bit (16-bit is stretched to 8-bit per image).
* ``dsb2018:PATH`` -- Kaggle DSB2018 stage1 layout ``PATH/<id>/images/<id>.png`` and
  ``PATH/<id>/masks/*.png`` (one binary mask per nucleus).
* ``cvppp:PATH`` -- CVPPP plant layout ``<stem>_rgb.png`` + ``<stem>_label.png`` (searched
  recursively); labels index-coded (palette/gray) or colour-coded (one colour per leaf, black =
  background). Sample keys are relative paths without the suffix, e.g. ``A1/plant001``.
* ``coco:PATH`` -- either a folder with ``train.json``, ``val.json``, ``test.json`` (used as they
  are) or one COCO JSON file (or a folder with exactly one ``*.json``) split 60/20/20 by image.
  Images are looked up under ``PATH/images`` if it exists, else ``PATH``; option ``image_root``.
* ``synthetic:FAMILY`` -- an embedded family (``nuclei``, ``neural``, ``leaves``) with options
  ``image_size``, ``num_train``, ``num_val``, ``num_test``, ``seed``, ``min_object_size``
  (pixels; object sizes scale with ``image_size``, this raises the smallest ones).

Options (after ``?``, ``&``-separated): ``seed=0`` (random split), ``ratios=0.6,0.2,0.2``,
``splits=FILE`` (a split file elsewhere), ``class=NAME`` (class name; labelfolder ``object``,
dsb2018 ``nucleus``, cvppp ``leaf``), ``image_root=DIR`` (coco only). Example::

    python tools/train_net.py --config-file configs/... \\
        --dataset plants=cvppp:/data/CVPPP2017_LSC_training?seed=1 \\
        --dataset cells=synthetic:neural?image_size=128&num_train=16 \\
        DATASETS.TRAIN '("plants_train",)' DATASETS.TEST '("plants_val",)'

(quote the spec in a shell when it contains ``&``).

Splits: if the dataset folder holds ``splits.json`` (``{"train": [keys], "val": [keys],
"test": [keys]}``) or ``train.txt`` / ``val.txt`` / ``test.txt`` (one key per line, ``#``
comments), they define the splits; keys are image stems (labelfolder), sample ids (dsb2018) or
relative stems (cvppp); a file name or an unambiguous bare stem also works. Samples in no split are
not used. Otherwise a seeded random 60/20/20 split (670 DSB2018 images -> 402/134/134, the paper's).
Split entries and COCO ``file_name`` values that point outside the dataset root (``../x.png``, an
absolute path elsewhere) are refused with a ``DataError`` naming the file.

Data rules: an id made of several disconnected blobs is one object; ids need not be contiguous;
images without objects are kept (empty annotation list). Bad data (missing / empty / truncated /
unreadable file, image-label size mismatch, non-integer or negative label values, an image
without a label, an empty folder) raise ``DataError`` naming the file.

Cache: converted COCO JSONs and generated synthetic data go under ``$OBJGUIDED_CACHE`` (default
``~/.cache/objguided_d2``), keyed by a hash of the source path, every file's size and mtime and
the options: reused while the data are unchanged, rebuilt when they change. Nothing is ever
written into your data folder.
"""
import argparse
import os
import re
from typing import Callable, Dict, List, Optional, Tuple
from urllib.parse import unquote

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

from .datasets.cache import cache_root
from .datasets.coco import prepare_coco
from .datasets.convert import REAL_FORMATS, convert_to_coco
from .datasets.splits import SPLITS
from .datasets.synthetic import FAMILIES, FAMILY_CLASSES, generate_synthetic_dataset

__all__ = [
    "FORMATS",
    "parse_dataset_spec",
    "register_dataset_spec",
    "register_synthetic",
    "register_builtin_synthetic",
    "synthetic_root",
    "add_dataset_arguments",
    "register_from_args",
]

FORMATS = ("coco",) + REAL_FORMATS + ("synthetic",)
_COMMON_OPTIONS = {"seed", "ratios", "splits", "class"}
_OPTIONS = {
    "coco": {"seed", "ratios", "image_root"},
    "labelfolder": _COMMON_OPTIONS,
    "dsb2018": _COMMON_OPTIONS,
    "cvppp": _COMMON_OPTIONS,
    "synthetic": {"image_size", "num_train", "num_val", "num_test", "seed", "min_object_size"},
}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
SYNTH_DEFAULT = {"image_size": 256, "num_train": 200, "num_val": 50, "num_test": 50, "seed": 0, "min_object_size": 0}
SYNTH_TINY = {"image_size": 128, "num_train": 16, "num_val": 4, "num_test": 4, "seed": 0, "min_object_size": 0}
# ``synth_<family>_paperscale``: objects at the sizes they have in the paper's data after its resize
# to 512 px (median box side >= 32 px, smallest drawn object >= 8 px; benchmarks/data_scale.py
# prints the distribution). Train on native-scale crops (INPUT.NATIVE_CROP_SIZE), test whole.
SYNTH_PAPER_SCALE = {
    "nuclei": {"image_size": 512, "num_train": 100, "num_val": 10, "num_test": 30, "seed": 0, "min_object_size": 8},
    "neural": {"image_size": 256, "num_train": 100, "num_val": 10, "num_test": 30, "seed": 0, "min_object_size": 8},
    "leaves": {"image_size": 384, "num_train": 100, "num_val": 10, "num_test": 30, "seed": 0, "min_object_size": 8},
}

# ``synth_leaves_demo`` (``make demo``): paper-scale leaves, fewer images, so that four models learn
# something real in minutes (the objects keep the paper's sizes; only the image count is small).
SYNTH_DEMO = {**SYNTH_PAPER_SCALE["leaves"], "num_train": 40, "num_val": 2, "num_test": 12}


def parse_dataset_spec(spec: str) -> Tuple[str, str, str, Dict[str, str]]:
    """Split ``NAME=FORMAT:PATH[?k=v&k=v]`` into (name, format, path, options).

    Values are URL-unquoted (``%26`` for a literal ``&``). Raises ValueError naming the problem.
    """
    usage = "expected NAME=FORMAT:PATH[?key=value&...], e.g. 'cells=labelfolder:/data/cells'"
    if not isinstance(spec, str) or "=" not in spec:
        raise ValueError(f"malformed dataset spec {spec!r}: {usage}")
    name, rest = spec.split("=", 1)
    name = name.strip()
    if not _NAME_RE.match(name):
        raise ValueError(f"malformed dataset spec {spec!r}: name {name!r} must be letters, digits, '_', '-', '.'")
    if ":" not in rest:
        raise ValueError(f"malformed dataset spec {spec!r}: {usage}")
    fmt, path = rest.split(":", 1)
    fmt = fmt.strip().lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {fmt!r} in {spec!r}; expected one of {FORMATS}")
    options: Dict[str, str] = {}
    if "?" in path:
        path, query = path.split("?", 1)
        for item in filter(None, query.split("&")):
            if "=" not in item:
                raise ValueError(f"malformed option {item!r} in {spec!r}: expected key=value")
            k, v = item.split("=", 1)
            k = k.strip()
            if k not in _OPTIONS[fmt]:
                raise ValueError(f"unknown option {k!r} for format {fmt!r} in {spec!r}; allowed: {sorted(_OPTIONS[fmt])}")
            if k in options:
                raise ValueError(f"option {k!r} given twice in {spec!r}")
            options[k] = unquote(v.strip())
    path = unquote(path.strip())
    if not path:
        raise ValueError(f"malformed dataset spec {spec!r}: empty PATH")
    return name, fmt, path, options


def _int(options: Dict[str, str], key: str, default: int, spec: str) -> int:
    try:
        return int(options.get(key, default))
    except ValueError:
        raise ValueError(f"option {key}={options[key]!r} in {spec!r} is not an integer") from None


def _ratios(options: Dict[str, str], spec: str) -> Tuple[float, float, float]:
    if "ratios" not in options:
        return (0.6, 0.2, 0.2)
    try:
        r = tuple(float(x) for x in options["ratios"].split(","))
    except ValueError:
        r = ()
    if len(r) != 3 or any(x < 0 for x in r) or sum(r) <= 0:
        raise ValueError(f"option ratios={options['ratios']!r} in {spec!r}: expected three non-negative numbers like 0.6,0.2,0.2")
    return r


def _fresh(name: str) -> None:
    """Drop an earlier registration of ``name`` so re-registering replaces it instead of failing."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def _register_coco_splits(name: str, json_files: Dict[str, str], image_root: str, class_names: List[str]) -> List[str]:
    names = []
    for s in SPLITS:
        n = f"{name}_{s}"
        _fresh(n)
        register_coco_instances(n, {"thing_classes": list(class_names)}, json_files[s], image_root)
        names.append(n)
    return names


def synthetic_root(family: str, *, image_size: int, num_train: int, num_val: int, num_test: int, seed: int,
                   min_object_size: int = 0, cache: Optional[str] = None) -> str:
    """Folder of a generated synthetic dataset inside the cache (one per parameter set)."""
    extra = f"-min{min_object_size}" if min_object_size else ""
    return os.path.join(cache or cache_root(), "synthetic",
                        f"{family}-{image_size}px-{num_train}-{num_val}-{num_test}-seed{seed}{extra}")


def _lazy_loader(name: str, family: str, root: str, params: dict, json_file: str) -> Callable[[], list]:
    def load():
        generate_synthetic_dataset(family, root, **params)
        return load_coco_json(json_file, root, name)

    return load


def register_synthetic(name: str, family: str, *, replace: bool = True, cache: Optional[str] = None, **params) -> List[str]:
    """Register ``<name>_{train,val,test}`` for a synthetic family; generated on first ``get``.

    ``params`` are :func:`generate_synthetic_dataset`'s keywords (defaults 256 px, 200/50/50).
    ``json_file`` in the metadata exists only after the first ``DatasetCatalog.get``.
    With ``replace=False`` an existing registration is kept (import-time registration).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown synthetic family {family!r}; expected one of {FAMILIES}")
    p = dict(SYNTH_DEFAULT)
    unknown = set(params) - set(p)
    if unknown:
        raise ValueError(f"unknown synthetic options {sorted(unknown)}; allowed: {sorted(p)}")
    p.update(params)
    root = synthetic_root(family, cache=cache, **p)
    names = []
    for s in SPLITS:
        n = f"{name}_{s}"
        names.append(n)
        if not replace and n in DatasetCatalog.list():
            continue
        _fresh(n)
        json_file = os.path.join(root, f"{s}.json")
        DatasetCatalog.register(n, _lazy_loader(n, family, root, p, json_file))
        MetadataCatalog.get(n).set(thing_classes=list(FAMILY_CLASSES[family]), json_file=json_file,
                                   image_root=root, evaluator_type="coco")
    return names


def register_builtin_synthetic(replace: bool = False, cache: Optional[str] = None) -> List[str]:
    """Register ``synth_<family>``, ``synth_<family>_tiny`` and ``synth_<family>_paperscale`` for
    every family, and ``synth_leaves_demo`` (lazy)."""
    names = []
    for fam in FAMILIES:
        names += register_synthetic(f"synth_{fam}", fam, replace=replace, cache=cache, **SYNTH_DEFAULT)
        names += register_synthetic(f"synth_{fam}_tiny", fam, replace=replace, cache=cache, **SYNTH_TINY)
        names += register_synthetic(f"synth_{fam}_paperscale", fam, replace=replace, cache=cache,
                                    **SYNTH_PAPER_SCALE[fam])
    names += register_synthetic("synth_leaves_demo", "leaves", replace=replace, cache=cache, **SYNTH_DEMO)
    return names


def register_dataset_spec(spec: str) -> List[str]:
    """Register the three splits described by ``NAME=FORMAT:PATH[?options]`` (module docstring).

    Real formats are converted (or taken from the cache) now, so bad data fail here with a
    DataError naming the file. Registering a name again replaces the earlier registration.
    Returns ``[NAME_train, NAME_val, NAME_test]``.
    """
    name, fmt, path, opt = parse_dataset_spec(spec)
    if fmt == "synthetic":
        params = {k: _int(opt, k, SYNTH_DEFAULT[k], spec) for k in SYNTH_DEFAULT}
        return register_synthetic(name, path.strip().lower(), **params)
    seed = _int(opt, "seed", 0, spec)
    ratios = _ratios(opt, spec)
    if fmt == "coco":
        ds = prepare_coco(path, image_root=opt.get("image_root"), seed=seed, ratios=ratios)
    else:
        ds = convert_to_coco(fmt, path, splits=opt.get("splits"), seed=seed, ratios=ratios, class_name=opt.get("class"))
    return _register_coco_splits(name, ds.json_files, ds.image_root, ds.class_names)


def add_dataset_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add a repeatable ``--dataset NAME=FORMAT:PATH[?k=v&...]`` option to ``parser``."""
    parser.add_argument(
        "--dataset",
        action="append",
        default=[],
        metavar="NAME=FORMAT:PATH",
        help=f"register NAME_train/NAME_val/NAME_test from a dataset; FORMAT one of {', '.join(FORMATS)}; "
        "options after '?' as key=value joined by '&' (see objguided_d2/data/register.py). Repeatable.",
    )
    return parser


def register_from_args(args: argparse.Namespace) -> List[str]:
    """Register every ``--dataset`` spec of parsed ``args``; returns all registered names."""
    names: List[str] = []
    for spec in getattr(args, "dataset", None) or []:
        names += register_dataset_spec(spec)
    return names

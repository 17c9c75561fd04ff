"""Prediction as a library: load a model once, segment one image, or fill an output folder.

``objguided-predict`` (:mod:`.cli`) and GUI front ends (a napari widget) are thin layers over
these functions::

    model = load_predictor("output/my_run", device="cpu", diameter=30)
    labels, kept = segment_image(image, model)             # one (H, W[, C]) array
    summary = predict_to_folder(["plates/"], "results/", model, PredictOptions(overlay=True))

Every model problem is a :class:`~.predictor.ModelError` with a one-line message naming the
file; a folder run collects per-image problems as one-line strings in
:attr:`PredictSummary.failures` and goes on with the other images. Messages name the command
line's flags (``--overwrite``, ``--diameter``), as the rest of :mod:`objguided_d2.predict` does.
"""
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from detectron2.config import CfgNode

from objguided_d2.data.io import DataError, to_bgr_uint8

from .inputs import InputPage, collect_inputs, iter_pages
from .predictor import InstancePredictor, ModelError, load_predict_config, resolve_model_dir
from .tiling import Detection, predict_tiled
from .writers import (
    OutputExistsError, label_image, measure_objects, write_csv, write_json, write_label_tif, write_overlay,
)

__all__ = [
    "ModelError", "OutputExistsError", "LoadedModel", "load_predictor", "check_model_args", "default_tiling", "segment_image",
    "PredictOptions", "PredictSummary", "prepare_output_dir", "predict_to_folder",
]

logger = logging.getLogger(__name__)

TABLES = ("objects.csv", "predictions_coco.json", "images.json")


@dataclass
class LoadedModel:
    """A model ready to predict, with what the outputs need to name its classes.

    Attributes:
        predictor: callable (H, W, 3) uint8 BGR -> ``Instances`` at the input's size.
        cfg: the frozen config it was built from.
        input_scale: the fixed resize of ``diameter`` (None without it).
        class_names: ``thing_classes`` of the config's registered dataset, else None.
        category_ids: COCO category id of each contiguous class, else None (0-based index).
        metadata: the dataset's ``Metadata`` (overlay colours and names), else None.
    """

    predictor: InstancePredictor
    cfg: CfgNode
    input_scale: Optional[float]
    class_names: Optional[List[str]]
    category_ids: Optional[List[int]]
    metadata: object = None


def check_model_args(model_dir=None, config_file=None, *, score_thresh=None, mask_thresh=None,
                     diameter=None, opts=()) -> None:
    """Raise ModelError for values :func:`load_predictor` cannot use (cheap: reads no file)."""
    if bool(model_dir) == bool(config_file):
        raise ModelError("give exactly one of --model-dir DIR or --config-file FILE")
    for flag, v in (("--score-thresh", score_thresh), ("--mask-thresh", mask_thresh)):
        if v is not None and not 0.0 <= v <= 1.0:
            raise ModelError(f"{flag} {v}: expected a value in [0, 1]")
    if diameter is not None and not (diameter > 0 and math.isfinite(diameter)):
        raise ModelError(f"--diameter {diameter}: expected a positive number of pixels")
    if opts and len(opts) % 2:
        raise ModelError(f"--opts needs KEY VALUE pairs, got {len(opts)} items")


def _input_scale(folder: str, diameter: float) -> float:
    """The resize of ``--diameter``: the training object size of the model ``folder`` / diameter."""
    from objguided_d2.data.object_size import read_size_stats

    from .size import diameter_scale

    try:
        return diameter_scale(read_size_stats(folder)["median_diameter_input"], diameter)
    except ValueError as e:
        raise ModelError(str(e)) from e


def _class_info(cfg):
    """(class names, COCO category id per contiguous class, metadata) of the config's dataset."""
    from detectron2.data import MetadataCatalog

    n = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        if name not in MetadataCatalog.list():
            continue
        meta = MetadataCatalog.get(name)
        names = getattr(meta, "thing_classes", None)
        if names is None or len(names) != n:
            continue
        mapping = getattr(meta, "thing_dataset_id_to_contiguous_id", None)
        ids = None
        if mapping:
            inv = {v: k for k, v in mapping.items()}
            ids = [inv.get(c, c) for c in range(n)]
        return list(names), ids, meta
    return None, None, None


def load_predictor(model_dir: Optional[str] = None, config_file: Optional[str] = None,
                   weights: Optional[str] = None, *, device: str = "cpu", score_thresh: Optional[float] = None,
                   mask_thresh: Optional[float] = None, diameter: Optional[float] = None,
                   opts: Sequence[str] = (), trust_pickle: bool = False) -> LoadedModel:
    """Build the model of a ``tools/train_net.py`` output folder (``model_dir``) or of
    ``config_file`` + ``weights`` (default ``MODEL.WEIGHTS``). ``diameter``: the median object
    diameter (pixels) of the images to predict; needs the folder's ``object_size.json``.

    Raises:
        ModelError: one line naming the file, for every problem (missing folder or weights,
            refused config, weights that do not fit, ``diameter`` without ``object_size.json``...).
    """
    check_model_args(model_dir, config_file, score_thresh=score_thresh, mask_thresh=mask_thresh,
                     diameter=diameter, opts=opts)
    if model_dir:
        config_file, found = resolve_model_dir(model_dir)
        weights = weights or found
    input_scale = None
    if diameter is not None:
        input_scale = _input_scale(model_dir or os.path.dirname(os.path.abspath(config_file)), diameter)
    cfg = load_predict_config(config_file, opts or (), score_thresh=score_thresh, mask_thresh=mask_thresh,
                              device=device)
    predictor = InstancePredictor(cfg, weights or cfg.MODEL.WEIGHTS, score_thresh=score_thresh,
                                  mask_thresh=mask_thresh, trust_pickle=trust_pickle, input_scale=input_scale)
    class_names, category_ids, meta = _class_info(cfg)
    return LoadedModel(predictor=predictor, cfg=cfg, input_scale=input_scale, class_names=class_names,
                       category_ids=category_ids, metadata=meta)


def default_tiling(model: LoadedModel, tile_size: Optional[int] = None,
                   overlap: Optional[int] = None) -> Tuple[int, int]:
    """(tile side, overlap) in image pixels; defaults: ``INPUT.MAX_SIZE_TEST`` (divided by the
    ``diameter`` scale) and a quarter of the tile. ValueError when they cannot tile an image."""
    test_size = model.predictor.test_size
    # With a diameter a tile (original pixels) must still reach the network at MAX_SIZE_TEST at most.
    tile = tile_size or (int(test_size / model.input_scale) if model.input_scale else test_size)
    overlap = overlap if overlap is not None else tile // 4
    if tile < 16 or not 0 <= overlap < tile:
        raise ValueError(f"--tile-size {tile} / --tile-overlap {overlap}: expected tile >= 16 and 0 <= overlap < tile")
    return tile, overlap


def _segment_bgr(image_bgr: np.ndarray, model: LoadedModel, tile: int, overlap: int,
                 progress=None) -> Tuple[np.ndarray, List[Detection]]:
    dets = predict_tiled(image_bgr, model.predictor, tile_size=tile, overlap=overlap, progress=progress)
    return label_image(dets, image_bgr.shape[:2])


def segment_image(image: np.ndarray, model: LoadedModel, *, tile_size: Optional[int] = None,
                  overlap: Optional[int] = None,
                  progress: Optional[Callable[[Iterable], Iterable]] = None) -> Tuple[np.ndarray, List[Detection]]:
    """Segment one 2-D image.

    Args:
        image: (H, W) or (H, W, 1|3|4) RGB(A), any dtype (as read from a file or a napari
            layer); normalised exactly as in training (:func:`~objguided_d2.data.io.to_bgr_uint8`).
        tile_size, overlap: see :func:`default_tiling`.
        progress: optional wrapper of the tile iterator (e.g. a tqdm factory).
    Returns:
        labels: (H, W) uint16 (uint32 beyond 65535 objects), 0 = background, ids by decreasing score.
        kept: the detections that kept pixels; ``kept[k]`` is label ``k + 1``.
    """
    tile, overlap = default_tiling(model, tile_size, overlap)
    return _segment_bgr(to_bgr_uint8(np.asarray(image)), model, tile, overlap, progress)


@dataclass
class PredictOptions:
    """What :func:`predict_to_folder` writes besides labels and tables, and how it tiles."""

    overlay: bool = False
    roi_zip: bool = False
    geojson: bool = False
    overwrite: bool = False
    recursive: bool = False
    tile_size: Optional[int] = None
    tile_overlap: Optional[int] = None


@dataclass
class PredictSummary:
    """Images written, objects found, one line per failure, wall time, stopped by ``should_stop``."""

    images: int = 0
    objects: int = 0
    failures: List[str] = field(default_factory=list)
    seconds: float = 0.0
    cancelled: bool = False


def prepare_output_dir(output_dir: str, *, overwrite: bool = False) -> Dict[str, str]:
    """Create ``output_dir`` and return the paths of its tables (``objects.csv``, ...).

    Raises:
        NotADirectoryError: ``output_dir`` is a file.
        OutputExistsError: a table exists and ``overwrite`` is False (checked before any work).
    """
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(f"{output_dir}: --output exists and is not a folder")
    os.makedirs(output_dir, exist_ok=True)
    paths = {name: os.path.join(output_dir, name) for name in TABLES}
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{existing[0]}: output file exists (pass --overwrite to replace it, or choose another --output)")
    return paths


def _page_paths(output_dir: str, name: str, options: PredictOptions) -> Dict[str, Optional[str]]:
    """The per-image output files; None for the ones not asked for."""
    def path(suffix, wanted=True):
        return os.path.join(output_dir, name + suffix) if wanted else None

    return {"labels": path("_labels.tif"), "overlay": path("_overlay.png", options.overlay),
            "rois": path("_rois.zip", options.roi_zip), "geojson": path(".geojson", options.geojson)}


class _FolderRun:
    """The state of one :func:`predict_to_folder` call: names used, table rows, failures."""

    def __init__(self, output_dir: str, model: LoadedModel, options: PredictOptions, tiling: Tuple[int, int],
                 on_failure: Optional[Callable[[str], None]], tile_progress):
        self.output_dir, self.model, self.options, self.tiling = output_dir, model, options, tiling
        self.on_failure, self.tile_progress = on_failure, tile_progress
        self.rows: List[Dict] = []
        self.coco: List[Dict] = []
        self.images: List[Dict] = []
        self.failures: List[str] = []
        self.used_names = set()

    def fail(self, msg: str) -> None:
        self.failures.append(msg)
        if self.on_failure is not None:
            self.on_failure(msg)

    def unique_name(self, name: str) -> str:
        out, k = name, 2
        while out in self.used_names:  # same stem in two folders: keep both
            out, k = f"{name}_{k}", k + 1
        self.used_names.add(out)
        return out

    def read(self, path: str) -> List[InputPage]:
        """Every page of ``path``; [] (and a failure) when the file cannot be read."""
        try:
            return list(iter_pages(path))
        except (DataError, OSError) as e:
            self.fail(str(e))
            return []

    def add_page(self, page: InputPage) -> None:
        """Predict one page and write its files; a problem becomes one failure line."""
        name = self.unique_name(page.name)
        paths = _page_paths(self.output_dir, name, self.options)
        overwrite = self.options.overwrite
        for f in paths.values():  # before predicting: nothing the user has is replaced unasked
            if f and os.path.exists(f) and not overwrite:
                self.fail(f"{f}: output file exists (pass --overwrite to replace it)")
                return
        try:
            labels, kept = _segment_bgr(page.image, self.model, *self.tiling, progress=self.tile_progress)
        except Exception as e:
            # Deliberately broad, around the model call only: a model failure on one image (out of
            # memory, a size it cannot take) must not lose the others. Writers' errors are not hidden.
            logger.debug("prediction of %s failed", page.path, exc_info=True)
            where = page.path + (f" page {page.page}" if page.num_pages > 1 else "")
            self.fail(f"{where}: prediction failed ({type(e).__name__}: {e})")
            return
        image_id = len(self.images) + 1
        try:
            rows, coco = _write_page(page, name, image_id, labels, kept, paths, self.model, overwrite)
        except (DataError, OutputExistsError, OSError) as e:
            self.fail(str(e))
            return
        self.rows.extend(rows)
        self.coco.extend(coco)
        self.images.append(_image_record(page, name, image_id, labels, paths))

    def write_tables(self, tables: Dict[str, str]) -> None:
        """objects.csv, predictions_coco.json and images.json of the images done (none: nothing)."""
        if not self.images:
            return
        m, overwrite = self.model, self.options.overwrite
        categories = [
            {"id": int(m.category_ids[c]) if m.category_ids else c,
             "name": m.class_names[c] if m.class_names else str(c)}
            for c in range(m.cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        ]
        try:
            write_csv(tables["objects.csv"], self.rows, overwrite=overwrite)
            write_json(tables["predictions_coco.json"], self.coco, overwrite=overwrite)
            write_json(tables["images.json"], {"images": self.images, "categories": categories}, overwrite=overwrite)
        except (OutputExistsError, OSError) as e:
            self.fail(str(e))


def _write_page(page: InputPage, name: str, image_id: int, labels: np.ndarray, kept: List[Detection],
                paths: Dict[str, Optional[str]], model: LoadedModel, overwrite: bool) -> Tuple[List[Dict], List[Dict]]:
    """Write the label image and the asked-for extras of one page; return its table rows and COCO entries."""
    rows, coco = measure_objects(labels, kept, image_name=name, image_id=image_id,
                                 class_names=model.class_names, category_ids=model.category_ids)
    write_label_tif(paths["labels"], labels, overwrite=overwrite)
    if paths["overlay"]:
        write_overlay(paths["overlay"], page.image, labels, metadata=model.metadata, overwrite=overwrite)
    if paths["rois"]:
        from .export_roi import write_roi_zip

        position = page.page if page.num_pages > 1 else None
        write_roi_zip(paths["rois"], labels, [d.score for d in kept], position=position, overwrite=overwrite)
    if paths["geojson"]:
        from .export_geojson import write_geojson

        write_geojson(paths["geojson"], labels, rows, overwrite=overwrite)
    return rows, coco


def _image_record(page: InputPage, name: str, image_id: int, labels: np.ndarray,
                  paths: Dict[str, Optional[str]]) -> Dict:
    """The images.json entry of one page."""
    def base(key):
        return os.path.basename(paths[key]) if paths[key] else None

    return {"id": image_id, "file_name": os.path.abspath(page.path), "page": page.page, "name": name,
            "height": int(labels.shape[0]), "width": int(labels.shape[1]), "labels": base("labels"),
            "overlay": base("overlay"), "rois": base("rois"), "geojson": base("geojson")}


def _predict_files(run: _FolderRun, files: List[str], on_image, should_stop) -> bool:
    """Predict ``files`` page by page; True when ``should_stop`` stopped it."""
    def stop():
        return should_stop is not None and bool(should_stop())

    for done, path in enumerate(files, 1):
        if stop():
            return True
        for k, page in enumerate(run.read(path)):
            if k and stop():  # a long stack stops after its current page too
                return True
            run.add_page(page)
        if on_image is not None:
            on_image(done, len(files), path)
    return False


def predict_to_folder(inputs: Sequence[str], output_dir: str, model: LoadedModel,
                      options: Optional[PredictOptions] = None, *,
                      on_image: Optional[Callable[[int, int, str], None]] = None,
                      should_stop: Optional[Callable[[], bool]] = None,
                      on_failure: Optional[Callable[[str], None]] = None,
                      tile_progress: Optional[Callable[[Iterable], Iterable]] = None) -> PredictSummary:
    """Segment every image of ``inputs`` (files, folders, glob patterns) into ``output_dir``:
    ``<name>_labels.tif`` (+ overlay / ROI zip / GeoJSON per ``options``), then ``objects.csv``,
    ``predictions_coco.json`` and ``images.json`` for the images done (see :mod:`.cli`).

    Args:
        on_image: ``on_image(done, total, path)`` after each input file (all pages of a stack),
            ``done`` of ``total`` files.
        should_stop: polled before each image; True stops there (``cancelled``), and the tables
            of the images done are still written.
        on_failure: called with each failure line as it happens.
        tile_progress: wrapper of the tile iterator of large images (e.g. a tqdm factory).
    Raises:
        OutputExistsError / NotADirectoryError: from :func:`prepare_output_dir`, before any work.
        ValueError: ``options`` tiling that cannot tile (:func:`default_tiling`).
    """
    options = options or PredictOptions()
    t0 = time.perf_counter()
    tables = prepare_output_dir(output_dir, overwrite=options.overwrite)
    tiling = default_tiling(model, options.tile_size, options.tile_overlap)
    run = _FolderRun(output_dir, model, options, tiling, on_failure, tile_progress)
    files, missing = collect_inputs(inputs, recursive=options.recursive)
    for msg in missing:
        run.fail(msg)
    cancelled = _predict_files(run, files, on_image, should_stop)
    run.write_tables(tables)
    return PredictSummary(images=len(run.images), objects=len(run.rows), failures=run.failures,
                          seconds=time.perf_counter() - t0, cancelled=cancelled)

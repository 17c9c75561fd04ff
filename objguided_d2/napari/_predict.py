"""The one door from the napari widgets to predict's code paths.

TEMPORARY: ``objguided_d2/predict/pipeline.py`` (branch ``predict``) will provide these names;
until it lands on main they are assembled here from today's ``predict`` functions, following
``objguided_d2/predict/cli.py`` step by step. When it lands this module becomes
``from objguided_d2.predict.pipeline import ...``.
"""
import os
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from objguided_d2.predict.predictor import InstancePredictor, ModelError, load_config, resolve_model_dir
from objguided_d2.predict.tiling import predict_tiled
from objguided_d2.predict.writers import label_image

__all__ = [
    "ModelError", "LoadedModel", "load_predictor", "default_tiling", "segment_image",
    "PredictOptions", "PredictSummary", "predict_to_folder",
]


@dataclass
class LoadedModel:
    predictor: InstancePredictor
    cfg: object
    input_scale: Optional[float]
    class_names: Optional[List[str]]
    category_ids: Optional[List[int]]
    metadata: object


def load_predictor(model_dir=None, config_file=None, weights=None, *, device="cpu", score_thresh=None,
                   mask_thresh=None, diameter=None, opts=(), trust_pickle=False) -> LoadedModel:
    """A ready predictor from a model folder or a config (+ weights); ModelError in one line."""
    from objguided_d2.predict.cli import _class_info

    if bool(model_dir) == bool(config_file):
        raise ModelError("give exactly one of a model folder or a config file")
    for name, v in (("score threshold", score_thresh), ("mask threshold", mask_thresh)):
        if v is not None and not 0.0 <= v <= 1.0:
            raise ModelError(f"{name} {v}: expected a value in [0, 1]")
    if model_dir:
        config_file, found = resolve_model_dir(model_dir)
        weights = weights or found
    input_scale = None
    if diameter is not None:
        from objguided_d2.data.object_size import read_size_stats
        from objguided_d2.predict.size import diameter_scale

        try:
            stats = read_size_stats(model_dir or os.path.dirname(os.path.abspath(config_file)))
            input_scale = diameter_scale(stats["median_diameter_input"], diameter)
        except ValueError as e:
            raise ModelError(str(e)) from e
    cfg = load_config(config_file, opts, score_thresh=score_thresh, mask_thresh=mask_thresh, device=device)
    predictor = InstancePredictor(cfg, weights or cfg.MODEL.WEIGHTS, score_thresh=score_thresh,
                                  mask_thresh=mask_thresh, trust_pickle=trust_pickle, input_scale=input_scale)
    names, ids, meta = _class_info(cfg)
    return LoadedModel(predictor, cfg, input_scale, names, ids, meta)


def default_tiling(model: LoadedModel, tile_size=None, overlap=None) -> Tuple[int, int]:
    """(tile, overlap) as the CLI chooses them; ModelError for impossible values."""
    p = model.predictor
    tile = tile_size or (int(p.test_size / model.input_scale) if model.input_scale else p.test_size)
    overlap = overlap if overlap is not None else tile // 4
    if tile < 16 or not 0 <= overlap < tile:
        raise ModelError(f"tile size {tile} / overlap {overlap}: expected tile >= 16 and 0 <= overlap < tile")
    return tile, overlap


def _segment_bgr(image_bgr, model, tile, overlap, progress=None):
    dets = predict_tiled(image_bgr, model.predictor, tile_size=tile, overlap=overlap, progress=progress)
    return label_image(dets, image_bgr.shape[:2])


def segment_image(image: np.ndarray, model: LoadedModel, *, tile_size=None, overlap=None, progress=None):
    """(labels, kept) of one (H, W[, C]) RGB(A) image of any dtype, normalised and tiled like the CLI."""
    from objguided_d2.data.io import to_bgr_uint8

    tile, overlap = default_tiling(model, tile_size, overlap)
    return _segment_bgr(to_bgr_uint8(np.asarray(image)), model, tile, overlap, progress)


@dataclass
class PredictOptions:
    overlay: bool = False
    roi_zip: bool = False
    geojson: bool = False
    overwrite: bool = False
    recursive: bool = False
    tile_size: Optional[int] = None
    tile_overlap: Optional[int] = None


@dataclass
class PredictSummary:
    images: int = 0
    objects: int = 0
    failures: List[str] = field(default_factory=list)
    seconds: float = 0.0
    cancelled: bool = False


def predict_to_folder(inputs: Sequence[str], output_dir: str, model: LoadedModel, options: PredictOptions, *,
                      on_image: Optional[Callable[[int, int, str], None]] = None,
                      should_stop: Optional[Callable[[], bool]] = None) -> PredictSummary:
    """The CLI's loop (``objguided_d2/predict/cli.py``) with callbacks; ``on_image(done, total, path)``."""
    from objguided_d2.data.io import DataError
    from objguided_d2.predict.inputs import collect_inputs, iter_pages
    from objguided_d2.predict.writers import (
        OutputExistsError, measure_objects, write_csv, write_json, write_label_tif, write_overlay,
    )

    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise OutputExistsError(f"{output_dir}: output exists and is not a folder")
    csv_path, coco_path, images_path = (os.path.join(output_dir, f) for f in
                                        ("objects.csv", "predictions_coco.json", "images.json"))
    for f in (csv_path, coco_path, images_path):
        if os.path.exists(f) and not options.overwrite:
            raise OutputExistsError(f"{f}: output file exists (choose another output folder)")
    files, failures = collect_inputs(list(inputs), recursive=options.recursive)
    if not files:
        raise DataError("; ".join(failures) or "no input images")
    tile, overlap = default_tiling(model, options.tile_size, options.tile_overlap)
    os.makedirs(output_dir, exist_ok=True)
    s = PredictSummary(failures=list(failures))
    rows, coco, images, used = [], [], [], set()
    t0 = time.perf_counter()
    for i, path in enumerate(files):
        if should_stop is not None and should_stop():
            s.cancelled = True
            break
        try:
            pages = list(iter_pages(path))
        except (DataError, OSError) as e:
            s.failures.append(str(e))
            pages = []
        for page in pages:
            name, k = page.name, 2
            while name in used:
                name, k = f"{page.name}_{k}", k + 1
            used.add(name)
            out = {key: os.path.join(output_dir, f"{name}{suf}") if on else None for key, suf, on in (
                ("labels", "_labels.tif", True), ("overlay", "_overlay.png", options.overlay),
                ("rois", "_rois.zip", options.roi_zip), ("geojson", ".geojson", options.geojson))}
            try:
                for f in out.values():
                    if f and os.path.exists(f) and not options.overwrite:
                        raise OutputExistsError(f"{f}: output file exists (choose another output folder)")
                labels, kept = _segment_bgr(page.image, model, tile, overlap)
                image_id = len(images) + 1
                r, c = measure_objects(labels, kept, image_name=name, image_id=image_id,
                                       class_names=model.class_names, category_ids=model.category_ids)
                write_label_tif(out["labels"], labels, overwrite=options.overwrite)
                if out["overlay"]:
                    write_overlay(out["overlay"], page.image, labels, metadata=model.metadata,
                                  overwrite=options.overwrite)
                if out["rois"]:
                    from objguided_d2.predict.export_roi import write_roi_zip

                    write_roi_zip(out["rois"], labels, [d.score for d in kept],
                                  position=page.page if page.num_pages > 1 else None, overwrite=options.overwrite)
                if out["geojson"]:
                    from objguided_d2.predict.export_geojson import write_geojson

                    write_geojson(out["geojson"], labels, r, overwrite=options.overwrite)
            except (DataError, OutputExistsError, OSError) as e:
                s.failures.append(str(e))
                continue
            except Exception as e:  # one image's model failure must not lose the others
                s.failures.append(f"{path}: prediction failed ({type(e).__name__}: {e})")
                continue
            rows.extend(r)
            coco.extend(c)
            s.objects += len(r)
            images.append({"id": image_id, "file_name": os.path.abspath(path), "page": page.page, "name": name,
                           "height": int(labels.shape[0]), "width": int(labels.shape[1]),
                           **{k: (os.path.basename(v) if v else None) for k, v in out.items()}})
        if on_image is not None:
            on_image(i + 1, len(files), path)
    if images:
        n = model.cfg.MODEL.ROI_HEADS.NUM_CLASSES
        cats = [{"id": int(model.category_ids[c]) if model.category_ids else c,
                 "name": model.class_names[c] if model.class_names else str(c)} for c in range(n)]
        write_csv(csv_path, rows, overwrite=options.overwrite)
        write_json(coco_path, coco, overwrite=options.overwrite)
        write_json(images_path, {"images": images, "categories": cats}, overwrite=options.overwrite)
    s.images = len(images)
    s.seconds = time.perf_counter() - t0
    return s

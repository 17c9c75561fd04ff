"""objguided-predict: segment every object in microscopy / plant images with a trained model.

Usage::

    objguided-predict IMAGES... --model-dir output/my_run --output results/
    objguided-predict data/*.tif --config-file config.yaml --weights model_final.pth \\
        --output results/ --device cuda --score-thresh 0.5 --overlay
    python tools/predict.py plates/ --recursive --model-dir output/my_run --output results/

IMAGES are files, folders (``--recursive`` to descend) or quoted glob patterns
(``"plates/**/*.png"``). PNG, JPEG, BMP and TIFF are read: 8/16/32-bit, grayscale, RGB or RGBA;
every page of a multi-page TIFF is one image named ``<stem>_p<k>``. Intensities are normalised
exactly as in training (16-bit data stretched from its 0.1..99.9th percentile, never clipped).

Model: ``--model-dir DIR`` (a ``tools/train_net.py`` output folder: ``config.yaml`` and the
checkpoint named in ``last_checkpoint``, else ``model_final.pth``) or ``--config-file`` plus
``--weights`` (default: ``MODEL.WEIGHTS`` of the config). Any Detectron2 instance-segmentation
config works (ours, Mask R-CNN, PointRend). ``--opts KEY VALUE ...`` changes config keys, e.g.
``--opts TEST.DETECTIONS_PER_IMAGE 500`` for crowded images with Mask R-CNN. Weights load with
``torch.load(weights_only=True)``; ``.pkl`` files are Python pickles that can run code when
loaded and need ``--trust-pickle``. Weights that do not fit the config (missing parameters,
other shapes) stop with an error.

Large images: an image with a side longer than ``--tile-size`` (default: the model's
``INPUT.MAX_SIZE_TEST``) is predicted in tiles overlapping by ``--tile-overlap`` pixels
(default: a quarter of the tile); objects cut by tile borders are merged into one (see
``objguided_d2/predict/tiling.py``). Use an overlap larger than your largest object.

Outputs in ``--output DIR`` (existing files are never replaced unless ``--overwrite``; every file
is written to a temporary name and then renamed):

* ``<name>_labels.tif``: uint16 label image (uint32 beyond 65535 objects), 0 = background;
  where masks overlap the higher score wins; ids 1..N by decreasing score. An image where
  nothing is found gives an all-zero image.
* ``objects.csv``: one row per object: image, id (= label id), class_id, class, score, area,
  centroid_y, centroid_x, bbox_min_row, bbox_min_col, bbox_max_row, bbox_max_col (max
  exclusive), perimeter, eccentricity (scikit-image ``regionprops`` of the label image; pixels).
* ``predictions_coco.json``: COCO results list (image_id, category_id, bbox [x, y, w, h],
  score, segmentation as compressed RLE, label_id), the same pixels as the label image.
  ``category_id`` is the dataset's id when the config's dataset is registered, else the
  0-based class index as Detectron2 writes it.
* ``images.json``: ``{"images": [{id, file_name, page, name, height, width, labels,
  overlay, rois, geojson}], "categories": [{id, name}]}`` mapping COCO image ids to files.
* ``<name>_overlay.png`` with ``--overlay``: the objects drawn on the image.
* ``<name>_rois.zip`` with ``--roi-zip``: an ImageJ / Fiji ROI set, one polygon ROI per object
  named ``<id>_s<score>`` (``<id>-<part>_s<score>`` for the parts of an object in several pieces;
  holes kept as keyhole cuts), see ``objguided_d2/predict/export_roi.py``.
* ``<name>.geojson`` with ``--geojson``: a QuPath FeatureCollection (objectType ``detection``,
  Polygon / MultiPolygon with holes, pixel-corner coordinates, the ``objects.csv`` measurements
  as properties), see ``objguided_d2/predict/export_geojson.py``.

Size-aware prediction: ``--diameter D`` (the median object diameter in your images, in pixels)
resizes each image so that its objects match the size the model was trained on (the model
folder's ``object_size.json``, written by ``tools/train_net.py``) and maps every output back to
the original pixel grid (``objguided_d2/predict/size.py``).

Unreadable inputs are reported one line each and skipped; the exit code is 0 if every image was
processed, 1 if some failed, 2 for a usage or model error.
"""
import argparse
import logging
import os
import sys
import time
from typing import List, Optional

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="objguided-predict",
        description="Predict instance label maps, object tables and COCO results for images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Usage::", 1)[1].split("\n\n", 2)[1] if __doc__ else None,
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGES", help="image files, folders or glob patterns")
    p.add_argument("--output", "-o", required=True, help="output folder (created if missing)")
    p.add_argument("--recursive", "-r", action="store_true", help="search folders recursively")
    m = p.add_argument_group("model")
    m.add_argument("--model-dir", help="tools/train_net.py output folder (config.yaml + checkpoint)")
    m.add_argument("--config-file", help="Detectron2 config file (with --weights)")
    m.add_argument("--weights", help="checkpoint (.pth); default: MODEL.WEIGHTS of the config")
    m.add_argument("--trust-pickle", action="store_true",
                   help="allow .pkl / full-pickle checkpoints (these can run code when loaded)")
    m.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    m.add_argument("--score-thresh", type=float, help="keep objects with score above this (0..1)")
    m.add_argument("--mask-thresh", type=float, help="mask probability threshold (0..1)")
    # The training data's class names: `--dataset` as given to tools/train_net.py (optional).
    from objguided_d2.data.register import add_dataset_arguments

    add_dataset_arguments(m)
    m.add_argument("--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE",
                   help="config overrides, KEY VALUE pairs (must come last)")
    m.add_argument("--diameter", type=float, metavar="D",
                   help="median object diameter in the images (pixels): rescale them to the training object "
                        "size (needs object_size.json in the model folder)")
    t = p.add_argument_group("tiling")
    t.add_argument("--tile-size", type=int, help="tile side in pixels (default: INPUT.MAX_SIZE_TEST, "
                   "divided by the --diameter scale)")
    t.add_argument("--tile-overlap", type=int, help="tile overlap in pixels (default: tile size // 4)")
    o = p.add_argument_group("outputs")
    o.add_argument("--overlay", action="store_true", help="also write <name>_overlay.png")
    o.add_argument("--roi-zip", action="store_true", help="also write <name>_rois.zip (ImageJ / Fiji ROI Manager)")
    o.add_argument("--geojson", action="store_true", help="also write <name>.geojson (QuPath objects)")
    o.add_argument("--overwrite", action="store_true", help="replace existing output files")
    o.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _error(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"error: {msg}", file=sys.stderr)


def _class_info(cfg):
    """(class names, COCO category id per contiguous class) from the config's dataset metadata."""
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


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    if args.dataset:
        from objguided_d2.data.register import register_from_args

        try:
            register_from_args(args)
        except (ValueError, OSError) as e:
            _error(f"--dataset: {e}")
            return 2
    if bool(args.model_dir) == bool(args.config_file):
        _error("give exactly one of --model-dir DIR or --config-file FILE")
        return 2
    for flag, v in (("--score-thresh", args.score_thresh), ("--mask-thresh", args.mask_thresh)):
        if v is not None and not 0.0 <= v <= 1.0:
            _error(f"{flag} {v}: expected a value in [0, 1]")
            return 2
    if args.diameter is not None and not (args.diameter > 0 and args.diameter < float("inf")):
        _error(f"--diameter {args.diameter}: expected a positive number of pixels")
        return 2
    if args.opts and len(args.opts) % 2:
        _error(f"--opts needs KEY VALUE pairs, got {len(args.opts)} items")
        return 2

    out_dir = args.output
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        _error(f"{out_dir}: --output exists and is not a folder")
        return 2
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, "objects.csv")
    coco_path = os.path.join(out_dir, "predictions_coco.json")
    images_path = os.path.join(out_dir, "images.json")
    existing = [f for f in (csv_path, coco_path, images_path) if os.path.exists(f)]
    if existing and not args.overwrite:
        _error(f"{existing[0]}: output file exists (pass --overwrite to replace it, or choose another --output)")
        return 2

    from objguided_d2.data.io import DataError

    from .inputs import collect_inputs, iter_pages
    from .predictor import InstancePredictor, ModelError, load_predict_config, resolve_model_dir
    from .tiling import predict_tiled
    from .writers import (
        OutputExistsError, label_image, measure_objects, write_csv, write_json, write_label_tif,
        write_overlay,
    )

    files, failures = collect_inputs(args.inputs, recursive=args.recursive)
    for msg in failures:
        _error(msg)
    if not files:
        _error("no input images")
        return 2

    try:
        if args.model_dir:
            config_file, weights = resolve_model_dir(args.model_dir)
            weights = args.weights or weights
        else:
            config_file, weights = args.config_file, args.weights
        input_scale = None
        if args.diameter is not None:
            from objguided_d2.data.object_size import read_size_stats

            from .size import diameter_scale

            try:
                stats = read_size_stats(args.model_dir or os.path.dirname(os.path.abspath(config_file)))
                input_scale = diameter_scale(stats["median_diameter_input"], args.diameter)
            except ValueError as e:
                raise ModelError(str(e)) from e
        cfg = load_predict_config(config_file, args.opts or (), score_thresh=args.score_thresh,
                          mask_thresh=args.mask_thresh, device=args.device)
        predictor = InstancePredictor(cfg, weights or cfg.MODEL.WEIGHTS, score_thresh=args.score_thresh,
                                      mask_thresh=args.mask_thresh,
                                      trust_pickle=args.trust_pickle, input_scale=input_scale)
    except ModelError as e:
        _error(str(e))
        return 2

    # With --diameter a tile (original pixels) must still reach the network at MAX_SIZE_TEST at most.
    tile = args.tile_size or (int(predictor.test_size / input_scale) if input_scale else predictor.test_size)
    overlap = args.tile_overlap if args.tile_overlap is not None else tile // 4
    if tile < 16 or not 0 <= overlap < tile:
        _error(f"--tile-size {tile} / --tile-overlap {overlap}: expected tile >= 16 and 0 <= overlap < tile")
        return 2
    class_names, category_ids, meta = _class_info(cfg)

    from tqdm import tqdm

    rows, coco, images = [], [], []
    used_names = set()
    n_objects, t0 = 0, time.perf_counter()

    def tile_bar(tiles):
        return tqdm(tiles, desc="  tiles", leave=False, disable=args.no_progress, unit="tile")

    bar = tqdm(files, desc="images", disable=args.no_progress, unit="file")
    for path in bar:
        try:
            pages = list(iter_pages(path))
        except (DataError, OSError) as e:
            failures.append(str(e))
            _error(str(e))
            continue
        for page in pages:
            name, k = page.name, 2
            while name in used_names:  # same stem in two folders: keep both
                name, k = f"{page.name}_{k}", k + 1
            used_names.add(name)
            where = f"{path}" + (f" page {page.page}" if page.num_pages > 1 else "")
            lab_path = os.path.join(out_dir, f"{name}_labels.tif")
            ov_path = os.path.join(out_dir, f"{name}_overlay.png") if args.overlay else None
            roi_path = os.path.join(out_dir, f"{name}_rois.zip") if args.roi_zip else None
            gj_path = os.path.join(out_dir, f"{name}.geojson") if args.geojson else None
            try:
                for f in (lab_path, ov_path, roi_path, gj_path):
                    if f and os.path.exists(f) and not args.overwrite:
                        raise OutputExistsError(f"{f}: output file exists (pass --overwrite to replace it)")
                dets = predict_tiled(page.image, predictor, tile_size=tile, overlap=overlap, progress=tile_bar)
                labels, kept = label_image(dets, page.image.shape[:2])
                image_id = len(images) + 1
                r, c = measure_objects(labels, kept, image_name=name, image_id=image_id,
                                       class_names=class_names, category_ids=category_ids)
                write_label_tif(lab_path, labels, overwrite=args.overwrite)
                if ov_path:
                    write_overlay(ov_path, page.image, labels, metadata=meta, overwrite=args.overwrite)
                if roi_path:
                    from .export_roi import write_roi_zip

                    position = page.page if page.num_pages > 1 else None
                    write_roi_zip(roi_path, labels, [d.score for d in kept], position=position,
                                  overwrite=args.overwrite)
                if gj_path:
                    from .export_geojson import write_geojson

                    write_geojson(gj_path, labels, r, overwrite=args.overwrite)
            except (DataError, OutputExistsError, OSError) as e:
                failures.append(str(e))
                _error(str(e))
                continue
            except Exception as e:  # a model failure on one image must not lose the others
                msg = f"{where}: prediction failed ({type(e).__name__}: {e})"
                failures.append(msg)
                _error(msg)
                continue
            rows.extend(r)
            coco.extend(c)
            n_objects += len(r)
            images.append({
                "id": image_id, "file_name": os.path.abspath(path), "page": page.page, "name": name,
                "height": int(labels.shape[0]), "width": int(labels.shape[1]),
                "labels": os.path.basename(lab_path), "overlay": os.path.basename(ov_path) if ov_path else None,
                "rois": os.path.basename(roi_path) if roi_path else None,
                "geojson": os.path.basename(gj_path) if gj_path else None,
            })
            bar.set_postfix(objects=n_objects)
    bar.close()

    if images:
        n = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        categories = [
            {"id": int(category_ids[c]) if category_ids else c, "name": class_names[c] if class_names else str(c)}
            for c in range(n)
        ]
        try:
            write_csv(csv_path, rows, overwrite=args.overwrite)
            write_json(coco_path, coco, overwrite=args.overwrite)
            write_json(images_path, {"images": images, "categories": categories}, overwrite=args.overwrite)
        except (OutputExistsError, OSError) as e:
            failures.append(str(e))
            _error(str(e))

    dt = time.perf_counter() - t0
    per = dt / len(images) if images else 0.0
    print(f"{len(images)} images, {n_objects} objects, {per:.2f} s per image; outputs in {out_dir}",
          file=sys.stderr)
    if failures:
        print(f"{len(failures)} failed:", file=sys.stderr)
        for msg in failures:
            print(f"  {msg}", file=sys.stderr)
        return 1
    return 0

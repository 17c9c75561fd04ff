"""objguided-predict: segment every object in microscopy / plant images with a trained model.

Usage::

    objguided-predict IMAGES... --model-dir output/my_run --output results/
    objguided-predict data/*.tif --config-file config.yaml --weights model_final.pth \\
        --output results/ --device cuda --score-thresh 0.5 --overlay
    python tools/predict.py plates/ --recursive --model-dir output/my_run --output results/
    python -m objguided_d2.predict IMAGES... --model-dir output/my_run --output results/

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

From Python (a notebook, a napari widget): :mod:`objguided_d2.predict.pipeline` (``load_predictor``,
``segment_image``, ``predict_to_folder``); this module only parses the command line and maps the
library's errors to messages and exit codes.
"""
import argparse
import logging
import sys
from typing import List, Optional, Tuple

from .inputs import collect_inputs
from .pipeline import (
    LoadedModel, ModelError, PredictOptions, PredictSummary, check_model_args, default_tiling, load_predictor,
    predict_to_folder, prepare_output_dir,
)

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


class _UsageError(Exception):
    """A bad flag, input or model: one line ``error: ...`` and exit code 2."""


def _error(msg: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"error: {msg}", file=sys.stderr)


def _register_datasets(args) -> None:
    """``--dataset`` specs, for the training data's class names."""
    if not args.dataset:
        return
    from objguided_d2.data.register import register_from_args

    try:
        register_from_args(args)
    except (ValueError, OSError) as e:
        raise _UsageError(f"--dataset: {e}") from None


def _collect(args) -> Tuple[List[str], List[str]]:
    """(image files, one line per argument that matched nothing); none at all is a usage error."""
    files, failures = collect_inputs(args.inputs, recursive=args.recursive)
    for msg in failures:
        _error(msg)
    if not files:
        raise _UsageError("no input images")
    return files, failures


def _prepare(args) -> Tuple[List[str], List[str], LoadedModel, PredictOptions]:
    """Everything that can refuse the command before the first image: flags, output folder, inputs,
    model, tiling, in that order."""
    _register_datasets(args)
    try:
        check_model_args(args.model_dir, args.config_file, score_thresh=args.score_thresh,
                         mask_thresh=args.mask_thresh, diameter=args.diameter, opts=args.opts)
        prepare_output_dir(args.output, overwrite=args.overwrite)  # refuse existing tables before any work
    except (ModelError, OSError) as e:
        raise _UsageError(str(e)) from None
    files, failures = _collect(args)
    try:
        model = load_predictor(args.model_dir, args.config_file, args.weights, device=args.device,
                               score_thresh=args.score_thresh, mask_thresh=args.mask_thresh,
                               diameter=args.diameter, opts=args.opts or (), trust_pickle=args.trust_pickle)
    except ModelError as e:
        raise _UsageError(str(e)) from None
    options = PredictOptions(overlay=args.overlay, roi_zip=args.roi_zip, geojson=args.geojson,
                             overwrite=args.overwrite, recursive=args.recursive, tile_size=args.tile_size,
                             tile_overlap=args.tile_overlap)
    try:
        default_tiling(model, args.tile_size, args.tile_overlap)
    except ValueError as e:
        raise _UsageError(str(e)) from None
    return files, failures, model, options


def _predict(args, files: List[str], model: LoadedModel, options: PredictOptions) -> PredictSummary:
    """:func:`predict_to_folder` with tqdm bars (images, and tiles of large images)."""
    from tqdm import tqdm

    def tile_bar(tiles):
        return tqdm(tiles, desc="  tiles", leave=False, disable=args.no_progress, unit="tile")

    bar = tqdm(total=len(files), desc="images", disable=args.no_progress, unit="file")
    try:
        return predict_to_folder(files, args.output, model, options, on_image=lambda *_: bar.update(1),
                                 on_failure=_error, tile_progress=tile_bar)
    finally:
        bar.close()


def _report(summary: PredictSummary, failures: List[str], out_dir: str) -> int:
    """Print the summary and every failure; the exit code (0: all processed, 1: some failed)."""
    per = summary.seconds / summary.images if summary.images else 0.0
    print(f"{summary.images} images, {summary.objects} objects, {per:.2f} s per image; outputs in {out_dir}",
          file=sys.stderr)
    if not failures:
        return 0
    print(f"{len(failures)} failed:", file=sys.stderr)
    for msg in failures:
        print(f"  {msg}", file=sys.stderr)
    return 1


def main(argv: Optional[List[str]] = None) -> int:
    """The command line (module docstring); returns the exit code 0, 1 or 2."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        files, failures, model, options = _prepare(args)
        summary = _predict(args, files, model, options)
    except (_UsageError, OSError) as e:  # OSError: the tables appeared (another run) since _prepare
        _error(str(e))
        return 2
    return _report(summary, failures + summary.failures, args.output)

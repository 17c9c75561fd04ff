"""Human in the loop without Qt: add an image and its labels to a label-folder dataset, and run
``objguided-train`` on it in a subprocess whose ``metrics.json`` gives the progress.

The training set is the ``labelfolder`` format (``objguided_d2/data/register.py``):
``FOLDER/images/<name>.tif`` and ``FOLDER/labels/<name>_labels.tif``, so the same folder also
trains from the command line with ``--dataset mine=labelfolder:FOLDER``.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from objguided_d2.data.io import IMAGE_EXTENSIONS, read_image_pages
from objguided_d2.utils.io import OutputExistsError, atomic_write, write_json

from ._layers import planes, plane_name

__all__ = [
    "MODEL_INFO", "DATASET_NAME", "add_to_training_set", "training_set_channels", "tiny_config",
    "train_command", "TrainingRun", "read_progress", "model_channels",
]

# Written into a model folder trained from napari: the training images' colour mode.
MODEL_INFO = "napari.json"
DATASET_NAME = "napari_set"
_TRAIN = f"{DATASET_NAME}_train"


def _channels(is_rgb: bool) -> str:
    return "rgb" if is_rgb else "gray"


def training_set_channels(folder: str) -> Optional[str]:
    """'rgb' / 'gray' of the first image already in ``folder/images``, or None if empty."""
    img_dir = os.path.join(folder, "images")
    if not os.path.isdir(img_dir):
        return None
    for f in sorted(os.listdir(img_dir)):
        if os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS:
            page = read_image_pages(os.path.join(img_dir, f))[0]
            return _channels(page.ndim == 3 and page.shape[2] >= 3 and not np.all(page[..., :3] == page[..., :1]))
    return None


def add_to_training_set(folder: str, name: str, image: np.ndarray, rgb: bool, labels: np.ndarray) -> List[str]:
    """Write every plane of ``image`` and ``labels`` as ``<name>[_z<k>]`` into ``folder``.

    Nothing is replaced: a clash with any existing file stops before anything is written
    (OutputExistsError); a failure halfway removes what this call wrote. Returns the new image paths.
    Raises ValueError naming the problem for labels that are not an integer map of the image's shape.
    """
    import tifffile

    from ._layers import check_labels

    check_labels(labels, image, rgb)
    mode = _channels(rgb)
    existing = training_set_channels(folder)
    if existing is not None and existing != mode:
        raise ValueError(f"{folder}: the training set holds {existing} images and this image is {mode}; "
                         "use another training-set folder")
    pairs = list(zip(planes(image, rgb), planes(labels, False)))
    img_dir, lab_dir = os.path.join(folder, "images"), os.path.join(folder, "labels")
    stems = [plane_name(name, k, len(pairs)) for k in range(len(pairs))]
    taken = set()
    for d in (img_dir, lab_dir):
        if os.path.isdir(d):
            taken |= {os.path.splitext(f)[0] for f in os.listdir(d)}
    for s in stems:
        for t in (s, f"{s}_labels", *(f"{s}{suf}" for suf in ("_label", "_mask", "_masks"))):
            if t in taken:
                raise OutputExistsError(f"{folder}: '{t}' is already in the training set; rename the layer "
                                        "or choose another training-set folder")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(lab_dir, exist_ok=True)
    written: List[str] = []
    try:
        for s, (img, lab) in zip(stems, pairs):
            for path, arr in ((os.path.join(img_dir, f"{s}.tif"), img),
                              (os.path.join(lab_dir, f"{s}_labels.tif"), _label_dtype(lab))):
                atomic_write(path, lambda tmp, a=arr: tifffile.imwrite(tmp, a, compression="zlib"))
                written.append(path)
    except BaseException:
        for p in written:  # all or nothing: a half-added image would fail training later
            os.unlink(p)
        raise
    return written[::2]


def _label_dtype(lab: np.ndarray) -> np.ndarray:
    m = int(lab.max()) if lab.size else 0
    return lab.astype(np.uint16 if m <= np.iinfo(np.uint16).max else np.uint32)


def tiny_config() -> str:
    """``configs/tiny/objguided_R18_tiny.yaml`` next to the package (the editable install)."""
    import objguided_d2

    root = os.path.dirname(os.path.dirname(os.path.abspath(objguided_d2.__file__)))
    path = os.path.join(root, "configs", "tiny", "objguided_R18_tiny.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: tiny config not found (install objguided-d2 from its repository with "
                                "pip install -e .[napari], or choose a model folder to fine-tune)")
    return path


def train_command(training_set: str, output_dir: str, *, model_dir: Optional[str] = None, iterations: int = 100,
                  device: str = "cpu", batch: int = 2) -> List[str]:
    """The ``objguided-train`` command line (as ``sys.executable -c ...``) for one napari round.

    ``model_dir``: fine-tune from its config and weights; None: the tiny config from scratch.
    Every image of the training set trains (ratios 1,0,0); there is no evaluation.
    """
    from objguided_d2.predict.predictor import resolve_model_dir

    if iterations < 1:
        raise ValueError(f"iterations {iterations}: expected at least 1")
    if os.path.exists(output_dir):
        raise OutputExistsError(f"{output_dir}: output folder exists; choose a new folder for the trained model")
    if not os.path.isdir(os.path.join(training_set, "images")):
        raise FileNotFoundError(f"{training_set}: no training set here yet (add an image first)")
    if model_dir:
        config, weights = resolve_model_dir(model_dir)
        opts = ["MODEL.WEIGHTS", os.path.abspath(weights)]
    else:
        config, opts = tiny_config(), []
    spec = f"{DATASET_NAME}=labelfolder:{os.path.abspath(training_set)}?ratios=1,0,0"
    opts += [
        "DATASETS.TRAIN", f'("{_TRAIN}",)', "DATASETS.TEST", "()", "TEST.EVAL_PERIOD", "0",
        "SOLVER.MAX_ITER", str(iterations), "SOLVER.STEPS", "()", "SOLVER.CHECKPOINT_PERIOD", str(iterations),
        "SOLVER.WARMUP_ITERS", str(min(10, max(iterations // 4, 0))), "SOLVER.IMS_PER_BATCH", str(batch),
        "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", device, "OUTPUT_DIR", os.path.abspath(output_dir),
    ]
    from objguided_d2.config import load_config

    load_config(config, opts, allow_cuda_fallback=False)  # a refused config: ConfigError (a ValueError) now, here
    code = "from objguided_d2.cli import train_main; train_main()"
    return [sys.executable, "-c", code, "--config-file", config, "--dataset", spec, *opts]


def read_progress(output_dir: str) -> Optional[Dict]:
    """The last ``metrics.json`` record with a loss: iteration, total_loss, eta_seconds (if any)."""
    path = os.path.join(output_dir, "metrics.json")
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:  # the line being written right now
            continue
        if "total_loss" in rec:
            return rec
    return None


def model_channels(model_dir: Optional[str]) -> Optional[str]:
    """'rgb' / 'gray' for a model folder trained from napari, else None (unknown)."""
    if not model_dir:
        return None
    try:
        with open(os.path.join(model_dir, MODEL_INFO)) as f:
            return json.load(f).get("channels")
    except (OSError, ValueError, AttributeError):
        return None


@dataclass
class Progress:
    iteration: int
    max_iter: int
    loss: Optional[float]
    eta_seconds: Optional[float]


class TrainingRun:
    """One ``objguided-train`` subprocess; :meth:`poll` reports progress, :meth:`cancel` stops it."""

    def __init__(self, training_set: str, output_dir: str, *, model_dir: Optional[str] = None,
                 iterations: int = 100, device: str = "cpu"):
        self.cmd = train_command(training_set, output_dir, model_dir=model_dir, iterations=iterations, device=device)
        self.training_set, self.output_dir, self.iterations = training_set, output_dir, iterations
        self.channels = training_set_channels(training_set)
        self._log = tempfile.NamedTemporaryFile("w+", prefix="objguided-train-", suffix=".log", delete=False)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        self.t0 = time.monotonic()
        self.cancelled = False

    def poll(self) -> Progress:
        rec = read_progress(self.output_dir) or {}
        it = int(rec.get("iteration", -1)) + 1
        eta = rec.get("eta_seconds")
        if eta is None and it > 0:  # not every Detectron2 version stores it
            eta = (time.monotonic() - self.t0) / it * (self.iterations - it)
        return Progress(it, self.iterations, rec.get("total_loss"), eta)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def cancel(self) -> None:
        self.cancelled = True  # the watcher reports "cancelled", not the terminated process' failure
        if self.running:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self, n: int = 20) -> str:
        with open(self._log.name) as f:
            return "\n".join(f.read().splitlines()[-n:])

    def error(self) -> str:
        """The one line that says why the run failed (the CLI's ``<Error>: message`` line if any)."""
        lines = [ln for ln in self.log_tail(200).splitlines() if ln.strip()]
        for ln in reversed(lines):
            if ln.split(":", 1)[0].endswith(("Error", "Exception")):
                return ln.strip()
        return lines[-1].strip() if lines else f"exit code {self.proc.returncode}"

    def finish(self) -> str:
        """After a successful run: record the colour mode, return the new model folder."""
        if self.proc.returncode != 0:
            raise RuntimeError(f"training failed: {self.error()} (log: {self._log.name})")
        write_json(os.path.join(self.output_dir, MODEL_INFO),
                   {"channels": self.channels, "training_set": os.path.abspath(self.training_set)})
        return self.output_dir

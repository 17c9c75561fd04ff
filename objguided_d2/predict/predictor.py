"""Build a Detectron2 instance-segmentation model from a config and weights, load the weights
safely, and predict one (H, W, 3) uint8 BGR array at a time.

Works for any Detectron2 meta-architecture returning ``instances`` with ``pred_masks``: our
``ObjGuidedRCNN``, Mask R-CNN and PointRend (``GeneralizedRCNN``).

Weights are read with ``torch.load(weights_only=True)``, which cannot run code. ``.pkl`` files
(Detectron2 model zoo / Caffe2) are Python pickles that can run arbitrary code when loaded, so
they, and ``.pth`` files that need full unpickling, are read only with ``trust_pickle=True``.
A checkpoint that leaves model parameters unset (missing keys) or whose shapes do not match
the config is an error, not Detectron2's warning: predictions of a half-loaded model are noise.
"""
import logging
import os
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.modeling.meta_arch import GeneralizedRCNN
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Instances

from objguided_d2.config import ConfigError
from objguided_d2.config import load_config
from objguided_d2.engine.checkpoint import ObjGuidedCheckpointer, tagged_checkpoint
from objguided_d2.engine.safe_load import UntrustedFileError

__all__ = ["ModelError", "resolve_model_dir", "load_predict_config", "load_weights", "InstancePredictor"]

logger = logging.getLogger(__name__)


class ModelError(RuntimeError):
    """The config, the weights or the device cannot give a working model. Names the file."""


def resolve_model_dir(model_dir: str) -> Tuple[str, str]:
    """(config.yaml, weights) of an output folder of ``tools/train_net.py``.

    The weights are the checkpoint named in ``last_checkpoint`` (the latest one written), else
    ``model_final.pth``.
    """
    if not os.path.isdir(model_dir):
        raise ModelError(f"{model_dir}: model folder not found")
    config = os.path.join(model_dir, "config.yaml")
    if not os.path.isfile(config):
        raise ModelError(f"{model_dir}: no config.yaml in model folder (expected a tools/train_net.py output folder)")
    try:
        weights = tagged_checkpoint(model_dir) or os.path.join(model_dir, "model_final.pth")
    except UntrustedFileError as e:
        raise ModelError(str(e)) from None
    if not os.path.isfile(weights):
        raise ModelError(f"{weights}: weights file not found in model folder {model_dir}")
    return config, weights


def load_predict_config(
    config_file: str,
    opts: Sequence[str] = (),
    *,
    score_thresh: Optional[float] = None,
    mask_thresh: Optional[float] = None,
    device: str = "cpu",
) -> CfgNode:
    """get_cfg + add_objguided_config + file + opts (+ the thresholds), frozen."""
    import objguided_d2  # noqa: F401  (registers ObjGuidedRCNN and its parts)

    try:
        cfg = load_config(config_file, opts, allow_cuda_fallback=False)
    except ConfigError as e:
        raise ModelError(str(e)) from None
    if score_thresh is not None:
        # Every detector's own test threshold, so that nothing below it is even decoded.
        cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = score_thresh
        cfg.MODEL.RETINANET.SCORE_THRESH_TEST = score_thresh
        cfg.MODEL.OBJGUIDED.SCORE_THRESH_TEST = score_thresh
    if mask_thresh is not None:
        cfg.MODEL.OBJGUIDED.MASK_THRESHOLD = mask_thresh
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("--device cuda: no CUDA device is available (use --device cpu)")
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    return cfg


def load_weights(model: torch.nn.Module, weights: str, *, trust_pickle: bool = False) -> None:
    """Load ``weights`` into ``model``; raise ModelError on missing or mismatched keys."""
    if not weights:
        raise ModelError("no weights given (use --weights FILE, --model-dir DIR or MODEL.WEIGHTS)")
    if not os.path.isfile(weights):
        raise ModelError(f"{weights}: weights file not found")
    if os.path.getsize(weights) == 0:
        raise ModelError(f"{weights}: weights file is empty")
    ckpt = ObjGuidedCheckpointer(model, trust_pickle=trust_pickle, save_to_disk=False, log_incompatible=False)
    try:
        ckpt.load(weights)
    except UntrustedFileError as e:
        raise ModelError(str(e)) from None
    except Exception as e:
        raise ModelError(f"{weights}: cannot load weights ({type(e).__name__}: {e})") from e
    inc = ckpt.incompatible
    if inc is None:
        return
    problems = []
    if inc.incorrect_shapes:
        shown = ", ".join(f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in inc.incorrect_shapes[:3])
        problems.append(f"{len(inc.incorrect_shapes)} parameters with a different shape ({shown}, ...)")
    if inc.missing_keys:
        problems.append(f"{len(inc.missing_keys)} model parameters missing ({', '.join(inc.missing_keys[:3])}, ...)")
    if problems:
        raise ModelError(
            f"{weights}: weights do not match the config: " + "; ".join(problems)
            + " -- was this checkpoint trained with this config (NUM_CLASSES, depth, heads)?"
        )
    if inc.unexpected_keys:
        logger.warning(
            "%s: %d checkpoint entries are not used by the model (e.g. %s)",
            weights, len(inc.unexpected_keys), ", ".join(inc.unexpected_keys[:3]),
        )


class InstancePredictor:
    """Like Detectron2's ``DefaultPredictor``, returning ``Instances`` at the input's size.

    Args:
        cfg: a frozen config from :func:`load_predict_config`.
        weights: checkpoint path (``.pth``; ``.pkl`` only with ``trust_pickle``).
        score_thresh: keep instances with a score above it (``None``: the model's own).
        mask_thresh: probability threshold for binarising masks. ``None`` keeps the model's
            own (0.5 for Mask R-CNN / PointRend; ``MODEL.OBJGUIDED.MASK_THRESHOLD`` for ours,
            which :func:`load_predict_config` already set).
        input_scale: resize every image by this fixed factor instead of the config's
            ``ResizeShortestEdge`` (size-aware prediction, :mod:`.size`); outputs stay at the
            input's size.

    Call with an (H, W, 3) uint8 BGR array; returns ``Instances`` with ``pred_masks`` (N, H, W)
    bool, ``scores`` (N,), ``pred_classes`` (N,), on the CPU.
    """

    def __init__(self, cfg: CfgNode, weights: str, *, score_thresh: Optional[float] = None,
                 mask_thresh: Optional[float] = None, trust_pickle: bool = False,
                 input_scale: Optional[float] = None):
        self.cfg = cfg
        try:
            self.model = build_model(cfg)
        except Exception as e:
            raise ModelError(f"cannot build {cfg.MODEL.META_ARCHITECTURE} from the config ({type(e).__name__}: {e})") from e
        self.model.eval()
        load_weights(self.model, weights, trust_pickle=trust_pickle)
        # Also filtered here: a model without one of the config keys load_predict_config sets still obeys.
        self.score_thresh = score_thresh
        self.mask_thresh = None
        if mask_thresh is not None and cfg.MODEL.META_ARCHITECTURE != "ObjGuidedRCNN":
            if not isinstance(self.model, GeneralizedRCNN):
                raise ModelError(f"--mask-thresh is not supported for META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE}")
            # GeneralizedRCNN binarises at 0.5 in detector_postprocess; redo that step ourselves.
            self.mask_thresh = mask_thresh
        min_size, max_size = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
        self.aug = T.ResizeShortestEdge([min_size, min_size], max_size) if min_size > 0 else None
        if input_scale is not None:
            from .size import FixedScale

            self.aug = FixedScale(input_scale)
        self.input_scale = input_scale
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ModelError(f"INPUT.FORMAT {self.input_format!r} is not supported; expected RGB or BGR")

    @property
    def test_size(self) -> int:
        """The longest side the model sees at test time (``INPUT.MAX_SIZE_TEST``)."""
        return int(self.cfg.INPUT.MAX_SIZE_TEST)

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Instances:
        height, width = image.shape[:2]
        img = image[:, :, ::-1] if self.input_format == "RGB" else image
        if self.aug is not None:
            img = self.aug.get_transform(img).apply_image(img)
        tensor = torch.as_tensor(np.ascontiguousarray(img).astype("float32").transpose(2, 0, 1))
        inputs = [{"image": tensor, "height": height, "width": width}]
        if self.mask_thresh is not None:
            raw = self.model.inference(inputs, do_postprocess=False)[0]
            inst = detector_postprocess(raw, height, width, mask_threshold=self.mask_thresh)
        else:
            inst = self.model(inputs)[0]["instances"]
        inst = inst.to("cpu")
        if self.score_thresh is not None and inst.has("scores"):
            inst = inst[inst.scores > self.score_thresh]
        return inst

"""napari plugin tests: each module skips itself without the extra (pip install -e .[napari]);
no display needed (Qt offscreen, a ViewerModel without a canvas)."""
import os

import pytest

if not os.environ.get("DISPLAY"):  # before pytest-qt makes the QApplication; under Xvfb use it
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = os.path.join(ROOT, "objguided_d2", "napari", "napari.yaml")


@pytest.fixture(scope="session")
def plugin():
    """The manifest registered with npe2 (as the napari.manifest entry point does when installed)."""
    import npe2

    pm = npe2.PluginManager.instance()
    mf = npe2.PluginManifest.from_file(MANIFEST)
    try:
        pm.get_manifest(mf.name)  # installed (pip install -e .[napari]): discovered already
    except KeyError:
        pm.register(mf)
    return mf


@pytest.fixture
def viewer(qtbot, plugin):
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture
def notes():
    """Notifications shown during the test: list of (severity, message)."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)

    class Notes:
        def all(self):
            return [(str(n.severity), n.message) for n in notification_manager.records[start:]]

        def errors(self):
            return [m for s, m in self.all() if s == "error"]

    return Notes()


# A tiny Mask R-CNN with random weights finds objects at a low score threshold (a random
# objguided model finds none); any Detectron2 instance-segmentation config is a valid model.
TINY = [
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_HEADS.NUM_CLASSES", "1",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32", "MODEL.ROI_MASK_HEAD.NUM_CONV", "1",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "200", "MODEL.RPN.POST_NMS_TOPK_TEST", "40", "TEST.DETECTIONS_PER_IMAGE", "20",
    "INPUT.MIN_SIZE_TEST", "256", "INPUT.MAX_SIZE_TEST", "256",
]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tools/train_net.py-like folder (config.yaml + model_final.pth + last_checkpoint)."""
    import torch
    from detectron2 import model_zoo
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from objguided_d2 import add_objguided_config

    d = tmp_path_factory.mktemp("model")
    cfg = get_cfg()
    add_objguided_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list(TINY)
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), str(d)).save("model_final")
    (d / "config.yaml").write_text(cfg.dump())
    return str(d)

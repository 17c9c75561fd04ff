"""napari plugin tests: skipped without the extra (pip install -e .[napari]); no display needed
(Qt offscreen, a ViewerModel without a canvas)."""
import os

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before pytest-qt makes the QApplication
pytest.importorskip("napari")
pytest.importorskip("pytestqt")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = os.path.join(ROOT, "objguided_d2", "napari", "napari.yaml")


@pytest.fixture(scope="session")
def plugin():
    """The manifest registered with npe2 (as the napari.manifest entry point does when installed)."""
    import npe2

    pm = npe2.PluginManager.instance()
    mf = npe2.PluginManifest.from_file(MANIFEST)
    if mf.name not in pm._manifests:
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


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tools/train_net.py-like folder with the tiny objguided config and random weights."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    import objguided_d2  # noqa: F401
    from objguided_d2.config import load_config

    d = tmp_path_factory.mktemp("model")
    cfg = load_config(os.path.join(ROOT, "configs", "tiny", "objguided_R18_tiny.yaml"), ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), str(d)).save("model_final")
    (d / "config.yaml").write_text(cfg.dump())
    return str(d)

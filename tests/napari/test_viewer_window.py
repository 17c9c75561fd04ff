"""A real napari window (Qt + OpenGL canvas): the three widgets dock from the manifest, a sample
opens and draws. Runs under an X server (``xvfb-run -a pytest tests/napari``); skipped without one."""
import os

import pytest

pytest.importorskip("napari")  # the [napari] extra
pytest.importorskip("pytestqt")


@pytest.mark.skipif(not os.environ.get("DISPLAY") or os.environ.get("QT_QPA_PLATFORM") == "offscreen",
                    reason="needs an X server (run under xvfb-run)")
def test_widgets_dock_in_a_real_window(qtbot, plugin):
    import napari

    viewer = napari.Viewer(show=True)
    try:
        widgets = [viewer.window.add_plugin_dock_widget("objguided-d2", name)[1]
                   for name in ("Segment", "Predict folder", "Train")]
        viewer.open_sample("objguided-d2", "leaves")
        assert widgets[0].image.choices == ("leaves",)  # the docked widget follows the viewer's layers
        assert widgets[2].labels_layer.choices == ("leaves ground truth",)
        from objguided_d2.napari._segment import segment_widgets

        # each widget gets its own proxy of the viewer; Train still finds Segment to hand it a model
        assert segment_widgets(widgets[2].viewer) == [widgets[0]]
        shot = viewer.screenshot(canvas_only=True)
        assert shot.ndim == 3 and shot[..., :3].std() > 5  # the leaves are drawn, not a blank canvas
    finally:
        viewer.close()

"""The manifest, the sample data and the writers, through npe2 as napari uses them."""
import os

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")  # the [napari] extra
pytest.importorskip("pytestqt")
import pandas as pd  # noqa: E402  (napari's dependency)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MANIFEST = os.path.join(ROOT, "objguided_d2", "napari", "napari.yaml")


def test_manifest_valid_and_registered_by_setup(plugin):
    plugin.validate_imports()  # every python_name imports (what `npe2 validate --imports` does)
    assert plugin.name == "objguided-d2"
    setup = open(os.path.join(ROOT, "setup.py")).read()
    assert '"napari.manifest": ["objguided-d2=objguided_d2.napari:napari.yaml"]' in setup
    assert '"objguided_d2.napari": ["napari.yaml"]' in setup  # shipped as package data
    assert os.path.isfile(MANIFEST)


@pytest.mark.parametrize("key,rgb", [("nuclei", True), ("neural", False), ("leaves", True)])
def test_sample_data(viewer, key, rgb):
    from objguided_d2.napari._samples import NUM_PLANES, render

    viewer.open_sample("objguided-d2", key)
    image, labels = viewer.layers
    assert image.rgb == rgb and labels.data.shape == image.data.shape[: 3]
    assert image.data.shape[0] == NUM_PLANES
    for k in range(NUM_PLANES):
        img, lab = render(key, k)
        np.testing.assert_array_equal(image.data[k], img)
        np.testing.assert_array_equal(labels.data[k], lab)
    assert all(len(np.unique(labels.data[k])) > 2 for k in range(NUM_PLANES))  # objects in every plane


def _layer_with_features(viewer):
    lab = np.zeros((40, 50), np.int32)
    lab[2:10, 3:12] = 1
    lab[20:30, 20:35] = 2
    lab[31:38, 40:48] = 3  # painted by hand: not in the table
    feats = pd.DataFrame({"index": [1, 2], "id": [1, 2], "score": [0.9, 0.7], "class_id": [0, 0],
                          "class": ["nucleus", "nucleus"]})
    return viewer.add_labels(lab, name="cells", features=feats)


def test_writers_through_napari(viewer, tmp_path):
    import json

    from roifile import roiread

    layer = _layer_with_features(viewer)
    for ext in ("tif", "csv", "zip", "geojson"):
        layer.save(str(tmp_path / f"cells.{ext}"), plugin="objguided-d2")
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "cells.tif"), layer.data)
    table = pd.read_csv(tmp_path / "cells.csv")
    assert table["id"].tolist() == [1, 2, 3]
    assert table["score"].tolist() == [0.9, 0.7, 1.0]  # hand-painted object: score 1
    assert table["area"].tolist() == [72, 150, 56] and set(table["image"]) == {"cells"}
    assert table["class"].tolist()[:2] == ["nucleus", "nucleus"]
    rois = roiread(str(tmp_path / "cells.zip"))
    assert [r.name for r in rois] == ["0001_s0.900", "0002_s0.700", "0003_s1.000"]
    gj = json.loads((tmp_path / "cells.geojson").read_text())
    assert [f["properties"]["measurements"]["area"] for f in gj["features"]] == [72, 150, 56]


def test_writers_never_overwrite_and_stacks(viewer, tmp_path):
    from objguided_d2.napari import _writers
    from objguided_d2.utils.io import OutputExistsError

    layer = _layer_with_features(viewer)
    path = tmp_path / "cells.csv"
    path.write_text("mine")
    with pytest.raises(OutputExistsError, match="cells.csv"):
        _writers.write_objects_csv(str(path), layer.data, {"name": "cells", "features": layer.features})
    assert path.read_text() == "mine"
    stack = np.stack([layer.data, np.where(layer.data > 0, layer.data + 3, 0)])
    _writers.write_objects_csv(str(tmp_path / "s.csv"), stack, {"name": "s", "features": layer.features})
    t = pd.read_csv(tmp_path / "s.csv")
    assert t["image"].tolist() == ["s_z0"] * 3 + ["s_z1"] * 3 and t["id"].tolist() == [1, 2, 3, 4, 5, 6]
    from roifile import roiread

    _writers.write_roi_zip(str(tmp_path / "s.zip"), stack, {"name": "s", "features": layer.features})
    # Fiji slice of each ROI = its plane (Fiji counts slices from 1)
    assert [r.position for r in roiread(str(tmp_path / "s.zip"))] == [1, 1, 1, 2, 2, 2]
    with pytest.raises(ValueError, match="stack of 2 planes"):
        _writers.write_geojson(str(tmp_path / "s.geojson"), stack, {"name": "s"})
    assert not (tmp_path / "s.geojson").exists()

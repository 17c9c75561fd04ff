"""--roi-zip (ImageJ / Fiji ROI sets) and --geojson (QuPath): the files are read back with
roifile / json + shapely, rasterised on pixel centres and compared with the label image."""
import csv
import json
import os
import re

import cv2
import numpy as np
import pytest
import roifile
import tifffile
from matplotlib.path import Path

from objguided_d2.predict.cli import main
from objguided_d2.predict.export_geojson import write_geojson
from objguided_d2.predict.export_roi import write_roi_zip
from objguided_d2.predict.writers import OutputExistsError, measure_objects
from objguided_d2.predict.tiling import Detection
from test_predict_objguided import _model_dir  # noqa: E402  (a random tiny model folder whose writers all run)

shapely = pytest.importorskip("shapely")  # a test dependency (setup.py extra "test")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAME = re.compile(r"^(\d+)(?:-(\d+))?_s(\d\.\d{3})$")


def _hard_labels():
    """Objects with holes, several parts, diagonal contacts, single pixels and 1-px lines."""
    lab = np.zeros((48, 64), np.uint16)
    lab[4:30, 4:30] = 1
    lab[9:14, 9:14] = 0            # a hole
    lab[18:22, 12:20] = 0          # a second hole
    lab[20, 24] = 0                # a one-pixel hole
    lab[33:36, 2:5] = 1            # a second part of object 1
    lab[2:4, 40:46] = 2
    lab[10, 40] = 3                # a single pixel
    lab[12:40, 50] = 4             # a 1-px wide vertical line
    for k in range(8):             # a diagonal staircase: pixels touching only at corners
        lab[30 + k, 30 + k] = 5
    lab[40:46, 10:16] = 6
    lab[42:44, 12:14] = 0          # ring-shaped object
    lab[42:44, 12] = 7             # another object inside object 6's hole
    return lab


def _rasterise(rings, shape):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    centres = np.c_[xx.ravel() + 0.5, yy.ravel() + 0.5]
    out = np.zeros(h * w, bool)
    for ring in rings:
        out ^= Path(np.asarray(ring, float)).contains_points(centres)  # even-odd over parts
    return out.reshape(h, w)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _labels_and_rows(lab):
    n = int(lab.max())
    dets = [Detection(box=(0, 0, 1, 1), mask=np.ones((1, 1), bool), score=1.0 - 0.1 * k, category=0) for k in range(n)]
    rows, _ = measure_objects(lab, dets, image_name="x", image_id=1)
    return rows, [d.score for d in dets]


def test_roi_zip_reads_back_as_the_label_image(tmp_path):
    lab = _hard_labels()
    rows, scores = _labels_and_rows(lab)
    path = tmp_path / "x_rois.zip"
    n = write_roi_zip(str(path), lab, scores)
    rois = roifile.roiread(str(path))
    assert len(rois) == n
    by_id = {}
    for roi in rois:
        m = NAME.match(roi.name)
        assert m, roi.name
        assert roi.roitype == roifile.ROI_TYPE.POLYGON
        lid = int(m.group(1))
        assert float(m.group(3)) == pytest.approx(scores[lid - 1], abs=1e-3)
        by_id.setdefault(lid, []).append((m.group(2), roi.coordinates()))
    assert sorted(by_id) == list(range(1, int(lab.max()) + 1))
    assert [p for p, _ in by_id[1]] == ["1", "2"]  # two parts, largest first
    assert [p for p, _ in by_id[2]] == [None]
    for lid, parts in by_id.items():
        got = np.zeros(lab.shape, bool)
        for _, ring in parts:
            got |= _rasterise([ring], lab.shape)
        iou = _iou(got, lab == lid)
        assert iou > 0.9, (lid, iou)
        np.testing.assert_array_equal(got, lab == lid)  # pixel-edge outlines are exact
    # A single pixel is the unit square of its corners (ImageJ's convention).
    (_, ring3), = by_id[3]
    assert sorted(map(tuple, ring3.astype(int).tolist())) == [(40, 10), (40, 11), (41, 10), (41, 11)]
    with pytest.raises(OutputExistsError):
        write_roi_zip(str(path), lab, scores)


def test_geojson_valid_and_matches_label_image(tmp_path):
    from shapely.geometry import shape

    lab = _hard_labels()
    rows, _ = _labels_and_rows(lab)
    path = tmp_path / "x.geojson"
    write_geojson(str(path), lab, rows)
    fc = json.loads(path.read_text())
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == lab.max()
    h, w = lab.shape
    yy, xx = np.mgrid[0:h, 0:w]
    for f, row in zip(fc["features"], rows):
        p = f["properties"]
        lid = int(p["name"])
        assert p["objectType"] == "detection" and lid == row["id"]
        assert p["measurements"]["area"] == row["area"] and p["measurements"]["score"] == row["score"]
        g = shape(f["geometry"])
        assert g.is_valid, (lid, shapely.is_valid_reason(g))
        assert f["geometry"]["type"] == ("MultiPolygon" if lid in (1, 5) else "Polygon")
        assert g.area == row["area"]  # pixel corners: the outline's area is the pixel count
        inside = shapely.contains_xy(g, xx + 0.5, yy + 0.5)
        np.testing.assert_array_equal(inside, lab == lid)
    # Object 6 is a ring: one hole; QuPath convention: x right (columns), y down (rows), corners.
    ring = shape(fc["features"][5]["geometry"])
    assert len(ring.interiors) == 1 and ring.bounds == (10.0, 40.0, 16.0, 46.0)
    single = fc["features"][2]["geometry"]
    assert sorted(map(tuple, single["coordinates"][0][:-1])) == [(40, 10), (40, 11), (41, 10), (41, 11)]


def test_cli_roi_zip_and_geojson(tmp_path, capsys):
    model = _model_dir(tmp_path)
    img = tmp_path / "imgs"
    img.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(img / "a.png"), (rng.random((90, 120, 3)) * 255).astype(np.uint8))
    tifffile.imwrite(img / "stack.tif", (rng.random((2, 64, 64)) * 255).astype(np.uint8), photometric="minisblack")
    out = tmp_path / "out"
    args = ["--no-progress", str(img), "--model-dir", str(model), "--output", str(out), "--roi-zip", "--geojson"]
    assert main(args) == 0, capsys.readouterr().err
    info = json.loads((out / "images.json").read_text())["images"]
    with open(out / "objects.csv") as f:
        rows = list(csv.DictReader(f))
    total = 0
    for im in info:
        lab = tifffile.imread(out / im["labels"])
        rois = roifile.roiread(str(out / im["rois"])) if int(lab.max()) else []
        fc = json.loads((out / im["geojson"]).read_text())
        assert len(fc["features"]) == int(lab.max()) == len([r for r in rows if r["image"] == im["name"]])
        ids = {}
        for roi in rois:
            ids.setdefault(int(NAME.match(roi.name).group(1)), []).append(roi.coordinates())
            if im["name"].startswith("stack"):
                assert roi.position == im["page"] + 1
        for lid, rings in ids.items():
            got = np.zeros(lab.shape, bool)
            for ring in rings:
                got |= _rasterise([ring], lab.shape)
            assert _iou(got, lab == lid) > 0.9
        total += int(lab.max())
    assert total > 0
    # never overwritten without --overwrite: a second run into the same folder is refused
    rc = main(args)
    assert rc == 2 and "--overwrite" in capsys.readouterr().err
    os.remove(out / "objects.csv"), os.remove(out / "predictions_coco.json"), os.remove(out / "images.json")
    before = (out / "a_rois.zip").read_bytes()
    assert main(args) == 1  # per-image outputs exist: each image is refused, nothing replaced
    assert (out / "a_rois.zip").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0

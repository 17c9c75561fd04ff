"""The prediction library (objguided_d2/predict/pipeline.py) as a GUI calls it: progress, cancel,
files never replaced unasked, and one image segmented in memory."""
import csv
import json

import cv2
import numpy as np
import pytest
import tifffile

from objguided_d2.predict.pipeline import (
    ModelError, OutputExistsError, PredictOptions, default_tiling, load_predictor, predict_to_folder, segment_image,
)
from test_predict_objguided import _model_dir  # noqa: E402  (a random tiny model that finds objects)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _model_dir(tmp_path_factory.mktemp("pipeline"))


@pytest.fixture(scope="module")
def model(model_dir):
    return load_predictor(str(model_dir))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(d / "a.png"), (rng.random((90, 120, 3)) * 255).astype(np.uint8))
    tifffile.imwrite(d / "b.tif", (rng.random((100, 80)) * 4095).astype(np.uint16))
    tifffile.imwrite(d / "c.tif", (rng.random((2, 64, 64)) * 255).astype(np.uint8), photometric="minisblack")
    return d


def _tables(out):
    with open(out / "objects.csv") as f:
        rows = list(csv.DictReader(f))
    return rows, json.loads((out / "images.json").read_text())["images"]


def test_on_image_once_per_file_and_summary(model, images, tmp_path):
    calls = []
    out = tmp_path / "out"
    summary = predict_to_folder([str(images)], str(out), model, on_image=lambda *a: calls.append(a))
    files = [str(images / n) for n in ("a.png", "b.tif", "c.tif")]
    assert calls == [(1, 3, files[0]), (2, 3, files[1]), (3, 3, files[2])]  # the stack is one call
    rows, info = _tables(out)
    assert summary.images == len(info) == 4 and not summary.cancelled and summary.failures == []
    assert summary.objects == len(rows) > 0 and summary.seconds > 0
    assert sorted(i["name"] for i in info) == ["a", "b", "c_p0", "c_p1"]


def test_cancel_after_first_image_writes_its_tables(model, images, tmp_path):
    calls = []
    out = tmp_path / "out"
    summary = predict_to_folder([str(images)], str(out), model, PredictOptions(overlay=True),
                                on_image=lambda *a: calls.append(a), should_stop=lambda: len(calls) >= 1)
    assert summary.cancelled and summary.images == 1 and len(calls) == 1
    rows, info = _tables(out)
    assert [i["name"] for i in info] == ["a"] and info[0]["overlay"] == "a_overlay.png"
    assert len(rows) == summary.objects and {r["image"] for r in rows} <= {"a"}
    coco = json.loads((out / "predictions_coco.json").read_text())
    assert len(coco) == summary.objects and {c["image_id"] for c in coco} <= {1}
    assert sorted(p.name for p in out.iterdir()) == [
        "a_labels.tif", "a_overlay.png", "images.json", "objects.csv", "predictions_coco.json"]


def test_existing_output_kept_and_reported(model, images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "b_labels.tif").write_bytes(b"keep me")
    failed = []
    summary = predict_to_folder([str(images / "a.png"), str(images / "b.tif")], str(out), model,
                                on_failure=failed.append)
    assert (out / "b_labels.tif").read_bytes() == b"keep me"
    assert summary.failures == failed and len(failed) == 1
    assert "b_labels.tif" in failed[0] and "--overwrite" in failed[0]
    assert summary.images == 1 and (out / "a_labels.tif").is_file()
    # the tables now exist: a second run is refused before any work, nothing changes
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(OutputExistsError, match="objects.csv"):
        predict_to_folder([str(images / "a.png")], str(out), model)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    summary = predict_to_folder([str(images / "b.tif")], str(out), model, PredictOptions(overwrite=True))
    assert summary.failures == [] and tifffile.imread(out / "b_labels.tif").dtype == np.uint16


def test_segment_image_matches_the_folder_run(model, images, tmp_path):
    out = tmp_path / "out"
    predict_to_folder([str(images / "a.png"), str(images / "b.tif")], str(out), model)
    rgb = cv2.imread(str(images / "a.png"))[:, :, ::-1]  # as a napari layer holds it
    for raw, name in ((rgb, "a"), (tifffile.imread(images / "b.tif"), "b")):
        labels, kept = segment_image(raw, model)
        np.testing.assert_array_equal(labels, tifffile.imread(out / f"{name}_labels.tif"))
        assert len(kept) == int(labels.max())
        assert [d.score for d in kept] == sorted((d.score for d in kept), reverse=True)


def test_load_predictor_and_tiling(model, model_dir, tmp_path):
    assert model.input_scale is None and model.cfg.MODEL.DEVICE == "cpu" and model.cfg.is_frozen()
    assert default_tiling(model) == (128, 32) and default_tiling(model, 64, 0) == (64, 0)
    with pytest.raises(ValueError, match="--tile-size 64 / --tile-overlap 64"):
        default_tiling(model, 64, 64)
    with pytest.raises(ModelError, match="exactly one"):
        load_predictor(str(model_dir), str(model_dir / "config.yaml"))
    with pytest.raises(ModelError, match="model folder not found"):
        load_predictor(str(tmp_path / "nope"))
    with pytest.raises(ModelError, match="object_size.json"):
        load_predictor(str(model_dir), diameter=20)
    (model_dir / "object_size.json").write_text(json.dumps({"median_diameter_input": 40.0}))
    try:
        scaled = load_predictor(str(model_dir), diameter=20)
    finally:
        (model_dir / "object_size.json").unlink()
    assert scaled.input_scale == 2.0 and default_tiling(scaled) == (64, 16)  # tiles reach the net at 128


def test_python_m_runs_the_command_line(tmp_path):
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root, OMP_NUM_THREADS="1")
    run = [sys.executable, "-m", "objguided_d2.predict"]
    p = subprocess.run(run + ["--help"], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "objguided-predict" in p.stdout and "--model-dir" in p.stdout
    p = subprocess.run(run + ["x.png", "--output", str(tmp_path / "o")], env=env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 2 and "error: give exactly one of --model-dir" in p.stderr
    assert not (tmp_path / "o").exists()

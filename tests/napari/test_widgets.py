"""Segment, folder, add-to-training-set and train widgets on a ViewerModel (Qt offscreen)."""
import json
import os

import cv2
import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")  # the [napari] extra
pytest.importorskip("pytestqt")

WAIT = 60_000  # ms; the CPU is shared


def _segment(viewer, qtbot, model_dir, **fields):
    from objguided_d2.napari._segment import SegmentWidget

    w = SegmentWidget(viewer)
    w.model.model_dir.value = model_dir
    w.model.score_thresh.value = fields.pop("score", 0.05)  # random weights: low scores
    for k, v in fields.items():
        getattr(w, k).value = v
    return w


def _wait(qtbot, w):
    qtbot.waitUntil(lambda: w.worker is None, timeout=WAIT)


def test_segment_stack_features_match_labels(viewer, qtbot, model_dir, notes):
    from objguided_d2.napari._samples import render
    from objguided_d2.predict.writers import CSV_COLUMNS

    viewer.add_image(np.stack([render("nuclei", k)[0] for k in range(2)]), name="cells", rgb=True)
    w = _segment(viewer, qtbot, model_dir)
    w.run()
    _wait(qtbot, w)
    assert not notes.errors(), notes.all()
    layer = viewer.layers["cells objects"]
    assert layer.data.shape == (2, 256, 256) and np.issubdtype(layer.data.dtype, np.integer)
    f = layer.features
    assert list(f.columns) == ["index", "plane"] + CSV_COLUMNS
    ids = np.unique(layer.data)[1:]
    assert len(ids) > 0 and sorted(f["index"]) == ids.tolist()  # ids unique over the stack
    areas = np.bincount(layer.data.ravel())
    assert (f["area"].to_numpy() == areas[f["index"].to_numpy()]).all()
    for k in range(2):  # every object's plane is the plane it lies in
        assert set(np.unique(layer.data[k])[1:]) == set(f.loc[f["plane"] == k, "index"])
    assert (f["score"] > 0.05).all()


def test_segment_cancel_adds_nothing(viewer, qtbot, model_dir):
    from objguided_d2.napari._samples import render

    viewer.add_image(np.stack([render("neural", k)[0] for k in range(4)]), name="cells")
    w = _segment(viewer, qtbot, model_dir)
    w.run()
    w.cancel()
    _wait(qtbot, w)
    assert w.status.value == "cancelled" and [lyr.name for lyr in viewer.layers] == ["cells"]
    assert w.run_button.enabled


def test_segment_bad_inputs_notify(viewer, qtbot, model_dir, tmp_path, notes):
    from objguided_d2.napari._segment import SegmentWidget

    w = SegmentWidget(viewer)
    w.run()  # no image layer
    assert notes.errors()[-1].startswith("no image layer")
    viewer.add_image(np.zeros((64, 64), np.uint8), name="gray")
    w.run()  # no model
    _wait(qtbot, w)
    assert notes.errors()[-1].startswith("no model")
    empty = tmp_path / "no_weights"
    empty.mkdir()
    (empty / "config.yaml").write_text(open(os.path.join(model_dir, "config.yaml")).read())
    w.model.model_dir.value = str(empty)
    w.run()
    _wait(qtbot, w)
    assert "model_final.pth: weights file not found" in notes.errors()[-1]
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.yaml").write_text("MODEL: !!python/object/apply:os.system ['echo pwned']\n")
    (evil / "model_final.pth").write_bytes(b"x")
    w.model.model_dir.value = str(evil)
    w.run()
    _wait(qtbot, w)
    assert "config.yaml" in notes.errors()[-1] and len(notes.errors()[-1].splitlines()) == 1
    trained_rgb = tmp_path / "rgb_model"
    trained_rgb.mkdir()
    for f in os.listdir(model_dir):
        os.link(os.path.join(model_dir, f), trained_rgb / f)
    (trained_rgb / "napari.json").write_text(json.dumps({"channels": "rgb"}))
    w.model.model_dir.value = str(trained_rgb)
    w.run()  # a gray layer for a model trained on RGB images
    assert "is gray but the model was trained on rgb images" in notes.errors()[-1]
    assert [lyr.name for lyr in viewer.layers] == ["gray"] and w.worker is None


def _images(folder):
    from objguided_d2.napari._samples import render

    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), render("nuclei", 0)[0][:, :, ::-1])
    tifffile.imwrite(folder / "b.tif", render("neural", 1)[0])
    return folder


def test_folder_widget_matches_cli(viewer, qtbot, model_dir, tmp_path, notes):
    from objguided_d2.napari._folder import FolderWidget
    from objguided_d2.predict.cli import main

    src = _images(tmp_path / "in")
    w = FolderWidget(viewer)
    w.input_dir.value, w.output_dir.value = str(src), str(tmp_path / "out")
    w.model.model_dir.value, w.model.score_thresh.value = model_dir, 0.05
    w.run()
    _wait(qtbot, w)
    assert not notes.errors(), notes.all()
    assert w.summary.images == 2 and w.summary.objects > 0 and w.progress.value == 2
    rc = main(["--no-progress", str(src), "--model-dir", model_dir, "--output", str(tmp_path / "cli"),
               "--score-thresh", "0.05", "--roi-zip", "--geojson"])
    assert rc == 0
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.listdir(tmp_path / "cli"))
    for f in ("a_labels.tif", "b_labels.tif"):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / f), tifffile.imread(tmp_path / "cli" / f))
    assert (tmp_path / "out" / "objects.csv").read_text() == (tmp_path / "cli" / "objects.csv").read_text()
    # an output folder that exists (and holds files): refused, nothing touched
    before = {f: os.path.getmtime(tmp_path / "out" / f) for f in os.listdir(tmp_path / "out")}
    w.run()
    assert "output folder exists" in notes.errors()[-1] and w.worker is None
    assert before == {f: os.path.getmtime(tmp_path / "out" / f) for f in os.listdir(tmp_path / "out")}


def test_add_to_training_set(viewer, qtbot, tmp_path, notes):
    from objguided_d2.data.datasets import convert_to_coco
    from objguided_d2.napari._train_widget import TrainWidget

    viewer.open_sample("objguided-d2", "nuclei")
    w = TrainWidget(viewer)
    w.training_set.value = str(tmp_path / "set")
    w.image.value, w.labels_layer.value = "nuclei", "nuclei ground truth"
    assert w.add() is not None
    ds = convert_to_coco("labelfolder", str(tmp_path / "set"), ratios=(1, 0, 0), cache=str(tmp_path / "cache"))
    coco = json.loads(open(ds.json_files["train"]).read())
    gt = viewer.layers["nuclei ground truth"].data
    assert len(coco["images"]) == 4
    assert len(coco["annotations"]) == sum(len(np.unique(gt[k])) - 1 for k in range(4))
    files = sorted(os.listdir(tmp_path / "set" / "images"))
    stamp = {f: os.path.getmtime(tmp_path / "set" / "images" / f) for f in files}
    # adding the same name again: refused, nothing replaced
    assert w.add() is None and "already in the training set" in notes.errors()[-1]
    assert stamp == {f: os.path.getmtime(tmp_path / "set" / "images" / f) for f in files}
    # labels of the wrong shape, non-integer labels, a gray image into an RGB set
    w.sample_name.value = "other"
    viewer.add_labels(np.zeros((4, 100, 100), np.int32), name="small")
    w.labels_layer.value = "small"
    assert w.add() is None and "differs from the image's" in notes.errors()[-1]
    from objguided_d2.napari._training import add_to_training_set

    # napari keeps Labels data integer; a float array (e.g. from a script) is refused by the writer
    with pytest.raises(ValueError, match="not an integer type"):
        add_to_training_set(str(tmp_path / "set"), "x", viewer.layers["nuclei"].data, True,
                            np.zeros((4, 256, 256), np.float32))
    viewer.add_image(np.zeros((256, 256), np.uint8), name="grayimg")
    viewer.add_labels(np.zeros((256, 256), np.int32), name="graylab")
    w.image.value, w.labels_layer.value = "grayimg", "graylab"
    assert w.add() is None and "holds rgb images and this image is gray" in notes.errors()[-1]
    assert sorted(os.listdir(tmp_path / "set" / "images")) == files


def test_train_round_trip_and_segment_again(viewer, qtbot, tmp_path, notes, monkeypatch):
    """First run without a terminal: sample -> training set -> tiny model from scratch -> the
    segment widget gets it -> segment; then a fine-tune from that model, cancelled."""
    from objguided_d2.napari._segment import SegmentWidget
    from objguided_d2.napari._train_widget import TrainWidget

    monkeypatch.setenv("OBJGUIDED_CACHE", str(tmp_path / "cache"))
    viewer.open_sample("objguided-d2", "leaves")
    seg = SegmentWidget(viewer)
    t = TrainWidget(viewer)
    t.training_set.value = str(tmp_path / "set")
    t.image.value, t.labels_layer.value = "leaves", "leaves ground truth"
    assert t.add()
    t.train()  # no model and not from scratch
    assert "no model to fine-tune" in notes.errors()[-1] and t.worker is None
    t.scratch.value, t.iterations.value = True, 2
    t.output_dir.value = str(tmp_path / "run1")
    t.train()
    qtbot.waitUntil(lambda: t.worker is None, timeout=300_000)
    assert len(notes.errors()) == 1, notes.all() + [t.run_.log_tail()]
    run1 = tmp_path / "run1"
    assert (run1 / "model_final.pth").is_file() and json.loads((run1 / "napari.json").read_text())["channels"] == "rgb"
    assert t.progress.value == 2 and "loss" in open(run1 / "metrics.json").read()
    assert str(seg.model.model_dir.value) == str(run1)  # loaded into the segment widget
    seg.image.value, seg.model.score_thresh.value = "leaves", 0.01
    seg.run()
    _wait(qtbot, seg)
    assert len(notes.errors()) == 1, notes.all()
    assert viewer.layers["leaves objects"].data.shape == (4, 256, 256)
    # the output folder exists: refused before anything runs
    t.train()
    assert "run1: output folder exists" in notes.errors()[-1] and t.worker is None
    # fine-tune from the segment widget's model, cancelled while it runs
    t.scratch.value, t.iterations.value, t.output_dir.value = False, 1000, str(tmp_path / "run2")
    t.train()
    assert t.run_.cmd.count("MODEL.WEIGHTS") == 1 and str(run1 / "model_final.pth") in t.run_.cmd
    qtbot.wait(1000)
    t.cancel()
    qtbot.waitUntil(lambda: t.worker is None, timeout=60_000)
    assert t.run_.proc.returncode is not None and t.status.value == "cancelled"
    assert len(notes.errors()) == 2, notes.all()  # a cancelled run is not reported as a failed one
    assert not (tmp_path / "run2" / "napari.json").exists()


def test_train_refusals_and_a_failed_run(viewer, qtbot, tmp_path, notes, monkeypatch):
    from objguided_d2.napari._train_widget import TrainWidget

    monkeypatch.setenv("OBJGUIDED_CACHE", str(tmp_path / "cache"))
    viewer.open_sample("objguided-d2", "neural")
    t = TrainWidget(viewer)
    t.training_set.value = str(tmp_path / "set")
    t.image.value, t.labels_layer.value = "neural cells", "neural cells ground truth"
    assert t.add()
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.yaml").write_text("MODEL: !!python/object/apply:os.system ['echo pwned']\n")
    (evil / "model_final.pth").write_bytes(b"x")
    t.base_model.value, t.output_dir.value = str(evil), str(tmp_path / "run")
    t.train()  # refused before any process starts
    assert "config.yaml: YAML Python tag" in notes.errors()[-1] and t.worker is None
    assert not (tmp_path / "run").exists()
    # a label file broken behind the widget's back: the run fails, its error line is the notification
    (tmp_path / "set" / "labels" / "neural cells_z0_labels.tif").write_bytes(b"not a tiff")
    t.base_model.value, t.scratch.value, t.iterations.value = None, True, 1
    t.train()
    qtbot.waitUntil(lambda: t.worker is None, timeout=120_000)
    assert notes.errors()[-1].startswith("training failed: DataError:"), notes.all()
    assert "neural cells_z0_labels.tif" in notes.errors()[-1] and t.status.value == "failed"

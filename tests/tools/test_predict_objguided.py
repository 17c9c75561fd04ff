"""tools/predict.py with our model (ObjGuidedRCNN) on a folder of mixed images, one of them larger
than the tile size so it is predicted tiled; outputs cross-checked (label ids <-> CSV <-> COCO)."""
import csv
import json
import os

import cv2
import numpy as np
import pycocotools.mask as mask_util
import tifffile
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from objguided_d2.engine.train_net import load_config
from objguided_d2.predict.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _model_dir(tmp_path, opts=()):
    cfg = load_config(os.path.join(ROOT, "configs/tiny/objguided_R18_tiny.yaml"),
                      ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128", *opts])
    torch.manual_seed(0)
    model = build_model(cfg)
    # An untrained CenterNet predicts zero-size boxes; give the random model 16 px boxes and
    # confident peaks so the segmentation branch and every writer really run.
    with torch.no_grad():
        model.proposal_generator.wh_head[-1].bias.fill_(4.0)
        model.proposal_generator.heatmap_head[-1].bias.fill_(2.0)
    d = tmp_path / "model"
    d.mkdir()
    DetectionCheckpointer(model, str(d)).save("model_final")
    (d / "config.yaml").write_text(cfg.dump())
    return d


def test_predict_with_objguided_model(tmp_path, capsys):
    model_dir = _model_dir(tmp_path)
    img = tmp_path / "imgs"
    img.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(img / "small.png"), (rng.random((90, 120, 3)) * 255).astype(np.uint8))
    tifffile.imwrite(img / "deep16.tif", (rng.random((100, 80)) * 4095).astype(np.uint16))
    big = np.zeros((300, 420), np.uint8)
    for cy, cx in [(60, 60), (150, 200), (250, 380), (128, 128)]:
        cv2.circle(big, (cx, cy), 12, 220, -1)
    cv2.imwrite(str(img / "big.png"), big)
    out = tmp_path / "out"
    rc = main(["--no-progress", str(img), "--model-dir", str(model_dir), "--output", str(out),
               "--tile-size", "128", "--overlay"])
    assert rc == 0, capsys.readouterr().err
    with open(out / "objects.csv") as f:
        rows = list(csv.DictReader(f))
    coco = json.loads((out / "predictions_coco.json").read_text())
    images = json.loads((out / "images.json").read_text())["images"]
    assert {i["name"] for i in images} == {"small", "deep16", "big"}
    total = 0
    for info in images:
        labels = tifffile.imread(out / f"{info['name']}_labels.tif")
        assert labels.shape == (info["height"], info["width"]) and labels.dtype == np.uint16
        assert (out / f"{info['name']}_overlay.png").is_file()
        ids = sorted(set(np.unique(labels).tolist()) - {0})
        img_rows = [r for r in rows if r["image"] == info["name"]]
        img_coco = [c for c in coco if c["image_id"] == info["id"]]
        assert ids == list(range(1, len(ids) + 1)) == sorted(int(r["id"]) for r in img_rows)
        assert len(img_coco) == len(ids)
        for c in img_coco:
            m = mask_util.decode(c["segmentation"]).astype(bool)
            assert np.array_equal(m, labels == c["label_id"])
        total += len(ids)
    assert total > 0  # the biased random model does find objects, so the writers were exercised


def test_class_names_from_training_dataset_spec(tmp_path, capsys, monkeypatch):
    """A model trained on `--dataset cells=labelfolder:...` gets its class names in objects.csv when
    predict is given the same --dataset; without it the class index is written."""
    monkeypatch.setenv("OBJGUIDED_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "cells"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    for i in range(5):
        lab = np.zeros((64, 64), np.uint16)
        cv2.circle(lab, (20 + 4 * i, 30), 8, 1, -1)
        cv2.imwrite(str(data / "images" / f"c{i}.png"), (lab > 0).astype(np.uint8) * 200)
        cv2.imwrite(str(data / "labels" / f"c{i}.png"), lab)
    model_dir = _model_dir(tmp_path, ["DATASETS.TRAIN", '("cells_train",)', "DATASETS.TEST", '("cells_test",)'])
    img = data / "images" / "c0.png"
    spec = f"cells=labelfolder:{data}?class=cell"
    for extra, expected in (([], "0"), (["--dataset", spec], "cell")):
        out = tmp_path / f"out{len(extra)}"
        rc = main(["--no-progress", str(img), "--model-dir", str(model_dir), "--output", str(out), *extra])
        assert rc == 0, capsys.readouterr().err
        with open(out / "objects.csv") as f:
            rows = list(csv.DictReader(f))
        assert rows and {r["class"] for r in rows} == {expected}

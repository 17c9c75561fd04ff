"""End-to-end: the real command line with a tiny random-weight Mask R-CNN."""
import csv
import json
import os
import pickle

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import tifffile
import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from objguided_d2 import add_objguided_config
from objguided_d2.predict.cli import main

TINY = [
    "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "MODEL.RESNETS.DEPTH", 18,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.NORM", "BN", "MODEL.FPN.OUT_CHANNELS", 32,
    "MODEL.ROI_HEADS.NUM_CLASSES", 2, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 32, "MODEL.ROI_MASK_HEAD.NUM_CONV", 1,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 200, "MODEL.RPN.POST_NMS_TOPK_TEST", 40,
    "TEST.DETECTIONS_PER_IMAGE", 20, "INPUT.MIN_SIZE_TEST", 256, "INPUT.MAX_SIZE_TEST", 256,
]


def _tiny_cfg(num_classes=2):
    cfg = get_cfg()
    add_objguided_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list([str(v) if not isinstance(v, str) else v for v in TINY])
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    return cfg


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    cfg = _tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model, str(d)).save("model_final")  # also writes last_checkpoint
    (d / "config.yaml").write_text(cfg.dump())
    return d


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    u8 = lambda *s: (rng.random(s) * 255).astype(np.uint8)  # noqa: E731
    cv2.imwrite(str(d / "rgb.png"), u8(64, 80, 3))
    cv2.imwrite(str(d / "gray.jpg"), u8(50, 70))
    cv2.imwrite(str(d / "rgba.png"), u8(40, 40, 4))
    tifffile.imwrite(d / "deep16.tif", (rng.random((60, 50)) * 4095).astype(np.uint16))
    tifffile.imwrite(d / "float32.tif", rng.random((45, 55)).astype(np.float32))
    tifffile.imwrite(d / "stack.tif", u8(3, 48, 48), photometric="minisblack")
    big = np.zeros((600, 900, 3), np.uint8)
    for cy, cx in [(100, 100), (300, 250), (128, 450), (500, 700), (250, 640)]:
        cv2.circle(big, (cx, cy), 40, (220, 200, 180), -1)
    cv2.imwrite(str(d / "big.png"), big)
    return d


class _Opaque:
    """Not a tensor: torch.load(weights_only=True) must refuse to unpickle it."""


NAMES = ["big", "deep16", "float32", "gray", "rgb", "rgba", "stack_p0", "stack_p1", "stack_p2"]


def _run(args, capsys):
    rc = main(["--no-progress"] + [str(a) for a in args])
    return rc, capsys.readouterr().err


def test_end_to_end_outputs_consistent(model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _run([images, "--model-dir", model_dir, "--output", out, "--tile-size", 256,
                    "--overlay", "--mask-thresh", "0.3"], capsys)
    assert rc == 0, err
    assert "9 images" in err
    info = json.loads((out / "images.json").read_text())
    assert sorted(i["name"] for i in info["images"]) == NAMES
    coco = json.loads((out / "predictions_coco.json").read_text())
    with open(out / "objects.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(coco) > 0
    total = 0
    for im in info["images"]:
        lab = tifffile.imread(out / im["labels"])
        assert lab.dtype == np.uint16 and lab.shape == (im["height"], im["width"])
        assert (out / im["overlay"]).is_file()
        r = [x for x in rows if x["image"] == im["name"]]
        c = sorted((x for x in coco if x["image_id"] == im["id"]), key=lambda x: x["label_id"])
        n = int(lab.max())
        total += n
        # label ids 1..N <-> CSV rows <-> COCO entries, same areas, scores decreasing with id
        assert [int(x["id"]) for x in r] == list(range(1, n + 1)) == [x["label_id"] for x in c]
        areas = np.bincount(lab.ravel(), minlength=n + 1)[1:].tolist()
        assert [int(x["area"]) for x in r] == areas
        assert [int(mask_util.area(x["segmentation"])) for x in c] == areas
        scores = [float(x["score"]) for x in r]
        assert scores == sorted(scores, reverse=True)
        for x in c[:3]:
            np.testing.assert_array_equal(mask_util.decode(x["segmentation"]).astype(bool), lab == x["label_id"])
    assert total == len(rows)
    big = next(i for i in info["images"] if i["name"] == "big")
    assert (big["height"], big["width"]) == (600, 900)


def test_never_overwrite(model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    sentinel = out / "rgb_labels.tif"
    sentinel.write_bytes(b"keep me")
    rc, err = _run([images / "rgb.png", images / "gray.jpg", "--model-dir", model_dir, "--output", out], capsys)
    assert rc == 1
    assert "rgb_labels.tif" in err and "--overwrite" in err
    assert sentinel.read_bytes() == b"keep me"
    assert (out / "gray_labels.tif").is_file()  # the other input still processed
    # a second run refuses to replace the tables before doing any work
    before = {p: p.read_bytes() for p in out.iterdir()}
    rc, err = _run([images / "gray.jpg", "--model-dir", model_dir, "--output", out], capsys)
    assert rc == 2 and "exists" in err
    assert {p: p.read_bytes() for p in out.iterdir()} == before
    rc, err = _run([images / "rgb.png", "--model-dir", model_dir, "--output", out, "--overwrite"], capsys)
    assert rc == 0, err
    assert tifffile.imread(sentinel).dtype == np.uint16
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temp files left


def test_bad_inputs_listed_and_rest_processed(model_dir, images, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    png = open(images / "rgb.png", "rb").read()
    (bad / "truncated.png").write_bytes(png[: len(png) // 2])
    (bad / "garbage.tif").write_bytes(b"this is not a tiff at all")
    (bad / "data.xyz").write_bytes(b"123")
    tifffile.imwrite(bad / "zero.tif", np.zeros((0, 5), np.uint8))
    args = [bad / "empty.png", bad / "truncated.png", bad / "garbage.tif", bad / "data.xyz",
            bad / "zero.tif", bad / "missing.png", images / "rgb.png"]
    rc, err = _run(args + ["--model-dir", model_dir, "--output", tmp_path / "out"], capsys)
    assert rc == 1
    failed = err.split("failed:")[1]
    for name in ["empty.png", "truncated.png", "garbage.tif", "data.xyz", "zero.tif", "missing.png"]:
        assert name in failed, name
    assert "rgb.png" not in failed
    assert (tmp_path / "out" / "rgb_labels.tif").is_file()


def test_model_errors(model_dir, images, tmp_path, capsys):
    cfg_file = model_dir / "config.yaml"
    common = [images / "rgb.png", "--output", tmp_path / "out", "--config-file", cfg_file]
    rc, err = _run(common + ["--weights", tmp_path / "nope.pth"], capsys)
    assert rc == 2 and "nope.pth" in err and "not found" in err
    # weights of a 2-class model into a 3-class config: shape mismatch is an error
    rc, err = _run(common + ["--weights", model_dir / "model_final.pth",
                             "--opts", "MODEL.ROI_HEADS.NUM_CLASSES", "3"], capsys)
    assert rc == 2 and "do not match" in err and "model_final.pth" in err
    # a .pkl needs --trust-pickle
    sd = torch.load(model_dir / "model_final.pth", weights_only=True)["model"]
    pkl = tmp_path / "w.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "test"}, f)
    rc, err = _run(common + ["--weights", pkl], capsys)
    assert rc == 2 and "--trust-pickle" in err and "w.pkl" in err
    rc, err = _run(common + ["--weights", pkl, "--trust-pickle"], capsys)
    assert rc == 0, err
    # a .pth holding arbitrary Python objects is refused by weights_only loading
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"model": sd, "extra": _Opaque()}, unsafe)
    rc, err = _run(common + ["--weights", unsafe, "--overwrite"], capsys)
    assert rc == 2 and "--trust-pickle" in err and "unsafe.pth" in err
    assert not (tmp_path / "out2").exists()
    rc, err = _run([images / "rgb.png", "--output", tmp_path / "out2"], capsys)
    assert rc == 2 and "--model-dir" in err


def test_nothing_found_gives_zero_label_image(model_dir, images, tmp_path, capsys):
    out = tmp_path / "out"
    rc, err = _run([images / "gray.jpg", "--model-dir", model_dir, "--output", out, "--score-thresh", "1.0"], capsys)
    assert rc == 0, err
    lab = tifffile.imread(out / "gray_labels.tif")
    assert lab.shape == (50, 70) and lab.max() == 0
    assert json.loads((out / "predictions_coco.json").read_text()) == []
    assert (out / "objects.csv").read_text().strip().startswith("image,id,")
    assert len((out / "objects.csv").read_text().strip().splitlines()) == 1

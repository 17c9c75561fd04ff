"""--diameter: object_size.json at training, the exact rescale to the network and back to the
original pixel grid with a real (random-weight) ObjGuidedRCNN, and the CLI's errors."""
import json
import os

import numpy as np
import pytest
import torch

from objguided_d2.data.object_size import read_size_stats, train_scales, training_size_stats
from objguided_d2.engine.train_net import load_config
from objguided_d2.predict.predictor import InstancePredictor
from objguided_d2.predict.size import FixedScale, diameter_scale

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "configs/tiny/objguided_R18_tiny.yaml")


def test_training_size_stats_follow_the_mapper_resize():
    import pycocotools.mask as mask_util

    cfg = load_config(TINY, ["INPUT.SQUARE_CROP_SCALES", "[0.5, 1.0]", "INPUT.TRAIN_SIZE", "200"])
    m = np.zeros((100, 50), np.uint8, order="F")
    m[10:30, 10:30] = 1  # area 400: equivalent diameter 22.57 px
    rle = mask_util.encode(m)
    rec = {"height": 100, "width": 50, "annotations": [{"segmentation": rle, "iscrowd": 0}]}
    assert train_scales(cfg, 100, 50) == [4.0, 2.0]  # 200 / (max(H, W) * s)
    st = training_size_stats(cfg, [rec])
    d = np.sqrt(4 * 400 / np.pi)
    assert st["median_diameter_image"] == pytest.approx(d)
    assert st["median_diameter_input"] == pytest.approx(np.median([4 * d, 2 * d]))
    assert diameter_scale(st["median_diameter_input"], 2 * d) == pytest.approx(1.5)
    # Native-scale crops (INPUT.NATIVE_CROP_SIZE) never resize: the input size is the image size.
    native = load_config(TINY, ["INPUT.NATIVE_CROP_SIZE", "32"])
    assert train_scales(native, 100, 50) == [1.0]
    assert training_size_stats(native, [rec])["median_diameter_input"] == pytest.approx(d)


def test_rescale_and_back_mapping_exact(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    cfg = load_config(TINY, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.proposal_generator.wh_head[-1].bias.fill_(4.0)
        model.proposal_generator.heatmap_head[-1].bias.fill_(2.0)
    DetectionCheckpointer(model, str(tmp_path)).save("m")
    cfg.freeze()
    rng = np.random.default_rng(0)
    image = (rng.random((70, 90, 3)) * 255).astype(np.uint8)
    for scale in (0.5, 1.7):
        pred = InstancePredictor(cfg, str(tmp_path / "m.pth"), input_scale=scale)
        seen = []
        pred.model.backbone.register_forward_pre_hook(lambda mod, inp: seen.append(tuple(inp[0].shape[-2:])))
        inst = pred(image)
        # The network saw the image resized by exactly `scale` (padded to the size divisibility) ...
        h, w = round(70 * scale), round(90 * scale)
        div = max(pred.model.backbone.size_divisibility, 1)
        assert seen == [(-(-h // div) * div, -(-w // div) * div)]
        # ... and the outputs are at the original size: the same as the model run by hand on
        # the resized image with the original height / width (Detectron2's postprocess paste).
        assert inst.image_size == (70, 90) and inst.pred_masks.shape[1:] == (70, 90) and len(inst) > 0
        resized = FixedScale(scale).get_transform(image).apply_image(image)
        assert resized.shape[:2] == (h, w)
        ref = pred.model([{"image": torch.as_tensor(resized.astype("float32").transpose(2, 0, 1)),
                           "height": 70, "width": 90}])[0]["instances"]
        assert torch.equal(ref.pred_masks, inst.pred_masks)
        torch.testing.assert_close(ref.pred_boxes.tensor, inst.pred_boxes.tensor)
        b = inst.pred_boxes.tensor
        assert (b[:, 2] <= 90).all() and (b[:, 3] <= 70).all()


def test_read_size_stats_errors(tmp_path):
    with pytest.raises(ValueError, match="object_size.json: not found"):
        read_size_stats(str(tmp_path))
    (tmp_path / "object_size.json").write_text(json.dumps({"median_diameter_input": -1}))
    with pytest.raises(ValueError, match="positive"):
        read_size_stats(str(tmp_path))


def test_cli_diameter_needs_object_size(tmp_path, capsys):
    import cv2
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from objguided_d2.predict.cli import main

    cfg = load_config(TINY, ["MODEL.DEVICE", "cpu"])
    d = tmp_path / "model"
    d.mkdir()
    DetectionCheckpointer(build_model(cfg), str(d)).save("model_final")
    (d / "config.yaml").write_text(cfg.dump())
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((40, 40, 3), np.uint8))
    base = ["--no-progress", str(tmp_path / "a.png"), "--model-dir", str(d)]
    assert main(base + ["--output", str(tmp_path / "o1"), "--diameter", "10"]) == 2
    assert "object_size.json: not found" in capsys.readouterr().err
    assert main(base + ["--output", str(tmp_path / "o2"), "--diameter", "-3"]) == 2
    assert "--diameter -3.0: expected a positive number" in capsys.readouterr().err
    (d / "object_size.json").write_text(json.dumps({"median_diameter_input": 12.0}))
    assert main(base + ["--output", str(tmp_path / "o3"), "--diameter", "24"]) == 0, capsys.readouterr().err
    assert (tmp_path / "o3" / "a_labels.tif").is_file()

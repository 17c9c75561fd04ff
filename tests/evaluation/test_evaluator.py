import json
import math
import uuid

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, Instances

from objguided_d2.config import add_objguided_config
from objguided_d2.evaluation import PaperMetricsEvaluator, build_evaluators, gt_instances_from_dict

H, W = 32, 40


def _rect(y0, x0, y1, x1):
    m = np.zeros((H, W), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _poly(y0, x0, y1, x1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _uncompressed_rle(m):
    # Column-major run lengths starting with a background run, as in COCO's crowd annotations.
    flat = m.reshape(-1, order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v == cur:
            run += 1
        else:
            counts.append(run)
            cur, run = v, 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def _ann(aid, image_id, cat, segm, box, iscrowd=0):
    y0, x0, y1, x1 = box
    return {
        "id": aid,
        "image_id": image_id,
        "category_id": cat,
        "segmentation": segm,
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "area": (y1 - y0) * (x1 - x0),
        "iscrowd": iscrowd,
    }


@pytest.fixture(scope="module")
def dataset_name(tmp_path_factory):
    """Three 32x40 images, categories 1 ("nucleus") and 3 ("leaf"), GT in every format."""
    root = tmp_path_factory.mktemp("coco")
    rle_b = mask_util.encode(np.asfortranarray(_rect(15, 5, 25, 15)))
    rle_b["counts"] = rle_b["counts"].decode("ascii")
    anns = [
        _ann(1, 10, 1, _poly(2, 2, 10, 10), (2, 2, 10, 10)),
        _ann(2, 10, 1, rle_b, (15, 5, 25, 15)),  # compressed RLE
        _ann(3, 10, 3, _uncompressed_rle(_rect(3, 20, 12, 35)), (3, 20, 12, 35)),
        _ann(4, 20, 1, _poly(5, 5, 15, 15), (5, 5, 15, 15)),
        _ann(5, 20, 3, _poly(18, 20, 28, 30), (18, 20, 28, 30)),
        # A crowd region nobody predicts: ignored by COCO and by the paper evaluator.
        _ann(6, 20, 1, _uncompressed_rle(_rect(0, 30, 4, 40)), (0, 30, 4, 40), iscrowd=1),
        _ann(7, 30, 1, _poly(10, 10, 20, 20), (10, 10, 20, 20)),
    ]
    coco = {
        "images": [
            {"id": i, "file_name": f"img{i}.png", "height": H, "width": W} for i in (10, 20, 30)
        ],
        "annotations": anns,
        "categories": [{"id": 1, "name": "nucleus"}, {"id": 3, "name": "leaf"}],
    }
    json_file = root / "coco.json"
    json_file.write_text(json.dumps(coco))
    name = f"objguided_test_eval_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, str(json_file), str(root))
    DatasetCatalog.get(name)  # sets the contiguous id mapping COCOEvaluator needs
    yield name
    DatasetCatalog.remove(name)


def _perfect(name, shift=0, skip=()):
    """Model-like (inputs, outputs) reproducing the GT, optionally shifted right by ``shift`` px."""
    inputs, outputs = [], []
    score = 1.0
    for rec in DatasetCatalog.get(name):
        gt = gt_instances_from_dict(rec)
        inst = Instances((H, W))
        n = 0 if rec["image_id"] in skip else len(gt)
        masks = np.stack([mask_util.decode(r) for r in gt.masks[:n]]) if n else np.zeros((0, H, W))
        masks = np.roll(masks.astype(bool), shift, axis=2)
        boxes = gt.boxes[:n].copy()
        boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]] + shift, 0, W)
        inst.pred_masks = torch.from_numpy(masks.astype(bool))
        inst.pred_boxes = Boxes(torch.from_numpy(boxes).float())
        inst.scores = torch.tensor([score - 0.01 * k for k in range(n)], dtype=torch.float32)
        inst.pred_classes = torch.from_numpy(gt.classes[:n])
        score -= 0.1
        inputs.append({"image_id": rec["image_id"], "height": H, "width": W})
        outputs.append({"instances": inst})
    return inputs, outputs


def _run(evaluator, inputs, outputs):
    evaluator.reset()
    for i, o in zip(inputs, outputs):
        evaluator.process([i], [o])
    return evaluator.evaluate()


def test_gt_from_dict_formats(dataset_name):
    recs = {r["image_id"]: r for r in DatasetCatalog.get(dataset_name)}
    gt = gt_instances_from_dict(recs[10])
    assert len(gt) == 3 and gt.classes.tolist() == [0, 0, 1]  # ids 1, 3 -> contiguous 0, 1
    np.testing.assert_allclose(gt.boxes[2], [20, 3, 35, 12])
    assert mask_util.area(gt.masks[1]) == 100 and mask_util.area(gt.masks[2]) == 9 * 15
    assert len(gt_instances_from_dict(recs[20])) == 2  # crowd dropped


def test_perfect_predictions_give_100(dataset_name, tmp_path):
    cfg = add_objguided_config(get_cfg())
    evaluators = build_evaluators(cfg, dataset_name, str(tmp_path))
    assert isinstance(evaluators._evaluators[0], COCOEvaluator)
    res = _run(evaluators, *_perfect(dataset_name))
    paper = res["paper"]
    for k in (
        "APseg",
        "APseg50",
        "APseg75",
        "APdec",
        "APdec50",
        "APdec75",
        "APdec_det",
        "SEG",
        "DET_F1",
        "bestDice",
        "FgBgDice",
        "APseg-nucleus",
        "APseg-leaf",
    ):
        assert paper[k] == pytest.approx(100.0), k
    assert paper["DiffFG"] == 0.0 and paper["absDiffFG"] == 0.0
    # every prediction is right: the F1-best cutoff keeps them all (the lowest score)
    assert paper["F1_best"] == pytest.approx(100.0)
    assert paper["F1_best_score"] == pytest.approx(min(float(s) for o in _perfect(dataset_name)[1]
                                                       for s in o["instances"].scores))
    assert res["segm"]["AP"] == pytest.approx(100.0)
    assert res["bbox"]["AP"] == pytest.approx(100.0)
    saved = json.loads((tmp_path / "paper_metrics.json").read_text())
    assert saved["metrics"]["APseg"] == pytest.approx(100.0)
    assert len(saved["APseg_curve"]) == 10 and len(saved["iou_thresholds"]) == 10
    assert set(saved["APseg_curve_per_class"]) == {"0", "1"}


def test_shifted_masks_score_lower(dataset_name, tmp_path):
    cfg = add_objguided_config(get_cfg())
    res = _run(build_evaluators(cfg, dataset_name, str(tmp_path)), *_perfect(dataset_name, shift=3))
    paper = res["paper"]
    for k in ("APseg", "APdec", "APseg75", "SEG", "bestDice", "FgBgDice"):
        assert 0.0 <= paper[k] < 99.0, k
    assert paper["APseg75"] <= paper["APseg50"]
    assert res["segm"]["AP"] < 99.0
    # Shifting keeps the object count.
    assert paper["DiffFG"] == 0.0


def test_apdec_scores_the_final_masks_box_and_apdec_det_the_detectors(dataset_name):
    # Perfect masks with detector boxes that are 40 % too small: the authors' APdec (box of the
    # final mask) stays 100; the detector-box column sees the loose boxes.
    inputs, outputs = _perfect(dataset_name)
    for o in outputs:
        b = o["instances"].pred_boxes.tensor
        c, wh = (b[:, :2] + b[:, 2:]) / 2, (b[:, 2:] - b[:, :2]) * 0.6
        o["instances"].pred_boxes = Boxes(torch.cat([c - wh / 2, c + wh / 2], dim=1))
    paper = _run(PaperMetricsEvaluator(dataset_name), inputs, outputs)["paper"]
    assert paper["APdec"] == pytest.approx(100.0) and paper["APseg"] == pytest.approx(100.0)
    assert paper["APdec_det50"] == pytest.approx(0.0)  # box IoU 0.36 < 0.5 everywhere
    # Shifted masks with exact detector boxes: the other way round.
    inputs, outputs = _perfect(dataset_name, shift=3)
    for o, rec in zip(outputs, DatasetCatalog.get(dataset_name)):
        gt = gt_instances_from_dict(rec)
        n = len(o["instances"])
        o["instances"].pred_boxes = Boxes(torch.from_numpy(gt.boxes[:n]).float())
    paper = _run(PaperMetricsEvaluator(dataset_name), inputs, outputs)["paper"]
    assert paper["APdec_det"] == pytest.approx(100.0) and paper["APdec"] < 99.0


def test_image_without_predictions(dataset_name, tmp_path):
    ev = PaperMetricsEvaluator(dataset_name, output_dir=str(tmp_path))
    paper = _run(ev, *_perfect(dataset_name, skip=(30,)))["paper"]
    # Class "nucleus" misses 1 of 4 objects (AP 0.75), "leaf" is perfect: mean 87.5.
    assert paper["APseg"] == pytest.approx(87.5)
    assert paper["APdec50"] == pytest.approx(87.5)
    assert paper["APseg-nucleus"] == pytest.approx(75.0)
    assert paper["SEG"] == pytest.approx(100 * 5 / 6)
    assert paper["DET_F1"] == pytest.approx(100 * 10 / 11)
    assert paper["DiffFG"] == pytest.approx(-1 / 3) and paper["absDiffFG"] == pytest.approx(1 / 3)


def test_score_thresh_only_affects_label_map_metrics(dataset_name):
    ev = PaperMetricsEvaluator(dataset_name, score_thresh=0.95)  # drops images 20 and 30
    paper = _run(ev, *_perfect(dataset_name))["paper"]
    assert paper["APseg"] == pytest.approx(100.0)
    assert paper["DiffFG"] == pytest.approx(-1.0)  # -2 and -1 objects, image 10 complete
    assert paper["SEG"] == pytest.approx(50.0)


def test_float_masks_are_thresholded(dataset_name):
    inputs, outputs = _perfect(dataset_name)
    for o in outputs:
        inst = o["instances"]
        inst.pred_masks = inst.pred_masks.float() * 0.6  # probabilities 0.6 / 0
    assert (
        _run(PaperMetricsEvaluator(dataset_name, mask_threshold=0.5), inputs, outputs)["paper"][
            "APseg"
        ]
        == 100.0
    )
    assert (
        _run(PaperMetricsEvaluator(dataset_name, mask_threshold=0.7), inputs, outputs)["paper"][
            "APseg"
        ]
        == 0.0
    )


def test_no_predictions_returns_empty(dataset_name):
    ev = PaperMetricsEvaluator(dataset_name)
    ev.reset()
    assert ev.evaluate() == {}


def test_bad_inputs_raise(dataset_name):
    ev = PaperMetricsEvaluator(dataset_name)
    inst = Instances((H, W))
    inst.pred_boxes = Boxes(torch.zeros(1, 4))
    inst.scores = torch.ones(1)
    inst.pred_classes = torch.zeros(1, dtype=torch.int64)
    with pytest.raises(ValueError, match="pred_masks"):
        ev.process([{"image_id": 10}], [{"instances": inst}])
    inst.pred_masks = torch.zeros(1, H + 1, W, dtype=torch.bool)
    with pytest.raises(ValueError, match="pred_masks of image 10"):
        ev.process([{"image_id": 10}], [{"instances": inst}])
    ev.reset()
    inputs, outputs = _perfect(dataset_name)
    inputs[0]["image_id"] = 999
    for i, o in zip(inputs, outputs):
        ev.process([i], [o])
    with pytest.raises(ValueError, match="999"):
        ev.evaluate()


def test_paper_metrics_can_be_switched_off(dataset_name, tmp_path):
    cfg = add_objguided_config(get_cfg())
    cfg.TEST.PAPER_METRICS_ON = False
    evs = build_evaluators(cfg, dataset_name, str(tmp_path))
    assert len(evs._evaluators) == 1 and isinstance(evs._evaluators[0], COCOEvaluator)


def test_gt_errors_name_the_field():
    rec = {
        "file_name": "x.png",
        "image_id": 1,
        "height": 4,
        "width": 4,
        "annotations": [{"bbox": [0, 0, 1, 1], "bbox_mode": 1, "category_id": 0}],
    }
    with pytest.raises(ValueError, match="x.png.*segmentation"):
        gt_instances_from_dict(rec)
    rec["annotations"][0]["segmentation"] = [[0, 0, 1]]
    with pytest.raises(ValueError, match="polygon"):
        gt_instances_from_dict(rec)
    rec["annotations"][0]["segmentation"] = np.ones((4, 4), bool)
    gt = gt_instances_from_dict(rec)
    assert mask_util.area(gt.masks[0]) == 16
    assert math.isclose(gt.boxes[0, 2], 1.0)  # bbox_mode 1 = XYXY_ABS kept as given

"""COCO AP through faster-coco-eval equals pycocotools' (1e-6), and maxDets follows
TEST.DETECTIONS_PER_IMAGE in every evaluator."""
import contextlib
import io

import numpy as np
import pycocotools.mask as mask_util
import pytest
from pycocotools.coco import COCO

from objguided_d2.evaluation.coco_eval import evaluate_on_coco
from objguided_d2.evaluation.paper_ap import ImageInstances, paper_ap


def crowded_fixture(num_images=4, num_objects=150, size=128, seed=0, num_classes=2, noise=1.0):
    """GT discs and noisy predicted discs (shifted, rescaled, some missed, some false), 2 classes."""
    import cv2

    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for i in range(1, num_images + 1):
        images.append({"id": i, "height": size, "width": size, "file_name": f"{i}.png"})
        for k in range(num_objects):
            cx, cy, r = rng.uniform(4, size - 4), rng.uniform(4, size - 4), rng.uniform(1.5, 6)
            cat = int(rng.integers(1, num_classes + 1))
            for is_gt in (True, False):
                if not is_gt and rng.random() < 0.15:
                    continue  # missed
                m = np.zeros((size, size), np.uint8)
                dx, dy, dr = (0, 0, 0) if is_gt else rng.normal(0, noise, 3)
                cv2.circle(m, (int(cx + dx), int(cy + dy)), max(1, int(r + dr)), 1, -1)
                rle = mask_util.encode(np.asfortranarray(m))
                x, y, w, h = mask_util.toBbox(rle).tolist()
                rle["counts"] = rle["counts"].decode("ascii")
                entry = {"image_id": i, "category_id": cat, "segmentation": rle, "bbox": [x, y, w, h]}
                if is_gt:
                    anns.append(dict(entry, id=len(anns) + 1, area=float(mask_util.area(rle)), iscrowd=0))
                else:
                    results.append(dict(entry, score=float(rng.random())))
        for _ in range(num_objects // 5):  # false positives
            m = np.zeros((size, size), np.uint8)
            cv2.circle(m, tuple(int(v) for v in rng.uniform(0, size, 2)), 3, 1, -1)
            rle = mask_util.encode(np.asfortranarray(m))
            bb = mask_util.toBbox(rle).tolist()
            rle["counts"] = rle["counts"].decode("ascii")
            results.append({"image_id": i, "category_id": int(rng.integers(1, num_classes + 1)), "segmentation": rle,
                            "bbox": bb, "score": float(rng.random())})
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    return gt, results


def _coco(gt):
    with contextlib.redirect_stdout(io.StringIO()):
        c = COCO()
        c.dataset = gt
        c.createIndex()
    return c


@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
@pytest.mark.parametrize("max_dets", [100, 500])
def test_faster_coco_eval_equals_pycocotools(iou_type, max_dets):
    pytest.importorskip("faster_coco_eval")  # installed by setup.py's "test" extra
    gt, results = crowded_fixture()
    with contextlib.redirect_stdout(io.StringIO()):
        ref = evaluate_on_coco(_coco(gt), results, iou_type, max_dets, backend="pycocotools")
        fast = evaluate_on_coco(_coco(gt), results, iou_type, max_dets, backend="faster-coco-eval")
    assert ref.stats[0] > 0.01  # a real AP, not an empty evaluation
    np.testing.assert_allclose(np.asarray(fast.stats[:6]), np.asarray(ref.stats[:6]), atol=1e-6)
    np.testing.assert_allclose(fast.eval["precision"], ref.eval["precision"], atol=1e-6)


def test_max_dets_changes_ap_on_crowded_images():
    gt, results = crowded_fixture(num_images=2, num_classes=1, noise=0.3)  # ~160 predictions per image
    with contextlib.redirect_stdout(io.StringIO()):
        capped = evaluate_on_coco(_coco(gt), results, "segm", 100, backend="pycocotools")
        full = evaluate_on_coco(_coco(gt), results, "segm", 500, backend="pycocotools")
    assert full.params.maxDets == [1, 10, 500]
    assert full.stats[0] > capped.stats[0] + 0.05  # 100 per image clips AP


def test_paper_ap_max_dets_keeps_the_top_scores():
    rle = mask_util.encode(np.asfortranarray(np.ones((4, 4), np.uint8)))
    gt = ImageInstances(classes=[0], boxes=[[0, 0, 4, 4]], masks=[rle])
    # The only correct prediction has the lowest score: capped to 2 detections it is dropped.
    pred = ImageInstances(classes=[0, 0, 0], boxes=[[10, 10, 12, 12], [20, 20, 22, 22], [0, 0, 4, 4]],
                          masks=None, scores=[0.9, 0.8, 0.1])
    assert paper_ap([gt], [pred], "bbox")["AP"] > 0.3
    assert paper_ap([gt], [pred], "bbox", max_dets=2)["AP"] == 0.0


def test_evaluators_follow_detections_per_image(tmp_path):
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from objguided_d2 import add_objguided_config
    from objguided_d2.evaluation import build_evaluators
    from objguided_d2.evaluation.coco_eval import ObjGuidedCOCOEvaluator

    gt, _ = crowded_fixture(num_images=1, num_objects=3)
    name = "coco_eval_maxdets_test"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: [])
        MetadataCatalog.get(name).set(json_file=str(tmp_path / "gt.json"), thing_classes=["a", "b"])
        import json

        (tmp_path / "gt.json").write_text(json.dumps(gt))
    for dpi in (7, 300):
        cfg = get_cfg()
        add_objguided_config(cfg)
        cfg.TEST.DETECTIONS_PER_IMAGE = dpi
        coco_ev, paper_ev = build_evaluators(cfg, name, str(tmp_path))._evaluators
        assert isinstance(coco_ev, ObjGuidedCOCOEvaluator)
        assert coco_ev._max_dets_per_image == [1, 10, dpi]
        assert paper_ev._max_dets == dpi

"""RandomSquareCrop and ObjGuidedDatasetMapper: geometry of image, boxes and masks."""
import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from detectron2.structures import BitMasks, BoxMode, PolygonMasks

from objguided_d2.config import add_objguided_config
from objguided_d2.data.dataset_mapper import ObjGuidedDatasetMapper
from objguided_d2.data.datasets.coco import encode_mask
from objguided_d2.data.transforms import RandomNativeCrop, RandomSquareCrop, SquareCropPadTransform, clip_polygon_to_rect


def _cfg(train_size=64, square=True):
    cfg = get_cfg()
    add_objguided_config(cfg)
    cfg.MODEL.MASK_ON = True
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.TRAIN_SIZE = train_size
    cfg.INPUT.SQUARE_CROP_ON = square
    cfg.INPUT.MIN_SIZE_TEST = 40
    cfg.INPUT.MAX_SIZE_TEST = 1000
    return cfg


def _sample(tmp_path, h, w, boxes, image=None, name="img.png"):
    """An image file with square objects given as (x0, y0, x1, y1) and its dataset dict."""
    img = image if image is not None else np.full((h, w, 3), 50, np.uint8)
    annos = []
    for x0, y0, x1, y1 in boxes:
        m = np.zeros((h, w), np.uint8)
        m[y0:y1, x0:x1] = 1
        if image is None:
            img[y0:y1, x0:x1] = 200
        annos.append({"bbox": [x0, y0, x1 - x0, y1 - y0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
                      "iscrowd": 0, "segmentation": encode_mask(m)})
    path = str(tmp_path / name)
    cv2.imwrite(path, img)
    return {"file_name": path, "height": h, "width": w, "image_id": 0, "annotations": annos}


def test_square_crop_transform_pads_outside_with_zeros():
    img = np.arange(1, 13, dtype=np.uint8).reshape(3, 4)
    t = SquareCropPadTransform(x0=-1, y0=1, side=3, orig_w=4, orig_h=3)
    out = t.apply_image(img)
    np.testing.assert_array_equal(out, [[0, 5, 6], [0, 9, 10], [0, 0, 0]])
    np.testing.assert_allclose(t.apply_coords(np.array([[1.0, 2.0]])), [[2.0, 1.0]])
    with pytest.raises(ValueError, match="4x3"):
        t.apply_image(np.zeros((4, 4), np.uint8))


def test_clip_polygon():
    sq = np.array([[-2, -2], [4, -2], [4, 4], [-2, 4]], float)
    c = clip_polygon_to_rect(sq, 10, 10)
    assert cv2.contourArea(c.astype(np.float32)) == pytest.approx(16)
    assert len(clip_polygon_to_rect(sq + 20, 10, 10)) == 0


@pytest.mark.parametrize("h, w", [(60, 100), (100, 60)])
def test_random_square_crop_ranges_not_swapped(h, w):
    aug = RandomSquareCrop()
    img = np.zeros((h, w, 3), np.uint8)
    np.random.seed(0)
    sides, cx, cy = set(), [], []
    for _ in range(300):
        t = aug.get_transform(img)
        sides.add(t.side)
        cx.append(t.x0 + t.side / 2)
        cy.append(t.y0 + t.side / 2)
        assert t.apply_image(img).shape == (t.side, t.side, 3)
    assert sides == {int(round(max(h, w) * s)) for s in (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)}
    # x follows the width and y the height: both ranges are filled, neither is exceeded.
    assert 0.25 * w - 1 <= min(cx) < 0.3 * w and 0.7 * w < max(cx) <= 0.75 * w + 1
    assert 0.25 * h - 1 <= min(cy) < 0.3 * h and 0.7 * h < max(cy) <= 0.75 * h + 1


def test_known_square_cropped_flipped_resized(tmp_path):
    # 60x100 image, object x in [20, 30), y in [10, 20). Crop square side 50 at (x0, y0) = (10, -10):
    # object at x [10, 20), y [20, 30); flip in 50 wide: x [30, 40); resize 50 -> 100: x [60, 80), y [40, 60).
    d = _sample(tmp_path, 60, 100, [(20, 10, 30, 20), (90, 50, 100, 60)])
    augs = [SquareCropPadTransform(10, -10, 50, 100, 60), T.HFlipTransform(50), T.ResizeTransform(50, 50, 100, 100)]
    mapper = ObjGuidedDatasetMapper(True, augmentations=augs, instance_mask_format="bitmask")
    out = mapper(d)
    assert out["image"].shape == (3, 100, 100) and out["image"].dtype == torch.uint8
    inst = out["instances"]
    assert len(inst) == 1  # the second object lies outside the crop and is dropped
    assert inst.gt_boxes.tensor.tolist() == [[60.0, 40.0, 80.0, 60.0]]
    mask = inst.gt_masks.tensor[0].numpy()
    expected = np.zeros((100, 100), bool)
    expected[40:60, 60:80] = True
    np.testing.assert_array_equal(mask, expected)
    # The image moved the same way; the padded top rows (y < 10 before resize) are black.
    img = out["image"][0].numpy()
    assert img[42:58, 62:78].min() == 200 and img[:19].max() == 0 and img[30:, :40].max() == 50


def test_polygon_annotations_are_clipped(tmp_path):
    d = _sample(tmp_path, 40, 40, [])
    d["annotations"] = [{"bbox": [30, 30, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0,
                         "segmentation": [[30, 30, 50, 30, 50, 50, 30, 50]]}]
    mapper = ObjGuidedDatasetMapper(True, augmentations=[SquareCropPadTransform(0, 0, 40, 40, 40)],
                                    instance_mask_format="polygon")
    inst = mapper(d)["instances"]
    assert isinstance(inst.gt_masks, PolygonMasks)
    assert inst.gt_masks.area().item() == pytest.approx(100)
    assert inst.gt_boxes.tensor.tolist() == [[30.0, 30.0, 40.0, 40.0]]


@pytest.mark.parametrize("h, w", [(48, 80), (80, 48), (64, 64)])
def test_from_config_train_output_consistent(tmp_path, h, w):
    cfg = _cfg(train_size=64)
    mapper = ObjGuidedDatasetMapper(cfg, True)
    assert isinstance(mapper.augmentations.augs[0], RandomSquareCrop)
    boxes = [(5, 5, 15, 12), (15, 5, 25, 12), (w - 12, h - 10, w - 2, h - 1)]  # two touch
    d = _sample(tmp_path, h, w, boxes)
    np.random.seed(1)
    n_seen = 0
    for _ in range(15):
        out = mapper(d)
        assert out["image"].shape == (3, 64, 64)
        inst = out["instances"]
        assert isinstance(inst.gt_masks, BitMasks) and inst.gt_masks.tensor.shape[1:] == (64, 64)
        assert len(inst) <= 3
        n_seen += len(inst)
        # Boxes are the tight boxes of the transformed masks; no empty mask survives.
        np.testing.assert_allclose(inst.gt_boxes.tensor, inst.gt_masks.get_bounding_boxes().tensor)
        assert bool(inst.gt_masks.nonempty().all())
        # Every mask sits on the bright object pixels of the transformed image.
        img = out["image"][0].numpy()
        for m in inst.gt_masks.tensor.numpy():
            assert img[m].mean() > 120
    assert n_seen > 15


def test_native_crop_keeps_object_scale(tmp_path):
    # INPUT.NATIVE_CROP_SIZE: fixed-size crops at native scale (no resize); test stays whole.
    cfg = _cfg(train_size=64)
    cfg.INPUT.NATIVE_CROP_SIZE = 48
    cfg.INPUT.MIN_SIZE_TEST = 0  # whole test images at native size
    mapper = ObjGuidedDatasetMapper(cfg, True)
    assert isinstance(mapper.augmentations.augs[0], RandomNativeCrop)
    assert not any(isinstance(a, T.Resize) for a in mapper.augmentations.augs)
    h, w = 100, 130
    d = _sample(tmp_path, h, w, [(10, 10, 30, 24), (60, 40, 90, 80), (100, 70, 128, 99)])
    np.random.seed(0)
    sizes = set()
    for _ in range(30):
        out = mapper(d)
        assert out["image"].shape == (3, 48, 48)  # never padded: the image is larger than the crop
        inst = out["instances"]
        for m, b in zip(inst.gt_masks.tensor.numpy(), inst.gt_boxes.tensor.numpy()):
            assert out["image"][0].numpy()[m].mean() > 120
            # Uncut objects keep their native size (20x14, 30x40, 28x29 px): nothing is rescaled.
            bw, bh = b[2] - b[0], b[3] - b[1]
            assert bw <= 30 and bh <= 40
            if 0 < b[0] and 0 < b[1] and b[2] < 48 and b[3] < 48:
                sizes.add((round(float(bw)), round(float(bh))))
    assert sizes & {(20, 14), (30, 40), (28, 29)}
    test_out = ObjGuidedDatasetMapper(cfg, False)(d)
    assert test_out["image"].shape == (3, h, w)
    # A crop larger than the image is zero padded around it at a random offset.
    small = _sample(tmp_path, 20, 30, [(2, 2, 8, 8)], name="small.png")
    out = ObjGuidedDatasetMapper(cfg, True)(small)
    assert out["image"].shape == (3, 48, 48) and int((out["image"][0] == 50).sum()) + int((out["image"][0] == 200).sum()) == 600
    with pytest.raises(ValueError, match="positive"):
        RandomNativeCrop(0)


def test_zero_objects_and_16bit_image(tmp_path):
    cfg = _cfg(train_size=32)
    img16 = (np.arange(30 * 50, dtype=np.uint16).reshape(30, 50) * 2).astype(np.uint16)
    path = str(tmp_path / "x16.png")
    cv2.imwrite(path, img16)
    d = {"file_name": path, "height": 30, "width": 50, "image_id": 0, "annotations": []}
    out = ObjGuidedDatasetMapper(cfg, True)(d)
    assert out["image"].shape == (3, 32, 32)
    assert len(out["instances"]) == 0 and out["instances"].gt_masks.tensor.shape == (0, 32, 32)
    test_out = ObjGuidedDatasetMapper(cfg, False)(d)
    assert test_out["image"].shape == (3, 40, 67) and "instances" not in test_out  # ResizeShortestEdge
    assert int(test_out["image"].max()) == 255  # 16-bit stretched, not clipped/garbled


def test_default_augmentation_when_square_crop_off(tmp_path):
    cfg = _cfg(square=False)
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    mapper = ObjGuidedDatasetMapper(cfg, True)
    assert not any(isinstance(a, RandomSquareCrop) for a in mapper.augmentations.augs)
    d = _sample(tmp_path, 30, 60, [(5, 5, 15, 15)])
    out = mapper(d)
    assert out["image"].shape == (3, 40, 80) and len(out["instances"]) == 1


def test_rle_with_polygon_format_falls_back_to_bitmask(tmp_path):
    cfg = _cfg(train_size=32)
    cfg.INPUT.MASK_FORMAT = "polygon"
    d = _sample(tmp_path, 32, 32, [(4, 4, 28, 28)])
    mapper = ObjGuidedDatasetMapper(cfg, True)
    inst = mapper(d)["instances"]
    assert isinstance(inst.gt_masks, BitMasks) and len(inst) == 1


def test_rejects_unsupported_format():
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        ObjGuidedDatasetMapper(True, augmentations=[], image_format="L")

"""Tiled prediction and stitching, checked with a deterministic stand-in predictor
(threshold + connected components) whose whole-image answer is the ground truth."""
import numpy as np
import pytest
import torch
from detectron2.structures import Boxes, Instances
from scipy import ndimage

from objguided_d2.predict.tiling import Detection, predict_tiled, stitch_tiles, tile_grid
from objguided_d2.predict.writers import label_image

TILE, OVERLAP = 256, 64


def blob_predictor(image: np.ndarray) -> Instances:
    """Bright blobs -> one instance each; score = the blob's mean brightness / 255."""
    gray = image[..., 0].astype(np.float32)
    lab, n = ndimage.label(gray > 100)
    h, w = gray.shape
    inst = Instances((h, w))
    masks = np.stack([lab == k for k in range(1, n + 1)]) if n else np.zeros((0, h, w), bool)
    scores = [float(gray[m].mean()) / 255.0 for m in masks]
    boxes = []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    inst.pred_masks = torch.from_numpy(masks)
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.zeros(n, dtype=torch.int64)
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    return inst


def _blob_image(h=700, w=900, seed=0):
    """Disjoint discs and ellipses, several centred on tile cuts/overlaps, one wider than the
    overlap spanning two tiles, one long one spanning three, one on a 4-tile corner."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    occupied = np.zeros((h, w), bool)
    img = np.zeros((h, w), np.uint8)
    tiles = tile_grid(h, w, TILE, OVERLAP)
    ycuts = sorted({t.core[2] for t in tiles if t.core[2] < h})
    xcuts = sorted({t.core[3] for t in tiles if t.core[3] < w})
    xedges = sorted({t.box[1] for t in tiles if t.box[1] > 0} | {t.box[3] for t in tiles if t.box[3] < w})
    shapes = [
        (ycuts[0], xcuts[0], 14, 14),  # 4-tile corner
        (ycuts[0] + 3, 450, 55, 40),  # taller than the overlap, across a horizontal cut
        (620, 330, 10, 200),  # long ellipse over several tiles
    ]
    shapes += [(int(rng.integers(20, h - 20)), xe, 9, 9) for xe in xedges]  # on tile edges
    shapes += [(int(rng.integers(15, h - 15)), int(rng.integers(15, w - 15)),
                int(rng.integers(5, 15)), int(rng.integers(5, 15))) for _ in range(120)]
    n = 0
    for cy, cx, ry, rx in shapes:
        m = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        if (ndimage.binary_dilation(m, iterations=2) & occupied).any():
            continue  # keep blobs separate so connected components are the truth
        occupied |= m
        img[m] = int(rng.integers(120, 255))
        n += 1
    return np.repeat(img[..., None], 3, axis=2), n


def _match(a_lab, b_lab):
    """For each object of a, the IoU of its best object in b, and which b id that was."""
    out = []
    for r in range(1, a_lab.max() + 1):
        m = a_lab == r
        ids, counts = np.unique(b_lab[m], return_counts=True)
        counts, ids = counts[ids > 0], ids[ids > 0]
        if ids.size == 0:
            out.append((0.0, 0))
            continue
        best = ids[np.argmax(counts)]
        inter = counts.max()
        out.append((inter / np.logical_or(m, b_lab == best).sum(), int(best)))
    return out


def test_tile_grid_covers_and_cores_partition():
    for h, w in [(700, 900), (256, 1000), (100, 50), (257, 257)]:
        tiles = tile_grid(h, w, TILE, OVERLAP)
        cover = np.zeros((h, w), int)
        core = np.zeros((h, w), int)
        for t in tiles:
            assert t.box[2] - t.box[0] == min(TILE, h) and t.box[3] - t.box[1] == min(TILE, w)
            cover[t.box[0]:t.box[2], t.box[1]:t.box[3]] += 1
            core[t.core[0]:t.core[2], t.core[1]:t.core[3]] += 1
        assert cover.min() >= 1
        assert (core == 1).all()
        # neighbours overlap by at least the requested amount
        xs = sorted({t.box[1] for t in tiles})
        assert all(a + TILE - b >= OVERLAP for a, b in zip(xs, xs[1:]))
    with pytest.raises(ValueError, match="overlap"):
        tile_grid(100, 100, 64, 64)


def test_tiled_matches_whole_image():
    img, n = _blob_image()
    assert n > 60
    whole = predict_tiled(img, blob_predictor, tile_size=10_000, overlap=0)
    tiled = predict_tiled(img, blob_predictor, tile_size=TILE, overlap=OVERLAP)
    assert len(whole) == n
    assert len(tiled) == n  # no duplicates, no halves
    w_lab, _ = label_image(whole, img.shape[:2])
    t_lab, _ = label_image(tiled, img.shape[:2])
    m = _match(w_lab, t_lab)
    ious = np.array([iou for iou, _ in m])
    assert ious.min() > 0.9, f"worst per-object IoU {ious.min():.3f}"
    assert len({b for _, b in m}) == n  # one-to-one
    # tiled detections do not overlap each other (a duplicate would)
    stack = np.zeros(img.shape[:2], int)
    for d in tiled:
        stack[d.box[0]:d.box[2], d.box[1]:d.box[3]] += d.mask
    assert stack.max() == 1


def test_object_larger_than_overlap_is_merged_from_pieces():
    img = np.zeros((300, 500, 3), np.uint8)
    img[100:200, 150:350] = 200  # 200 px wide, crosses the two tiles' 64 px overlap
    tiled = predict_tiled(img, blob_predictor, tile_size=TILE, overlap=OVERLAP)
    assert len(tiled) == 1
    d = tiled[0]
    assert d.box == (100, 150, 200, 350) and d.mask.all()


def test_distinct_objects_in_one_tile_stay_separate():
    """Two touching-but-separate predictions of one tile are never merged by a neighbour's
    prediction that covers both (a group holds at most one candidate per tile)."""
    tiles = tile_grid(100, 160, 100, 40)
    assert [t.box for t in tiles] == [(0, 0, 100, 100), (0, 60, 100, 160)]
    # a and b: stacked, both cut by tile 0's right border; m (tile 1) covers both.
    a = Detection(box=(40, 70, 50, 100), mask=np.ones((10, 30), bool), score=0.9, category=0)
    b = Detection(box=(50, 70, 60, 100), mask=np.ones((10, 30), bool), score=0.8, category=0)
    m = Detection(box=(40, 60, 60, 120), mask=np.ones((20, 60), bool), score=0.7, category=0)
    out = stitch_tiles(tiles, [[a, b], [m]])
    assert len(out) == 2
    assert sorted(d.score for d in out) == [0.8, 0.9]


def test_empty_image_gives_no_detections():
    img = np.zeros((600, 600, 3), np.uint8)
    assert predict_tiled(img, blob_predictor, tile_size=TILE, overlap=OVERLAP) == []

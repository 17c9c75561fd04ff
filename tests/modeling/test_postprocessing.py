"""Pasting of variable-size ROI maps into full images (``modeling/postprocessing.py``)."""
import pytest
import torch

from objguided_d2.modeling.postprocessing import paste_roi_masks
from objguided_d2.modeling.roi_heads.roi_grid import enlarge_boxes, roi_level_sizes

from reference_seg import crop_mask_roi


def _disc_roi(cx, cy, r, enlarge=1.1):
    """Soft disc probability map sampled on the ROI grid of the disc's box."""
    box = torch.tensor([[cx - r, cy - r, cx + r, cy + r]], dtype=torch.float64)
    (h, w) = roi_level_sizes(box, [1], enlarge, 2)[0][0]
    x0, y0, x1, y1 = enlarge_boxes(box, enlarge)[0].tolist()
    ys = torch.linspace(y0, y1, h, dtype=torch.float64)
    xs = torch.linspace(x0, x1, w, dtype=torch.float64)
    d = torch.sqrt((xs[None] - cx) ** 2 + (ys[:, None] - cy) ** 2)
    probs = (0.5 + (r - d) / 2).clamp(0, 1).float()
    return probs, enlarge_boxes(box, enlarge).float()


def _analytic_disc(H, W, cx, cy, r, scale=1.0):
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    return (xs / scale - cx) ** 2 + (ys / scale - cy) ** 2 <= r * r


def _iou(a, b):
    return ((a & b).sum() / (a | b).sum()).item()


@pytest.mark.parametrize("r, scale", [(15.0, 1.0), (3.2, 1.0), (9.0, 2.5), (12.0, 0.6)])
def test_paste_roi_masks_recovers_analytic_disc(r, scale):
    H, W = 61, 83  # odd, non-square
    cx, cy = 40.3, 27.8
    probs, grid_box = _disc_roi(cx, cy, r)
    out_hw = (round(H * scale), round(W * scale))
    pasted = paste_roi_masks([probs], grid_box * scale, out_hw)
    assert pasted.shape == (1, *out_hw) and pasted.dtype == torch.bool
    assert _iou(pasted[0], _analytic_disc(*out_hw, cx, cy, r, scale)) > 0.95


def test_paste_roi_masks_chunking_border_and_empty():
    torch.manual_seed(0)
    maps, boxes = [], []
    for cx, cy, r in [(5, 5, 8), (60, 30, 4), (30, 20, 12), (0, 40, 6), (70, 0, 3)]:
        p, b = _disc_roi(cx, cy, r)
        maps.append(p)
        boxes.append(b)
    boxes = torch.cat(boxes)
    one = paste_roi_masks(maps, boxes, (45, 71))
    chunked = paste_roi_masks(maps, boxes, (45, 71), max_elements=50)
    assert torch.equal(one, chunked)
    for k, (cx, cy, r) in enumerate([(5, 5, 8), (60, 30, 4), (30, 20, 12), (0, 40, 6), (70, 0, 3)]):
        assert _iou(one[k], _analytic_disc(45, 71, cx, cy, r)) > 0.9  # clipped by the image edge
    assert paste_roi_masks([], torch.zeros(0, 4), (7, 9)).shape == (0, 7, 9)
    with pytest.raises(ValueError, match="grid boxes"):
        paste_roi_masks(maps[:2], boxes, (45, 71))


def test_paste_is_inverse_of_crop():
    # Crop a mask on the ROI grid, paste it back: the mask is recovered (round trip).
    mask = _analytic_disc(50, 64, 30.5, 22.0, 11.0) | _analytic_disc(50, 64, 45.0, 30.0, 7.0)
    box = torch.tensor([19.0, 11.0, 53.0, 38.0])
    (h, w) = roi_level_sizes(box[None], [1], 1.1, 2)[0][0]
    roi = crop_mask_roi(mask, box, (h, w), enlarge=1.1)
    grid_box = enlarge_boxes(box[None], 1.1)
    back = paste_roi_masks([roi], grid_box, (50, 64))[0]
    x0, y0, x1, y1 = grid_box[0].tolist()
    ys, xs = torch.meshgrid(torch.arange(50) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    assert _iou(back, mask & inside) > 0.95
    assert not back[~inside].any()

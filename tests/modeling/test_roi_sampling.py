import pytest
import torch

from objguided_d2.modeling.roi_heads.roi_sampling import (
    crop_mask_roi,
    crop_roi,
    enlarge_boxes,
    largest_component_boxes,
    paste_roi_masks,
    roi_level_sizes,
)

STRIDES = [1, 2, 4, 8, 16]


def cxcywh(cx, cy, w, h):
    return torch.tensor([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]], dtype=torch.float32)


@pytest.mark.parametrize(
    "box, expected",
    [
        ((100, 100, 40, 24), [(26, 44), (13, 22), (6, 11), (3, 5)]),
        ((50, 50, 8, 8), [(8, 8), (4, 4), (2, 2)]),
        ((256, 256, 300, 200), [(220, 330), (110, 165), (55, 82), (27, 41), (13, 20)]),
        ((10, 10, 3, 3), [(3, 3)]),
        ((20, 20, 1.5, 40), []),
    ],
)
def test_roi_level_sizes_card_references(box, expected):
    assert roi_level_sizes(cxcywh(*box), STRIDES) == [expected]


def test_roi_level_sizes_float32_rounding_and_batch():
    # Off-grid float32 coordinates: the side is still 20 / 10 px up to rounding -> int(22.0) = 22.
    boxes = torch.cat([cxcywh(100.37, 77.91, 20, 10), cxcywh(5, 5, 2, 2)])
    sizes = roi_level_sizes(boxes, STRIDES)
    assert sizes[0] == [(11, 22), (5, 11), (2, 5)]
    assert sizes[1] == [(2, 2)]
    assert roi_level_sizes(torch.zeros(0, 4), STRIDES) == []


def test_smaller_objects_get_fewer_levels():
    counts = [len(roi_level_sizes(cxcywh(200, 200, s, s), STRIDES)[0]) for s in (300, 60, 15, 4, 1)]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] == 5 and counts[-1] == 0


def test_crop_roi_whole_image_reproduces_feature():
    torch.manual_seed(0)
    feat = torch.randn(2, 3, 7, 10)
    # The grid endpoints are the box edges: a box from the first to the last pixel centre.
    box = torch.tensor([0.5, 0.5, 9.5, 6.5])
    out = crop_roi(feat, box, (7, 10), 1, enlarge=1.0, batch_index=1)
    torch.testing.assert_close(out, feat[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize("stride", [1, 4, 16])
def test_crop_roi_linear_ramp_is_exact(stride):
    H, W = 12, 15
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32),
                            indexing="ij")
    feat = torch.stack([3.0 * xs + 1.0, -2.0 * ys + 0.5])[None]  # (1, 2, H, W), per cell index
    # Box well inside the map (no border clamping), at input-pixel scale.
    box = torch.tensor([3.3, 2.7, 9.1, 8.2]) * stride
    h, w = 5, 7
    out = crop_roi(feat, box, (h, w), stride)
    x0, y0, x1, y1 = enlarge_boxes(box[None].double(), 1.1)[0].tolist()
    gx = torch.tensor([x0 + (x1 - x0) * j / (w - 1) for j in range(w)]) / stride - 0.5
    gy = torch.tensor([y0 + (y1 - y0) * i / (h - 1) for i in range(h)]) / stride - 0.5
    torch.testing.assert_close(out[0], (3.0 * gx + 1.0)[None].expand(h, w).float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], (-2.0 * gy + 0.5)[:, None].expand(h, w).float(), atol=1e-4, rtol=0)


def test_crop_roi_zero_outside_map_and_differentiable():
    feat = torch.ones(1, 4, 8, 8, requires_grad=True)
    out = crop_roi(feat, torch.tensor([-20.0, -20.0, 4.0, 4.0]), (6, 6), 2)
    assert out.shape == (4, 6, 6)
    assert out[:, 0, 0].abs().max() == 0  # far outside the image
    assert torch.allclose(out[:, -1, -1], torch.ones(4))  # inside: border-clamped bilinear of 1s
    out.sum().backward()
    assert feat.grad is not None and feat.grad.abs().sum() > 0


def test_crop_roi_bad_inputs():
    with pytest.raises(ValueError, match="batch_index"):
        crop_roi(torch.zeros(1, 1, 4, 4), torch.tensor([0.0, 0, 2, 2]), (2, 2), 1, batch_index=3)
    with pytest.raises(ValueError, match="N, C, H, W"):
        crop_roi(torch.zeros(4, 4), torch.tensor([0.0, 0, 2, 2]), (2, 2), 1)


def test_crop_mask_roi_soft_target():
    mask = torch.zeros(40, 50, dtype=torch.bool)
    mask[10:30, 12:32] = True  # box [12, 10, 32, 30]
    box = torch.tensor([12.0, 10.0, 32.0, 30.0])
    (h, w) = roi_level_sizes(box[None], [1])[0][0]
    t = crop_mask_roi(mask, box, (h, w))
    assert t.shape == (22, 22) and t.dtype == torch.float32
    assert ((t >= 0) & (t <= 1)).all()
    assert t[h // 2, w // 2] == 1 and t[0, 0] == 0 and t[-1, -1] == 0
    # The enlarged box adds 1 px of background per side: ~ the 20/22 centre part is foreground.
    assert abs(t.sum().item() - 20 * 20) < 0.1 * 400


def test_largest_component_boxes():
    m = torch.zeros(4, 20, 30, dtype=torch.bool)
    m[0, 2:5, 3:6] = True  # 9 px
    m[0, 10:18, 12:25] = True  # the larger one
    m[1, 5, 5] = True  # diagonal neighbours are separate under 4-connectivity
    m[1, 6, 6] = True
    m[1, 7, 6] = True
    m[2, 0:20, 29] = True
    boxes = largest_component_boxes(m)
    assert boxes.dtype == torch.float32 and boxes.shape == (4, 4)
    assert boxes[0].tolist() == [12, 10, 25, 18]
    assert boxes[1].tolist() == [6, 6, 7, 8]
    assert boxes[2].tolist() == [29, 0, 30, 20]
    assert boxes[3].tolist() == [0, 0, 0, 0]  # empty mask
    assert largest_component_boxes(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 4)


def _disc_roi(cx, cy, r, enlarge=1.1):
    """Soft disc probability map sampled on the ROI grid of the disc's box."""
    box = torch.tensor([[cx - r, cy - r, cx + r, cy + r]], dtype=torch.float64)
    (h, w) = roi_level_sizes(box, [1], enlarge)[0][0]
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
    (h, w) = roi_level_sizes(box[None], [1])[0][0]
    roi = crop_mask_roi(mask, box, (h, w))
    grid_box = enlarge_boxes(box[None], 1.1)
    back = paste_roi_masks([roi], grid_box, (50, 64))[0]
    x0, y0, x1, y1 = grid_box[0].tolist()
    ys, xs = torch.meshgrid(torch.arange(50) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
    assert _iou(back, mask & inside) > 0.95
    assert not back[~inside].any()

"""The ROI grid: per-level ROI sizes, crops of feature maps and GT masks (``roi_grid``)."""
import pytest
import torch

from objguided_d2.modeling.roi_heads.roi_grid import enlarge_boxes, roi_level_sizes

from reference_seg import crop_mask_roi, crop_roi

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
    assert roi_level_sizes(cxcywh(*box), STRIDES, 1.1, 2) == [expected]


def test_roi_level_sizes_float32_rounding_and_batch():
    # Off-grid float32 coordinates: the side is still 20 / 10 px up to rounding -> int(22.0) = 22.
    boxes = torch.cat([cxcywh(100.37, 77.91, 20, 10), cxcywh(5, 5, 2, 2)])
    sizes = roi_level_sizes(boxes, STRIDES, 1.1, 2)
    assert sizes[0] == [(11, 22), (5, 11), (2, 5)]
    assert sizes[1] == [(2, 2)]
    assert roi_level_sizes(torch.zeros(0, 4), STRIDES, 1.1, 2) == []


def test_smaller_objects_get_fewer_levels():
    counts = [len(roi_level_sizes(cxcywh(200, 200, s, s), STRIDES, 1.1, 2)[0]) for s in (300, 60, 15, 4, 1)]
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
    out = crop_roi(feat, box, (h, w), stride, enlarge=1.1)
    x0, y0, x1, y1 = enlarge_boxes(box[None].double(), 1.1)[0].tolist()
    gx = torch.tensor([x0 + (x1 - x0) * j / (w - 1) for j in range(w)]) / stride - 0.5
    gy = torch.tensor([y0 + (y1 - y0) * i / (h - 1) for i in range(h)]) / stride - 0.5
    torch.testing.assert_close(out[0], (3.0 * gx + 1.0)[None].expand(h, w).float(), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[1], (-2.0 * gy + 0.5)[:, None].expand(h, w).float(), atol=1e-4, rtol=0)


def test_crop_roi_zero_outside_map_and_differentiable():
    feat = torch.ones(1, 4, 8, 8, requires_grad=True)
    out = crop_roi(feat, torch.tensor([-20.0, -20.0, 4.0, 4.0]), (6, 6), 2, enlarge=1.1)
    assert out.shape == (4, 6, 6)
    assert out[:, 0, 0].abs().max() == 0  # far outside the image
    assert torch.allclose(out[:, -1, -1], torch.ones(4))  # inside: border-clamped bilinear of 1s
    out.sum().backward()
    assert feat.grad is not None and feat.grad.abs().sum() > 0


def test_crop_roi_bad_inputs():
    with pytest.raises(ValueError, match="batch_index"):
        crop_roi(torch.zeros(1, 1, 4, 4), torch.tensor([0.0, 0, 2, 2]), (2, 2), 1, enlarge=1.1, batch_index=3)
    with pytest.raises(ValueError, match="N, C, H, W"):
        crop_roi(torch.zeros(4, 4), torch.tensor([0.0, 0, 2, 2]), (2, 2), 1, enlarge=1.1)


def test_crop_mask_roi_soft_target():
    mask = torch.zeros(40, 50, dtype=torch.bool)
    mask[10:30, 12:32] = True  # box [12, 10, 32, 30]
    box = torch.tensor([12.0, 10.0, 32.0, 30.0])
    (h, w) = roi_level_sizes(box[None], [1], 1.1, 2)[0][0]
    t = crop_mask_roi(mask, box, (h, w), enlarge=1.1)
    assert t.shape == (22, 22) and t.dtype == torch.float32
    assert ((t >= 0) & (t <= 1)).all()
    assert t[h // 2, w // 2] == 1 and t[0, 0] == 0 and t[-1, -1] == 0
    # The enlarged box adds 1 px of background per side: ~ the 20/22 centre part is foreground.
    assert abs(t.sum().item() - 20 * 20) < 0.1 * 400


def test_grow_boxes_where_the_mask_reaches_the_roi_margin():
    from objguided_d2.modeling.roi_heads.roi_grid import grow_boxes_at_touched_borders

    boxes = torch.tensor([[20.0, 20.0, 60.0, 40.0], [20.0, 20.0, 60.0, 40.0]])
    inside = torch.zeros(22, 44)  # a 40x20 box enlarged 1.1x: margin ~1 px (rows), 2 px (columns)
    inside[2:20, 3:41] = 0.9  # the object stays inside the box: nothing moves
    left = inside.clone()
    left[8:12, 0:3] = 0.9  # ... this one runs out of the box on the left (a stalk)
    grown, changed = grow_boxes_at_touched_borders(boxes, [inside, left], 0.5, 0.5, (100, 100), enlarge=1.1)
    assert changed.tolist() == [False, True]
    torch.testing.assert_close(grown[0], boxes[0])
    torch.testing.assert_close(grown[1], torch.tensor([0.0, 20.0, 60.0, 40.0]))  # 20 px out, clipped at 0

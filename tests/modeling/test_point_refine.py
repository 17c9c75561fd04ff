import pytest
import torch

from detectron2.projects.point_rend.point_features import point_sample

from objguided_d2.modeling.roi_heads.point_refine import (
    PointRefineHead,
    calculate_uncertainty,
    num_refine_points,
)

# The paper's point rule one ROI at a time (the oracle the canvas refinement is checked against).
from reference_seg import roi_refine_logits, sample_uncertain_points


def test_calculate_uncertainty():
    p = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], requires_grad=True)
    u = calculate_uncertainty(p)
    torch.testing.assert_close(u, torch.tensor([-1.0, -0.5, 0.0, -0.5, -1.0]))
    assert not u.requires_grad


def test_point_sample_corners_and_linear():
    ys, xs = torch.meshgrid(torch.arange(5.0), torch.arange(9.0), indexing="ij")
    maps = (2 * xs + 3 * ys)[None, None]  # (1, 1, 5, 9)
    coords = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [0.5, 0.25], [0.3, 0.9]]])
    out = point_sample(maps, coords, align_corners=True)  # PointRend's, as the refinement reads ROI maps
    assert out.shape == (1, 1, 4)
    # (x, y) in [0, 1] spans sample 0 .. last sample (align_corners=True).
    expected = 2 * coords[0, :, 0] * 8 + 3 * coords[0, :, 1] * 4
    torch.testing.assert_close(out[0, 0], expected)


@pytest.mark.parametrize(
    "n, k, beta, expected",
    [(10, 3, 0.75, 7), (10, 3, 3, 30), (10, 3, 2, 20), (10, 1, 1, 10), (40, 5, 0.5, 20), (0, 3, 0.75, 0)],
)
def test_sample_uncertain_points_counts(n, k, beta, expected):
    probs = torch.rand(1, 1, 6, 8)
    pts = sample_uncertain_points(probs, n, k, beta)
    assert pts.shape == (expected, 2)
    assert ((pts >= 0) & (pts <= 1)).all()


def test_biased_points_concentrate_near_contour():
    torch.manual_seed(0)
    xs = torch.linspace(0, 1, 40)
    probs = torch.sigmoid((xs - 0.5) * 30)[None, None, None, :].expand(1, 1, 30, 40)
    biased = sample_uncertain_points(probs, 200, 3, 0.75)
    uniform = sample_uncertain_points(probs, 200, 3, 3)
    d_biased = (biased[:, 0] - 0.5).abs()
    d_uniform = (uniform[:, 0] - 0.5).abs()
    assert d_biased.mean() < 0.5 * d_uniform.mean()
    assert (d_biased < 0.2).float().mean() > 0.9


def test_sample_uncertain_points_bad_input():
    with pytest.raises(ValueError, match="1, 1, h, w"):
        sample_uncertain_points(torch.rand(2, 1, 4, 4), 4, 3, 0.75)


def test_refine_head_and_roi_logits():
    torch.manual_seed(0)
    head = PointRefineHead(8, 6, num_classes=1)
    e1 = torch.randn(1, 8, 10, 12, requires_grad=True)
    e2 = torch.randn(1, 6, 5, 6, requires_grad=True)
    probs = torch.rand(1, 1, 10, 12)
    gt = (torch.rand(10, 12) > 0.5).float()
    logits, labels = roi_refine_logits(
        head, e1, e2, probs, gt, 0, point_divisor=8, oversample_ratio=3, importance_sample_ratio=0.75
    )
    n = num_refine_points(10, 12, 8)
    assert n == 15
    assert logits.shape == labels.shape == (2 * int(0.75 * n),)  # two heads
    assert ((labels >= 0) & (labels <= 1)).all()
    logits.sum().backward()
    assert e1.grad.abs().sum() > 0 and e2.grad.abs().sum() > 0
    only_e1 = roi_refine_logits(head, e1, None, probs, gt, 0, point_divisor=8,
                                oversample_ratio=3, importance_sample_ratio=0.75)
    assert only_e1[0].shape == (int(0.75 * n),)
    # N = 3*3 // 8 = 1 -> 0 kept points with beta 0.75; 2*2 // 8 = 0 -> skipped.
    tiny = roi_refine_logits(head, torch.randn(1, 8, 2, 2), None, torch.rand(1, 1, 2, 2),
                             torch.zeros(2, 2), 0, point_divisor=8, oversample_ratio=3,
                             importance_sample_ratio=0.75)
    assert tiny is None

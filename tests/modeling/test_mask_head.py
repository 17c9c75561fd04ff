import pytest
import torch

from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.mask_head import ROI_MASK_HEAD_REGISTRY, build_mask_head

from objguided_d2 import add_objguided_config
from objguided_d2.modeling.roi_heads import ObjGuidedMaskHead

from reference_seg import forward_single

IN_CH = [4, 5, 8, 12, 16]
SIZES = [(26, 44), (13, 22), (6, 11), (3, 5), (2, 2)]


def make_head(**kw):
    args = dict(in_channels=IN_CH, seg_channels=IN_CH[:-1], num_classes=3, mask_head_channels=6)
    args.update(kw)
    return ObjGuidedMaskHead(**args)


def crops(n, in_ch=IN_CH):
    return [torch.randn(1, in_ch[i], *SIZES[i]) for i in range(n)]


@pytest.mark.parametrize("levels", [1, 2, 3, 5])
def test_shapes_per_depth(levels):
    torch.manual_seed(0)
    head = make_head()
    out = forward_single(head, crops(levels))
    assert out.mask_logits.shape == (1, 3, 26, 44)
    assert out.e1.shape == (1, 4, 26, 44)
    if levels == 1:
        assert out.e2 is None
    else:
        assert out.e2.shape == (1, 5, 13, 22)
    assert torch.isfinite(out.mask_logits).all()


def test_class_agnostic_custom_widths_and_backward():
    torch.manual_seed(0)
    head = make_head(seg_channels=[7, 9, 10, 11], cls_agnostic_mask=True)
    for levels in (1, 2, 4, 5):
        out = forward_single(head, crops(levels))
        assert out.mask_logits.shape == (1, 1, 26, 44)
        assert out.e1.shape[1] == 7
        if out.e2 is not None:
            assert out.e2.shape[1] == 9
    assert head.class_indices(torch.tensor([2])).tolist() == [0]
    out.mask_logits.sum().backward()
    assert head.merges[0].up_conv.weight.grad.abs().sum() > 0


def test_instance_norm_same_in_train_and_eval():
    # S modules use per-ROI InstanceNorm statistics (no running stats): train == eval.
    torch.manual_seed(0)
    head = make_head()
    c = crops(4)
    a = forward_single(head.train(), c).mask_logits
    b = forward_single(head.eval(), c).mask_logits
    torch.testing.assert_close(a, b)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in head.modules())


def test_bad_inputs():
    head = make_head()
    assert head.num_levels == 5
    with pytest.raises(ValueError, match="SEG_CHANNELS"):
        make_head(seg_channels=[4, 5])


def test_from_config_registry():
    assert ROI_MASK_HEAD_REGISTRY.get("ObjGuidedMaskHead") is ObjGuidedMaskHead
    cfg = add_objguided_config(get_cfg())
    cfg.MODEL.ROI_MASK_HEAD.NAME = "ObjGuidedMaskHead"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    shapes = {n: ShapeSpec(channels=c, stride=s) for n, c, s in
              zip(["c0", "c1", "d2", "d3", "d4"], IN_CH, [1, 2, 4, 8, 16])}
    head = build_mask_head(cfg, shapes)
    assert head.seg_channels == IN_CH[:-1] and head.num_mask_classes == 2
    assert head.refine_head is not None
    cfg.MODEL.OBJGUIDED.REFINE_ON = False
    assert build_mask_head(cfg, shapes).refine_head is None
    del shapes["d3"]
    with pytest.raises(ValueError, match="d3"):
        build_mask_head(cfg, shapes)

"""U-shaped ResNet backbone: output keys / shapes / strides, checkpoint compatibility with
Detectron2's plain ResNet, freezing, and the parameter count of the paper's R-50 setting."""

import os
import pickle

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from objguided_d2.config import add_objguided_config
from objguided_d2.modeling.backbone import UNetResNet


def _cfg(depth: int, decoder_channels=(32, 32, 32), c0=16, freeze_at=0):
    cfg = get_cfg()
    add_objguided_config(cfg)
    cfg.MODEL.BACKBONE.NAME = "build_objguided_resnet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64 if depth in (18, 34) else 256
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]  # the backbone must ignore this and use res2..res5
    cfg.MODEL.OBJGUIDED.C0_CHANNELS = c0
    cfg.MODEL.OBJGUIDED.DECODER_CHANNELS = list(decoder_channels)
    return cfg


@pytest.mark.parametrize(
    "depth,decoder,expected",
    [
        (18, [32, 32, 32], {"c0": 16, "c1": 64, "d2": 32, "d3": 32, "d4": 32}),
        (18, [], {"c0": 16, "c1": 64, "d2": 64, "d3": 128, "d4": 256}),
        (50, [24, 40, 56], {"c0": 16, "c1": 64, "d2": 24, "d3": 40, "d4": 56}),
    ],
)
def test_output_shapes_non_square(depth, decoder, expected):
    cfg = _cfg(depth, decoder)
    model = build_backbone(cfg, ShapeSpec(channels=3))
    assert isinstance(model, UNetResNet)
    assert model.size_divisibility == 32
    strides = {"c0": 1, "c1": 2, "d2": 4, "d3": 8, "d4": 16}
    shapes = model.output_shape()
    assert set(shapes) == set(expected)
    for k in expected:
        assert shapes[k].channels == expected[k], k
        assert shapes[k].stride == strides[k], k
    model.eval()
    h, w = 96, 160  # padded size of an odd-sized 85x151 image
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        out = model(x)
    assert set(out) == set(expected)
    for k, t in out.items():
        assert t.shape == (2, expected[k], h // strides[k], w // strides[k]), k
        assert torch.isfinite(t).all()


def test_train_mode_backward_reaches_c0_and_decoder():
    model = build_backbone(_cfg(18), ShapeSpec(channels=3))
    model.train()
    out = model(torch.randn(2, 3, 64, 96))
    sum(t.mean() for t in out.values()).backward()
    assert model.c0[0].weight.grad is not None and model.c0[0].weight.grad.abs().sum() > 0
    assert model.decoder["d4"].up_conv.weight.grad.abs().sum() > 0
    assert model.bottom_up.res5[0].conv1.weight.grad.abs().sum() > 0


def test_freeze_at_freezes_stem_and_res2():
    model = build_backbone(_cfg(18, freeze_at=2), ShapeSpec(channels=3))
    assert not model.bottom_up.stem.conv1.weight.requires_grad
    assert not any(p.requires_grad for p in model.bottom_up.res2.parameters())
    assert all(p.requires_grad for p in model.bottom_up.res3.parameters())
    assert all(p.requires_grad for p in model.c0.parameters())


def test_c1_is_the_stem_conv_before_maxpool():
    model = build_backbone(_cfg(18), ShapeSpec(channels=3)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        c1 = torch.relu(model.bottom_up.stem.conv1(x))
        plain = model.bottom_up(x)  # Detectron2's own forward, with max-pool inside the stem
    torch.testing.assert_close(out["c1"], c1)
    # The decoder's deepest input is unchanged by running the stem in two halves.
    assert plain["res5"].shape[-2:] == (2, 2)
    assert out["d4"].shape[-2:] == (4, 4)


class _Wrapper(torch.nn.Module):
    """A model holding the backbone under ``backbone``, as a meta-architecture does."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone


@pytest.mark.parametrize("depth", [18, 50])
def test_detectron2_resnet_checkpoint_loads(tmp_path, depth):
    cfg = _cfg(depth)
    plain_cfg = cfg.clone()
    plain_cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    plain = build_resnet_backbone(plain_cfg, ShapeSpec(channels=3))
    for p in plain.parameters():  # distinctive values to check they arrive
        torch.nn.init.normal_(p)
    # Detectron2's converted-ImageNet format (e.g. torchvision R-50.pkl): numpy, heuristics on.
    path = os.path.join(tmp_path, f"R-{depth}.pkl")
    state = {k: v.numpy() for k, v in plain.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "torchvision", "matching_heuristics": True}, f)

    model = _Wrapper(build_backbone(cfg, ShapeSpec(channels=3)))
    checkpointer = DetectionCheckpointer(model)
    checkpointer._parsed_url_during_load = path  # what .load() sets before _load_file
    incompatible = checkpointer._load_model(checkpointer._load_file(path))
    missing_bottom_up = [k for k in incompatible.missing_keys if ".bottom_up." in k]
    assert missing_bottom_up == []
    assert incompatible.unexpected_keys == []
    # Only our own layers are missing.
    assert all(
        k.startswith(("backbone.c0.", "backbone.decoder.")) for k in incompatible.missing_keys
    )
    torch.testing.assert_close(model.backbone.bottom_up.stem.conv1.weight, plain.stem.conv1.weight)
    torch.testing.assert_close(
        model.backbone.bottom_up.res5[-1].conv2.weight, plain.res5[-1].conv2.weight
    )
    # And through the public entry point.
    model2 = _Wrapper(build_backbone(cfg, ShapeSpec(channels=3)))
    DetectionCheckpointer(model2).load(path)
    torch.testing.assert_close(
        model2.backbone.bottom_up.res3[0].conv1.weight, plain.res3[0].conv1.weight
    )


def test_r50_paper_widths_parameter_count(capsys):
    cfg = _cfg(50, decoder_channels=[], c0=64)
    cfg.MODEL.RESNETS.NORM = "BN"  # trainable BN as in the authors' code (FrozenBN has buffers)
    model = build_backbone(cfg, ShapeSpec(channels=3))
    n_resnet = sum(p.numel() for p in model.bottom_up.parameters())
    n_total = sum(p.numel() for p in model.parameters())
    n_decoder = sum(p.numel() for p in model.decoder.parameters())
    n_c0 = sum(p.numel() for p in model.c0.parameters())
    # torchvision's R-50 without fc has 23,508,032 parameters; Detectron2's has the same convs
    # and norms.
    assert n_resnet == 23_508_032
    assert n_total == n_resnet + n_decoder + n_c0
    # Widths of the paper: d4 1024, d3 512, d2 256.
    shapes = model.output_shape()
    assert [shapes[k].channels for k in ("d2", "d3", "d4")] == [256, 512, 1024]
    with capsys.disabled():
        print(
            f"\n[R-50 U-backbone] resnet {n_resnet:,} + decoder {n_decoder:,} + c0 {n_c0:,}"
            f" = {n_total:,}"
        )


def test_bad_config_errors():
    cfg = _cfg(18, decoder_channels=[32, 32])
    with pytest.raises(ValueError, match="DECODER_CHANNELS"):
        build_backbone(cfg, ShapeSpec(channels=3))
    cfg = _cfg(34)
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 256
    with pytest.raises(ValueError, match="RES2_OUT_CHANNELS"):
        build_backbone(cfg, ShapeSpec(channels=3))

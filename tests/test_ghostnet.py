"""GhostNet v1 / V2 building blocks, checked by structure and by numbers (model_specs §8, §9).

Param/MAC totals are checked against the official code in test_models.py; here we check the
pieces those totals cannot see (slicing, activations, gate placement, which blocks carry DFC).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekit.models import create_model
from edgekit.models.ghostnet import (GHOSTNET_CFG, DFCAttention, GhostBottleneck, GhostModule, GhostModuleV2,
                                     GhostNet)
from edgekit.models.layers import HardSigmoid, SqueezeExcite
from helpers import randomise_bn


def _bottlenecks(model):
    return [m for m in model.modules() if isinstance(m, GhostBottleneck)]



# --- GhostModule -----------------------------------------------------------------------------

def test_ghost_module_slices_odd_output_to_oup():
    torch.manual_seed(0)
    gm = randomise_bn(GhostModule(6, 7)).eval()
    assert gm.primary_conv[0].out_channels == 4  # ceil(7 / 2)
    assert gm.cheap_operation[0].out_channels == 4
    x = torch.randn(2, 6, 9, 9)
    with torch.no_grad():
        y = gm(x)
        x1 = gm.primary_conv(x)
        x2 = gm.cheap_operation(x1)
    assert y.shape == (2, 7, 9, 9)
    torch.testing.assert_close(y[:, :4], x1)  # primary first ...
    torch.testing.assert_close(y[:, 4:], x2[:, :3])  # ... then the cheap features, last one dropped


def test_ghost_module_cheap_op_is_depthwise_3x3():
    gm = GhostModule(24, 72)
    conv = gm.cheap_operation[0]
    assert conv.kernel_size == (3, 3) and conv.padding == (1, 1) and conv.stride == (1, 1)
    assert conv.groups == conv.in_channels == conv.out_channels == 36
    assert gm.primary_conv[0].kernel_size == (1, 1)


def test_ghost_module_relu_flag():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        with_relu = randomise_bn(GhostModule(8, 16, relu=True)).eval()(x)
        without = randomise_bn(GhostModule(8, 16, relu=False)).eval()(x)
    assert with_relu.min() >= 0
    assert without.min() < 0


# --- Bottleneck ------------------------------------------------------------------------------

@pytest.mark.parametrize("ghost_mode", [None, "original", "attn"])
def test_bottleneck_ghost2_has_no_relu_and_ghost1_does(ghost_mode):
    block = GhostBottleneck(16, 48, 24, 3, 2, ghost_mode=ghost_mode)
    acts = lambda m: [type(a) for a in m.modules() if isinstance(a, (nn.ReLU, nn.ReLU6, nn.Hardswish))]
    assert acts(block.ghost2) == []
    assert acts(block.ghost1) == [nn.ReLU, nn.ReLU]
    assert acts(block.conv_dw) == []  # the strided DW has BN only


def test_bottleneck_dw_only_when_strided_and_shortcut_uses_block_kernel():
    with torch.device("meta"):
        model = create_model("ghostnet_1_0")
    blocks = _bottlenecks(model)
    flat_cfg = [b for group in GHOSTNET_CFG for b in group]
    assert len(blocks) == len(flat_cfg) == 16
    for block, (k, _, _, _, s) in zip(blocks, flat_cfg):
        if s == 2:
            assert block.conv_dw[0].kernel_size == (k, k) and block.conv_dw[0].stride == (2, 2)
            assert block.conv_dw[0].groups == block.conv_dw[0].in_channels
        else:
            assert isinstance(block.conv_dw, nn.Identity)
        if isinstance(block.shortcut, nn.Sequential):
            dw = block.shortcut[0][0]
            assert dw.kernel_size == (k, k) and dw.stride == (s, s) and dw.groups == dw.in_channels
    # identity shortcut exactly where in == out and stride 1: 11 of the 16 blocks
    identity = [i for i, b in enumerate(blocks) if isinstance(b.shortcut, nn.Identity)]
    assert identity == [0, 2, 4, 6, 7, 8, 10, 12, 13, 14, 15]


def test_se_sits_between_dw_and_ghost2_with_hard_sigmoid_gate():
    block = GhostBottleneck(40, 672, 160, 5, 2, 0.25)
    assert isinstance(block.se, SqueezeExcite) and isinstance(block.se.gate, HardSigmoid)
    assert block.se.conv_reduce.in_channels == 672 and block.se.conv_reduce.out_channels == 168
    order = []
    for name in ("ghost1", "conv_dw", "se", "ghost2"):
        getattr(block, name).register_forward_hook(lambda m, i, o, n=name: order.append((n, tuple(o.shape))))
    block.eval()(torch.randn(1, 40, 14, 14))
    assert order == [("ghost1", (1, 672, 14, 14)), ("conv_dw", (1, 672, 7, 7)), ("se", (1, 672, 7, 7)),
                     ("ghost2", (1, 160, 7, 7))]
    gate = HardSigmoid()(torch.tensor([-4.0, -3.0, 0.0, 1.5, 3.0, 5.0]))
    torch.testing.assert_close(gate, torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0, 1.0]))


def test_se_reductions_at_1x_are_based_on_mid_channels():
    with torch.device("meta"):
        model = create_model("ghostnet_1_0")
    reduced = [b.se.conv_reduce.out_channels for b in _bottlenecks(model) if isinstance(b.se, SqueezeExcite)]
    assert reduced == [20, 32, 120, 168, 168, 240, 240]


# --- DFC attention / GhostModuleV2 -----------------------------------------------------------

def test_dfc_branch_layout():
    dfc = DFCAttention(24, 72)
    convs = [m for m in dfc.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding, c.groups) for c in convs] == [
        (24, 72, (1, 1), (0, 0), 1), (72, 72, (1, 5), (0, 2), 72), (72, 72, (5, 1), (2, 0), 72)]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in dfc.modules()) == 3
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardswish, nn.SiLU)) for m in dfc.modules())


@pytest.mark.parametrize("side, pooled", [(7, 3), (8, 4), (1, 1)])
def test_dfc_gate_multiplies_nearest_upsampled_attention(side, pooled):
    torch.manual_seed(0)
    gm = randomise_bn(GhostModuleV2(16, 24, mode="attn")).eval()
    x = torch.randn(2, 16, side, side)
    with torch.no_grad():
        y = gm(x)
        plain = GhostModule.forward(gm, x)  # the same module without its DFC gate
        gate = gm.dfc.gate(x)
    assert gate.shape == (2, 24, pooled, pooled)
    assert ((gate > 0) & (gate < 1)).all()
    assert y.shape == plain.shape == (2, 24, side, side)
    assert not torch.allclose(y, plain)
    # nearest upsampling: output pixel i reads gate pixel floor(i * pooled / side)
    idx = torch.arange(side) * pooled // side
    torch.testing.assert_close(y, plain * gate[:, :, idx][:, :, :, idx])


def test_dfc_is_computed_from_the_module_input():
    torch.manual_seed(0)
    gm = randomise_bn(GhostModuleV2(8, 8, mode="attn")).eval()
    x = torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        expected = torch.sigmoid(gm.dfc.vertical(gm.dfc.horizontal(gm.dfc.reduce(F.avg_pool2d(x, 2, 2)))))
        torch.testing.assert_close(gm.dfc.gate(x), expected)


def test_ghost_module_v2_rejects_unknown_mode():
    with pytest.raises(ValueError, match="'attn'"):
        GhostModuleV2(8, 8, mode="attention")


def test_v2_exactly_the_first_two_bottlenecks_are_plain():
    with torch.device("meta"):
        v2 = create_model("ghostnetv2_1_0")
        v1 = create_model("ghostnet_1_0")
    blocks = _bottlenecks(v2)
    modes = [b.ghost1.mode for b in blocks]
    assert modes == ["original"] * 2 + ["attn"] * 14
    assert [b.ghost1.dfc is None for b in blocks] == [True, True] + [False] * 14
    assert all(b.ghost2.mode == "original" and b.ghost2.dfc is None for b in blocks)
    first = [(b.ghost1.primary_conv[0].in_channels, b.ghost1.out_chs) for b in blocks[:3]]
    assert first == [(16, 16), (16, 48), (24, 72)]
    assert not any(isinstance(m, DFCAttention) for m in v1.modules())
    assert sum(isinstance(m, DFCAttention) for m in v2.modules()) == 14


# --- Network ---------------------------------------------------------------------------------

WIDTH_TABLES = {  # model_specs §8: stem, block outs, block mids, final conv
    "ghostnet_0_5": (8, [8, 12, 12, 20, 20] + [40] * 4 + [56, 56] + [80] * 5,
                     [8, 24, 36, 36, 60, 120, 100, 92, 92, 240, 336, 336] + [480] * 4, 480),
    "ghostnet_1_3": (20, [20, 32, 32, 52, 52] + [104] * 4 + [144, 144] + [208] * 5,
                     [20, 64, 92, 92, 156, 312, 260, 240, 240, 624, 872, 872] + [1248] * 4, 1248),
}


@pytest.mark.parametrize("name", sorted(WIDTH_TABLES))
def test_channel_tables_per_width(name):
    stem, outs, mids, final = WIDTH_TABLES[name]
    with torch.device("meta"):
        model = create_model(name)
    blocks = _bottlenecks(model)
    assert model.stem[0].out_channels == stem
    assert [b.ghost2.out_chs for b in blocks] == outs
    assert [b.ghost1.out_chs for b in blocks] == mids
    assert model.final_conv[0].out_channels == final
    head = model.head.conv_head
    assert (head.in_channels, head.out_channels, head.bias is not None) == (final, 1280, True)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.head.modules())


def test_stages_follow_output_strides():
    model = create_model("ghostnet_0_5", num_classes=10, in_chans=1, resolution=64).eval()
    sides = []
    x = model.stem(torch.randn(1, 1, 64, 64))
    for stage in model.stages:
        x = stage(x)
        sides.append(x.shape[-1])
    assert sides == [32, 16, 8, 4, 2]


def test_width_override_changes_the_network():
    with torch.device("meta"):
        default = create_model("ghostnetv2_1_0")
        narrow = create_model("ghostnetv2_1_0", width=0.75)
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(narrow) < count(default)
    assert narrow.default_cfg["width"] == 0.75
    assert narrow.stem[0].out_channels == 12


@pytest.mark.parametrize("name, side", [("ghostnetv2_1_0", 32), ("ghostnetv2_1_0", 45), ("ghostnet_0_5", 33)])
def test_small_and_odd_inputs_run(name, side):
    model = create_model(name, num_classes=10, in_chans=1, resolution=side).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 1, side, side))
    assert y.shape == (2, 10) and torch.isfinite(y).all()


def test_eval_forward_is_deterministic():
    torch.manual_seed(0)
    model = randomise_bn(create_model("ghostnetv2_1_0", num_classes=10, in_chans=1, resolution=40))
    x = torch.randn(2, 1, 40, 40)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    assert model.head.dropout.p == 0.2


def test_builder_rejects_unknown_version():
    with pytest.raises(ValueError, match="version"):
        GhostNet(version=3)

"""EfficientNet v1 / V2: scaling tables, block structure and block behaviour (model_specs §6, §7).

Param/MAC totals are checked against the official code in test_models.py; here we check what those
totals cannot see: the per-stage tables, which convs exist, the SE width, residual wiring, drop path.
"""
import pytest
import torch
from torch import nn

from edgekit.models import create_model, get_cfg
from edgekit.models.arch import BlockSpec, BuildContext
from edgekit.models.efficientnet import (FusedMBConv, MBConv, V1_BASE, compound_scale, efficientnet_arch,
                                         round_filters, round_repeats)
from helpers import randomise_bn

# model_specs §6 "Resulting configs": stem, stage channels, repeats, blocks, head
V1_TABLE = {
    "efficientnet_b0": (32, (16, 24, 40, 80, 112, 192, 320), (1, 2, 2, 3, 3, 4, 1), 16, 1280),
    "efficientnet_b1": (32, (16, 24, 40, 80, 112, 192, 320), (2, 3, 3, 4, 4, 5, 2), 23, 1280),
    "efficientnet_b2": (32, (16, 24, 48, 88, 120, 208, 352), (2, 3, 3, 4, 4, 5, 2), 23, 1408),
    "efficientnet_b3": (40, (24, 32, 48, 96, 136, 232, 384), (2, 3, 3, 5, 5, 6, 2), 26, 1536),
    "efficientnet_b4": (48, (24, 32, 56, 112, 160, 272, 448), (2, 4, 4, 6, 6, 8, 2), 32, 1792),
    "efficientnet_b5": (48, (24, 40, 64, 128, 176, 304, 512), (3, 5, 5, 7, 7, 9, 3), 39, 2048),
    "efficientnet_b6": (56, (32, 40, 72, 144, 200, 344, 576), (3, 6, 6, 8, 8, 11, 3), 45, 2304),
    "efficientnet_b7": (64, (32, 48, 80, 160, 224, 384, 640), (4, 7, 7, 10, 10, 13, 4), 55, 2560),
}

# model_specs §7, EfficientNetV2-S: (type, kernel, stride, expansion, out, layers, se)
V2_S_TABLE = [
    ("fused_mbconv", 3, 1, 1, 24, 2, 0.0),
    ("fused_mbconv", 3, 2, 4, 48, 4, 0.0),
    ("fused_mbconv", 3, 2, 4, 64, 4, 0.0),
    ("mbconv", 3, 2, 4, 128, 6, 0.25),
    ("mbconv", 3, 1, 6, 160, 9, 0.25),
    ("mbconv", 3, 2, 6, 256, 15, 0.25),
]


def _meta(name, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


def _blocks(model):
    return [b for stage in model.stages for b in stage]



def _mb(out, e, *, k=3, s=1, se=0.25):
    return BlockSpec("mbconv", out, kernel=k, stride=s, expansion=float(e), se=se, se_from="in", act="swish")


# --- compound scaling ------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(V1_TABLE))
def test_v1_scaled_tables_match_model_specs(name):
    stem, channels, repeats, n_blocks, head = V1_TABLE[name]
    spec = efficientnet_arch(name)
    assert spec.stem.channels == stem and spec.head.channels == head
    assert tuple(len(st) for st in spec.stages) == repeats and len(spec.blocks) == n_blocks
    assert tuple({b.out_channels for b in st}.pop() for st in spec.stages) == channels
    assert all(len({b.out_channels for b in st}) == 1 for st in spec.stages)
    # the stride sits on the first block of a stage only; kernels and expansions follow the B0 table
    for st, row in zip(spec.stages, V1_BASE.stages):
        assert [b.stride for b in st] == [row.stride] + [1] * (len(st) - 1)
        assert {(b.kernel, b.expansion) for b in st} == {(row.kernel, row.expansion)}
    assert (spec.bn_eps, spec.bn_momentum, spec.drop_path_rate) == (1e-3, 0.01, 0.2)


def test_v1_dropout_and_resolution_come_from_the_coefficient_table():
    got = {n: (efficientnet_arch(n).head.dropout, get_cfg(n).resolution[0], get_cfg(n).width) for n in V1_TABLE}
    assert got == {
        "efficientnet_b0": (0.2, 224, 1.0), "efficientnet_b1": (0.2, 240, 1.0), "efficientnet_b2": (0.3, 260, 1.1),
        "efficientnet_b3": (0.3, 300, 1.2), "efficientnet_b4": (0.4, 380, 1.4), "efficientnet_b5": (0.4, 456, 1.6),
        "efficientnet_b6": (0.5, 528, 1.8), "efficientnet_b7": (0.5, 600, 2.0),
    }


def test_rounding_rules():
    # V1 adds 8 when rounding down loses > 10 %; V2 (round_limit 0) does not
    assert round_filters(16, 0.65) == 16 and round_filters(16, 0.65, 0.0) == 8  # 10.4 -> 8 loses 23 %
    assert round_filters(112, 1.1) == 120 and round_filters(112, 1.1, 0.0) == 120  # 123.2 -> 120 loses 2.6 %
    assert round_filters(1, 0.5) == 8  # never below 8
    assert [round_repeats(r, 1.1) for r in (1, 2, 3, 4)] == [2, 3, 4, 5]  # ceil: every stage grows
    assert round_repeats(3, 1.0) == 3


def test_compound_scale_is_pure():
    a = compound_scale(V1_BASE, width=1.2, depth=1.4, name="x", resolution=300, dropout=0.3)
    b = compound_scale(V1_BASE, width=1.2, depth=1.4, name="x", resolution=300, dropout=0.3)
    assert a == b and a == efficientnet_arch("efficientnet_b3").replace(name="x")
    with pytest.raises(ValueError, match="width 0"):
        compound_scale(V1_BASE, width=0, depth=1.0, name="x", resolution=224, dropout=0.2)


def test_v1_width_override_uses_v1_rounding_and_keeps_depth():
    model = _meta("efficientnet_b0", width=0.65)
    assert model.stem[0].out_channels == 24  # 20.8 -> 24
    outs = [stage[0].conv_pwl[0].out_channels for stage in model.stages]
    assert outs == [16, 16, 24, 56, 72, 128, 208]  # 10.4 -> 8 would lose 23 %: the guard gives 16
    assert model.head.conv[0].out_channels == 832
    assert [len(s) for s in model.stages] == [1, 2, 2, 3, 3, 4, 1]
    assert model.default_cfg["width"] == 0.65
    b2 = _meta("efficientnet_b2", width=1.0)  # B2's depth with B0's widths
    assert [len(s) for s in b2.stages] == [2, 3, 3, 4, 4, 5, 2]
    assert b2.stem[0].out_channels == 32 and b2.head.conv[0].out_channels == 1280


def test_v2_width_override_uses_v2_rounding():
    model = _meta("efficientnetv2_s", width=0.45)
    outs = [b.out_channels for st in model.spec.stages for b in st[:1]]
    assert model.stem[0].out_channels == 8  # 10.8 -> 8 (V1 would make it 16)
    assert outs == [8, 24, 32, 56, 72, 112]
    assert model.head.conv[0].out_channels == 576
    assert [len(s) for s in model.stages] == [2, 4, 4, 6, 9, 15]  # V2 repeats are not depth-scaled
    assert model.stages[0][0].conv[0].out_channels == 8  # the built module follows the spec


# --- V2 layout -------------------------------------------------------------------------------

def test_v2_s_layout_matches_model_specs():
    spec = efficientnet_arch("efficientnetv2_s")
    assert spec.stem.channels == 24 and spec.head.channels == 1280 and spec.head.dropout == 0.2
    got = [(st[0].type, st[0].kernel, st[0].stride, st[0].expansion, st[0].out_channels, len(st), st[0].se)
           for st in spec.stages]
    assert got == V2_S_TABLE
    for st in spec.stages:
        assert all(b.stride == 1 and b == st[1] for b in st[1:])  # stride on the first block only


def test_v2_m_l_stem_last_stage_and_resolutions():
    m, big = efficientnet_arch("efficientnetv2_m"), efficientnet_arch("efficientnetv2_l")
    assert (m.stem.channels, big.stem.channels) == (24, 32)
    assert len(m.stages) == len(big.stages) == 7
    assert (m.stages[-1][0].out_channels, len(m.stages[-1])) == (512, 5)
    assert (big.stages[-1][0].out_channels, len(big.stages[-1])) == (640, 7)
    assert [len(s) for s in big.stages] == [4, 7, 7, 10, 19, 25, 7]
    for name, train, test in (("efficientnetv2_s", 300, 384), ("efficientnetv2_m", 384, 480),
                              ("efficientnetv2_l", 384, 480)):
        cfg = get_cfg(name)
        assert cfg.resolution == (test, test) and f"trained at {train}" in cfg.notes
    assert _meta("efficientnetv2_s", resolution=256).spec.resolution == 256


# --- blocks ----------------------------------------------------------------------------------

def test_mbconv1_has_no_expansion_conv():
    b0 = _meta("efficientnet_b0")
    first = b0.stages[0][0]
    assert first.conv_pw is None
    convs = [m for m in first.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.groups, c.kernel_size) for c in convs] == [
        (32, 32, 32, (3, 3)),  # dw on the stem's 32 channels
        (32, 8, 1, (1, 1)), (8, 32, 1, (1, 1)),  # SE
        (32, 16, 1, (1, 1)),  # project
    ]
    mb6 = b0.stages[1][0]
    assert (mb6.conv_pw[0].in_channels, mb6.conv_pw[0].out_channels) == (16, 96)
    assert mb6.conv_dw[0].stride == (2, 2) and mb6.conv_dw[0].groups == 96


def test_se_reduce_width_comes_from_input_channels():
    model = _meta("efficientnet_b4")
    chs = model.spec.stem.channels
    for b, spec in zip(_blocks(model), model.spec.blocks):
        mid = chs if spec.expansion == 1 else chs * 6
        assert b.se.conv_reduce.in_channels == mid
        assert b.se.conv_reduce.out_channels == max(1, int(chs * 0.25))  # not mid * 0.25
        chs = spec.out_channels
    se = model.stages[1][0].se  # in 24, mid 144: reduce 6, not 36
    assert (se.conv_reduce.in_channels, se.conv_reduce.out_channels) == (144, 6)
    assert isinstance(se.act, nn.SiLU) and isinstance(se.gate, nn.Sigmoid)


def test_fused_e1_is_a_single_conv_with_activation():
    torch.manual_seed(0)
    block = randomise_bn(FusedMBConv(BlockSpec("fused_mbconv", 24, expansion=1.0, act="swish"),
                                      BuildContext(24, bn_eps=1e-3, bn_momentum=0.01))).eval()
    assert block.conv_pwl is None and block.has_residual
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (3, 3) and convs[0].groups == 1
    x = torch.randn(2, 24, 8, 8)
    conv, bn = block.conv[0], block.conv[1]
    with torch.no_grad():
        expected = x + torch.nn.functional.silu(bn(conv(x)))
        torch.testing.assert_close(block(x), expected)


def test_fused_e4_expands_with_kxk_then_projects_without_activation():
    model = _meta("efficientnetv2_s")
    block = model.stages[1][0]  # 24 -> 48, s2, e4
    assert (block.conv[0].in_channels, block.conv[0].out_channels, block.conv[0].kernel_size,
            block.conv[0].stride) == (24, 96, (3, 3), (2, 2))
    assert isinstance(block.conv[2], nn.SiLU)
    assert (block.conv_pwl[0].in_channels, block.conv_pwl[0].out_channels) == (96, 48)
    assert isinstance(block.conv_pwl[2], nn.Identity)
    fused = [m for st in model.stages[:3] for m in st]
    assert all(not any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in b.modules()) for b in fused)
    assert not any(type(m).__name__ == "SqueezeExcite" for b in fused for m in b.modules())


def test_fused_mbconv_refuses_se():
    with pytest.raises(ValueError, match="Fused-MBConv has no SE"):
        FusedMBConv(BlockSpec("fused_mbconv", 24, expansion=4.0, se=0.25), BuildContext(24))


@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_b1", "efficientnetv2_s"])
def test_residual_exactly_when_stride_1_and_same_width(name):
    model = _meta(name)
    chs, flags = model.spec.stem.channels, []
    for b, spec in zip(_blocks(model), model.spec.blocks):
        assert b.has_residual == (spec.stride == 1 and chs == spec.out_channels)
        flags.append(b.has_residual)
        chs = spec.out_channels
    # B0's MBConv1 goes 32 -> 16: no residual; B1's repeated 16 -> 16 block has one; V2-S's Fused e1
    # stage is 24 -> 24 from the start. Every other stage opens with a stride or a width change.
    first, total = {"efficientnet_b0": ([False], 16 - 7), "efficientnet_b1": ([False, True], 23 - 7),
                    "efficientnetv2_s": ([True, True], 40 - 5)}[name]
    assert [b.has_residual for b in model.stages[0]] == first
    assert sum(flags) == total


@pytest.mark.parametrize("cls, spec, in_chs", [
    (MBConv, _mb(16, 6), 16), (MBConv, _mb(24, 6), 16), (MBConv, _mb(16, 6, s=2), 16),
    (FusedMBConv, BlockSpec("fused_mbconv", 24, expansion=4.0, act="swish"), 24),
    (FusedMBConv, BlockSpec("fused_mbconv", 32, expansion=4.0, act="swish"), 24),
])
def test_residual_is_wired_into_forward(cls, spec, in_chs):
    """Silence the branch's last BN: a residual block then returns its input, any other block zeros."""
    torch.manual_seed(0)
    block = randomise_bn(cls(spec, BuildContext(in_chs))).eval()
    last = block.conv_pwl[1]
    last.weight.data.zero_()
    last.bias.data.zero_()
    x = torch.randn(2, in_chs, 8, 8)
    with torch.no_grad():
        y = block(x)
    if block.has_residual:
        torch.testing.assert_close(y, x)
    else:
        assert y.abs().max() == 0


def test_drop_path_is_linear_over_blocks():
    model = _meta("efficientnet_b1")
    n = len(model.spec.blocks)
    for i, b in enumerate(_blocks(model)):
        if b.has_residual:
            assert b.drop_path.rate == pytest.approx(0.2 * i / n)
        else:
            assert isinstance(b.drop_path, nn.Identity)


def test_drop_path_drops_samples_in_training_and_is_identity_in_eval():
    torch.manual_seed(0)
    block = randomise_bn(MBConv(_mb(16, 6), BuildContext(16, drop_path=0.5)))
    nn.init.ones_(block.conv_pwl[1].weight)  # a non-zero branch (init starts residual branches at zero)
    x = torch.randn(64, 16, 6, 6)
    block.eval()
    with torch.no_grad():
        branch = block.conv_pwl(block.se(block.conv_dw(block.conv_pw(x))))
        torch.testing.assert_close(block(x), x + branch)  # no drop, no 1/keep rescale
        torch.testing.assert_close(block(x), block(x))
    block.train()
    with torch.no_grad():
        y = block(x)
    dropped = [(y[i] == x[i]).all().item() for i in range(len(x))]
    assert 10 < sum(dropped) < 54  # ~half the samples skip the branch


def test_untrained_network_is_input_dependent_and_bounded():
    torch.manual_seed(0)
    model = create_model("efficientnetv2_s", num_classes=10, in_chans=1, resolution=64).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 1, 64, 64))
    assert (y[0] - y[1]).abs().max() > 1e-4
    assert y.abs().max() < 10  # residual branches start at zero: no growth with depth


def test_unknown_variant_and_options_are_clear_errors():
    with pytest.raises(ValueError, match="did you mean efficientnet_b3"):
        efficientnet_arch("efficientnet_b33")
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['drop_rate'\]"):
        _meta("efficientnet_b0", drop_rate=0.1)

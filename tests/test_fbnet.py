"""FBNet v1/v2/v3: the IRF block and the skip block by structure, the block lists by numbers."""
import functools

import pytest
import torch
from torch import nn

from edgekit.models import ArchSpec, BlockSpec, HeadSpec, StemSpec, create_model, from_arch, list_models
from edgekit.models.arch import BuildContext
from edgekit.models.fbnet import IRFBlock, fbnet_arch, fbnet_names, get_divisible_by, scale_width
from edgekit.models.layers import ChannelShuffle, ConvBNAct

NAMES = ["fbnet_a", "fbnet_b", "fbnet_c", "fbnetv2_f1", "fbnetv2_f2", "fbnetv2_f3", "fbnetv2_f4", "fbnetv2_l1",
         "fbnetv2_l2", "fbnetv3_a", "fbnetv3_b", "fbnetv3_c", "fbnetv3_d", "fbnetv3_e", "fbnetv3_f", "fbnetv3_g"]

# mobile-vision's own counts minus the conv biases it puts in front of BN: for v1 every IR conv, the
# stem and the head conv (model_specs §3 "w/o conv biases"); for v2/v3 only the stem conv (8/16/24/32).
EXACT_PARAMS = {
    "fbnet_a": 4_304_584, "fbnet_b": 4_801_368, "fbnet_c": 5_570_664,
    "fbnetv2_f1": 6_024_744 - 8, "fbnetv2_f3": 6_924_840 - 8, "fbnetv2_f4": 7_022_880 - 16,
    "fbnetv2_l1": 8_538_792 - 16, "fbnetv3_a": 8_598_480 - 16, "fbnetv3_c": 9_973_816 - 16,
    "fbnetv3_d": 10_306_296 - 24, "fbnetv3_e": 10_772_896 - 24, "fbnetv3_f": 13_896_160 - 24,
    "fbnetv3_g": 16_623_920 - 32,
}


@functools.lru_cache(maxsize=None)  # read-only inspection: one build per (name, options)
def meta_model(name, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


def ir(in_chs, out, *, k=3, s=1, e=1.0, g=1, divisor=1, **kw):
    return IRFBlock(BlockSpec("ir", out, kernel=k, stride=s, expansion=e, groups=g, **kw),
                    BuildContext(in_chs, channel_divisor=divisor))


def test_registered_names_are_exactly_the_fbnet_variants():
    assert list_models("fbnet*") == sorted(NAMES) == sorted(fbnet_names())


@pytest.mark.parametrize("value, divisor, expected", [
    (16 * 5.4566, 8, 88),   # FBNetV2's fractional expansions
    (24 * 4.7912, 8, 112),
    (84, 8, 88),            # halves round up (Python's round() would give 80)
    (36, 8, 40),
    (10, 8, 16),            # 8 would lose more than 5 %
    (3, 8, 8),              # never below the divisor
    (96.0, 1, 96),
])
def test_get_divisible_by(value, divisor, expected):
    assert get_divisible_by(value, divisor) == expected


@pytest.mark.parametrize("in_chs, e, divisor, mid", [
    (16, 1.0, 1, 16), (16, 3.0, 1, 48), (8, 1.0, 8, 8),
    (20, 1.0, 8, 24),   # e1, but rounding to 8 widens: the pw is back
    (16, 1.04, 8, 16),  # e != 1, but rounding lands on in: no pw
])
def test_ir_omits_pw_exactly_when_in_equals_mid(in_chs, e, divisor, mid):
    block = ir(in_chs, 32, e=e, divisor=divisor)
    assert block.dw[0].in_channels == block.dw[0].out_channels == block.dw[0].groups == mid
    assert (block.pw is None) == (in_chs == mid)
    if block.pw is not None:
        assert (block.pw[0].in_channels, block.pw[0].out_channels, block.pw[0].kernel_size) == (in_chs, mid, (1, 1))


@pytest.mark.parametrize("in_chs, out, stride, residual", [
    (16, 16, 1, True), (16, 24, 1, False), (16, 16, 2, False), (16, 24, 2, False),
])
def test_residual_exactly_when_stride_1_and_same_channels(in_chs, out, stride, residual):
    block = ir(in_chs, out, k=5, s=stride, e=3.0).eval()
    assert block.has_residual is residual
    nn.init.zeros_(block.pwl[1].weight)  # silence the branch: what is left is the shortcut
    nn.init.zeros_(block.pwl[1].bias)
    x = torch.randn(2, in_chs, 8, 8)
    with torch.no_grad():
        y = block(x)
    assert y.shape == (2, out, 8 // stride, 8 // stride)
    torch.testing.assert_close(y, x if residual else torch.zeros_like(y))


def test_group2_blocks_have_grouped_pw_pwl_and_a_shuffle():
    model = meta_model("fbnet_a")
    g2 = [b for b in model.stages.modules() if isinstance(b, IRFBlock) and b.shuffle is not None]
    assert len(g2) == 3  # 64 e1 g2 k5, 112 e1 g2 k5, 112 e1 g2 k3
    for block in g2:
        assert block.pw is None and block.shuffle.groups == 2 and block.pwl[0].groups == 2
    e3 = ir(16, 24, e=3.0, g=2)  # a NAS may also group an expanding block: the pw is grouped too
    assert e3.pw[0].groups == 2 and isinstance(e3.shuffle, ChannelShuffle) and e3.pwl[0].groups == 2
    assert ir(16, 16).shuffle is None
    with pytest.raises(ValueError, match="groups 2 must divide"):
        ir(15, 16, g=2)


def test_shuffle_interleaves_the_groups_after_the_pw():
    block = ir(4, 4, g=2).eval()  # e1: no pw, so the shuffle sees the input itself
    x = torch.arange(4.0).view(1, 4, 1, 1)
    assert block.shuffle(x).flatten().tolist() == [0.0, 2.0, 1.0, 3.0]


@pytest.mark.parametrize("in_chs, out, stride, projection", [
    (24, 24, 1, False), (56, 80, 1, True), (24, 24, 2, True),
])
def test_skip_is_identity_or_a_1x1_projection(in_chs, out, stride, projection):
    spec = ArchSpec("s", StemSpec(in_chs), ((BlockSpec("skip", out, stride=stride),),), HeadSpec(8))
    block = from_arch(spec).stages[0][0]
    assert isinstance(block, ConvBNAct if projection else nn.Identity)
    if projection:
        conv = block[0]
        assert (conv.in_channels, conv.out_channels) == (in_chs, out)
        assert conv.kernel_size == (1, 1) and conv.stride == (stride, stride) and conv.bias is None
        assert isinstance(block[2], nn.ReLU)


def test_se_width_follows_v2_mid_and_v3_less_se_channels_rules():
    se = dict(se=0.25, se_divisor=8, se_gate="hsigmoid")
    assert ir(40, 40, e=3.0, se_from="mid", **se).se.conv_reduce.out_channels == 32  # int(120/4)=30 -> 32
    assert ir(40, 40, e=3.0, se_from="in", **se).se.conv_reduce.out_channels == 16   # int(120/4/3)=10 -> 16
    v2 = meta_model("fbnetv2_f1").stages
    assert [(b.dw[0].out_channels, b.se.conv_reduce.out_channels) for b in v2[2]] == [(128, 32), (144, 40)]
    assert (v2[4][0].dw[0].out_channels, v2[4][0].se.conv_reduce.out_channels) == (368, 96)
    v3 = meta_model("fbnetv3_a").stages
    assert [(b.dw[0].out_channels, b.se.conv_reduce.out_channels) for b in v3[2][:2]] == [(120, 8), (120, 16)]
    assert (v3[4][0].dw[0].out_channels, v3[4][0].se.conv_reduce.out_channels) == (720, 32)
    assert isinstance(v3[2][0].se.act, nn.Hardswish) and isinstance(v2[2][0].se.act, nn.ReLU)


@pytest.mark.parametrize("name, head", [("fbnet_a", 1504), ("fbnet_b", 1984), ("fbnet_c", 1984)])
def test_fbnet_v1_head_width(name, head):
    model = meta_model(name)
    assert model.head.conv[0].out_channels == head
    assert model.head.classifier.in_channels == head and isinstance(model.head.classifier, nn.Conv2d)


@pytest.mark.parametrize("name, side, final", [("fbnetv3_a", 224, 6), ("fbnetv3_d", 248, 8)])  # D: no override
def test_fbnetv3_padding_overrides_shrink_the_maps(name, side, final):
    with torch.device("meta"):
        feats = create_model(name).forward_features(torch.empty(1, 3, side, side))
    assert feats.shape[-2:] == (final, final)


def test_fbnetv3_refuses_inputs_its_zero_padding_cannot_take():
    with pytest.raises(ValueError, match="resolution 48 is too small for fbnetv3_a: each side must be >= 49"):
        create_model("fbnetv3_a", resolution=48)
    with torch.device("meta"):
        y = create_model("fbnetv3_a", resolution=49).eval()(torch.empty(1, 3, 49, 49))
    assert y.shape == (1, 1000)
    with pytest.raises(ValueError, match="dw_padding 0 with kernel 3 changes the map size of a residual block"):
        ir(16, 16, dw_padding=0)


@pytest.mark.parametrize("name", NAMES)
def test_spec_round_trips_through_json_and_is_what_create_model_builds(name):
    spec = fbnet_arch(name)
    assert ArchSpec.from_json(spec.to_json()) == spec
    assert meta_model(name).spec == spec


@pytest.mark.parametrize("name, params", sorted(EXACT_PARAMS.items()))
def test_params_equal_mobile_vision_without_bn_redundant_biases(name, params):
    assert sum(p.numel() for p in meta_model(name).parameters()) == params


def test_width_override_scales_every_channel_to_multiples_of_8():
    base, half = fbnet_arch("fbnet_c"), meta_model("fbnet_c", width=0.5).spec
    assert half.stem.channels == 8 and half.head.channels == 992
    assert [b.out_channels for b in half.stages[-1]] == [96, 96, 96, 96, 176]  # 184/2 = 92 -> 96
    assert all(b.out_channels % 8 == 0 for b in half.blocks)
    assert [b.expansion for b in half.blocks] == [b.expansion for b in base.blocks]
    assert meta_model("fbnet_c", width=1.0).spec == base and scale_width(base, 1.0) is base
    n_half = sum(p.numel() for p in meta_model("fbnet_c", width=0.5).parameters())
    assert n_half < EXACT_PARAMS["fbnet_c"] / 2


def test_every_nas_candidate_builds_at_any_layer():
    candidates = [dict(kernel=k, expansion=e) for k in (3, 5) for e in (1.0, 3.0, 6.0)]
    for layer in (dict(out=16, stride=1), dict(out=24, stride=2)):
        blocks = [BlockSpec("ir", layer["out"], stride=layer["stride"], **c) for c in candidates]
        blocks += [BlockSpec("ir", layer["out"], kernel=k, stride=layer["stride"], groups=2) for k in (3, 5)]
        blocks += [BlockSpec("skip", layer["out"], stride=layer["stride"])]
        for block in blocks:
            net = from_arch(ArchSpec("cand", StemSpec(16), ((block,),), HeadSpec(32)), num_classes=5).eval()
            with torch.no_grad():
                feats = net.forward_features(torch.randn(1, 3, 16, 16))
            assert feats.shape == (1, layer["out"], 8 // layer["stride"], 8 // layer["stride"]), block


def test_unknown_names_and_options_are_refused_with_choices():
    with pytest.raises(ValueError, match="unknown FBNet variant 'fbnet_d'; did you mean"):
        fbnet_arch("fbnet_d")
    with pytest.raises(ValueError, match=r"fbnetv2_f1 takes no option\(s\) \['dropout'\]"):
        create_model("fbnetv2_f1", dropout=0.2)

"""ESPNet v1 / ESPNet-C / ESPNetv2, checked by structure and by numbers (model_specs §1-§2)."""
import pytest
import torch
from torch import nn

from edgekit.models import count_params, create_model
from edgekit.models.espnet import (EESP, EESPDownsampler, ESPModule, ESPNetV2, StridedESP, eesp_dilations,
                                   esp_split, espnetv2_channels)


def _meta(name, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


def _fused_input(module, x):
    """What enters the module's BN + PReLU after the concat: (B, N, H, W)."""
    seen = []
    handle = module.br.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        module.eval()(x)
    handle.remove()
    return seen[0]


def _keep_only_branch(module, keep):
    with torch.no_grad():
        for i, branch in enumerate(module.branches):
            if i != keep:
                branch.weight.zero_()


# ---- ESPNet v1 ------------------------------------------------------------------------------

@pytest.mark.parametrize("channels, n, n1", [(64, 12, 16), (128, 25, 28), (20, 4, 4)])
def test_esp_branch_split_gives_the_remainder_to_d1(channels, n, n1):
    assert esp_split(channels) == (n, n1)
    esp = ESPModule(channels, channels)
    assert [b.out_channels for b in esp.branches] == [n1, n, n, n, n]
    assert [b.dilation[0] for b in esp.branches] == [1, 2, 4, 8, 16]
    assert [b.padding[0] for b in esp.branches] == [1, 2, 4, 8, 16]
    assert esp.reduce.out_channels == n and esp.reduce.kernel_size == (1, 1) and esp.reduce.bias is None


def test_esp_has_no_bn_or_act_after_the_reduce_and_a_per_channel_prelu():
    esp = ESPModule(64, 64)
    assert [type(m) for m in esp.children()] == [nn.Conv2d, nn.ModuleList, nn.Sequential]
    bn, act = esp.br
    assert bn.eps == 1e-3 and act.num_parameters == 64


def test_v1_hff_excludes_the_d1_branch():
    torch.manual_seed(0)
    x = torch.randn(1, 20, 16, 16)
    only_d1 = ESPModule(20, 20, residual=False)
    _keep_only_branch(only_d1, 0)
    fused = _fused_input(only_d1, x)
    assert fused[:, :4].abs().sum() > 0
    assert fused[:, 4:].abs().sum() == 0, "the d=1 branch leaked into the hierarchical sums"

    only_d2 = ESPModule(20, 20, residual=False)
    _keep_only_branch(only_d2, 1)
    fused = _fused_input(only_d2, x)
    assert fused[:, :4].abs().sum() == 0
    for k in range(2, 5):  # d2, d2+d4, d2+d4+d8, d2+...+d16 all equal d2 when the others are zero
        torch.testing.assert_close(fused[:, 4 * k:4 * k + 4], fused[:, 4:8])


def test_esp_residual_adds_the_input_before_the_br():
    torch.manual_seed(0)
    esp, x = ESPModule(20, 20), torch.randn(1, 20, 8, 8)
    with_residual = _fused_input(esp, x)
    esp.residual = False
    torch.testing.assert_close(with_residual - x, _fused_input(esp, x))
    with pytest.raises(ValueError, match="residual ESP module must keep its shape"):
        ESPModule(20, 40)


def test_strided_esp_halves_the_resolution_with_a_3x3_s2_reduce():
    unit = StridedESP(19, 64).eval()
    assert unit.reduce.kernel_size == (3, 3) and unit.reduce.stride == (2, 2) and not unit.residual
    with torch.no_grad():
        assert unit(torch.randn(1, 19, 32, 48)).shape == (1, 64, 16, 24)
        assert unit(torch.randn(1, 19, 33, 17)).shape == (1, 64, 17, 9)


def test_v1_decoder_returns_full_resolution_and_the_encoder_h_over_8():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 64, 96)
    seg = create_model("espnet_v1", num_classes=10, in_chans=2, resolution=(64, 96)).eval()
    enc = create_model("espnet_v1_c", num_classes=10, in_chans=2, resolution=(64, 96)).eval()
    with torch.no_grad():
        assert seg(x).shape == (1, 10, 64, 96)
        assert enc(x).shape == (1, 10, 8, 12)
    deconvs = [m for m in seg.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(deconvs) == 3 and all(d.bias is None for d in deconvs)


@pytest.mark.parametrize("name, kw, params", [
    ("espnet_v1", {"num_classes": 19}, 363_462),
    ("espnet_v1", {"q": 3}, 203_189),
    ("espnet_v1", {"q": 5}, 267_957),
    ("espnet_v1_c", {"q": 3}, 187_529),
    ("espnet_v1_c", {"q": 5}, 252_297),
])
def test_v1_depth_and_class_variants_match_the_official_code(name, kw, params):
    assert count_params(_meta(name, **kw)) == params


def test_v1_input_reinforcement_is_concatenated():
    enc = _meta("espnet_v1_c", in_chans=1)
    assert enc.b1[0].num_features == 16 + 1 and enc.b2[0].num_features == 128 + 1
    assert enc.level2_0.reduce.in_channels == 17 and enc.level3_0.reduce.in_channels == 129


# ---- ESPNetv2 -------------------------------------------------------------------------------

@pytest.mark.parametrize("r_lim, dilations", [(13, (1, 2, 3, 4)), (11, (1, 2, 3, 4)), (9, (1, 2, 3, 4)),
                                              (7, (1, 1, 2, 3)), (5, (1, 1, 1, 2))])
def test_eesp_dilations_per_r_lim(r_lim, dilations):
    assert eesp_dilations(4, r_lim) == dilations
    eesp = EESP(32, 32, r_lim=r_lim)
    assert tuple(b.dilation[0] for b in eesp.branches) == dilations
    assert tuple(b.padding[0] for b in eesp.branches) == dilations


def test_network_places_r_lim_with_the_code_quirk():
    net = _meta("espnetv2_1_0")
    got = {name: getattr(net, name).eesp.dilations for name in ("level2_0", "level3_0", "level4_0", "level5_0")}
    got.update({name: getattr(net, name)[0].dilations for name in ("level3", "level4", "level5")})
    assert got == {"level2_0": (1, 2, 3, 4), "level3_0": (1, 2, 3, 4), "level3": (1, 2, 3, 4),
                   "level4_0": (1, 2, 3, 4), "level4": (1, 1, 2, 3), "level5_0": (1, 1, 2, 3),
                   "level5": (1, 1, 1, 2)}
    assert [len(net.level3), len(net.level4), len(net.level5)] == [3, 7, 3]


def test_eesp_1x1s_are_grouped_and_branches_depthwise():
    net = _meta("espnetv2_1_0")
    eesps = [m for m in net.modules() if isinstance(m, EESP)]
    assert len(eesps) == 4 + 3 + 7 + 3
    for e in eesps:
        assert e.proj[0].groups == 4 and e.proj[0].kernel_size == (1, 1)
        assert e.expand[0].groups == 4 and e.expand[0].kernel_size == (1, 1)
        assert isinstance(e.expand[2], nn.Identity), "the expanding 1x1 has BN only"
        assert all(b.groups == b.in_channels == b.out_channels for b in e.branches)
    dw, pw = net.head
    assert dw[0].groups == 512 and pw[0].groups == 4 and pw[0].out_channels == 1024


def test_v2_hff_includes_branch_0():
    torch.manual_seed(0)
    eesp = EESP(16, 16)
    _keep_only_branch(eesp, 0)
    fused = _fused_input(eesp, torch.randn(1, 16, 8, 8))
    assert fused[:, :4].abs().sum() > 0
    for k in range(1, 4):
        torch.testing.assert_close(fused[:, 4 * k:4 * k + 4], fused[:, :4])


def test_eesp_activates_at_stride_1_only():
    torch.manual_seed(0)
    calls = []
    s1, s2 = EESP(16, 16).eval(), EESP(16, 16, stride=2).eval()
    for unit in (s1, s2):
        unit.act.register_forward_hook(lambda m, a, o, _u=unit: calls.append(_u))
    with torch.no_grad():
        assert s1(torch.randn(1, 16, 9, 9)).shape == (1, 16, 9, 9)
        assert s2(torch.randn(1, 16, 9, 9)).shape == (1, 16, 5, 5)
    assert calls == [s1]
    assert s1.residual and not s2.residual


def test_downsampler_halves_resolution_and_adds_the_reinforcement():
    torch.manual_seed(0)
    unit = EESPDownsampler(32, 64, r_lim=13, img_chs=3).eval()
    x, img = torch.randn(1, 32, 28, 28), torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        plain = unit(x)
        reinf = unit(x, img)
        pooled = img
        for _ in range(3):  # 112 -> 56 -> 28 -> 14: the unit pools the image down to its output size
            pooled = torch.nn.functional.avg_pool2d(pooled, 3, 2, 1)
        pre_act = torch.cat([unit.avg(x), unit.eesp(x)], 1) + unit.inp_reinf(pooled)
    assert plain.shape == reinf.shape == (1, 64, 14, 14)
    assert unit.eesp.stride == 2 and unit.eesp.branches[0].out_channels == 8  # (64 - 32) / 4
    torch.testing.assert_close(reinf, unit.act(pre_act))
    assert not torch.allclose(plain, reinf)


def test_level5_reinforcement_parameters_exist_but_are_unused():
    torch.manual_seed(0)
    net = create_model("espnetv2_1_0", num_classes=10, resolution=64).eval()
    assert count_params(net.level5_0.inp_reinf) == 2_650
    ran = []
    for name in ("level2_0", "level3_0", "level4_0", "level5_0"):
        getattr(net, name).inp_reinf.register_forward_hook(lambda m, a, o, _n=name: ran.append(_n))
    with torch.no_grad():
        net(torch.randn(1, 3, 64, 64))
    assert ran == ["level2_0", "level3_0", "level4_0"]


@pytest.mark.parametrize("s, channels", [
    (0.5, (16, 32, 64, 128, 256, 1024)),
    (1.0, (32, 64, 128, 256, 512, 1024)),
    (1.25, (32, 80, 160, 320, 640, 1024)),
    (1.5, (32, 96, 192, 384, 768, 1024)),
    (2.0, (32, 128, 256, 512, 1024, 1280)),
])
def test_channel_table(s, channels):
    assert espnetv2_channels(s) == channels
    net = _meta("espnetv2_1_0", width=s)
    assert net.channels == channels
    assert net.level1[0].out_channels == channels[0] and net.classifier.in_features == channels[5]
    assert net.level5_0.act.num_parameters == channels[4]


def test_width_override_builds_that_scale():
    assert count_params(_meta("espnetv2_1_0", width=2.0)) == 3_498_136
    assert count_params(_meta("espnetv2_2_0", width=0.5)) == 1_241_332


# ---- refused before building ----------------------------------------------------------------

@pytest.fixture
def no_build(monkeypatch):
    built = []
    monkeypatch.setattr(nn.Module, "__init__", lambda *a, **k: built.append(1) or None)
    return built


@pytest.mark.parametrize("name, kw, needle", [
    ("espnet_v1", {"resolution": 100}, r"resolution 100 .*multiple of 8"),
    ("espnet_v1", {"resolution": (512, 1020)}, r"resolution \(512, 1020\) .*multiple of 8"),
    ("espnet_v1", {"num_classes": 4}, r"num_classes >= 5, got 4"),
    ("espnetv2_1_0", {"width": 2.5}, r"s=2\.5 .*<= 2\.0"),
    ("espnetv2_1_0", {"width": 0.75}, r"s=0\.75 .*valid: 0\.5, 1, 1\.25, 1\.5, 1\.75, 2"),
    ("espnetv2_1_0", {"resolution": 16}, r"resolution 16 is too small"),
])
def test_invalid_overrides_are_refused_before_building(name, kw, needle, no_build):
    with pytest.raises(ValueError, match=needle):
        create_model(name, **kw)
    assert not no_build, "the network must not be built before the override is refused"


def test_espnet_c_takes_any_side_and_espnetv2_too():
    with torch.no_grad():
        assert create_model("espnet_v1_c", resolution=(37, 51)).eval()(torch.randn(1, 3, 37, 51)).shape == (1, 20, 5, 7)
        assert ESPNetV2(7, s=0.5).eval()(torch.randn(1, 3, 33, 45)).shape == (1, 7)

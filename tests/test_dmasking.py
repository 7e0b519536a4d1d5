"""FBNetV2's DMaskingNAS building blocks: masks with shared weights, resolution by subsample and
interleave, the exact expected latency, and the ``fbnet-v2`` space's points as ArchSpecs."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from edgekit.models import from_arch
from edgekit.nas.dmasking import (BLOCK_TYPES, FBNetV2Space, MaskedIR, channel_choices, channel_mask,
                                  expected_latency, hidden_mask, interleave, narrow_block, subsample)


def _randomised(block: nn.Module, seed: int = 0) -> nn.Module:
    """Weights and BN statistics of a trained block, not a fresh one's identity statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in block.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) * 0.6 + 0.2 if t.dim() == 1 else
                        torch.randn(t.shape, generator=g) * 0.3)
    return block.eval()


@pytest.mark.parametrize("stride, c_in, c_out, se, act", [(2, 16, 24, True, "hswish"), (1, 24, 24, False, "relu"),
                                                          (1, 16, 16, True, "relu")])
def test_a_one_hot_mask_computes_the_narrower_block(stride, c_in, c_out, se, act):
    """Widest block (in 32, hidden 96, out 32), inputs beyond c_in zero as the previous layer's mask
    leaves them, one-hot masks on c_out and on a hidden width: the first c_out channels are exactly
    the narrower block's with the sliced weights, the rest zero."""
    in_max = out_max = 32
    wide = _randomised(MaskedIR(in_max, out_max, 96, kernel=5, stride=stride, se=se, act=act))
    outs = (8, 16, 24, 32)
    mids = (32, 48, 64, 96)
    g = torch.tensor([1.0 if c == c_out else 0.0 for c in outs])
    mid = 64
    h = torch.tensor([1.0 if m == mid else 0.0 for m in mids])
    x = torch.randn(2, in_max, 12, 12)
    x[:, c_in:] = 0
    with torch.no_grad():
        y = wide(x, channel_mask(h, mids, 96), channel_mask(g, outs, out_max))
        small = narrow_block(wide, c_in, mid, c_out)
        ref = small(x[:, :c_in])
    torch.testing.assert_close(y[:, :c_out], ref, rtol=0, atol=1e-5)
    assert torch.count_nonzero(y[:, c_out:]) == 0


def test_a_soft_mask_mixes_the_choices_in_one_tensor():
    wide = _randomised(MaskedIR(16, 16, 48, kernel=3, stride=2, se=False, act="relu"))
    x = torch.randn(1, 16, 8, 8)
    mids = (16, 32, 48)
    w = torch.tensor([0.2, 0.5, 0.3])
    mask = channel_mask(w, mids, 48)
    assert torch.allclose(mask[:16], torch.ones(16)) and torch.allclose(mask[16:32], torch.full((16,), 0.8))
    assert torch.allclose(mask[32:], torch.full((16,), 0.3))
    with torch.no_grad():
        assert wide(x, mask).shape == (1, 16, 4, 4)


def test_the_hidden_mask_follows_the_derived_networks_widths():
    """mid = get_divisible_by(c_in * e, 8) depends on both choices: one-hot on (24, e=3) keeps 72."""
    prev = torch.tensor([0.0, 1.0])
    exp = torch.tensor([0.0, 1.0, 0.0])
    mask = hidden_mask(prev, (16, 24), exp, (2.0, 3.0, 4.0), 96)
    assert int(mask.sum()) == 72 and mask[71] == 1 and mask[72] == 0


@pytest.mark.parametrize("full, small", [(16, 8), (16, 12), (15, 10)])
def test_the_interleaved_low_resolution_path_is_the_block_on_the_subsampled_input(full, small):
    """Two blocks (a stride-2 one, then a stride-1 one) run on the full grid the DMasking way:
    subsample, run, interleave zeros back. Each layer's subsampled view is exactly what running the
    blocks on the subsampled input gives, and nothing lands between the sampled positions."""
    first = _randomised(MaskedIR(8, 16, 24, kernel=3, stride=2, se=True, act="hswish"), 1)
    second = _randomised(MaskedIR(16, 16, 32, kernel=5, stride=1, se=False, act="relu"), 2)
    x = torch.randn(2, 8, full, full)
    with torch.no_grad():
        direct = second(first(subsample(x, (small, small))))
        grid = ((full + 1) // 2, (full + 1) // 2)
        a = first(subsample(x, (small, small)))
        lifted = interleave(a, grid)
        b = second(subsample(lifted, a.shape[-2:]))
        lifted_b = interleave(b, grid)
    torch.testing.assert_close(subsample(lifted_b, b.shape[-2:]), direct, rtol=0, atol=0)
    occupied = torch.zeros(grid, dtype=torch.bool)
    occupied[tuple(torch.nonzero(interleave(torch.ones(1, 1, *b.shape[-2:]), grid)[0, 0]).T)] = True
    assert torch.count_nonzero(lifted_b[:, :, ~occupied]) == 0
    assert int(occupied.sum()) == b.shape[-2] * b.shape[-1]


def test_expected_latency_is_the_enumeration_over_every_discrete_choice():
    """A tiny space (2 resolutions, 3 stem widths, 2 layers of 2 block types x 3 widths x 2
    expansions): the closed form equals the sum over all 2 x 3 x (2x3x2)^2 networks of probability x
    the sum of their measured parts."""
    g = torch.Generator().manual_seed(0)
    R, S, B, J, K = 2, 3, 2, 3, 2
    stem = torch.rand(R, S, generator=g)
    tables = [torch.rand(R, B, S, J, K, generator=g), torch.rand(R, B, J, J, K, generator=g)]
    head = torch.rand(R, J, generator=g)

    def probs(n):
        return torch.softmax(torch.randn(n, generator=g), 0)
    res, stem_w = probs(R), probs(S)
    ch, ex, bl = [probs(J), probs(J)], [probs(K), probs(K)], [probs(B), probs(B)]
    closed = expected_latency(tables, stem, head, resolution=res, stem_weights=stem_w, channel_weights=ch,
                              expansion_weights=ex, block_weights=bl)
    total = torch.zeros((), dtype=torch.float64)
    for r, s, (b1, j1, k1), (b2, j2, k2) in itertools.product(range(R), range(S), itertools.product(
            range(B), range(J), range(K)), itertools.product(range(B), range(J), range(K))):
        p = res[r] * stem_w[s] * bl[0][b1] * ch[0][j1] * ex[0][k1] * bl[1][b2] * ch[1][j2] * ex[1][k2]
        lat = stem[r, s] + tables[0][r, b1, s, j1, k1] + tables[1][r, b2, j1, j2, k2] + head[r, j2]
        total += float(p) * float(lat)
    assert float(closed) == pytest.approx(float(total), rel=1e-6)


@pytest.mark.slow  # an ONNX export of a 19-layer network
def test_every_point_is_an_archspec_that_builds_and_exports():
    from edgekit.exporters.onnx import export_onnx_fp32

    space = FBNetV2Space(resolution=32, resolutions=(32, 24), width=0.5, in_chans=1, num_classes=10)
    point = space.widest()
    point["resolution"] = 24
    point["layers"][3] = (BLOCK_TYPES[0][0], space.layers[3].channels[0], space.layers[3].expansions[0])
    spec = space.spec(point)
    assert spec.resolution == 24 and spec.blocks[3].kernel == 3 and spec.blocks[3].se == 0
    net = from_arch(spec, num_classes=10, in_chans=1).eval()
    exp = export_onnx_fp32(net, torch.zeros(1, 1, 24, 24))
    assert exp.outputs[0].shape == (1, 10)
    assert space.lut_entries() == sum(len(BLOCK_TYPES) * len(a) * len(layer.channels) * len(layer.expansions)
                                      for a, layer in zip([space.stem_choices] + [lay.channels for lay in
                                                                                  space.layers[:-1]],
                                                          space.layers)) * 2


def test_a_residual_block_narrows_only_to_equal_widths():
    wide = MaskedIR(32, 32, 64, kernel=3, stride=1, se=False, act="relu")
    with pytest.raises(ValueError, match="input and output channels must be equal, not 16 and 32"):
        narrow_block(wide, 16, 32, 32)


def test_bad_ranges_and_points_are_refused():
    with pytest.raises(ValueError, match=r"step 12 does not divide 40 \(max - min\)"):
        channel_choices(16, 56, 12)
    with pytest.raises(ValueError, match="max 8 is below min 16"):
        channel_choices(16, 8, 4)
    space = FBNetV2Space(resolution=32, resolutions=(32,), width=0.5, in_chans=1, num_classes=10)
    point = space.widest()
    point["layers"][0] = ("k7_relu", 8, 1.0)
    with pytest.raises(ValueError, match="layer 1 .*block 'k7_relu' is not one of"):
        space.spec(point)
    with pytest.raises(ValueError, match="resolutions .* must lie in"):
        FBNetV2Space(resolution=32, resolutions=(64,))


@pytest.mark.parametrize("kind", [t[0] for t in BLOCK_TYPES])
def test_a_one_hot_block_type_is_that_block(kind):
    """The mixed layer (5x5 depthwise, SE, both activations in one set of weights) with a one-hot
    block type computes that block: a 3x3 kernel from the centre taps, no SE or an SE gate,
    ReLU or h-swish."""
    from edgekit.nas.dmasking import MixedIR

    _, k, se, act = next(t for t in BLOCK_TYPES if t[0] == kind)
    mixed = _randomised(MixedIR(16, 24, 48, stride=2, pw=True), 3)
    plain = MaskedIR(16, 24, 48, kernel=k, stride=2, se=se, act=act, se_reduced=mixed.se_reduce.out_channels).eval()
    state = {key: t for key, t in mixed.state_dict().items() if key in plain.state_dict()}
    if k == 3:
        state["dw.0.weight"] = mixed.dw[0].weight[..., 1:4, 1:4]
    plain.load_state_dict(state)
    p = torch.tensor([1.0 if t[0] == kind else 0.0 for t in BLOCK_TYPES])
    x = torch.randn(2, 16, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(mixed(x, p), plain(x), rtol=0, atol=1e-5)


def test_a_one_hot_resolution_is_the_supernet_run_at_that_resolution():
    """The supernet on the full grid with the resolution weight on 24 px (subsample, run, interleave
    at every layer) gives the logits of the same weights run on the 24 px subsampled input."""
    from edgekit.nas.dmasking import SuperNetV2

    stages = (((8, 16, 8), 1, 1, (1.0,)), ((16, 24, 8), 2, 2, (2.0, 3.0)), ((24, 32, 8), 2, 2, (2.0, 4.0)))
    small = dict(width=1.0, in_chans=1, num_classes=10, stages=stages, head_channels=64)
    space = FBNetV2Space(resolution=32, resolutions=(32, 24), **small)
    alone = FBNetV2Space(resolution=24, resolutions=(24,), **small)
    torch.manual_seed(0)
    net = _randomised(SuperNetV2(space), 4)
    same = SuperNetV2(alone).eval()
    same.load_state_dict(net.state_dict())

    def arch(res):
        def soft(n):
            return torch.softmax(torch.randn(n), 0)
        return {"resolution": res, "stem": soft(len(space.stem_choices)),
                "block": [soft(len(BLOCK_TYPES)) for _ in space.layers],
                "channels": [soft(len(layer.channels)) for layer in space.layers],
                "expansion": [soft(len(layer.expansions)) for layer in space.layers]}
    torch.manual_seed(1)
    a = arch(torch.tensor([0.0, 1.0]))
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        full = net(x, a)
        direct = same(subsample(x, (24, 24)), {**a, "resolution": torch.tensor([1.0])})
    torch.testing.assert_close(full, direct, rtol=0, atol=1e-5)


def test_points_round_trip_through_archspecs_and_the_space_through_its_record():
    space = FBNetV2Space(resolution=64, resolutions=(64, 48, 32), width=0.5, in_chans=1, num_classes=10)
    for seed in range(5):
        point = space.sample(seed)
        assert space.spec_to_point(space.spec(point)) == point
    assert FBNetV2Space.from_dict(space.to_dict()) == space
    other = space.spec(space.sample(0)).replace(resolution=40)
    with pytest.raises(ValueError, match=r"resolution 40 is not one of \(64, 48, 32\)"):
        space.spec_to_point(other)
    with pytest.raises(ValueError, match="unknown field"):
        FBNetV2Space.from_dict({**space.to_dict(), "depth": 3})

"""ArchSpec: plain data, strict validation, JSON round trip."""
import json

import pytest
import torch

from edgekit.models import ArchSpec, BlockSpec, HeadSpec, StemSpec, block_types, from_arch


def tiny(**kw):
    base = dict(name="tiny", stem=StemSpec(8),
                stages=((BlockSpec("conv", 16, kernel=3, stride=2),), (BlockSpec("conv", 24),)),
                head=HeadSpec(channels=32))
    base.update(kw)
    return ArchSpec(**base)


def test_round_trip_and_build():
    spec = tiny()
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec and hash(again) == hash(spec)
    net = from_arch(json.loads(spec.to_json()), num_classes=7, in_chans=1)
    y = net(torch.randn(2, 1, 32, 32))
    assert y.shape == (2, 7)


def test_families_register_their_block_types():
    assert {"conv", "ir", "skip", "mbconv", "fused_mbconv"} <= set(block_types())


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.update(colour="red"), r"unknown field\(s\) \['colour'\]"),
    (lambda d: d["stages"][0][0].update(kernal=3), r"stages\[0\]\[0\].*unknown field\(s\) \['kernal'\]"),
    (lambda d: d["stages"][0][0].update(type="resblock"), r"unknown type 'resblock'.*registered types"),
    (lambda d: d["stages"][1][0].update(kernel=4), r"stages\[1\]\[0\].*kernel 4 must be odd"),
    (lambda d: d["stages"][1][0].update(stride=3), "stride 3 must be 1 or 2"),
    (lambda d: d["stages"][1][0].update(act="gelu"), "unknown activation 'gelu'"),
    (lambda d: d["stages"][0][0].pop("out_channels"), r"missing field\(s\) \['out_channels'\]"),
    (lambda d: d.update(stages=[[]]), "at least one block"),
    (lambda d: d.update(stages="nope"), "list of lists"),
    (lambda d: d.update(schema_version=99), "schema_version 99"),
    (lambda d: d["head"].update(type="mlp"), "head type 'mlp'"),
])
def test_invalid_specs_name_the_problem(mutate, needle):
    d = tiny().to_dict()
    mutate(d)
    with pytest.raises(ValueError, match=needle):
        ArchSpec.from_dict(d)


def test_corrupt_json_is_a_clear_error():
    text = tiny().to_json()
    with pytest.raises(ValueError, match="does not parse"):
        ArchSpec.from_json(text[: len(text) // 2])
    with pytest.raises(ValueError, match="must be an object"):
        ArchSpec.from_json("[1, 2]")


def test_drop_path_is_linear_over_blocks():
    spec = tiny(drop_path_rate=0.2, stages=(tuple(BlockSpec("mbconv", 16, expansion=4) for _ in range(4)),))
    net = from_arch(spec)
    rates = [m.rate for m in net.modules() if type(m).__name__ == "DropPath"]
    # the first block has stride 1 but changes channels (8 -> 16): no residual, so no drop path
    assert rates == pytest.approx([0.2 * i / 4 for i in range(1, 4)])

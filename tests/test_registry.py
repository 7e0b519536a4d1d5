"""Bad input to the registry fails before anything is built, naming the value and the fix."""
import pytest
import torch
from torch import nn

from edgekit.models import create_model, list_models
from edgekit.models.registry import ModelCfg, register_model, resolve_resolution


def test_unknown_name_lists_closest_registered_names():
    with pytest.raises(ValueError, match=r"unknown model 'ghostnet_10'.*did you mean.*ghostnet_1_0"):
        create_model("ghostnet_10")


def test_unknown_name_without_close_match_still_says_where_to_look():
    with pytest.raises(ValueError, match=r"unknown model 'resnet50'.*edgekit models"):
        create_model("resnet50")


@pytest.mark.parametrize("kw, needle", [
    ({"num_classes": 0}, "num_classes=0"),
    ({"num_classes": 2.5}, "num_classes=2.5"),
    ({"in_chans": -1}, "in_chans=-1"),
    ({"width": 0}, "width=0"),
    ({"width": -0.5}, "width=-0.5"),
    ({"resolution": 8}, "resolution 8 is too small"),
    ({"resolution": (224,)}, "resolution"),
    ({"resolution": "224"}, "resolution"),
])
def test_invalid_overrides_are_refused_before_building(kw, needle, monkeypatch):
    built = []
    monkeypatch.setattr(nn.Module, "__init__", lambda *a, **k: built.append(1) or None)
    with pytest.raises(ValueError, match=needle):
        create_model("ghostnet_1_0", **kw)
    assert not built, "the network must not be built before the overrides are checked"


def test_width_on_a_family_without_one_is_refused():
    fixed = [n for n in list_models() if n.startswith("espnet_v1")]
    assert fixed
    with pytest.raises(ValueError, match="has no width multiplier"):
        create_model(fixed[0], width=1.5)


def test_resolution_divisor_is_enforced():
    cfg = ModelCfg(name="x", family="f", paper="p", resolution=(64, 64), resolution_divisor=8)
    assert resolve_resolution(cfg, 72) == (72, 72)
    assert resolve_resolution(cfg, (64, 128)) == (64, 128)
    with pytest.raises(ValueError, match="multiple of 8"):
        resolve_resolution(cfg, 70)


def test_duplicate_registration_is_refused():
    name = list_models()[0]
    with pytest.raises(ValueError, match="registered twice"):
        register_model(ModelCfg(name=name, family="f", paper="p", resolution=(224, 224)))(lambda **kw: None)


def test_list_models_filters_with_wildcards():
    assert list_models("efficientnet_b*") == [f"efficientnet_b{i}" for i in range(8)]
    assert list_models("nothing*") == []


def test_grey_scale_variant_gets_one_statistic_per_channel():
    with torch.device("meta"):
        m = create_model("ghostnet_1_0", in_chans=1, num_classes=10, resolution=64)
    assert m.default_cfg["input_size"] == [1, 64, 64]
    assert len(m.default_cfg["mean"]) == len(m.default_cfg["std"]) == 1
    assert m.default_cfg["num_classes"] == 10

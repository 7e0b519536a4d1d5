"""Tests generated from the registry: every registered variant is checked without anyone
remembering to add it."""
import json

import pytest
import torch

from edgekit.models import create_model, get_cfg, list_models, profile_name
from edgekit.models.arch import ArchNet, ArchSpec, from_arch

from reference_figures import FIGURES, MACS_TOL, PARAMS_TOL

ALL = list_models()
# torch.export traces for seconds per network whatever its size: here the smallest variant of each
# family; every variant is exported with it by the ONNX sweep (tests/test_zoo_onnx.py), whose
# outputs are compared with PyTorch's.
_SMALLEST = {}
for _n in sorted(ALL, key=lambda n: FIGURES[n][3]):
    _SMALLEST.setdefault(get_cfg(_n).family, _n)
EXPORT_FAST = sorted(_SMALLEST.values())


def test_registry_matches_the_reference_list():
    assert sorted(FIGURES) == ALL, "every registered model needs reference figures, and vice versa"


@pytest.mark.parametrize("name", ALL)
def test_params_and_macs_match_official_code(name):
    classes, hw, params, macs = FIGURES[name]
    prof = profile_name(name, num_classes=classes, resolution=hw)
    assert abs(prof.params - params) <= PARAMS_TOL * params, f"{name}: {prof.params:,} params vs {params:,}"
    assert abs(prof.macs - macs) <= MACS_TOL * macs, f"{name}: {prof.macs / 1e6:.2f}M MACs vs {macs / 1e6:.2f}M"


@pytest.mark.parametrize("name", ALL)
def test_default_cfg(name):
    cfg = get_cfg(name)
    classes, hw, _, _ = FIGURES[name]
    assert cfg.resolution == hw and cfg.num_classes == classes
    assert cfg.family and cfg.paper
    with torch.device("meta"):
        m = create_model(name)
    dc = m.default_cfg
    assert dc["input_size"] == [3, *hw]
    assert len(dc["mean"]) == len(dc["std"]) == 3
    assert dc["family"] == cfg.family


@pytest.mark.parametrize("name", ALL)
def test_small_edge_variant_runs_on_cpu(name):
    """1 input channel, 10 classes, small input: the Fashion-MNIST shape, from the same definition."""
    cfg = get_cfg(name)
    side = max(32, cfg.min_resolution)
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1, resolution=side).eval()
    assert model.default_cfg["input_size"] == [1, side, side]
    x = torch.randn(2, 1, side, side)
    with torch.no_grad():
        y = model(x)
    if cfg.task == "segmentation":
        assert y.shape[:2] == (2, 10) and y.shape[2] * y.shape[3] > 0
    else:
        assert y.shape == (2, 10)
    assert torch.isfinite(y).all()
    assert not torch.allclose(y[0], y[1]), "different inputs must give different outputs"


@pytest.mark.parametrize("name", [n if i == 0 else pytest.param(n, marks=pytest.mark.slow)
                                  for i, n in enumerate(EXPORT_FAST)])
def test_torch_export_batch1(name):
    """The ImageNet configuration (3 channels, its classes) at a small input: tracing does not depend
    on the input size, running the network at 600 px only costs time. One family in the fast tier
    (the ONNX exports there trace others), every family's smallest in the slow one."""
    classes = FIGURES[name][0]
    side = max(64, get_cfg(name).min_resolution)
    model = create_model(name, num_classes=classes, resolution=side).eval()
    x = torch.randn(1, 3, side, side)
    ep = torch.export.export(model, (x,))
    with torch.no_grad():
        ref = model(x)
        got = ep.module()(x)
    torch.testing.assert_close(got, ref)


ARCH_MODELS = [n for n in ALL if n.startswith(("fbnet", "efficientnet"))]


@pytest.mark.parametrize("name", ARCH_MODELS)
def test_archspec_models_round_trip_through_json(name):
    with torch.device("meta"):
        model = create_model(name)
    assert isinstance(model, ArchNet)
    text = model.spec.to_json()
    again = ArchSpec.from_json(json.loads(json.dumps(text)))
    assert again == model.spec
    with torch.device("meta"):
        rebuilt = from_arch(again)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in model.parameters())

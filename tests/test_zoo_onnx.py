"""Every registered variant through the ONNX exporter (slow tier): exported with torch.export, its
BatchNorms folded, onnxruntime's outputs against PyTorch's, and quantized to the int8 structure.

A module of its own so that pytest-xdist can run this sweep on one worker while the other runs the
rest. The same export also covers ``torch.export`` of every variant (the ONNX exporter traces with
it and the outputs are compared), which tests/test_models.py checks for one variant per family.
"""
from dataclasses import replace

import numpy as np
import pytest
import torch

from edgekit.exporters.onnx import export_onnx_fp32, quantize_onnx_int8
from edgekit.models import get_cfg, list_models
from test_export_onnx import _check_fp32, _check_int8_structure, _idx_images, _model_inputs, _zoo

# EfficientNets above 25 M parameters: their int8 graph is the MBConv / Fused-MBConv op set of the
# smaller variants quantized in this same sweep (onnxruntime's quantizer spends 20-40 s on each of
# these in Python); their float export and parity are checked like every other variant's.
INT8_SAME_AS_SMALLER = {"efficientnet_b5", "efficientnet_b6", "efficientnet_b7", "efficientnetv2_m",
                        "efficientnetv2_l"}
# Variants that, at the sweep's input size, are another variant's network under another name: the same
# ArchSpec but for its name (they differ in their published input size only), hence the same weights
# from the same seed and the same file, exported and checked under the twin's name. For these the
# sweep checks that they are that network, instead of exporting it a second time.
SAME_NETWORK = {"fbnetv2_f2": "fbnetv2_f1", "fbnetv2_l2": "fbnetv2_l1", "fbnetv3_b": "fbnetv3_a"}


@pytest.fixture(scope="module")
def fmnist():
    return {"train": _idx_images("train"), "test": _idx_images("t10k")}


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_model_exports_and_quantizes(name, fmnist):
    """Every registered variant at 32 px with BN statistics from 64 real images: what is checked (the
    graph converts, folds, matches PyTorch and quantizes to the int8 structure) does not depend on
    the input size. FBNetV3 stays at 64 px and 256 images: at its 49 px minimum its untrained
    networks amplify float rounding (onnxruntime against PyTorch) past the parity tolerance."""
    side, bn_images = (64, 256) if get_cfg(name).family == "fbnetv3" else (32, 64)
    model = _zoo(name, fmnist, side=side, bn_images=bn_images)
    x = _model_inputs(model, fmnist["test"][:2])
    if name in SAME_NETWORK:
        twin = _zoo(SAME_NETWORK[name], fmnist, side=side, bn_images=bn_images)
        assert replace(model.spec, name=twin.spec.name) == twin.spec
        assert model.state_dict().keys() == twin.state_dict().keys()
        assert all(torch.equal(t, twin.state_dict()[k]) for k, t in model.state_dict().items())
        with torch.no_grad():
            assert torch.equal(model(torch.from_numpy(x)), twin(torch.from_numpy(x)))
        return
    fp32 = export_onnx_fp32(model, torch.from_numpy(x[:1]))
    _check_fp32(model, fp32, x)
    if name in INT8_SAME_AS_SMALLER:
        return
    int8 = quantize_onnx_int8(fp32, _model_inputs(model, fmnist["train"][1000:1008]), speed_check=False)
    _check_int8_structure(int8.model_bytes)
    assert np.isfinite(int8(x)).all()

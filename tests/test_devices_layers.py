"""Per-layer parity (``edgekit run --compare --per-layer``): every intermediate tensor of the exported
file, read on the device by the agent, against the output of its PyTorch module on the same real
images; for the small model of ``test_devices`` in fp32 and int8, and for a copy whose one conv is
wrecked for int8 (a dead input channel read through 1000x outlier weights: the float function is
unchanged, but each output channel's int8 weight scale is set by the outlier, so every other weight
rounds to 0), which must be named as the first layer where the SQNR drops."""
import copy
import json
import math
import os

import pytest
import torch

from edgekit.devices.measure import measure
from edgekit.devices.stats import Protocol
from edgekit.export import ExportSettings, export
from edgekit.exporters.artifact import sha256_file
from edgekit.models import create_model
from edgekit.train import save_weights
from helpers import randomise_bn
from test_devices import cli

FAST = Protocol(runs=10, warmup=1, max_runs=10)
WRECKED = "stages.1.1.ghost2.primary_conv"  # its conv reads the dead channel of stages.1.1.ghost1


def wreck(model):
    """A copy computing the same function whose ``WRECKED`` conv int8 cannot represent."""
    m = copy.deepcopy(model)
    block = m.stages[1][1]
    prim, target = block.ghost1.primary_conv, block.ghost2.primary_conv[0]
    with torch.no_grad():
        prim[0].weight[0] = 0.0  # channel 0 of ghost1: conv 0, BN -0.1, ReLU 0
        prim[1].running_mean[0], prim[1].bias[0] = 0.0, -0.1
        target.weight[:, 0] = 1000.0 * target.weight.abs().amax()
    return m


@pytest.fixture(scope="module")
def wrecked(tmp_path_factory):
    out = tmp_path_factory.mktemp("wrecked")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = wreck(randomise_bn(create_model("ghostnet_0_5", num_classes=10, in_chans=1, resolution=32)).eval())
    weights = out / "ghostnet_0_5.pt"
    save_weights(weights, model, {"model": "ghostnet_0_5", "num_classes": 10, "in_chans": 1, "resolution": [32, 32]})
    files = export(model, name="ghostnet_0_5", out=out, weights_file=weights, weights_sha256=sha256_file(weights),
                   settings=ExportSettings(precisions=("int8",), calib_samples=64, holdout=32, force=True))
    return {f.artifact.manifest.format: f.artifact.path for f in files}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_fp32_every_layer_matches_pytorch(artifacts, home, fmt):
    m = measure(artifacts[(fmt, "fp32")], protocol=FAST, samples=4, per_layer=True, store=False)
    pl = m.per_layer
    assert len(pl.layers) >= 120 and len(pl.layers) >= 0.6 * pl.runtime_tensors, pl.to_dict()["matched"]
    bad = [(lp.layer, lp.sqnr_db) for lp in pl.layers if not lp.sqnr_db > 60]
    assert not bad and pl.first_jump is None, bad
    names = [lp.layer for lp in pl.layers]
    assert names[0] == "stem" and names[-1].startswith("head.") and any(n.startswith("stages.2.0.se.") for n in names)
    assert all(lp.report.n == 4 for lp in pl.layers)  # samples x batch 1, NHWC transposed to NCHW
    assert m.parity and m.result.stats.n == 10  # the timed runs and the output parity as without per_layer


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_int8_layers_are_finite_and_lower(artifacts, home, fmt):
    fp = measure(artifacts[(fmt, "fp32")], protocol=FAST, samples=4, per_layer=True, store=False).per_layer
    q = measure(artifacts[(fmt, "int8")], protocol=FAST, samples=4, per_layer=True, store=False).per_layer
    assert len(q.layers) >= 120
    assert all(math.isfinite(lp.sqnr_db) and 15 < lp.sqnr_db < 60 for lp in q.layers), q.to_dict()
    fp_by = {lp.layer: lp.sqnr_db for lp in fp.layers}
    common = [lp for lp in q.layers if lp.layer in fp_by]
    assert len(common) >= 0.9 * len(q.layers) and all(lp.sqnr_db < fp_by[lp.layer] for lp in common)
    assert q.first_jump is None, q.first_jump  # a healthy int8 file degrades gradually


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_wrecked_conv_is_named_as_the_first_jump(wrecked, home, fmt):
    pl = measure(wrecked[fmt], protocol=FAST, samples=4, per_layer=True, store=False).per_layer
    jump = pl.first_jump
    assert jump is not None and jump.layer == WRECKED, pl.to_dict()["first_jump"]
    before = [lp.sqnr_db for lp in pl.layers[:pl.layers.index(jump)]]
    assert len(before) >= 15 and min(before) > jump.sqnr_db + 20, (before, jump.sqnr_db)
    assert pl.worst(1)[0].sqnr_db <= jump.sqnr_db + 10


@pytest.mark.slow
def test_cli_prints_the_table_and_json(wrecked, home):
    env = {**os.environ, "EDGEKIT_HOME": str(home)}
    r = cli("run", str(wrecked["onnx"]), "--compare", "--per-layer", "--top", "5", "--runs", "10",
            "--samples", "2", "--no-store", env=env)
    assert r.returncode == 0, r.stderr
    assert f"first jump: {WRECKED} (Conv)" in r.stdout and "5 worst layers" in r.stdout, r.stdout
    assert "<- first jump" in r.stdout
    r = cli("run", str(wrecked["tflite"]), "--compare", "--per-layer", "--runs", "10", "--samples", "2",
            "--no-store", "--json", env=env)
    doc = json.loads(r.stdout)["per_layer"]
    assert doc["first_jump"]["layer"] == WRECKED and doc["matched"] == len(doc["layers"]) >= 120
    assert {"layer", "modules", "tensor", "node", "op", "shape", "sqnr_db", "cosine", "max_abs"} <= set(doc["layers"][0])


def test_onnx_per_layer_without_onnx_says_it_needs_it(tmp_path, monkeypatch):
    import builtins

    import numpy as np
    from torch import nn

    from edgekit.devices import agent

    path = tmp_path / "m.onnx"
    torch.onnx.export(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval(), torch.zeros(1, 1, 8, 8), str(path),
                      dynamo=False)
    runner = agent.Runner(str(path), None)
    real_import = builtins.__import__

    def no_onnx(name, *args, **kw):
        if name == "onnx" or name.startswith("onnx."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    with pytest.raises(agent.AgentError, match="need the onnx package on the device") as e:
        agent._intermediates(runner, [np.zeros((1, 1, 1, 8, 8), np.float32)])
    assert e.value.kind == "runtime-missing"

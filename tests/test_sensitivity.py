"""Per-layer int8 sensitivity and the accuracy-driven mixed-precision fallback, on a small CNN trained
on real Fashion-MNIST whose third conv is wrecked for int8 the way real networks get wrecked: an
input channel pruned to zero, and weights on that dead channel 1000x the largest other weight. The
float function does not change (the weights multiply zeros), but each output channel's int8 weight
scale is set by the outlier, so every other weight of that conv rounds to 0.

Also here: what a converter failure looks like from ``export`` and ``edgekit export``.
"""
import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

from edgekit import cli
from edgekit.calibration.data import load_dataset, preprocess, preprocessing_for
from edgekit.calibration.sensitivity import FallbackError, onnx_sensitivity
from edgekit.export import ExportSettings, export
from edgekit.exporters.artifact import load_artifact
from edgekit.exporters.onnx import export_onnx_fp32, int8_structure, quantize_onnx_int8
from edgekit.validate import validate

torch.set_num_threads(1)
CFG = {"input_size": [1, 32, 32], "mean": [0.286], "std": [0.353], "num_classes": 10}


def _block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(_block(1, 16, 1), _block(16, 32, 2), _block(32, 32, 2), _block(32, 48, 2))
        self.classifier = nn.Linear(48, 10)
        self.default_cfg = dict(CFG)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))  # (B, 48, 4, 4) -> (B, 48) -> (B, 10)


@pytest.fixture(scope="module")
def trained() -> TinyNet:
    """300 AdamW steps of batch 64 on the training split: ~79 % test top-1 in ~20 s."""
    torch.manual_seed(0)
    model = TinyNet()
    ds = load_dataset("fashion-mnist", split="train", limit=20000)
    x, y = preprocess(ds.images, preprocessing_for(CFG)), torch.from_numpy(ds.labels.astype(np.int64))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = np.random.default_rng(0)
    model.train()
    for _ in range(300):
        idx = rng.choice(len(x), 64, replace=False)
        loss = nn.functional.cross_entropy(model(torch.from_numpy(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def wreck(model: TinyNet, *blocks: int, channel: int = 0) -> TinyNet:
    """A copy whose ``features[b]`` conv reads a dead input channel through 1000x outlier weights."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        for b in blocks:
            conv, bn = m.features[b - 1][0], m.features[b - 1][1]
            conv.weight[channel] = 0.0  # a pruned channel: conv 0, BN -0.1, ReLU 0
            bn.running_mean[channel], bn.bias[channel] = 0.0, -0.1
            target = m.features[b][0]
            target.weight[:, channel, 1, 1] = 1000.0 * target.weight.abs().amax()
    return m


def _test_images(n: int = 1000):
    ds = load_dataset("fashion-mnist", split="test", limit=n)
    return preprocess(ds.images, preprocessing_for(CFG)), ds.labels


def _top1(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


@pytest.mark.slow
def test_wrecked_model_computes_the_same_function(trained):
    x, y = _test_images(500)
    broken = wreck(trained, 2)
    with torch.no_grad():
        dead = broken.features[:2](torch.from_numpy(x))[:, 0]
    assert float(dead.abs().max()) == 0.0  # the channel the outliers read is exactly zero
    assert abs(_top1(broken, x, y) - _top1(trained, x, y)) <= 0.01
    assert _top1(trained, x, y) > 0.7


# ---- sensitivity ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_onnx_sensitivity_ranks_the_wrecked_conv_first(trained):
    broken = wreck(trained, 2)
    pre = preprocessing_for(CFG)
    calib = preprocess(load_dataset("fashion-mnist", split="train", limit=256).images, pre)
    held, _ = _test_images(128)
    fp32 = export_onnx_fp32(broken, torch.zeros(1, 1, 32, 32))
    int8 = quantize_onnx_int8(fp32, calib, speed_check=False)
    report = onnx_sensitivity(fp32, int8, held)
    first, second = report.layers[:2]
    assert first.layer == "features.2" and first.nodes == ("features.2/Conv",), report.to_dict()
    assert first.sqnr_db < 5.0 and second.sqnr_db - first.sqnr_db > 20.0, report.to_dict()
    assert {s.layer for s in report.layers} == {"features.0", "features.1", "features.2", "features.3", "classifier"}
    # the accumulated per-layer SQNR cannot tell the cause from what follows it
    after = [s for s in report.layers if s.layer in ("features.3", "classifier")]
    assert all(s.int8_sqnr_db < first.int8_sqnr_db + 6.0 for s in after), report.to_dict()


# ---- the fallback ------------------------------------------------------------------------------

def _export(model, tmp_path, fmt, **kw):
    settings = ExportSettings(formats=(fmt,), precisions=("int8",), calib_samples=256, **kw)
    return export(model, name="tiny", out=tmp_path, settings=settings)


@pytest.mark.slow
@pytest.mark.parametrize("fmt, layer", [("onnx", "features.2"), ("tflite", "features.2.0")])
def test_fallback_keeps_exactly_the_wrecked_conv_float(trained, tmp_path, fmt, layer):
    broken = wreck(trained, 2)
    (f,) = _export(broken, tmp_path, fmt, max_drop=1.0)
    art = load_artifact(f.artifact.path)
    m = art.manifest
    assert art.path.name == f"tiny-{fmt}-mixed.{fmt}" and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [art.path.name, art.manifest_path.name])
    assert m.precision == "mixed" and m.float_layers == (layer,)
    acc = m.metrics["accuracy"]
    assert acc["int8_drop_points"] > 30.0 and acc["drop_points"] <= 1.0 and acc["samples"] == 1000, acc
    assert [len(s["float_layers"]) for s in m.metrics["fallback"]] == [0, 1]
    assert m.metrics["sensitivity"]["layers"][0]["layer"] == layer
    assert m.calibration is not None and f.parity.sqnr_db >= 20.0
    if fmt == "onnx":
        assert int8_structure(art.path.read_bytes())["float_convs"] == ["features.2/Conv"]
    report = validate(art.path, limit=1000)  # the device agent's Runner runs the mixed file
    x, y = _test_images(1000)  # the same first 1000 test images in PyTorch
    assert report.precision == "mixed" and report.n == 1000
    assert abs(report.top1 - _top1(broken, x, y)) <= 0.015, (report.top1, _top1(broken, x, y))


@pytest.mark.slow
def test_int8_within_max_drop_stays_int8(trained, tmp_path):
    (f,) = _export(trained, tmp_path, "onnx", max_drop=1.0)
    m = f.artifact.manifest
    assert m.precision == "int8" and m.float_layers == () and f.artifact.path.name == "tiny-onnx-int8.onnx"
    acc = m.metrics["accuracy"]
    assert acc["drop_points"] == acc["int8_drop_points"] <= 1.0 and acc["fp32_top1"] > 0.7, acc
    assert "fallback" not in m.metrics and "sensitivity" not in m.metrics


@pytest.mark.slow
def test_unreachable_max_drop_is_an_error_and_writes_nothing(trained, tmp_path):
    broken = wreck(trained, 2, 3)  # two wrecked convs; one float layer allowed
    with pytest.raises(FallbackError, match=r"max_drop 1 .*up to 1 of 5 layers float.*max_float_layers") as e:
        _export(broken, tmp_path, "onnx", max_drop=1.0, max_float_layers=1)
    assert "0 float: drop" in str(e.value) and "1 float: drop" in str(e.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_max_drop_and_sensitivity(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_export_model", lambda args: (wreck(trained, 2), "tiny", None, None, None))
    rc = cli.main(["export", "tiny", "--format", "onnx", "--precision", "int8", "--out", str(tmp_path),
                   "--max-drop", "1", "--sensitivity", "3"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "float layers: features.2" in out and "3 most int8-sensitive of 5 layers" in out, out
    rc = cli.main(["export", "tiny", "--format", "onnx", "--precision", "int8", "--out", str(tmp_path),
                   "--max-drop", "1", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["artifacts"][0]["precision"] == "mixed"
    assert doc["artifacts"][0]["float_layers"] == ["features.2"]


# ---- refused before any work ----------------------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    ({"max_drop": -0.5}, "max_drop -0.5 must be points"),
    ({"max_drop": 1.0, "precisions": ("fp32",)}, "add int8 to the precisions"),
    ({"max_drop": 1.0, "synthetic": True}, "synthetic"),
    ({"max_float_layers": 0}, "max_float_layers 0 must be an int >= 1"),
    ({"accuracy_samples": 0}, "accuracy_samples 0"),
])
def test_bad_fallback_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        ExportSettings(**kw)


def test_max_drop_needs_labelled_data(tmp_path):
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).integers(0, 255, (64, 28, 28), dtype=np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValueError, match="has no labels"):
        export(TinyNet().eval(), name="tiny", out=out, settings=ExportSettings(
            formats=("onnx",), precisions=("int8",), calib=str(tmp_path / "calib.npy"), calib_samples=32,
            max_drop=1.0))
    assert list(out.iterdir()) == []


# ---- converter failures ----------------------------------------------------------------------------

class _Bessel(nn.Module):
    def forward(self, x):
        return torch.special.i0(x)


class _Cummax(nn.Module):
    def forward(self, x):
        return torch.cummax(x, dim=1).values


class _Unconvertible(nn.Module):
    def __init__(self, odd: nn.Module):
        super().__init__()
        self.stem = _block(1, 8, 2)
        self.body = nn.Sequential(_block(8, 8, 1), odd)
        self.classifier = nn.Linear(8, 10)
        self.default_cfg = dict(CFG)

    def forward(self, x):
        return self.classifier(self.body(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize("fmt, odd, op, module", [
    ("onnx", _Cummax(), "aten.cummax", "'body.1' (_Cummax)"),
    ("tflite", _Bessel(), "aten.i0", "module body.1 (_Bessel)"),
])
def test_converter_failure_names_op_and_module_and_writes_nothing(tmp_path, fmt, odd, op, module):
    model = _Unconvertible(odd).eval()
    with pytest.raises(ValueError) as e:
        export(model, name="odd", out=tmp_path, settings=ExportSettings(formats=(fmt,), calib_samples=16, holdout=16))
    msg = str(e.value)
    assert msg.startswith(f"{fmt} export of odd failed:") and op in msg and module in msg, msg
    assert list(tmp_path.iterdir()) == []


def test_cli_converter_failure_exits_nonzero(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_export_model", lambda args: (_Unconvertible(_Cummax()).eval(), "odd", None, None, None))
    rc = cli.main(["export", "odd", "--format", "onnx", "--out", str(tmp_path), "--calib-samples", "16"])
    err = capsys.readouterr().err
    assert rc == 2 and "aten.cummax" in err and "body.1" in err, err
    assert list(tmp_path.iterdir()) == []

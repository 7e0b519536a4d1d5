"""ONNX export: fp32 parity with PyTorch, int8 checked by structure and by numbers on real
Fashion-MNIST images, and the errors a user sees. Fast tier: a few small models; slow tier: every
registered model."""
import gzip
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto
from torch import nn

from edgekit.exporters import onnx as ex
from edgekit.exporters.onnx import (OnnxExportError, benchmark_onnx, export_onnx_fp32, int8_structure,
                                    quantize_onnx_int8, sqnr_db)
from edgekit.models import create_model, get_cfg
from helpers import Tiny

FMNIST = Path("/usr/share/datasets/fashion-mnist")
# One small model per family module (models/efficientnet.py, espnet.py, fbnet.py, ghostnet.py); the
# fastest to export of each, and espnet_v1_c has the (N, classes, H, W) segmentation output.
FAMILY_SMALL = ["efficientnet_b0", "espnet_v1_c", "fbnet_a", "ghostnet_0_5"]


# ---- real data ----------------------------------------------------------------------------------

def _idx_images(split: str) -> np.ndarray:
    path = FMNIST / f"{split}-images-idx3-ubyte.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: install the Debian package dataset-fashion-mnist (make setup)")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[4:8], "big")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, 28, 28)


@pytest.fixture(scope="module")
def fmnist():
    return {"train": _idx_images("train"), "test": _idx_images("t10k")}


def _preprocess(images: np.ndarray, mean, std, size: int) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, C, size, size): bilinear resize, channel replication, mean/std."""
    c = len(mean)
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).expand(-1, c, -1, -1)
    x = (x - torch.tensor(mean).view(1, c, 1, 1)) / torch.tensor(std).view(1, c, 1, 1)
    return x.contiguous().numpy()


def _model_inputs(model: nn.Module, images: np.ndarray) -> np.ndarray:
    c, h, _ = model.default_cfg["input_size"]
    return _preprocess(images, model.default_cfg["mean"], model.default_cfg["std"], h)


def _real_bn(model: nn.Module, x: np.ndarray) -> nn.Module:
    """BN statistics from real images (train-mode forward without grad), then eval: untrained-init
    statistics (mean 0, var 1) make int8 look artificially good or bad."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 64):
            model(torch.from_numpy(x[i:i + 64]))
    return model.eval()


def _zoo(name: str, fmnist, side: int = 64, bn_images: int = 256) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1, resolution=max(side, get_cfg(name).min_resolution))
    return _real_bn(model, _model_inputs(model, fmnist["train"][:bn_images]))


@pytest.fixture(scope="module")
def tiny(fmnist):
    torch.manual_seed(0)
    model = Tiny()
    _real_bn(model, _model_inputs(model, fmnist["train"][:256]))
    calib = _model_inputs(model, fmnist["train"][1000:1064])
    held = _model_inputs(model, fmnist["test"][:128])
    return model, export_onnx_fp32(model, torch.from_numpy(held[:1])), calib, held


def _graph(data: bytes):
    return onnx.load_from_string(data).graph


# ---- fp32 -------------------------------------------------------------------------------------

def _check_fp32(model: nn.Module, export, x: np.ndarray) -> None:
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    out = export(x)
    assert out.shape == ref.shape
    err = np.abs(out - ref).max()
    assert err <= ex.PARITY_RTOL * np.abs(ref).max(), f"max abs {err:.3g} vs max |ref| {np.abs(ref).max():.3g}"
    g = _graph(export.model_bytes)
    producers = {o: n for n in g.node for o in n.output}
    unfolded = [n.name for n in g.node if n.op_type == "BatchNormalization"
                and n.input[0] in producers and producers[n.input[0]].op_type == "Conv"]
    assert not unfolded, f"BatchNorm after a Conv left unfolded: {unfolded}"
    onnx.checker.check_model(onnx.load_from_string(export.model_bytes), full_check=True)
    assert [i.name for i in g.input] == ["input"] and [o.name for o in g.output] == ["logits"]
    assert export.inputs[0].shape == (1, *x.shape[1:]) and export.inputs[0].layout == "NCHW"
    assert export.outputs[0].layout == {2: "NC", 4: "NCHW"}[ref.ndim]
    assert export.precision == "fp32" and set(export.tools) >= {"torch", "onnx", "onnxruntime"}


@pytest.fixture(scope="module")
def zoo_exports(fmnist):
    """name -> (model, fp32 export): each small zoo model is exported once per test module."""
    cache = {}

    def get(name):
        if name not in cache:
            model = _zoo(name, fmnist)
            x = _model_inputs(model, fmnist["test"][:1])
            cache[name] = model, export_onnx_fp32(model, torch.from_numpy(x))
        return cache[name]
    return get


# efficientnet_b0 in the fast tier (its export is the int8 tests' too), the others slow: the zoo
# sweep (test_zoo_onnx) checks every variant's fp32 file as well
@pytest.mark.parametrize("name", [n if n == "efficientnet_b0" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in FAMILY_SMALL])
def test_fp32_matches_pytorch_one_model_per_family(name, fmnist, zoo_exports):
    model, fp32 = zoo_exports(name)
    _check_fp32(model, fp32, _model_inputs(model, fmnist["test"][:4]))


def test_nodes_are_named_after_their_modules(tiny):
    _, export, _, _ = tiny
    names = [n.name for n in _graph(export.model_bytes).node]
    # The BN folded into each Conv names the module holding both, not the BN.
    assert {"stem/Conv", "dw/Conv", "pw/Conv", "fc/Gemm"} <= set(names), names
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("example, match", [
    (torch.zeros(2, 1, 32, 32), r"\(1, C, H, W\)"),
    (torch.zeros(1, 32, 32), r"\(1, C, H, W\)"),
    (torch.zeros(1, 1, 32, 32, dtype=torch.float64), "float32"),
    (np.zeros((1, 1, 32, 32), np.float32), "torch.Tensor"),
])
def test_export_rejects_bad_examples(example, match):
    with pytest.raises(ValueError, match=match):
        export_onnx_fp32(Tiny(), example)


def test_opset(tiny):
    _, default, _, held = tiny
    export = export_onnx_fp32(Tiny().eval(), torch.from_numpy(held[:1]), opset=18)
    assert export.opset == 18 != default.opset
    assert [o.version for o in onnx.load_from_string(export.model_bytes).opset_import if o.domain == ""] == [18]
    with pytest.raises(ValueError, match=">= 18"):
        export_onnx_fp32(Tiny(), torch.from_numpy(held[:1]), opset=17)


class _Head(nn.Module):
    def forward(self, x):
        return torch.cummax(x, dim=1)[0]  # no ONNX translation in torch.onnx


class _Unconvertible(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.head = _Head()

    def forward(self, x):
        return self.head(self.conv(x))


def test_conversion_failure_names_op_and_module():
    model = _Unconvertible().train()
    with pytest.raises(OnnxExportError) as e:
        export_onnx_fp32(model, torch.zeros(1, 1, 16, 16))
    msg = str(e.value)
    assert "aten.cummax" in msg and "'head'" in msg and "_Head" in msg, msg
    assert all(m.training for m in model.modules()), "export must restore each module's train/eval mode"


def test_export_is_callable_like_the_model(tiny):
    _, export, _, held = tiny
    assert export(held[:3]).shape == (3, 10)
    assert export(torch.from_numpy(held[:2])).shape == (2, 10)
    with pytest.raises(ValueError, match="does not fit"):
        export(held[:, :, :16])


# ---- int8: structure and numbers ---------------------------------------------------------------

@pytest.fixture(scope="module")
def effnet(fmnist, zoo_exports):
    model, fp32 = zoo_exports("efficientnet_b0")
    calib = _model_inputs(model, fmnist["train"][1000:1064])
    held = _model_inputs(model, fmnist["test"][:64])
    return fp32, quantize_onnx_int8(fp32, calib, speed_check=False), held


def _check_int8_structure(data: bytes, activation=TensorProto.UINT8) -> None:
    g = _graph(data)
    init = {t.name: t for t in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    ops = [n.op_type for n in g.node]
    convs = [n for n in g.node if n.op_type in ("Conv", "Gemm")]
    assert convs and ops.count("QuantizeLinear") > 0 and ops.count("DequantizeLinear") >= len(convs)
    for n in convs:
        w_dq, x_dq = producers.get(n.input[1]), producers.get(n.input[0])
        assert w_dq is not None and w_dq.op_type == "DequantizeLinear", f"{n.name}: weight is not dequantized int8"
        assert init[w_dq.input[0]].data_type == TensorProto.INT8, f"{n.name}: weight is not int8"
        assert x_dq is not None and x_dq.op_type == "DequantizeLinear", f"{n.name}: activation is not quantized"
        zp = init.get(x_dq.input[2])  # DequantizeLinear(x, scale, zero_point): the zero point's type is x's
        assert zp is not None and zp.data_type == activation, f"{n.name}: activation type {zp and zp.data_type}"


def test_int8_structure(effnet):
    fp32, int8, _ = effnet
    _check_int8_structure(int8.model_bytes)
    n_conv = sum(n.op_type == "Conv" for n in _graph(fp32.model_bytes).node)
    s = int8_structure(int8.model_bytes)
    assert s["float_convs"] == [] and s["convs"] == n_conv == 81
    assert int8.precision == "int8" and int8.settings.activation_type == "uint8" and int8.settings.per_channel
    assert int8.calibration_samples == 64 and int8.inputs == fp32.inputs and int8.outputs == fp32.outputs


def test_int8_qdq_fuses_into_qlinear_ops_in_onnxruntime(effnet, tmp_path):
    """What makes int8 fast on the CPU: ORT's optimizer turns each DQ->Conv->Q into QLinearConv
    (with uint8 activations on x86; int8 activations are left as float Convs there)."""
    import onnxruntime as ort
    _, int8, _ = effnet
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(int8.model_bytes, so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(tmp_path / "opt.onnx").graph.node]
    assert ops.count("QLinearConv") == 81 and "Conv" not in ops, sorted(set(ops))


def test_int8_sqnr_on_real_images(effnet):
    # Measured (ORT 1.32, x86-64): 9.4 dB on these 64 held-out Fashion-MNIST images. A randomly
    # initialised BN network is chaotic, so per-layer noise (~30 dB, see the Tiny test) is amplified
    # through 16 blocks; trained weights do better (fbnetv3_b after 300 steps: 13.9 dB). A broken
    # scale or zero point gives <= 0 dB.
    fp32, int8, held = effnet
    assert sqnr_db(fp32(held), int8(held)) >= 7.0


def test_int8_sqnr_shallow_model(tiny):
    # Measured: 33.8 dB held-out, 39.7 dB on the calibration images. Three layers, so this bounds
    # the error of the quantizer itself.
    _, fp32, calib, held = tiny
    int8 = quantize_onnx_int8(fp32, calib, speed_check=False)
    _check_int8_structure(int8.model_bytes)
    assert sqnr_db(fp32(held), int8(held)) >= 30.0
    assert int8.metrics["sqnr_db_calib"] >= 30.0


@pytest.mark.parametrize("kw, activation", [
    ({"method": "percentile"}, TensorProto.UINT8),
    ({"activation_type": "int8"}, TensorProto.INT8),
    ({"per_channel": False}, TensorProto.UINT8),
])
def test_int8_variants(tiny, kw, activation):
    _, fp32, calib, held = tiny
    int8 = quantize_onnx_int8(fp32, calib, speed_check=False, **kw)
    _check_int8_structure(int8.model_bytes, activation)
    assert sqnr_db(fp32(held), int8(held)) >= 30.0  # measured 34.1, 33.8, 33.5 dB
    assert int8.settings.to_dict()["activation_type"] == {TensorProto.UINT8: "uint8", TensorProto.INT8: "int8"}[activation]


def test_int8_qoperator_format(tiny):
    _, fp32, calib, held = tiny
    int8 = quantize_onnx_int8(fp32, calib, quant_format="qoperator", speed_check=False)
    s = int8_structure(int8.model_bytes)
    assert s["qlinear"].get("QLinearConv") == 3 and s["float_convs"] == [] and s["DequantizeLinear"] >= 1
    assert sqnr_db(fp32(held), int8(held)) >= 30.0  # measured 33.8 dB


def test_injected_ranges_set_the_quantization_parameters(tiny):
    _, fp32, calib, _ = tiny
    names = ex.calibrated_tensors(fp32)
    assert "input" in names and "logits" in names and len(names) == 9
    int8 = quantize_onnx_int8(fp32, calib, speed_check=False, ranges={"input": (-4.0, 4.0)})
    assert set(int8.ranges) == set(names) and int8.ranges["input"] == (-4.0, 4.0)
    g = _graph(int8.model_bytes)
    init = {t.name: t for t in g.initializer}
    q = next(n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    scale = onnx.numpy_helper.to_array(init[q.input[1]])
    zp = onnx.numpy_helper.to_array(init[q.input[2]])
    assert np.isclose(scale, 8.0 / 255, rtol=1e-6) and zp in (127, 128)


def test_injected_range_for_unknown_tensor_is_an_error(tiny):
    _, fp32, calib, _ = tiny
    with pytest.raises(ValueError, match=r"'inptu'.*did you mean 'input'"):
        quantize_onnx_int8(fp32, calib, speed_check=False, ranges={"inptu": (0.0, 1.0)})
    with pytest.raises(ValueError, match="lo <= hi"):
        quantize_onnx_int8(fp32, calib, speed_check=False, ranges={"input": (1.0, 0.0)})


def _activation_scales(int8) -> dict:
    g = _graph(int8.model_bytes)
    init = {t.name: t for t in g.initializer}
    return {n.input[0]: float(onnx.numpy_helper.to_array(init[n.input[1]]))
            for n in g.node if n.op_type == "QuantizeLinear"}


@pytest.mark.slow
@pytest.mark.parametrize("method", ["entropy", "mse"])
def test_edgekit_estimators(tiny, method):
    """"entropy" and "mse" take their ranges from edgekit.calibration.ranges (without it they say so),
    and really search: their ranges differ from min/max (ORT's own entropy calibrator, as
    quantize_static configures it, returns min/max for every tensor)."""
    _, fp32, calib, held = tiny
    try:
        import edgekit.calibration.ranges  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="edgekit.calibration.ranges"):
            quantize_onnx_int8(fp32, calib, method=method, speed_check=False)
        return
    int8 = quantize_onnx_int8(fp32, calib, method=method, speed_check=False)
    _check_int8_structure(int8.model_bytes)
    minmax = quantize_onnx_int8(fp32, calib, speed_check=False)
    ours, full = _activation_scales(int8), _activation_scales(minmax)
    assert ours.keys() == full.keys()
    assert any(ours[k] < 0.99 * full[k] for k in ours), "no range was clipped: this is min/max"
    # Measured: mse 37.8 dB, entropy (KL clips harder) 24.0 dB; minmax 37.1 dB on these 128 images.
    assert sqnr_db(fp32(held), int8(held)) >= {"mse": 33.0, "entropy": 20.0}[method]


# ---- calibration data and option errors --------------------------------------------------------

def _calib_cases():
    ok = np.zeros((4, 1, 32, 32), np.float32)
    nan, inf = ok.copy(), ok.copy()
    nan[2, 0, 3, 3] = np.nan
    inf[1, 0, 0, 0] = np.inf
    return [
        pytest.param(nan, r"non-finite.*NaN.*index 2", id="nan"),
        pytest.param(inf, r"non-finite.*Inf.*index 1", id="inf"),
        pytest.param(np.zeros((4, 3, 32, 32), np.float32), r"\(4, 3, 32, 32\).*\(N, 1, 32, 32\)", id="channels"),
        pytest.param(np.zeros((4, 1, 28, 28), np.float32), r"\(N, 1, 32, 32\)", id="size"),
        pytest.param(np.zeros((4, 32, 32), np.float32), r"\(N, 1, 32, 32\)", id="rank"),
        pytest.param(np.zeros((0, 1, 32, 32), np.float32), "empty", id="empty"),
        pytest.param(np.zeros((4, 1, 32, 32), np.float64), "float32", id="float64"),
        pytest.param([[0.0]], "numpy array", id="list"),
    ]


@pytest.mark.parametrize("calib, match", _calib_cases())
def test_bad_calibration_data(tiny, calib, match):
    _, fp32, _, _ = tiny
    with pytest.raises(ValueError, match=match):
        quantize_onnx_int8(fp32, calib)


@pytest.mark.parametrize("kw, match", [
    ({"method": "minmx"}, "did you mean 'minmax'"),
    ({"activation_type": "u8"}, "activation_type"),
    ({"quant_format": "qop"}, "quant_format"),
    ({"float_op_types": ("HardSwishh",)}, "not ops ORT quantizes"),
    ({"percentile": 12.0}, "percentile"),
    ({"per_channel": "yes"}, "per_channel"),
])
def test_bad_int8_options(tiny, kw, match):
    _, fp32, calib, _ = tiny
    with pytest.raises(ValueError, match=match):
        quantize_onnx_int8(fp32, calib, **kw)


def test_int8_of_int8_is_an_error(tiny):
    _, fp32, calib, _ = tiny
    int8 = quantize_onnx_int8(fp32, calib, speed_check=False)
    with pytest.raises(ValueError, match="fp32 export"):
        quantize_onnx_int8(int8, calib)


# ---- speed bookkeeping (no timing thresholds: the host decides the numbers) --------------------

def test_speed_check_records_and_warns_consistently(tiny):
    _, fp32, calib, _ = tiny
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        int8 = quantize_onnx_int8(fp32, calib)
    speed = int8.metrics["speed"]
    slower = speed["int8_median_ms"] > speed["fp32_median_ms"]
    notes = [n for n in int8.notes if n.startswith("int8 is slower than fp32")]
    warned = [w for w in record if "int8 is slower than fp32" in str(w.message)]
    assert bool(notes) == bool(warned) == slower
    assert speed["runs"] >= 50 and speed["threads"] == 1 and speed["ratio"] > 0


def test_speed_note():
    speed = {"fp32_median_ms": 1.0, "int8_median_ms": 2.5, "ratio": 2.5, "host": "cpu", "onnxruntime": "1.x",
             "threads": 1}
    assert "int8 is slower than fp32 here: 2.50 ms vs 1.00 ms median (2.50x)" in ex._speed_note(speed)
    assert ex._speed_note({**speed, "int8_median_ms": 0.5, "ratio": 0.5}) is None


def test_benchmark_onnx(tiny):
    _, fp32, _, held = tiny
    stats = benchmark_onnx(fp32.model_bytes, held[:1], runs=20, warmup=2)
    assert stats["n"] == 20 and stats["threads"] == 1
    assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    with pytest.raises(ValueError, match="runs"):
        benchmark_onnx(fp32.model_bytes, held[:1], runs=0)

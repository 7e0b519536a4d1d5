"""TFLite export: fp32 with NHWC input and no TRANSPOSE inside, parity with PyTorch; full-integer
int8 checked by structure (int8 conv / FC kernels, no QUANTIZE / DEQUANTIZE, one scale across
every concat) and by numbers on real Fashion-MNIST images; the int8-only graph rewrites checked for
equivalence in PyTorch; the errors a user sees.

Fast tier: one small registry model (module fixtures convert it once per precision) plus graph-level
checks that convert nothing. Slow tier: the rewritten ops converted both ways, and one variant of each
of the nine families.
"""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("litert_torch", reason="TFLite export needs litert-torch")
pytest.importorskip("ai_edge_quantizer", reason="TFLite int8 needs ai-edge-quantizer")
pytest.importorskip("ai_edge_litert", reason="running TFLite needs ai-edge-litert")

from edgekit.exporters.tflite import (INT8_KERNEL_OPS, ConversionError, benchmark_tflite,  # noqa: E402
                                      export_tflite_fp32, export_tflite_int8, op_list, plan_tflite_int8,
                                      quantize_tflite, run_tflite)
from edgekit.exporters.tflite.conversion import prepare  # noqa: E402
from edgekit.exporters.tflite.interpreter import make_interpreter  # noqa: E402
from edgekit.exporters.tflite.tools import describe_failure  # noqa: E402
from edgekit.models import create_model, get_cfg  # noqa: E402
from helpers import MiniGhost  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
FAST_SIDE = 32  # the fast tier's network: helpers.MiniGhost
# int8 logits against PyTorch on the 64 test images: measured 38.5 dB (minmax, 128 calibration
# images, int8 or float I/O alike), 100 % top-1 agreement; the floor leaves 6 dB of margin
MINIGHOST_FLOOR = 32.0
# one variant per family for the slow tier, at its smallest input (32 px; FBNetV3: 49), with the int8
# SQNR floor (dB, vs PyTorch, 64 held-out images, 128 calibration images). Floors sit ~6 dB under
# what these settings measured: efficientnet_b0 50.4, efficientnetv2_s 32.9, espnet_v1_c 31.3,
# espnetv2_1_0 32.6, fbnet_a 32.6, fbnetv2_f1 39.3, fbnetv3_a 44.4, ghostnet_1_0 34.3,
# ghostnetv2_1_0 42.8. (FBNetV3-B is FBNetV3-A's network at a larger input: at one input size the two
# are the same graph and weights, so only A is here. FBNet v1 is FBNet-A: its blocks are C's kinds
# plus the grouped ones, whose channel shuffles the converter must fold.)
FAMILIES = {
    "ghostnet_1_0": 28.0, "ghostnetv2_1_0": 36.0, "efficientnet_b0": 44.0, "efficientnetv2_s": 27.0,
    "fbnetv3_a": 38.0, "fbnet_a": 26.0, "fbnetv2_f1": 33.0, "espnetv2_1_0": 26.0, "espnet_v1_c": 25.0,
}
# the families whose graph an int8 rewrite changes (hard-swish, PReLU, average pooling, BN after an
# add or a concat): their int8 file is quantized from a float graph that is not the fp32 file
REWRITTEN = {"ghostnetv2_1_0", "fbnetv3_a", "fbnetv2_f1", "espnetv2_1_0", "espnet_v1_c"}


# ---- real data --------------------------------------------------------------------------------------

def _idx_images(split: str) -> np.ndarray:
    path = FMNIST / f"{split}-images-idx3-ubyte.gz"
    if not path.is_file():
        pytest.fail(f"{path} is missing: install the Debian package dataset-fashion-mnist (make setup)")
    with gzip.open(path, "rb") as f:
        raw = f.read()
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)


@pytest.fixture(scope="module")
def fmnist():
    return {"train": _idx_images("train"), "test": _idx_images("t10k")}


def _preprocess(images: np.ndarray, name: str, side: int, chans: int = 1) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, C, side, side) with the model's mean / std."""
    cfg = get_cfg(name)
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False).expand(-1, chans, -1, -1)
    mean = torch.tensor(cfg.mean[:chans]).view(1, chans, 1, 1)
    std = torch.tensor(cfg.std[:chans]).view(1, chans, 1, 1)
    return ((x - mean) / std).contiguous().numpy()


def _preprocessed(cfg, side: int):
    """uint8 (N, 28, 28) -> float32 (N, 1, side, side) with ``cfg``'s mean / std."""
    def prep(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
        return ((x - cfg["mean"][0]) / cfg["std"][0]).contiguous().numpy()
    return prep


def _zoo(name: str, side: int, fmnist) -> nn.Module:
    """A zoo model with BN statistics from 512 real images (untrained-init statistics distort int8)."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1, resolution=side)
    x = torch.from_numpy(_preprocess(fmnist["train"][:512], name, side))
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), 64):
            model(x[i:i + 64])
    return model.eval()


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    ref, out = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    return float(10 * np.log10((ref ** 2).sum() / max(((ref - out) ** 2).sum(), 1e-30)))


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _case(name: str, side: int, fmnist, n_calib: int):
    """(model, calib NCHW, 64 held-out test images NCHW, example tensor, PyTorch logits)."""
    model = _zoo(name, side, fmnist)
    calib = _preprocess(fmnist["train"][1000:1000 + n_calib], name, side)
    test = _preprocess(fmnist["test"][:64], name, side)
    with torch.no_grad():
        ref = model(torch.from_numpy(test)).numpy()
    return model, calib, test, torch.from_numpy(calib[:1]), ref


@pytest.fixture(scope="module")
def fast(fmnist):
    """MiniGhost (conv, depthwise, concat, add, FC) with BN statistics from 512 real images: the
    exporter's properties in the fast tier; the zoo's networks go through it in the slow tier."""
    torch.manual_seed(0)
    model = MiniGhost()
    prep = _preprocessed(model.default_cfg, FAST_SIDE)
    model.train()
    with torch.no_grad():
        x = torch.from_numpy(prep(fmnist["train"][:512]))
        for i in range(0, len(x), 64):
            model(x[i:i + 64])
    model.eval()
    calib, test = prep(fmnist["train"][1000:1128]), prep(fmnist["test"][:64])
    with torch.no_grad():
        ref = model(torch.from_numpy(test)).numpy()
    example = torch.from_numpy(calib[:1])
    return {"model": model, "calib": calib, "test": test, "ref": ref,
            "fp32": export_tflite_fp32(model, example), "int8": export_tflite_int8(model, example, calib)}


# ---- fp32 -----------------------------------------------------------------------------------------------

def test_fp32_takes_nhwc_and_matches_pytorch(fast):
    exp = fast["fp32"]
    (inp,), (out,) = exp.inputs, exp.outputs
    assert (inp.shape, inp.layout, inp.dtype) == ((1, FAST_SIDE, FAST_SIDE, 1), "NHWC", "float32")
    assert (out.shape, out.layout, out.dtype) == ((1, 10), "NC", "float32")
    got = exp(_nhwc(fast["test"]))
    assert got.shape == fast["ref"].shape
    assert _sqnr(fast["ref"], got) > 80.0, "fp32 TFLite must agree with PyTorch to float rounding"


def test_fp32_graph_has_no_transpose(fast):
    hist = fast["fp32"].op_histogram
    assert hist.get("TRANSPOSE", 0) == 0, hist
    assert hist.get("CONV_2D", 0) > 0 and hist.get("DEPTHWISE_CONV_2D", 0) > 0, hist


def test_fp32_records_tools_and_route(fast):
    exp = fast["fp32"]
    assert exp.precision == "fp32" and exp.route == "litert-torch"
    assert {"torch", "litert-torch", "ai-edge-litert"} <= set(exp.tools)
    assert exp.convert_seconds > 0


def test_fp32_tensor_names_start_at_the_nhwc_wrapper(fast):
    """Tensor names (what ranges= and float_ops take) begin with the NHWC wrapper's qualified name,
    the same wherever the wrapper's class is defined, so saved names keep working."""
    names = [t["name"] for op in op_list(fast["fp32"].model_bytes) for t in op["outputs"]]
    inner = [n for n in names if not n.startswith("serving_default_")]  # the output's own name
    assert inner and all(n.startswith("edgekit.exporters.tflite._ChannelsLast/") for n in inner), inner[:3]


# ---- int8 -----------------------------------------------------------------------------------------------

def test_int8_convs_and_fc_are_int8_kernels(fast):
    ops = op_list(fast["int8"].model_bytes)
    kernels = [op for op in ops if op["op"] in INT8_KERNEL_OPS]
    assert {op["op"] for op in kernels} >= {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
    for op in kernels:
        x, w = op["inputs"][0], op["inputs"][1]
        assert (x["dtype"], w["dtype"], w["const"]) == ("int8", "int8", True), op
        assert op["outputs"][0]["dtype"] == "int8", op
        if len(op["inputs"]) > 2:
            assert op["inputs"][2]["dtype"] == "int32", op  # int32 bias: a true integer kernel


def test_int8_has_no_float_tensors_and_no_quantize_ops(fast):
    exp = fast["int8"]
    assert exp.quant_op_count == 0, exp.op_histogram  # int8 I/O: nothing to (de)quantize inside
    float_activations = {t["name"] for op in op_list(exp.model_bytes) for t in op["inputs"] + op["outputs"]
                         if t["dtype"] == "float32" and not t["const"]}
    assert not float_activations


def test_int8_io_carries_scale_and_zero_point(fast):
    exp = fast["int8"]
    (inp,), (out,) = exp.inputs, exp.outputs
    for t in (inp, out):
        assert t.dtype == "int8" and t.scale > 0 and -128 <= t.zero_point <= 127, t
    assert inp.layout == "NHWC" and inp.shape == (1, FAST_SIDE, FAST_SIDE, 1)
    # the input scale covers the calibration images (min..max over 255 steps, give or take rounding)
    lo, hi = float(fast["calib"].min()), float(fast["calib"].max())
    assert inp.scale == pytest.approx((max(hi, 0) - min(lo, 0)) / 255, rel=0.02)
    assert exp.calibration["samples"] == len(fast["calib"]) and exp.calibration["method"] == "minmax"


def test_int8_agrees_with_pytorch_on_real_images(fast):
    got = fast["int8"](_nhwc(fast["test"]))  # run_tflite quantizes the input, dequantizes the logits
    assert _sqnr(fast["ref"], got) > MINIGHOST_FLOOR
    assert (got.argmax(1) == fast["ref"].argmax(1)).mean() >= 0.9


def test_int8_concat_inputs_share_the_output_scale(fast):
    """One scale per concat group (inputs and output), so no int8->int8 requantize is needed."""
    interp = make_interpreter(fast["int8"].model_bytes)
    q = {d["name"]: d["quantization"] for d in interp.get_tensor_details()}
    concats = [op for op in op_list(fast["int8"].model_bytes) if op["op"] == "CONCATENATION"]
    assert concats
    for op in concats:
        scales = {q[t["name"]] for t in op["inputs"] + op["outputs"]}
        assert len(scales) == 1, (op["outputs"][0]["name"], scales)


def test_run_and_benchmark_int8(fast):
    exp = fast["int8"]
    x = _nhwc(fast["test"][:4])
    one_by_one = np.concatenate([run_tflite(exp.model_bytes, x[i]) for i in range(4)])
    assert np.array_equal(run_tflite(exp.model_bytes, x), one_by_one)
    stats = benchmark_tflite(exp.model_bytes, x, runs=5, warmup=1)
    assert stats["runs"] == 5 and stats["threads"] == 1
    assert 0 < stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    with pytest.raises(ValueError, match="do not fit the model input"):
        run_tflite(exp.model_bytes, fast["test"][:2])  # NCHW where the file takes NHWC


# ---- arguments and errors ------------------------------------------------------------------------------

def test_bad_arguments_are_refused_before_converting(fast):
    model, calib = fast["model"], fast["calib"]
    example = torch.from_numpy(calib[:1])
    with pytest.raises(ValueError, match="io_dtype 'uint8'"):
        export_tflite_int8(model, example, calib, io_dtype="uint8")
    with pytest.raises(ValueError, match="did you mean 'minmax'"):
        export_tflite_int8(model, example, calib, method="minmx")
    with pytest.raises(ValueError, match="differ from the example input"):
        export_tflite_int8(model, example, calib[:, :, :16, :16])
    with pytest.raises(ValueError, match="float32"):
        export_tflite_int8(model, example, calib.astype(np.float64))
    with pytest.raises(ValueError, match="layout 'NCWH'"):
        export_tflite_fp32(model, example, layout="NCWH")
    with pytest.raises(ValueError, match="4-D NCHW"):
        export_tflite_fp32(model, example[0])


class _Bad(nn.Module):
    def forward(self, x):
        return torch.special.i0(x)  # litert-torch has no lowering for it


class _NetWithBadOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.odd = _Bad()

    def forward(self, x):
        return self.odd(self.conv(x)).mean((2, 3))


def test_converter_failure_names_op_and_module(capfd):
    with pytest.raises(ConversionError) as err:
        export_tflite_fp32(_NetWithBadOp().eval(), torch.randn(1, 1, 16, 16))
    msg = str(err.value)
    assert "aten.i0" in msg and "module odd (_Bad)" in msg, msg
    assert isinstance(err.value, ValueError) and isinstance(err.value.log, str)  # tool output kept for the user
    out, errout = capfd.readouterr()
    assert "LiteRT-Torch" not in out + errout and "absl" not in out + errout  # nothing leaked


def test_mlir_failure_text_is_summarised():
    """A converter pass failure (the PT2E route's GhostNetV2 error, verbatim shape) -> op and location."""
    e = RuntimeError("Failed to run converter passes: /x/torch/nn/modules/conv.py:565:0: error: 'tfl.pad' op "
                     "quantization parameters violate the same scale constraint: !quant.uniform<i8:f32, 0.03>")
    log = 'loc(fused["model.blocks.3.0.ghost1/torch.nn.modules.conv.Conv2d_0"]) error: x'
    msg = describe_failure("TFLite conversion", e, log, None)
    assert msg.startswith("TFLite conversion failed at op tfl.pad, module model.blocks.3.0.ghost1"), msg
    assert "'tfl.pad' op quantization parameters violate the same scale constraint" in msg
    assert "more converter errors" in msg  # the second error line stays in .log
    bare = describe_failure("TFLite conversion", e, "", None)  # no location but the layer's source line
    assert "at op tfl.pad, layer source /x/torch/nn/modules/conv.py:565:" in bare, bare


# ---- the int8-only rewrites: same function, ops XNNPACK runs in int8 --------------------------------------

class _Patterns(nn.Module):
    """hard-swish (in place, as nn.Hardswish(inplace=True) exports), hard-sigmoid, PReLU, the padded
    average pool, BatchNorm after an add and BN + PReLU after a concat (ESPNet), a global mean
    without keepdim: every pattern the rewrites touch."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.Hardswish(inplace=True)
        self.prelu = nn.PReLU(8)
        self.bn_add, self.bn_cat = nn.BatchNorm2d(8), nn.BatchNorm2d(16)
        self.prelu_cat = nn.PReLU(16)
        with torch.no_grad():
            self.prelu.weight.copy_(torch.linspace(0.05, 0.9, 8))
            self.prelu_cat.weight.copy_(torch.rand(16, generator=g) * 0.9)
            for bn in (self.bn_add, self.bn_cat):
                c = bn.num_features
                bn.running_mean.copy_(torch.randn(c, generator=g))
                bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
                bn.weight.copy_(torch.rand(c, generator=g) + 0.5)
                bn.bias.copy_(torch.randn(c, generator=g))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        y = self.act(self.conv(x))  # (B, 8, 16, 16)
        y = self.prelu(F.avg_pool2d(y, 3, 2, 1)) * F.hardsigmoid(y[:, :, ::2, ::2])  # (B, 8, 8, 8)
        y = self.bn_add(y + 1.0)
        y = self.prelu_cat(self.bn_cat(torch.cat([y, -y], 1)))  # (B, 16, 8, 8)
        return self.head(F.avg_pool2d(y, 2, 2).mean((2, 3)))  # (B, 4)


def test_int8_rewrites_keep_the_function_and_remove_the_ops():
    model = _Patterns().eval()
    x = torch.randn(2, 3, 16, 16)
    prepared = prepare(model, x[:1], "NHWC", int8_rewrites=True)
    gm = prepared.graph
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    for gone in ("hardswish", "hardsigmoid", "prelu", "avg_pool2d", "batch_norm"):
        assert not any(gone in t for t in targets), (gone, targets)
    with torch.no_grad():
        want = model(x)
        got = torch.cat([gm(x[i:i + 1].permute(0, 2, 3, 1).contiguous()) for i in range(2)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert prepared.example.shape == (1, 16, 16, 3)  # NHWC


def test_prelu_with_a_slope_of_one_or_more_is_left_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.PReLU(4)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.1, 0.2, 1.5, 0.3]))
    gm = prepare(model, torch.randn(1, 3, 8, 8), "NHWC", int8_rewrites=True).graph
    assert any("prelu" in str(n.target) for n in gm.graph.nodes)


def test_fp32_graph_is_not_rewritten():
    gm = prepare(_Patterns().eval(), torch.randn(1, 3, 16, 16), "NHWC", int8_rewrites=False).graph
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    assert any("hardswish" in t for t in targets) and any("avg_pool2d" in t for t in targets)


@pytest.mark.slow
def test_rewritten_ops_keep_their_float_kernels_in_fp32_and_lose_them_for_int8():
    """The fp32 file converts hard-swish, hard-sigmoid, PReLU, average pooling and BN after an add
    or a concat as they are (HARD_SWISH, AVERAGE_POOL_2D; PReLU as RELU and MUL), without TRANSPOSE
    and at PyTorch's numbers; the float graph an int8 file is quantized from has them rewritten,
    equally without TRANSPOSE and at PyTorch's numbers. (The families below check the float graph
    they are quantized from; where a rewrite applies, this test is the check of those ops' own fp32
    conversion.)"""
    torch.manual_seed(0)
    model = _Patterns().eval()
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        ref = model(x).numpy()
    fp32 = export_tflite_fp32(model, x[:1])
    rewritten = plan_tflite_int8(model, x[:1], x.numpy()).fp32
    assert {"HARD_SWISH", "AVERAGE_POOL_2D", "RELU"} <= set(fp32.op_histogram), fp32.op_histogram  # RELU: PReLU's
    assert not {"HARD_SWISH", "AVERAGE_POOL_2D", "PRELU", "RELU"} & set(rewritten.op_histogram), rewritten.op_histogram
    for exp in (fp32, rewritten):
        assert exp.op_histogram.get("TRANSPOSE", 0) == 0, exp.op_histogram
        assert _sqnr(ref, exp(_nhwc(x.numpy()))) > 80.0


# ---- channel shuffles: folded into the conv before them, in fp32 and int8 alike -----------------------

class _Shuffled(nn.Module):
    """FBNet's grouped blocks: with a pw conv (grouped 1x1 + BN + ReLU, shuffle, depthwise, grouped
    1x1), and without one (shuffle of a tensor the residual add reads too, depthwise, grouped 1x1);
    then a shuffle the fold must leave alone: its conv's output is read by an add as well, and an add
    reads the shuffled tensor."""

    def __init__(self):
        super().__init__()
        from edgekit.models.layers import ChannelShuffle, ConvBNAct
        self.pw = ConvBNAct(8, 12, 1, groups=2)
        self.shuffle = ChannelShuffle(2)
        self.dw = ConvBNAct(12, 12, 3, groups=12)
        self.pwl = ConvBNAct(12, 8, 1, groups=2, act=None)
        self.dw2 = ConvBNAct(8, 8, 3, groups=8)
        self.pwl2 = ConvBNAct(8, 8, 1, groups=4, act=None)
        self.shuffle4 = ChannelShuffle(4)
        self.shared = nn.Conv2d(8, 8, 1)
        with torch.no_grad():
            for bn in (m for m in self.modules() if isinstance(m, nn.BatchNorm2d)):
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-1, 1)

    def forward(self, x):
        y = self.pwl(self.dw(self.shuffle(self.pw(x))))  # (B, 8, H, W): folded into pw
        y = y + self.pwl2(self.dw2(self.shuffle4(y)))  # folded into pwl2 (and dw2's channel order)
        z = self.shared(y)
        return self.shuffle4(z) + z  # left


def test_channel_shuffle_beside_a_conv_is_folded_into_it():
    model = _Shuffled().eval()
    x = torch.randn(2, 8, 8, 8)
    gm = prepare(model, x[:1], "NHWC").graph
    transposes = [n for n in gm.graph.nodes if n.op == "call_function" and "transpose" in str(n.target)]
    assert len(transposes) == 1, "the two grouped blocks' shuffles are folded; the one beside an add stays"
    convs = [n for n in gm.graph.nodes if n.op == "call_function" and "conv2d" in str(n.target)]
    assert [n.args[6] if len(n.args) > 6 else 1 for n in convs] == [1, 12, 2, 8, 1, 1], \
        "pw and pwl2 became dense, the depthwise convs stayed depthwise"
    with torch.no_grad():
        want = model(x)
        got = torch.cat([gm(x[i:i + 1].permute(0, 2, 3, 1).contiguous()) for i in range(2)]).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# ---- slow: one variant of each family ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def family_data(fmnist):
    return fmnist


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_fp32_and_int8(name, family_data):
    """One conversion per family: the float graph its int8 file is quantized from, checked as an
    fp32 file (no TRANSPOSE, PyTorch's numbers), then quantized. Where no int8 rewrite applies it is
    the fp32 file byte for byte; where one does, the rewritten ops' fp32 conversion is checked by
    test_rewritten_ops_keep_their_float_kernels_in_fp32_and_lose_them_for_int8."""
    fmnist = family_data
    model, calib, test, example, ref = _case(name, max(32, get_cfg(name).min_resolution), fmnist, 128)

    plan = plan_tflite_int8(model, example, calib)
    fp32 = plan.fp32
    assert fp32.op_histogram.get("TRANSPOSE", 0) == 0, fp32.op_histogram
    got = fp32(_nhwc(test))
    if got.ndim == 4:  # a segmentation map comes out NHWC as well
        assert fp32.outputs[0].layout == "NHWC"
        got = got.transpose(0, 3, 1, 2)
    assert _sqnr(ref, got) > 70.0
    if name not in REWRITTEN:  # no rewrite: the same graph, converted once
        assert export_tflite_fp32(model, example).model_bytes == fp32.model_bytes

    int8 = quantize_tflite(plan)
    assert int8.quant_op_count == 0 and int8.op_histogram.get("TRANSPOSE", 0) == 0, int8.op_histogram
    ops = op_list(int8.model_bytes)
    assert all(op["inputs"][0]["dtype"] == "int8" and op["inputs"][1]["dtype"] == "int8"
               for op in ops if op["op"] in INT8_KERNEL_OPS)
    # ops XNNPACK cannot run in int8 must have been rewritten away
    assert not {"HARD_SWISH", "AVERAGE_POOL_2D", "PRELU", "RELU"} & set(int8.op_histogram), int8.op_histogram
    out = int8(_nhwc(test))
    if out.ndim == 4:
        out = out.transpose(0, 3, 1, 2)
    assert _sqnr(ref, out) > FAMILIES[name]


def test_int8_float_io_and_injected_ranges(fast):
    model, calib = fast["model"], fast["calib"]
    example = torch.from_numpy(calib[:1])
    exp = export_tflite_int8(model, example, calib, io_dtype="float32")
    assert exp.inputs[0].dtype == "float32" and exp.outputs[0].dtype == "float32"
    assert (exp.op_histogram.get("QUANTIZE"), exp.op_histogram.get("DEQUANTIZE")) == (1, 1), exp.op_histogram
    assert _sqnr(fast["ref"], exp(_nhwc(fast["test"]))) > MINIGHOST_FLOOR

    name = fast["int8"].inputs[0].name
    wide = export_tflite_int8(model, example, calib, ranges={name: (-8.0, 8.0)})
    assert wide.inputs[0].scale == pytest.approx(16.0 / 255, rel=1e-3)  # the injected range, not the measured one
    with pytest.raises(ValueError, match="does not have"):
        export_tflite_int8(model, example, calib, ranges={"no_such_tensor": (0.0, 1.0)})

"""Which layers int8 hurts most, and the accuracy-driven fallback that keeps them in float.

A *layer* is a weighted op (ONNX Conv / ConvTranspose / Gemm / MatMul; TFLite CONV_2D,
DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV) named by the PyTorch module it came from
(``stages.2.0.se.conv_reduce``). Leaving one in float keeps its weights float and runs it in float
between a dequantize and a quantize; the activation-only ops around it (add, concat, pooling) stay
int8, since their tensors are shared with their neighbours and a float one would only move the
quantize / dequantize pair by one op.

Sensitivity of a layer (``sqnr_db``, the ranking key): the SQNR of the *logits* against the fp32
file, on held-out images, when only that layer is int8 (its input, weights and output quantized
with the ranges of the full int8 file) and everything else is float. It isolates the layer's own
contribution: to first order the quantization noise of independent layers adds at the logits, so
the layers with the most noise there are the ones whose removal recovers most, which is what the
greedy fallback needs. It costs one quantization and one pass over the images per layer (ONNX
ghostnet_0_5 at 32x32, 96 layers, 128 images: ~0.6 s per layer).

Also reported, not ranked by (``int8_sqnr_db``): the SQNR of the layer's own output in the fully
int8 file against the fp32 file. It is one pass for all layers, but it accumulates: every layer
after a broken one inherits its error, so it cannot tell the cause from what follows. Measured on
the test model with one wrecked conv (``tests/test_sensitivity.py``): the one-layer-int8 SQNR puts
the wrecked conv first with a gap of tens of dB to the next, where the accumulated SQNR puts the
wrecked conv and every layer after it within a few dB of each other.

>>> # report = onnx_sensitivity(fp32, int8, holdout)      # doctest: +SKIP
>>> # [l.layer for l in report.most_sensitive(3)]         # doctest: +SKIP
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import numpy as np

__all__ = ["LayerSensitivity", "SensitivityReport", "FallbackStep", "FallbackError", "onnx_sensitivity",
           "tflite_sensitivity", "fallback", "format_table", "top1", "sqnr_db"]

T = TypeVar("T")


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """10 log10(sum ref^2 / sum (ref - test)^2) in dB; +inf when equal, nan when either is not finite."""
    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    if not (np.isfinite(ref).all() and np.isfinite(test).all()):
        return math.nan
    noise, signal = float(((ref - test) ** 2).sum()), float((ref ** 2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


@dataclass(frozen=True)
class LayerSensitivity:
    layer: str  # PyTorch module path (or the op's own name where the graph does not tell)
    op: str  # Conv, Gemm, CONV_2D, ...
    nodes: tuple[str, ...]  # what the quantizer is told to leave float: ONNX node names / TFLite op outputs
    sqnr_db: float  # logits vs fp32 with only this layer int8; lower = more sensitive
    int8_sqnr_db: float | None = None  # this layer's output in the full int8 file vs fp32 (accumulated)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "op": self.op, "nodes": list(self.nodes), "sqnr_db": _json(self.sqnr_db),
                "int8_sqnr_db": None if self.int8_sqnr_db is None else _json(self.int8_sqnr_db)}


@dataclass(frozen=True)
class SensitivityReport:
    format: str
    samples: int
    layers: tuple[LayerSensitivity, ...]  # most sensitive first
    seconds: float

    def most_sensitive(self, n: int) -> tuple[LayerSensitivity, ...]:
        return self.layers[:n]

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "samples": self.samples, "seconds": round(self.seconds, 2),
                "metric": "logits SQNR (dB) vs fp32 with only this layer int8; lower = more sensitive",
                "layers": [layer.to_dict() for layer in self.layers]}


def _json(v: float) -> float | str:
    return round(v, 2) if math.isfinite(v) else ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))


def _ranked(fmt: str, n: int, layers: list[LayerSensitivity], t0: float) -> SensitivityReport:
    def key(s: LayerSensitivity) -> float:  # non-finite logits (nan) are the worst there is
        return -math.inf if math.isnan(s.sqnr_db) else s.sqnr_db
    return SensitivityReport(fmt, n, tuple(sorted(layers, key=key)), time.perf_counter() - t0)


# ---- ONNX ---------------------------------------------------------------------------------------

def onnx_sensitivity(fp32: Any, int8: Any, x: np.ndarray) -> SensitivityReport:
    """Per-layer sensitivity of the ONNX int8 file ``int8`` (``quantize_onnx_int8`` of ``fp32``) on
    held-out preprocessed images ``x`` (N, C, H, W): each layer quantized alone with ``int8``'s
    ranges and settings, its logits compared with ``fp32``'s."""
    from ..exporters.onnx import inference_session, node_outputs, quantize_onnx_nodes, weighted_layers

    t0 = time.perf_counter()
    x = np.ascontiguousarray(x, np.float32)
    ref = fp32(x)
    layers = weighted_layers(fp32.model_bytes)
    all_nodes = [n for nodes in layers.values() for n in nodes]
    ref_nodes, q_nodes = node_outputs(fp32.model_bytes, all_nodes, x), node_outputs(int8.model_bytes, all_nodes, x)
    out = []
    for layer, nodes in layers.items():
        data = quantize_onnx_nodes(fp32, int8.ranges, int8.settings, only=nodes)
        sess = inference_session(data, threads=None)
        logits = np.concatenate([sess.run(None, {fp32.inputs[0].name: x[i:i + 1]})[0] for i in range(len(x))])
        own = min(sqnr_db(ref_nodes[n], q_nodes[n]) for n in nodes)
        op = nodes[0].rsplit("/", 1)[-1].split("_")[0]
        out.append(LayerSensitivity(layer, op, tuple(nodes), sqnr_db(ref, logits), own))
    return _ranked("onnx", len(x), out, t0)


# ---- TFLite -------------------------------------------------------------------------------------

def tflite_sensitivity(plan: Any, int8: Any, model: Any, x: np.ndarray) -> SensitivityReport:
    """Per-layer sensitivity of the TFLite int8 file ``int8`` (``quantize_tflite(plan)``) on held-out
    preprocessed images ``x`` (N, C, H, W): for each layer, the file with every other weighted op
    left float by ai-edge-quantizer's per-op recipe entries, its logits compared with the float
    file ``plan.fp32``'s. ``model`` (the PyTorch module) names the layers."""
    from ..exporters.tflite import quantize_tflite, run_tflite, weighted_ops

    t0 = time.perf_counter()
    xin = _tflite_layout(x, plan.fp32)
    ref = run_tflite(plan.fp32.model_bytes, xin)
    ops = weighted_ops(plan.fp32.model_bytes, model)
    names = [o["output"] for o in ops]
    ref_t, q_t = _tflite_tensors(plan.fp32.model_bytes, xin, names), _tflite_tensors(int8.model_bytes, xin, names)
    io = int8.calibration.get("io_dtype", "int8")
    out = []
    for o in ops:
        others = [n for n in names if n != o["output"]]
        # the other layers float, every other op int8: the layer's noise on top of the activation ops'
        alone = quantize_tflite(plan, io_dtype=io, float_ops=others) if others else int8
        own = sqnr_db(ref_t[o["output"]], q_t[o["output"]]) if o["output"] in q_t else None
        out.append(LayerSensitivity(o["layer"], o["op"], (o["output"],), sqnr_db(ref, run_tflite(alone.model_bytes, xin)),
                                    own))
    return _ranked("tflite", len(x), _merge(out), t0)


def _merge(layers: list[LayerSensitivity]) -> list[LayerSensitivity]:
    """One entry per PyTorch module: a module that became several ops keeps its worst SQNR."""
    by: dict[str, LayerSensitivity] = {}
    for s in layers:
        prev = by.get(s.layer)
        if prev is None:
            by[s.layer] = s
            continue
        own = [v for v in (prev.int8_sqnr_db, s.int8_sqnr_db) if v is not None]
        by[s.layer] = LayerSensitivity(s.layer, prev.op, prev.nodes + s.nodes, min(prev.sqnr_db, s.sqnr_db),
                                       min(own) if own else None)
    return list(by.values())


def _tflite_layout(x: np.ndarray, exp: Any) -> np.ndarray:
    return exp.inputs[0].from_nchw(np.asarray(x, np.float32))


def _tflite_tensors(model_bytes: bytes, x: np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Float values (dequantized where int8) of the named tensors over the batch ``x``; tensors the
    file does not have are left out."""
    from ..exporters.tflite.interpreter import make_interpreter, to_input
    it = make_interpreter(model_bytes, preserve=True)
    (inp,) = it.get_input_details()
    details = {d["name"]: d for d in it.get_tensor_details()}
    present = [n for n in names if n in details]
    b = int(inp["shape"][0])
    got: dict[str, list[np.ndarray]] = {n: [] for n in present}
    for i in range(0, len(x) - b + 1, b):
        it.set_tensor(inp["index"], to_input(x[i:i + b], inp))
        it.invoke()
        for n in present:
            d = details[n]
            v = it.get_tensor(d["index"])
            scale, zp = d["quantization"]
            got[n].append((v.astype(np.float32) - zp) * scale if v.dtype != np.float32 and scale > 0 else v.copy())
    return {n: np.concatenate(v) for n, v in got.items()}


# ---- the fallback -------------------------------------------------------------------------------

def top1(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, labels: np.ndarray) -> float:
    """Share of ``x`` whose arg-max logit is the label."""
    return float(np.mean(np.argmax(predict(x), axis=1) == labels))


@dataclass(frozen=True)
class FallbackStep:
    float_layers: tuple[str, ...]
    top1: float
    drop: float  # points of top-1 below the fp32 file

    def to_dict(self) -> dict[str, Any]:
        return {"float_layers": list(self.float_layers), "top1": round(self.top1, 5), "drop_points": round(self.drop, 3)}


class FallbackError(ValueError):
    """No allowed number of float layers brings the drop within ``max_drop``."""


def fallback(report: SensitivityReport, quantize: Callable[[tuple[LayerSensitivity, ...]], T],
             accuracy: Callable[[T], float], *, reference_top1: float, int8_top1: float, max_drop: float,
             max_float_layers: int | None = None) -> tuple[T, tuple[LayerSensitivity, ...], list[FallbackStep]]:
    """Keep the ``k`` most sensitive layers of ``report`` float for the smallest ``k`` whose top-1
    is within ``max_drop`` points of ``reference_top1``: ``k`` = 1, 2, 4, ... up to
    ``max_float_layers`` (default: every layer) until one fits, then a bisection between the last
    that did not and the first that did. ``quantize(layers)`` makes the file, ``accuracy(file)``
    measures its top-1 (0..1). Returns the chosen file, its float layers and every step measured
    (the int8 one first); raises :class:`FallbackError` listing them when nothing fits."""
    n = len(report.layers)
    cap = n if max_float_layers is None else min(n, max_float_layers)
    steps = [FallbackStep((), int8_top1, 100 * (reference_top1 - int8_top1))]
    tried: dict[int, tuple[T, FallbackStep]] = {}

    def attempt(k: int) -> bool:
        layers = report.layers[:k]
        exp = quantize(layers)
        acc = accuracy(exp)
        step = FallbackStep(tuple(s.layer for s in layers), acc, 100 * (reference_top1 - acc))
        tried[k] = (exp, step)
        steps.append(step)
        return step.drop <= max_drop

    lo, hi, k = 0, None, 1
    while k <= cap:
        if attempt(k):
            hi = k
            break
        lo = k
        k = cap if k < cap < 2 * k else 2 * k
    if hi is None:
        tried_ks = ", ".join(f"{len(s.float_layers)} float: drop {s.drop:.2f}" for s in steps)
        raise FallbackError(
            f"no mixed-precision file is within max_drop {max_drop:g} points of fp32 top-1 "
            f"{100 * reference_top1:.2f} % with up to {cap} of {n} layers float ({tried_ks}); raise max_drop"
            + ("" if cap == n else " or max_float_layers") + ", or improve calibration (--calib-method, more samples)")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid):
            hi = mid
        else:
            lo = mid
    return tried[hi][0], report.layers[:hi], steps


def format_table(report: Mapping[str, Any], top: int) -> list[tuple[str, ...]]:
    """Rows (rank, layer, op, SQNR alone, SQNR in int8 file) of a report's ``to_dict()``, most sensitive first."""
    rows = []
    for i, s in enumerate(report["layers"][:top], 1):
        own = s.get("int8_sqnr_db")
        rows.append((str(i), s["layer"], s["op"], _cell(s["sqnr_db"]), "-" if own is None else _cell(own)))
    return rows


def _cell(v: float | str) -> str:
    return v if isinstance(v, str) else f"{v:.1f}"

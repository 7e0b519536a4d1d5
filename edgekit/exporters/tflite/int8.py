"""Full-integer int8 TFLite by ai-edge-quantizer's static recipe: the plan (the float graph with the
int8 rewrites and its activation ranges), the quantized file, and its mixed variants with chosen
weighted ops left float."""
from __future__ import annotations

import difflib
import re
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .activation_ranges import measure_ranges, unify_same_scale
from .conversion import TfliteExport, check_example, export_float
from .flatbuffer import op_histogram, op_list
from .interpreter import io_tensors
from .tensor_names import layer_of
from .tools import quiet_tools, tool_versions

__all__ = ["IO_DTYPES", "Int8Plan", "plan_tflite_int8", "quantize_tflite", "export_tflite_int8", "WEIGHTED_OPS",
           "weighted_ops"]

IO_DTYPES = ("int8", "float32")


def _qsvs(ranges: Mapping[str, tuple[float, float]], shapes: Mapping[str, tuple[int, ...]]) -> dict[str, dict]:
    """ai-edge-quantizer's calibration result: per tensor, min / max arrays of the tensor's rank."""
    out = {}
    for name, (lo, hi) in ranges.items():
        rank = len(shapes.get(name, (1,)))
        out[name] = {"min": np.full((1,) * rank, min(float(lo), 0.0), np.float32),
                     "max": np.full((1,) * rank, max(float(hi), 0.0), np.float32)}
    return out


def _recipe(io_dtype: str, float_ops: Sequence[str] = ()):
    """The static int8 recipe for every op, then one NO_QUANTIZE entry per op left float: the recipe
    manager takes the last matching entry, and an op's scope is its output tensor names joined by
    ';' with a trailing ';', so an anchored, escaped scope selects that op alone."""
    from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager
    rm = recipe_manager.RecipeManager()
    rm.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=8,
                         weight_num_bits=8, algorithm_key=algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT)
    if io_dtype == "float32":
        for op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
            rm.add_quantization_config(regex=".*", operation_name=op,
                                       algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    for name in float_ops:
        rm.add_quantization_config(regex=f"^{re.escape(name + ';')}$",
                                   operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                                   algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    return rm.get_quantization_recipe()


def _quantize(fp32_bytes: bytes, ranges: Mapping[str, tuple[float, float]], io_dtype: str,
              float_ops: Sequence[str] = ()) -> bytes:
    from ai_edge_quantizer import quantizer
    shapes = {t["name"]: t["shape"] for op in op_list(fp32_bytes) for t in op["inputs"] + op["outputs"]}
    q = quantizer.Quantizer(bytearray(fp32_bytes), _recipe(io_dtype, float_ops))
    result = q.quantize(_qsvs(ranges, shapes), enable_progress_bar=False, enable_progress_report=False)
    return bytes(result.quantized_model)


@dataclass(frozen=True)
class Int8Plan:
    """Everything an int8 file is made from, before the quantizer runs: the float graph with the
    int8 rewrites (``fp32``), the final activation ranges and how they were measured. One plan gives
    the full-integer file and every mixed variant of it (:func:`quantize_tflite`)."""

    fp32: TfliteExport
    ranges: Mapping[str, tuple[float, float]]
    calibration: Mapping[str, Any]
    seconds: float


def plan_tflite_int8(model: nn.Module, example_nchw: torch.Tensor, calib: np.ndarray, *, method: Any = "minmax",
                     layout: str = "NHWC", ranges: Mapping[str, tuple[float, float]] | None = None,
                     graph: TfliteExport | None = None) -> Int8Plan:
    """Convert ``model`` with the int8 rewrites and measure its activation ranges on ``calib``
    (see :func:`export_tflite_int8` for the arguments). ``graph``: that conversion done already
    (``convert_float_graphs(...).int8`` of the same model, example and layout)."""
    from edgekit.calibration.ranges import RangeEstimator, method_from_name
    estimator = method if isinstance(method, RangeEstimator) else method_from_name(method)
    check_example(example_nchw, layout)
    calib = _check_calib(calib, tuple(example_nchw.shape[1:]))
    t0 = time.perf_counter()
    if graph is not None and (graph.precision != "fp32" or graph.inputs[0].shape != _file_input_shape(example_nchw,
                                                                                                      layout)):
        raise ValueError(f"graph= must be the float conversion of this model for input "
                         f"{_file_input_shape(example_nchw, layout)}; got a {graph.precision} file for "
                         f"{graph.inputs[0].shape}")
    fp32 = graph if graph is not None else export_float(model, example_nchw, layout, int8_rewrites=True)
    calib_in = fp32.inputs[0].from_nchw(calib)
    with quiet_tools("TFLite int8 calibration"):
        measured = measure_ranges(fp32.model_bytes, calib_in, estimator)
        unknown = sorted(set(ranges or {}) - set(measured))
        if unknown:
            raise ValueError(f"injected ranges name tensors the float graph does not have: {unknown[:3]}; "
                             f"valid names are the keys of an export's .ranges")
        measured.update({k: (float(lo), float(hi)) for k, (lo, hi) in (ranges or {}).items()})
        final = unify_same_scale(fp32.model_bytes, measured)
    name = method if isinstance(method, str) else type(method).__name__.lower()
    return Int8Plan(fp32=fp32, ranges=final, seconds=time.perf_counter() - t0,
                    calibration={"method": name, "estimator": estimator.to_dict(), "samples": int(len(calib)),
                                 "injected_ranges": len(ranges or {})})


def quantize_tflite(plan: Int8Plan, *, io_dtype: str = "int8", float_ops: Sequence[str] = ()) -> TfliteExport:
    """The int8 file of ``plan``; ``float_ops`` (output tensor names of ops of ``plan.fp32``, as
    :func:`weighted_ops` lists them) stay float, with a DEQUANTIZE before and a QUANTIZE after each,
    which makes the file precision ``"mixed"``."""
    if io_dtype not in IO_DTYPES:
        raise ValueError(f"io_dtype {io_dtype!r} must be one of {IO_DTYPES}")
    if isinstance(float_ops, str):
        raise ValueError(f"float_ops must be a list of op output names, not the string {float_ops!r}")
    float_ops = tuple(dict.fromkeys(float_ops))
    outputs = [";".join(t["name"] for t in op["outputs"]) for op in op_list(plan.fp32.model_bytes)]
    for name in float_ops:
        if name not in outputs:
            close = difflib.get_close_matches(name, outputs, n=2)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"float op {name!r} is not an op output of the float graph{hint}")
    t0 = time.perf_counter()
    with quiet_tools("TFLite int8 quantization"):
        data = _quantize(plan.fp32.model_bytes, plan.ranges, io_dtype, float_ops)
    ins, outs = io_tensors(data, plan.fp32.inputs[0].layout)
    return TfliteExport(model_bytes=data, precision="mixed" if float_ops else "int8", inputs=ins, outputs=outs,
                        op_histogram=op_histogram(data), tools=tool_versions(),
                        route="litert-torch + ai-edge-quantizer static int8",
                        convert_seconds=plan.seconds + time.perf_counter() - t0, ranges=plan.ranges,
                        calibration={**plan.calibration, "io_dtype": io_dtype}, float_ops=float_ops)


WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")


def weighted_ops(model_bytes: bytes, model: nn.Module | None = None) -> list[dict[str, str]]:
    """The conv / depthwise conv / FC / transposed conv ops of a float file, in graph order:
    ``{"op", "output" (its output tensor name: what quantize_tflite's float_ops takes), "layer"}``,
    ``layer`` being the PyTorch module path of the weighted module the op came from (read from the
    converter's tensor names, walking ``model``'s children), or the output name when it cannot be."""
    out = []
    for op in op_list(model_bytes):
        if op["op"] not in WEIGHTED_OPS:
            continue
        name = ";".join(t["name"] for t in op["outputs"])
        layer = None
        if model is not None:  # the graph's output tensor is renamed; the weight still names the module
            for tensor in [name] + [t["name"] for t in op["inputs"] if t["const"]]:
                layer = layer or layer_of(tensor, model)
        out.append({"op": op["op"], "output": name, "layer": layer or name})
    return out


def export_tflite_int8(model: nn.Module, example_nchw: torch.Tensor, calib: np.ndarray, *, io_dtype: str = "int8",
                       method: Any = "minmax", layout: str = "NHWC",
                       ranges: Mapping[str, tuple[float, float]] | None = None) -> TfliteExport:
    """Full-integer TFLite: int8 weights (symmetric, per output channel) AND int8 activations
    (affine, per tensor); every conv / depthwise conv / FC an int8 kernel. Input and output are int8
    with scale / zero point (``io_dtype="float32"`` keeps them float: one QUANTIZE after the input,
    one DEQUANTIZE before the output, nothing float in between).

    ``calib``: preprocessed float32 (N, C, H, W) images, as the model's input (a few hundred real
    ones). ``method``: a range estimator of ``edgekit.calibration.ranges`` by name (minmax,
    percentile, entropy, mse) or as an instance. ``ranges``: ``{tensor: (lo, hi)}`` to inject over
    the measured ones; names are those of the returned ``.ranges`` (the float graph's tensors).

    Before quantizing, ops XNNPACK has no int8 kernel for are rewritten into ones it has (hard-swish,
    PReLU, average pooling; see :data:`.graph_rewrites.INT8_REWRITES`), so the int8 file runs as one
    delegated graph.
    :func:`plan_tflite_int8` and :func:`quantize_tflite` are the two halves, for mixed variants.

    >>> q = export_tflite_int8(model, torch.zeros(1, 1, 64, 64), calib)    # doctest: +SKIP
    >>> q.inputs[0].dtype, q.quant_op_count                                 # doctest: +SKIP
    ('int8', 0)
    """
    if io_dtype not in IO_DTYPES:
        raise ValueError(f"io_dtype {io_dtype!r} must be one of {IO_DTYPES}")
    plan = plan_tflite_int8(model, example_nchw, calib, method=method, layout=layout, ranges=ranges)
    return quantize_tflite(plan, io_dtype=io_dtype)


def _file_input_shape(example_nchw: torch.Tensor, layout: str) -> tuple[int, ...]:
    b, c, h, w = (int(d) for d in example_nchw.shape)
    return (b, h, w, c) if layout == "NHWC" else (b, c, h, w)


def _check_calib(calib: Any, chw: tuple[int, ...]) -> np.ndarray:
    calib = np.asarray(calib)
    if calib.ndim != 4 or calib.dtype != np.float32 or len(calib) == 0:
        raise ValueError(f"calib must be a non-empty float32 (N, C, H, W) array, got {calib.dtype} {calib.shape}")
    if tuple(calib.shape[1:]) != tuple(chw):
        raise ValueError(f"calib images {tuple(calib.shape[1:])} differ from the example input {tuple(chw)} (C, H, W)")
    if not np.isfinite(calib).all():
        raise ValueError("calib has NaN or infinite values")
    return calib

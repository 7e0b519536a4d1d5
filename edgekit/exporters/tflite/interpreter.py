"""Running a .tflite file with ai-edge-litert's interpreter: the interpreter, the inputs and outputs
the file declares, float batches in and out (quantized / dequantized where the file's I/O is
integer), and the latency of one invoke."""
from __future__ import annotations

import re
import statistics
import time
from typing import Any, Mapping, Sequence

import numpy as np

from ..artifact import TensorInfo
from .tools import captured_output

__all__ = ["make_interpreter", "io_tensors", "output_details", "to_input", "run_tflite", "benchmark_tflite"]


def make_interpreter(model_bytes: bytes, threads: int = 1, *, preserve: bool = False):
    """An interpreter for ``model_bytes`` with its tensors allocated, on ``threads`` threads;
    ``preserve`` keeps every intermediate tensor readable after ``invoke``."""
    from ai_edge_litert.interpreter import Interpreter
    if threads < 1:
        raise ValueError(f"threads {threads} must be >= 1")
    with captured_output():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on stderr
        it = Interpreter(model_content=model_bytes, num_threads=threads, experimental_preserve_all_tensors=preserve)
        it.allocate_tensors()
    return it


def _tensor_info(detail: Mapping[str, Any], layout: str) -> TensorInfo:
    dtype = np.dtype(detail["dtype"]).name
    scale, zp = detail["quantization"]
    quantized = dtype in ("int8", "uint8")
    return TensorInfo(name=detail["name"], shape=tuple(int(v) for v in detail["shape"]), dtype=dtype,
                      layout=layout, scale=float(scale) if quantized else None, zero_point=int(zp) if quantized
                      else None)


def _layout_of(shape: Sequence[int], image_layout: str) -> str:
    return {4: image_layout, 2: "NC"}.get(len(shape), "")


def io_tensors(model_bytes: bytes, image_layout: str = "NHWC") -> tuple[tuple[TensorInfo, ...],
                                                                            tuple[TensorInfo, ...]]:
    """Inputs and outputs as the file declares them (4-D tensors get ``image_layout``)."""
    it = make_interpreter(model_bytes)
    ins = tuple(_tensor_info(d, _layout_of(d["shape"], image_layout)) for d in it.get_input_details())
    outs = tuple(_tensor_info(d, _layout_of(d["shape"], image_layout)) for d in output_details(it))
    return ins, outs


def output_details(it) -> list[dict[str, Any]]:
    """The interpreter's outputs in the order the module returned them: the signature names them
    ``output_0``, ``output_1``, ...; a file without that signature keeps the subgraph's order."""
    details = it.get_output_details()
    signatures = it._get_full_signature_list() if hasattr(it, "_get_full_signature_list") else {}
    if len(signatures) != 1:
        return details
    by_index = {d["index"]: d for d in details}
    named = next(iter(signatures.values())).get("outputs", {})
    order = {}
    for name, index in named.items():
        m = re.fullmatch(r"output_(\d+)", name)
        if m is None or index not in by_index:
            return details
        order[int(m[1])] = by_index[index]
    return [order[k] for k in sorted(order)] if len(order) == len(details) else details


def to_input(x: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    """Float -> the input's dtype: quantized with its scale / zero point when the input is integer."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return np.asarray(x, np.float32)
    scale, zp = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(np.asarray(x, np.float32) / scale) + zp, info.min, info.max).astype(dtype)


def _from_output(y: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
    if np.dtype(detail["dtype"]) == np.float32:
        return y.astype(np.float32)
    scale, zp = detail["quantization"]
    return ((y.astype(np.float32) - zp) * scale).astype(np.float32)


def _check_batch(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    x = np.asarray(x)
    want = tuple(int(v) for v in shape)
    if x.shape == want[1:]:
        x = x[None]
    if x.ndim != len(want) or x.shape[1:] != want[1:]:
        raise ValueError(f"inputs of shape {x.shape} do not fit the model input {want} (batch first, in the "
                         f"file's layout)")
    return x


def run_tflite(model_bytes: bytes, inputs_nhwc: np.ndarray, *,
               threads: int = 1) -> np.ndarray | tuple[np.ndarray, ...]:
    """Float outputs for float inputs (N, ...) laid out as the file's input; N may exceed the file's
    batch (run in chunks of that batch). Integer I/O is quantized / dequantized with the tensors'
    own scale and zero point. Several outputs come as a tuple, in the module's order.

    >>> run_tflite(exp.model_bytes, np.zeros((4, 64, 64, 1), np.float32)).shape   # doctest: +SKIP
    (4, 10)
    """
    it = make_interpreter(model_bytes, threads)
    (inp,) = it.get_input_details()
    outs = output_details(it)
    x = _check_batch(inputs_nhwc, inp["shape"])
    b = int(inp["shape"][0])
    if len(x) % b:
        raise ValueError(f"{len(x)} inputs are not a whole number of the file's batch {b}")
    results = []
    for i in range(0, len(x), b):
        it.set_tensor(inp["index"], to_input(x[i:i + b], inp))
        it.invoke()
        results.append([_from_output(it.get_tensor(o["index"]), o) for o in outs])
    joined = tuple(np.concatenate(parts) for parts in zip(*results))
    return joined[0] if len(joined) == 1 else joined


def benchmark_tflite(model_bytes: bytes, inputs: np.ndarray, *, threads: int = 1, runs: int = 50,
                     warmup: int = 10) -> dict[str, float]:
    """Latency of one ``invoke`` (XNNPACK, ``threads`` threads) on the first input: median, p90, min,
    mean in ms and the run count. The input is set once, outside the timed region.

    >>> benchmark_tflite(exp.model_bytes, x, runs=50)["median_ms"]    # doctest: +SKIP
    0.31
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs {runs} must be >= 1 and warmup {warmup} >= 0")
    it = make_interpreter(model_bytes, threads)
    (inp,) = it.get_input_details()
    x = _check_batch(inputs, inp["shape"])[: int(inp["shape"][0])]
    it.set_tensor(inp["index"], to_input(x, inp))
    for _ in range(warmup):
        it.invoke()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        it.invoke()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median_ms": statistics.median(times), "p90_ms": times[min(len(times) - 1, int(0.9 * len(times)))],
            "min_ms": times[0], "mean_ms": statistics.fmean(times), "runs": runs, "threads": threads}

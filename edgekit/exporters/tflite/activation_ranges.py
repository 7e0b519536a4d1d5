"""Activation ranges of a float TFLite file, for its int8 file: measured by the file itself on the
calibration images (so every range belongs to a tensor the file has), then one range per group of
tensors a same-scale op ties together."""
from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .flatbuffer import op_list
from .interpreter import make_interpreter
from .tools import ConversionError

__all__ = ["measure_ranges", "unify_same_scale"]


def _activation_tensors(model_bytes: bytes) -> list[str]:
    """Names of the float, non-constant tensors of the main subgraph: what calibration must range."""
    seen: dict[str, None] = {}
    for op in op_list(model_bytes):
        for t in op["inputs"] + op["outputs"]:
            if t["dtype"] == "float32" and not t["const"]:
                seen.setdefault(t["name"], None)
    return list(seen)


def _calibration_batches(model_bytes: bytes, calib_nhwc: np.ndarray, names: Sequence[str]) -> Iterator[dict]:
    """One ``{tensor name: array}`` dict per calibration sample, from the fp32 file itself. With
    every tensor preserved the file runs on TFLite's own kernels, which use every usable core (up
    to 4; ~1.5x faster on 2 than on 1)."""
    from ..._background import usable_cpus
    it = make_interpreter(model_bytes, min(usable_cpus(), 4), preserve=True)
    (inp,) = it.get_input_details()
    index = {d["name"]: d["index"] for d in it.get_tensor_details()}
    missing = [n for n in names if n not in index]
    if missing:
        raise ConversionError(f"calibration: tensors {missing[:3]} are not in the interpreter's tensor list")
    b = int(inp["shape"][0])
    for i in range(0, len(calib_nhwc) - b + 1, b):
        it.set_tensor(inp["index"], calib_nhwc[i:i + b].astype(np.float32))
        it.invoke()
        # views of the interpreter's buffers, not copies (~1 s of copying at 224 px): the consumer
        # (ranges_for_arrays) reads them without keeping a reference, and the dict is emptied before
        # the next invoke, which refuses to run while a view is alive
        batch = {n: it.tensor(index[n])() for n in names}
        yield batch
        batch.clear()


def measure_ranges(model_bytes: bytes, calib_nhwc: np.ndarray, estimator: Any) -> dict[str, tuple[float, float]]:
    """(lo, hi) of every activation tensor of the float file over the calibration images, by the
    estimator of ``edgekit.calibration.ranges`` (asymmetric: activations are per-tensor affine)."""
    from edgekit.calibration.ranges import ranges_for_arrays
    names = _activation_tensors(model_bytes)
    return ranges_for_arrays(_calibration_batches(model_bytes, calib_nhwc, names), estimator)


# ops whose int8 kernels need one scale on (the data inputs and) the output; see ai-edge-quantizer's
# OpQuantConstraint SAME_AS_INPUT_SCALE / SAME_AS_OUTPUT_SCALE
_SAME_SCALE_OPS = frozenset({"CONCATENATION", "PAD", "PADV2", "MIRROR_PAD", "AVERAGE_POOL_2D", "MAX_POOL_2D",
                             "RESHAPE", "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR", "SLICE", "STRIDED_SLICE",
                             "SPLIT", "TRANSPOSE", "SPACE_TO_DEPTH", "MAXIMUM", "PACK", "UNPACK", "BROADCAST_TO",
                             "GATHER", "GATHER_ND", "SQUEEZE"})
_FIXED_SCALE_OPS = frozenset({"LOGISTIC", "TANH", "SOFTMAX"})


def unify_same_scale(model_bytes: bytes, ranges: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """Give every tensor that a same-scale op ties together (concat inputs and output, pad / pool /
    reshape input and output, transitively) the union of their ranges.

    Left alone, the quantizer gives a tensor its own scale and then inserts an int8->int8 QUANTIZE
    wherever a concat needs another one; XNNPACK does not take those, so each one cuts the delegated
    graph (ESPNetv2 at 64 px: 55 requantizations; GhostNet: 19, one per Ghost module). One scale per
    group makes them unnecessary; a tensor with a fixed output scale (sigmoid, tanh) is never merged."""
    parent: dict[str, str] = {}

    def find(a: str) -> str:
        while parent.setdefault(a, a) != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    fixed = set()
    ops = op_list(model_bytes)
    for op in ops:
        if op["op"] in _FIXED_SCALE_OPS:
            fixed.update(t["name"] for t in op["outputs"])
    for op in ops:
        if op["op"] not in _SAME_SCALE_OPS:
            continue
        data_in = op["inputs"] if op["op"] in ("CONCATENATION", "PACK", "MAXIMUM") else op["inputs"][:1]
        members = [t["name"] for t in data_in + op["outputs"]
                   if t["dtype"] == "float32" and not t["const"] and t["name"] in ranges]
        if any(m in fixed for m in members):
            continue
        for m in members[1:]:
            parent[find(m)] = find(members[0])
    groups: dict[str, tuple[float, float]] = {}
    for name in parent:
        root = find(name)
        lo, hi = ranges[name]
        glo, ghi = groups.get(root, (lo, hi))
        groups[root] = (min(glo, lo), max(ghi, hi))
    out = dict(ranges)
    for name in parent:
        out[name] = groups[find(name)]
    return out

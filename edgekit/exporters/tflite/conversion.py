"""PyTorch -> float TFLite through litert-torch: the model wrapped to take NHWC input, exported with
``torch.export``, rewritten (:mod:`.graph_rewrites`) and converted, with the converted flatbuffers
cached by graph; :class:`TfliteExport` is what a conversion (float or int8) gives."""
from __future__ import annotations

import collections
import copy
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..artifact import TensorInfo
from .flatbuffer import QUANT_OPS, op_histogram
from .graph_rewrites import INT8_REWRITES, fold_channel_shuffles, rewrite_for_nhwc
from .interpreter import io_tensors, run_tflite
from .tools import quiet_tools, tool_versions

__all__ = ["LAYOUTS", "TfliteExport", "export_tflite_fp32", "export_float", "FloatGraphs", "convert_float_graphs",
           "check_example", "Prepared", "prepare"]

LAYOUTS = ("NHWC", "NCHW")


@dataclass(frozen=True)
class TfliteExport:
    """One converted flatbuffer and what a manifest needs from it (the caller assembles the Manifest)."""

    model_bytes: bytes
    precision: str  # "fp32" | "int8" | "mixed" (int8 with the ops of ``float_ops`` left in float)
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    op_histogram: Mapping[str, int]
    tools: Mapping[str, str]
    route: str
    convert_seconds: float
    calibration: Mapping[str, Any] = field(default_factory=dict)  # method, samples, io_dtype (int8 only)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # int8: per float tensor, as used
    notes: tuple[str, ...] = ()
    float_ops: tuple[str, ...] = ()  # mixed: output tensor names (of the float graph) of the float ops

    @property
    def quant_op_count(self) -> int:
        """QUANTIZE + DEQUANTIZE ops in the graph (0 for a clean full-integer file)."""
        return sum(self.op_histogram.get(op, 0) for op in QUANT_OPS)

    def __call__(self, inputs: np.ndarray, *, threads: int = 1) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run the file like the PyTorch model: float inputs in the file's layout -> float outputs
        (a tuple of them, in the module's order, for several)."""
        return run_tflite(self.model_bytes, inputs, threads=threads)


class _ChannelsLast(nn.Module):
    """NHWC in -> the NCHW model -> its output(s), each made NHWC when it is a 4-D map. The permutes
    meet the converter's own NHWC rewrite and cancel, so the file has no TRANSPOSE left."""

    # litert-torch names every tensor after the classes of its module stack, this one's qualified name
    # first; pinned to the package, so tensor names (what ``ranges=`` and ``float_ops`` take) do not
    # depend on the file that defines the wrapper
    __module__ = "edgekit.exporters.tflite"

    def __init__(self, model: nn.Module, spatial_out: tuple[bool, ...]):
        super().__init__()
        self.model = model
        self.spatial_out = spatial_out  # per output: a 4-D map

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        y = self.model(x.permute(0, 3, 1, 2))  # (B, H, W, C) -> (B, C, H, W)
        outs = tuple(y) if isinstance(y, (tuple, list)) else (y,)
        outs = tuple(o.permute(0, 2, 3, 1) if spatial else o  # (B, C, h, w) -> (B, h, w, C)
                     for o, spatial in zip(outs, self.spatial_out))
        return outs if isinstance(y, (tuple, list)) else outs[0]


def check_example(example_nchw: Any, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} must be one of {LAYOUTS}")
    if not isinstance(example_nchw, torch.Tensor) or example_nchw.dim() != 4:
        shape = tuple(example_nchw.shape) if isinstance(example_nchw, torch.Tensor) else type(example_nchw).__name__
        raise ValueError(f"example input must be a 4-D NCHW tensor (B, C, H, W), got {shape}")


@dataclass(frozen=True)
class Prepared:
    """What litert-torch converts: the exported and rewritten graph, and its example input in the
    file's layout."""

    graph: torch.fx.GraphModule
    example: torch.Tensor


def prepare(model: nn.Module, example_nchw: torch.Tensor, layout: str, int8_rewrites: bool = False) -> Prepared:
    """``model`` exported for ``layout`` (NHWC: wrapped by :class:`_ChannelsLast`) and rewritten."""
    model = copy.deepcopy(model).eval()
    example_nchw = example_nchw.detach().float()
    with torch.no_grad():
        out = model(example_nchw)
    outs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
    if not outs or not all(isinstance(o, torch.Tensor) for o in outs):
        raise ValueError(f"the model must return a tensor or a tuple of tensors, got {type(out).__name__}")
    spatial = tuple(o.dim() == 4 for o in outs)
    if layout == "NCHW":
        wrapper, example = model, example_nchw
    else:
        wrapper, example = _ChannelsLast(model, spatial).eval(), example_nchw.permute(0, 2, 3, 1).contiguous()
    with torch.no_grad():
        program = torch.export.export(wrapper, (example,), strict=False)
    gm = rewrite_for_nhwc(program.module())
    if fold_channel_shuffles(gm):
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    for sub in gm.modules():  # the graph was exported in eval mode already; the flag only quiets
        sub.training = False  # litert-torch's warning (GraphModule.eval() is refused for exported graphs)
    if int8_rewrites and sum(rewrite(gm) for rewrite in INT8_REWRITES):
        gm.graph.lint()
        gm.recompile()
    return Prepared(gm, example)


# Converted flatbuffers by graph + weights + input shape: int8 export converts the model again with
# its rewrites, and when none applies (the graph is the same) this saves the ~20 s conversion.
_CONVERTED: "collections.OrderedDict[str, bytes]" = collections.OrderedDict()
_CACHE_SIZE = 4


def _graph_key(module: nn.Module, example: torch.Tensor) -> str:
    import hashlib
    h = hashlib.sha256()
    h.update(str(getattr(module, "code", type(module).__qualname__)).encode())
    h.update(repr((tuple(example.shape), str(example.dtype), sorted(tool_versions().items()))).encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _convert(module: nn.Module, example: torch.Tensor) -> bytes:
    import litert_torch
    key = _graph_key(module, example) if isinstance(module, torch.fx.GraphModule) else None
    if key in _CONVERTED:
        _CONVERTED.move_to_end(key)
        return _CONVERTED[key]
    litert_torch.config.show_progress = False
    data = bytes(litert_torch.convert(module, (example,)).model_content())
    if key is not None:
        _CONVERTED[key] = data
        while len(_CONVERTED) > _CACHE_SIZE:
            _CONVERTED.popitem(last=False)
    return data


def export_tflite_fp32(model: nn.Module, example_nchw: torch.Tensor, *, layout: str = "NHWC") -> TfliteExport:
    """Convert ``model`` to a float32 TFLite flatbuffer.

    ``layout="NHWC"`` (default; what camera pipelines feed) gives an NHWC input, and NHWC output when
    the model returns a map, with no TRANSPOSE inside; ``"NCHW"`` keeps PyTorch's layout at the
    interface (the converter then transposes inside). ``example_nchw`` is (B, C, H, W) and fixes the
    file's input shape. The model is deep-copied and exported in eval mode.

    >>> exp = export_tflite_fp32(model, torch.zeros(1, 1, 64, 64))   # doctest: +SKIP
    >>> exp(np.zeros((1, 64, 64, 1), np.float32)).shape               # doctest: +SKIP
    (1, 10)
    """
    return export_float(model, example_nchw, layout, int8_rewrites=False)


def export_float(model: nn.Module, example_nchw: torch.Tensor, layout: str, *, int8_rewrites: bool) -> TfliteExport:
    """The float file of ``model``; with ``int8_rewrites`` the graph an int8 file is quantized from."""
    check_example(example_nchw, layout)
    t0 = time.perf_counter()
    with quiet_tools("TFLite conversion") as where:
        p = prepare(model, example_nchw, layout, int8_rewrites)
        where.graph = p.graph
        data = _convert(p.graph, p.example)
    seconds = time.perf_counter() - t0
    ins, outs = io_tensors(data, layout)
    return TfliteExport(model_bytes=data, precision="fp32", inputs=ins, outputs=outs, op_histogram=op_histogram(data),
                        tools=tool_versions(), route="litert-torch", convert_seconds=seconds)


@dataclass(frozen=True)
class FloatGraphs:
    """The float conversions an export needs (None: not asked for): ``fp32``, the file
    :func:`export_tflite_fp32` gives, and ``int8``, the float graph with the int8 rewrites that
    :func:`~.int8.plan_tflite_int8` takes as ``graph=``."""

    fp32: TfliteExport | None = None
    int8: TfliteExport | None = None


def convert_float_graphs(model: nn.Module, example_nchw: torch.Tensor, *, layout: str = "NHWC",
                         fp32: bool = True, int8: bool = True) -> FloatGraphs:
    """:class:`FloatGraphs` in one call (``edgekit.export`` runs it in a worker process, beside the
    ONNX work). When no rewrite applies the two graphs are the same and converted once."""
    return FloatGraphs(fp32=export_tflite_fp32(model, example_nchw, layout=layout) if fp32 else None,
                       int8=export_float(model, example_nchw, layout, int8_rewrites=True) if int8 else None)

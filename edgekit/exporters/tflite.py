"""PyTorch -> TFLite: fp32 with NHWC input and no TRANSPOSE inside, and full-integer int8.

fp32: the model is exported with ``torch.export``, wrapped so that it takes NHWC input (and, for a
spatial output, gives NHWC output), lightly rewritten (see :func:`_rewrite_for_nhwc` and
:func:`_fold_channel_shuffles`) and converted by litert-torch, whose layout pass then keeps every
4-D tensor NHWC.

int8: the fp32 flatbuffer is quantized by ai-edge-quantizer's static recipe (int8 per-channel
symmetric weights, int8 per-tensor asymmetric activations, integer compute), with activation ranges
measured on the caller's calibration images by the fp32 TFLite interpreter itself, so every range
belongs to a tensor that exists in the file. Before that, the int8 graph gets rewrites that turn ops
XNNPACK runs only in float (hard-swish, PReLU, average pooling, BN outside a conv) into ops it runs
in int8, and every tensor a same-scale op ties together (concat, pad, pool) gets one range, so the
file has no QUANTIZE / DEQUANTIZE inside and runs as one XNNPACK graph.

Why not litert-torch's PT2E quantizer: measured on this zoo at 1x64x64 (64 calibration images),
GhostNetV2 does not convert ('tfl.pad' op quantization parameters violate the same scale
constraint), EfficientNet-B0 keeps 73 QUANTIZE + 59 DEQUANTIZE and runs 0.71x the speed of its fp32
file, FBNetV3-B 64 + 58 and 0.36x; this route gives 0 of each and 2-7x on the same models.

>>> import torch, edgekit
>>> m = edgekit.create_model("ghostnet_0_5", num_classes=10, in_chans=1, resolution=32).eval()
>>> fp32 = export_tflite_fp32(m, torch.zeros(1, 1, 32, 32))       # doctest: +SKIP
>>> fp32.inputs[0].shape, fp32.inputs[0].layout                    # doctest: +SKIP
((1, 32, 32, 1), 'NHWC')
"""
from __future__ import annotations

import collections
import contextlib
import copy
import difflib
import importlib.metadata
import os
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .artifact import TensorInfo

__all__ = ["TfliteExport", "ConversionError", "QUANT_OPS", "INT8_KERNEL_OPS", "export_tflite_fp32",
           "export_tflite_int8", "Int8Plan", "plan_tflite_int8", "quantize_tflite", "weighted_ops", "run_tflite", "benchmark_tflite", "op_histogram", "op_list", "io_tensors",
           "tool_versions"]

QUANT_OPS = ("QUANTIZE", "DEQUANTIZE")
INT8_KERNEL_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV")
LAYOUTS = ("NHWC", "NCHW")
IO_DTYPES = ("int8", "float32")
_TOOLS = ("torch", "litert-torch", "ai-edge-quantizer", "ai-edge-litert")
# litert-torch pulls in huggingface_hub (its generative exporters load hub models); an export must
# never reach for a hub, so the hub is set offline (kagglehub, also pulled in, has no such switch and
# is only called by those generative exporters). Progress and TF C++ logging off: less to capture.
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "LITERT_TORCH_SHOW_PROGRESS": "n", "TF_CPP_MIN_LOG_LEVEL": "3"}


class ConversionError(ValueError):
    """A converter or quantizer failure; ``log`` holds what the tools printed meanwhile."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message)
        self.log = log


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

    def __call__(self, inputs: np.ndarray, *, threads: int = 1) -> np.ndarray:
        """Run the file like the PyTorch model: float inputs in the file's layout -> float outputs."""
        return run_tflite(self.model_bytes, inputs, threads=threads)


# ---- quiet tools --------------------------------------------------------------------------------

@contextlib.contextmanager
def _captured() -> Iterator[list[str]]:
    """Send fds 1 and 2 (Python, rich, absl and C++ alike) to a temporary file for the duration;
    the text is put in the yielded list when the block ends, so the caller can show it on failure."""
    import sys
    box: list[str] = []
    for s in (sys.stdout, sys.stderr):
        s.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile(mode="w+b") as log:
        try:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
            yield box
        finally:
            for s in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    s.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            log.seek(0)
            box.append(log.read().decode("utf-8", "replace"))


class _Failure:
    """What a failing tool step knows about where it was: the FX graph being converted, if any."""

    graph: torch.fx.GraphModule | None = None


@contextlib.contextmanager
def _quiet_tools(what: str) -> Iterator[_Failure]:
    """Offline, silent tools; any exception becomes a ConversionError naming the op and, where the
    graph tells, the PyTorch module, with the captured tool output attached as ``.log``."""
    for k, v in _OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    import warnings
    box: list[str] = []
    where = _Failure()
    try:
        with _captured() as box, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield where
    except ConversionError:
        raise
    except Exception as e:  # the tools raise anything from RuntimeError to absl errors
        log = box[0] if box else ""
        raise ConversionError(_describe_failure(what, e, log, where.graph), log) from e


_MLIR_ERROR_RE = re.compile(r"error: (.+)")
_LOC_RE = re.compile(r'loc\((?:fused\[)?"([^"]+)"')
_OP_RE = re.compile(r"(aten\.[A-Za-z_0-9]+(?:\.[A-Za-z_0-9]+)?|'?tfl\.[a-z_0-9]+'?|'?stablehlo\.[a-z_0-9]+'?)")


def _module_of(graph: torch.fx.GraphModule | None, op: str) -> str | None:
    """'path.to.module (Class)' of the first node of ``graph`` calling aten ``op`` (or the op it
    decomposes from: special_i0 for i0), from the export's nn_module_stack."""
    if graph is None or not op.startswith("aten."):
        return None
    base = op.split(".")[1]
    for node in graph.graph.nodes:
        name = str(node.target).split(".")[1] if node.op == "call_function" and "." in str(node.target) else ""
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        if not stack or not (name == base or name.endswith("_" + base) or base.endswith("_" + name)):
            continue
        path, cls = (str(v) for v in stack[-1])
        if str(stack[0][1]).endswith("_ChannelsLast"):  # our NHWC wrapper holds the user's model as .model
            path = re.sub(r"^model(\.|$)", "", path)
        return f"{path or '<top>'} ({cls.rsplit('.', 1)[-1]})"
    return None


_SRC_RE = re.compile(r"([\w./-]+\.py:\d+):\d+: error")


def _describe_failure(what: str, e: Exception, log: str, graph: torch.fx.GraphModule | None) -> str:
    """'<what> failed at op X, module Y: <the error>' from the exception, the tool output and the
    graph: an aten op maps to its PyTorch module through the export's nn_module_stack; an MLIR error
    gives its op, and its location (a module path, or the PyTorch source line of the layer)."""
    text = f"{e}\n{log}"
    first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
    mlir = [m.group(1).strip() for m in _MLIR_ERROR_RE.finditer(text)]
    detail = mlir[0] if mlir else first
    parts = []
    op = _OP_RE.search(detail) or _OP_RE.search(first)
    if op:
        parts.append(f"op {op.group(1).strip(chr(39))}")
        module = _module_of(graph, op.group(1))
        loc = _LOC_RE.search(text)
        src = _SRC_RE.search(text)
        if module or loc:
            parts.append(f"module {module or loc.group(1)}")
        elif src:
            parts.append(f"layer source {src.group(1).split('site-packages/')[-1]}")
    at = f" at {', '.join(parts)}" if parts else ""
    more = f" (+{len(mlir) - 1} more converter errors in .log)" if len(mlir) > 1 else ""
    return f"{what} failed{at}: {detail[:300]}{more}"


def tool_versions() -> dict[str, str]:
    out = {}
    for dist in _TOOLS:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


# ---- flatbuffer inspection -------------------------------------------------------------------------

def _schema():
    from ai_edge_litert import schema_py_generated as schema
    return schema


def _op_names() -> dict[int, str]:
    schema = _schema()
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def op_list(model_bytes: bytes) -> list[dict[str, Any]]:
    """Every operator of the main subgraph in order: ``{"op", "inputs", "outputs"}``, each tensor as
    ``{"name", "shape", "dtype", "const"}`` (dtype a numpy name)."""
    schema = _schema()
    names = _op_names()
    types = {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(model_bytes, 0)
    graph = model.Subgraphs(0)

    def tensor(i: int) -> dict[str, Any]:
        t = graph.Tensors(i)
        buf = model.Buffers(t.Buffer())
        const = buf is not None and (buf.DataLength() > 0 or buf.Size() > 0)  # data inline or offset
        shape = tuple(int(v) for v in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        return {"name": t.Name().decode(), "shape": shape, "dtype": types.get(t.Type(), "?"), "const": const}

    ops = []
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        name = names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        ins = [tensor(op.Inputs(j)) for j in range(op.InputsLength()) if op.Inputs(j) >= 0]
        outs = [tensor(op.Outputs(j)) for j in range(op.OutputsLength()) if op.Outputs(j) >= 0]
        ops.append({"op": name, "inputs": ins, "outputs": outs})
    return ops


def op_histogram(model_bytes: bytes) -> dict[str, int]:
    """``{"CONV_2D": 53, ...}`` for every subgraph, in first-seen order."""
    schema = _schema()
    names = _op_names()
    model = schema.Model.GetRootAsModel(model_bytes, 0)
    hist: collections.Counter[str] = collections.Counter()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for k in range(graph.OperatorsLength()):
            code = model.OperatorCodes(graph.Operators(k).OpcodeIndex())
            hist[names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")] += 1
    return dict(hist)


def _interpreter(model_bytes: bytes, threads: int = 1, *, preserve: bool = False):
    from ai_edge_litert.interpreter import Interpreter
    if threads < 1:
        raise ValueError(f"threads {threads} must be >= 1")
    with _captured():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on stderr
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
    it = _interpreter(model_bytes)
    ins = tuple(_tensor_info(d, _layout_of(d["shape"], image_layout)) for d in it.get_input_details())
    outs = tuple(_tensor_info(d, _layout_of(d["shape"], image_layout)) for d in it.get_output_details())
    return ins, outs


# ---- fp32 ---------------------------------------------------------------------------------------------

class _ChannelsLast(nn.Module):
    """NHWC in -> the NCHW model -> its output, made NHWC when it is a 4-D map. The permutes meet the
    converter's own NHWC rewrite and cancel, so the file has no TRANSPOSE left."""

    def __init__(self, model: nn.Module, spatial_out: bool):
        super().__init__()
        self.model = model
        self.spatial_out = spatial_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x.permute(0, 3, 1, 2))  # (B, H, W, C) -> (B, C, H, W)
        return y.permute(0, 2, 3, 1) if self.spatial_out else y  # (B, C, h, w) -> (B, h, w, C)


def _rewrite_for_nhwc(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``x.mean((2, 3))`` (keepdim False) on a 4-D map -> ``x.mean((2, 3), keepdim=True).flatten(1)``.

    litert-torch's layout pass keeps an op NHWC only when its output is 4-D too, so a global average
    pool that drops H and W forces the whole map back to NCHW through a TRANSPOSE (ESPNetv2's head);
    with keepdim the pool stays NHWC and the flatten of a (B, 1, 1, C) map is a plain reshape."""
    aten = torch.ops.aten
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.mean.dim:
            continue
        x, dims = node.args[0], node.args[1]
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if keepdim or val is None or val.dim() != 4 or sorted(d % 4 for d in dims) != [2, 3]:
            continue
        with gm.graph.inserting_after(node):
            pooled = gm.graph.call_function(aten.mean.dim, (x, [2, 3], True))
            with gm.graph.inserting_after(pooled):
                flat = gm.graph.call_function(aten.flatten.using_ints, (pooled, 1))
        node.replace_all_uses_with(flat)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm


_PER_CHANNEL_FREE = frozenset(getattr(torch.ops.aten, name).default for name in (
    "relu", "relu_", "relu6", "hardtanh", "hardtanh_", "hardswish", "hardswish_", "silu", "silu_", "sigmoid",
    "sigmoid_", "gelu", "clamp"))  # elementwise ops with no per-channel parameters


def _fold_channel_shuffles(gm: torch.fx.GraphModule) -> int:
    """A channel shuffle (reshape to (B, g, C/g, H, W), swap the two channel axes, reshape back)
    next to a conv through per-channel ops only -> that conv's channels reordered instead.

    litert-torch keeps a shuffle as RESHAPE, TRANSPOSE, RESHAPE (FBNet's grouped blocks: 9 TRANSPOSE
    in fbnet_a). The shuffled order can come out of the conv before it (its output channels
    permuted), or be undone by the conv after it (its input channels permuted), with the depthwise
    convs, BNs and activations in between following the new order; a grouped conv that takes the
    permutation becomes dense (its block-diagonal weight, zeros outside the groups). Same function,
    no TRANSPOSE. A shuffle with no such conv on either side, or whose tensors on the way have other
    readers, is left as it is."""
    aten = torch.ops.aten
    reshapes = (aten.reshape.default, aten.view.default, aten._unsafe_view.default)
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.transpose.int or \
                sorted(d % 5 for d in node.args[1:3]) != [1, 2]:
            continue
        split = node.args[0]
        if not (isinstance(split, torch.fx.Node) and split.target in reshapes and len(split.users) == 1
                and len(node.users) == 1):
            continue
        merge = next(iter(node.users))
        if merge.op == "call_function" and merge.target in (aten.clone.default, aten.contiguous.default) \
                and len(merge.users) == 1:
            merge = next(iter(merge.users))
        x, val5, out = split.args[0], split.meta.get("val"), merge.meta.get("val")
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if merge.target not in reshapes or val is None or val5 is None or out is None or val.dim() != 4 \
                or val5.dim() != 5 or tuple(out.shape) != tuple(val.shape):
            continue
        c, g = int(val.shape[1]), int(val5.shape[1])
        if g * int(val5.shape[2]) != c or tuple(val5.shape[3:]) != tuple(val.shape[2:]):
            continue
        perm = torch.tensor([(j % g) * (c // g) + j // g for j in range(c)])  # shuffled[j] = x[perm[j]]
        if not (_shuffle_into_producer(gm, x, perm) or _shuffle_into_consumer(gm, merge, perm)):
            continue
        merge.replace_all_uses_with(x)
        for dead in (merge, *([] if merge.args[0] is node else [merge.args[0]]), node, split):
            gm.graph.erase_node(dead)
        n += 1
    return n


def _per_channel(gm: torch.fx.GraphModule, node: torch.fx.Node, c: int) -> list[torch.Tensor | None] | None:
    """The per-channel parameters of ``node`` when it maps each of ``c`` channels on its own (an
    activation: [], a BN in eval: weight, bias, mean, var, a depthwise conv: weight, bias), else None."""
    aten = torch.ops.aten
    if node.op != "call_function" or node.kwargs:
        return None
    if node.target in _PER_CHANNEL_FREE:
        return []
    if node.target is aten.batch_norm.default and not node.args[5]:
        params = [_param_value(gm, a) for a in node.args[1:5]]
        return None if any(a is not None and p is None for a, p in zip(node.args[1:5], params)) else params
    if node.target is aten.conv2d.default:
        args = _conv_args(node)
        weight, bias = _param_value(gm, args[1]), _param_value(gm, args[2])
        if weight is not None and args[6] == c and tuple(weight.shape[:2]) == (c, 1) and \
                (args[2] is None or bias is not None):
            return [weight, bias]
    return None


def _conv_args(node: torch.fx.Node) -> list:
    """aten.conv2d's arguments with the defaults filled in: x, weight, bias, stride, padding, dilation, groups."""
    return list(node.args) + [None, [1, 1], [0, 0], [1, 1], 1][len(node.args) - 2:]


def _dense(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """A grouped conv's weight (out, in/groups, kh, kw) as the dense (out, in, kh, kw) one."""
    if groups == 1:
        return weight
    out, per_in = int(weight.shape[0]), int(weight.shape[1])
    per_out = out // groups
    dense = weight.new_zeros(out, per_in * groups, *weight.shape[2:])
    for k in range(groups):
        dense[k * per_out:(k + 1) * per_out, k * per_in:(k + 1) * per_in] = weight[k * per_out:(k + 1) * per_out]
    return dense


def _permute_chain(gm: torch.fx.GraphModule, chain: list[tuple[torch.fx.Node, list]], index: torch.Tensor) -> None:
    """Reorder the per-channel parameters of each node of ``chain`` by ``index``."""
    for node, params in chain:
        if not params:
            continue
        with gm.graph.inserting_before(node):
            new = [None if p is None else _constant(gm, p[index], "shuffled") for p in params]
        k = len(params)
        node.args = (node.args[0], *new, *node.args[1 + k:])


def _shuffle_into_producer(gm: torch.fx.GraphModule, x: torch.fx.Node, perm: torch.Tensor) -> bool:
    """Make the conv that ``x`` comes from (through per-channel ops) emit its channels shuffled."""
    aten = torch.ops.aten
    c = len(perm)
    chain, conv = [], x
    while isinstance(conv, torch.fx.Node) and len(conv.users) == 1:
        params = _per_channel(gm, conv, c)
        if params is None:
            break
        chain.append((conv, params))
        conv = conv.args[0]
    # the loop stopped on a node that is not per-channel (a depthwise conv would have joined the chain)
    # or that has other readers
    if not (isinstance(conv, torch.fx.Node) and conv.op == "call_function" and conv.target is aten.conv2d.default
            and not conv.kwargs and len(conv.users) == 1):
        return False
    args = _conv_args(conv)
    weight, bias = _param_value(gm, args[1]), _param_value(gm, args[2])
    if weight is None or (args[2] is not None and bias is None) or int(weight.shape[0]) != c:
        return False
    with gm.graph.inserting_before(conv):
        args[1] = _constant(gm, _dense(weight, int(args[6]))[perm], "shuffled_weight")
        args[2] = None if bias is None else _constant(gm, bias[perm], "shuffled_bias")
    args[6] = 1
    conv.args = tuple(args)
    _permute_chain(gm, chain, perm)
    return True


def _shuffle_into_consumer(gm: torch.fx.GraphModule, merge: torch.fx.Node, perm: torch.Tensor) -> bool:
    """Make the conv that reads the shuffled tensor (through per-channel ops) take it unshuffled."""
    aten = torch.ops.aten
    c = len(perm)
    chain, node = [], merge
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.args[0] is not node:
            return False
        params = _per_channel(gm, user, c)
        if params is None:
            break
        chain.append((user, params))
        node = user
    if len(node.users) != 1:
        return False
    conv = next(iter(node.users))
    if not (conv.op == "call_function" and conv.target is aten.conv2d.default and not conv.kwargs
            and conv.args[0] is node):
        return False
    args = _conv_args(conv)
    weight = _param_value(gm, args[1])
    if weight is None or int(weight.shape[1]) * int(args[6]) != c or (c > 1 and int(args[6]) == c):
        return False
    inverse = torch.argsort(perm)  # the tensors on the way hold x[i] where they held shuffled[inverse[i]]
    with gm.graph.inserting_before(conv):
        args[1] = _constant(gm, _dense(weight, int(args[6]))[:, inverse], "shuffled_weight")
    args[6] = 1
    conv.args = tuple(args)
    _permute_chain(gm, chain, inverse)
    return True


def _replace(gm: torch.fx.GraphModule, node: torch.fx.Node, build, *, inplace_arg: Any = None) -> None:
    """Insert ``build(graph)`` before ``node``, move its uses to the result and drop ``node``. For an
    in-place op (``inplace_arg`` = the tensor it mutated) later readers of that tensor move too."""
    with gm.graph.inserting_before(node):
        out = build(gm.graph)
    out.meta.update({k: node.meta[k] for k in ("val", "tensor_meta") if k in node.meta})  # later rewrites read shapes
    node.replace_all_uses_with(out)
    if isinstance(inplace_arg, torch.fx.Node):
        order = {n: i for i, n in enumerate(gm.graph.nodes)}
        for user in list(inplace_arg.users):
            if user is not out and order.get(user, -1) > order[node]:
                user.replace_input_with(inplace_arg, out)
    gm.graph.erase_node(node)


def _constant(gm: torch.fx.GraphModule, tensor: torch.Tensor, stem: str) -> torch.fx.Node:
    """A new constant (buffer) of ``gm`` as a get_attr node."""
    i = 0
    while hasattr(gm, f"_edgekit_{stem}_{i}"):
        i += 1
    name = f"_edgekit_{stem}_{i}"
    gm.register_buffer(name, tensor.detach().clone())
    return gm.graph.get_attr(name)


def _param_value(gm: torch.fx.GraphModule, node: Any) -> torch.Tensor | None:
    if isinstance(node, torch.fx.Node) and node.op == "get_attr":
        obj = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj.detach() if isinstance(obj, torch.Tensor) else None
    return None


def _hardswish_int8(gm: torch.fx.GraphModule) -> int:
    """``hardswish(x)`` -> ``x * (clamp(x/3, -1, 1) * 0.5 + 0.5)``, ``hardsigmoid`` -> the bracket.

    XNNPACK runs float HARD_SWISH but not the int8 one: each int8 HARD_SWISH falls back to the
    builtin kernel and cuts the delegated graph in two (FBNetV3-A at 64 px: 77 cuts, int8 0.6x the
    speed of fp32). The textbook ``x * relu6(x + 3) / 6`` is fused back into HARD_SWISH by the
    converter; this form (the same function: clamp(x+3, 0, 6)/6 = (clamp(x/3, -1, 1) + 1)/2) becomes
    MUL (+fused RELU_N1_TO_1), MUL, ADD, MUL: int8 XNNPACK ops."""
    aten = torch.ops.aten
    swishes = (aten.hardswish.default, aten.hardswish_.default)
    inplace = (aten.hardswish_.default, aten.hardsigmoid_.default)
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in swishes + (aten.hardsigmoid.default,
                                                                         aten.hardsigmoid_.default):
            continue
        x = node.args[0]
        swish = node.target in swishes

        def build(g, x=x, swish=swish):
            r = g.call_function(aten.clamp.default, (g.call_function(aten.mul.Tensor, (x, 1.0 / 3.0)), -1.0, 1.0))
            gate = g.call_function(aten.add.Tensor, (g.call_function(aten.mul.Tensor, (r, 0.5)), 0.5))
            return g.call_function(aten.mul.Tensor, (x, gate)) if swish else gate

        _replace(gm, node, build, inplace_arg=x if node.target in inplace else None)
        n += 1
    return n


def _prelu_int8(gm: torch.fx.GraphModule) -> int:
    """``prelu(x, a)`` with every slope 0 <= a < 1 -> ``a * x + relu((1 - a) * x)``.

    litert-torch lowers PReLU to RELU, MUL, MUL, SUB; that RELU reads a tensor with other users, so
    it stays a standalone int8 RELU, which XNNPACK does not take (ESPNetv2: 57 cuts of the delegated
    graph). Here the RELU is fused into the MUL before it (relu((1-a)x) = (1-a)relu(x) for 1-a > 0)."""
    aten = torch.ops.aten
    n = 0
    for node in list(gm.graph.nodes):
        a = _prelu_slopes(gm, node)
        x = node.args[0] if a is not None else None
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if a is None or val is None or val.dim() != 4:
            continue
        shape = (1, -1, 1, 1) if a.numel() > 1 else (1, 1, 1, 1)
        slope, keep = a.reshape(shape).float(), (1.0 - a).reshape(shape).float()

        def build(g, x=x, slope=slope, keep=keep):
            neg = g.call_function(aten.mul.Tensor, (x, _constant(gm, slope, "prelu_slope")))
            pos = g.call_function(aten.relu.default, (g.call_function(aten.mul.Tensor, (x, _constant(gm, keep, "prelu_keep"))),))
            return g.call_function(aten.add.Tensor, (neg, pos))

        _replace(gm, node, build)
        n += 1
    return n


def _prelu_slopes(gm: torch.fx.GraphModule, node: torch.fx.Node) -> torch.Tensor | None:
    """The slopes of a PReLU node when all are in [0, 1) (where relu((1-a)x) = (1-a)relu(x))."""
    aten = torch.ops.aten
    if node.op != "call_function" or node.target not in (aten.prelu.default, aten._prelu_kernel.default):
        return None
    a = _param_value(gm, node.args[1])
    return a.float() if a is not None and bool(((a >= 0) & (a < 1)).all()) else None


def _bn_prelu_int8(gm: torch.fx.GraphModule) -> int:
    """A BatchNorm that no conv precedes (ESPNet's BN + PReLU after a concat) -> 1x1 depthwise convs.

    After a conv the converter folds BN into it; elsewhere BN stays a MUL and an ADD, and the PReLU
    after it three more int8 elementwise ops. As ``relu(dw1x1((1-a)s, (1-a)t)) + dw1x1(a s, a t)``
    (BN scale s, shift t folded in) it is two int8 depthwise convs, one with a fused RELU, and an ADD;
    a BN alone becomes one depthwise conv."""
    aten = torch.ops.aten
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.batch_norm.default or node.args[5]:
            continue
        x = node.args[0]
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if val is None or val.dim() != 4 or (x.op == "call_function" and x.target in (aten.conv2d.default,
                                                                                       aten.convolution.default)):
            continue
        w, b, mean, var = (_param_value(gm, arg) for arg in node.args[1:5])
        if mean is None or var is None or (node.args[1] is not None and w is None) or \
                (node.args[2] is not None and b is None):
            continue
        c = int(val.shape[1])
        scale = (torch.ones(c) if w is None else w.float()) / torch.sqrt(var.float() + float(node.args[7]))
        shift = (torch.zeros(c) if b is None else b.float()) - mean.float() * scale
        users = list(node.users)
        slopes = _prelu_slopes(gm, users[0]) if len(users) == 1 else None
        if slopes is not None and slopes.numel() not in (1, c):
            slopes = None

        def dw(g, x, weight, bias):
            return g.call_function(aten.conv2d.default, (x, _constant(gm, weight.reshape(c, 1, 1, 1), "bn_weight"),
                                                         _constant(gm, bias, "bn_bias"), [1, 1], [0, 0], [1, 1], c))

        if slopes is None:
            _replace(gm, node, lambda g: dw(g, x, scale, shift))
        else:
            a = slopes.expand(c)
            prelu = users[0]

            def build(g, x=x, a=a):
                pos = g.call_function(aten.relu.default, (dw(g, x, (1 - a) * scale, (1 - a) * shift),))
                return g.call_function(aten.add.Tensor, (pos, dw(g, x, a * scale, a * shift)))

            _replace(gm, prelu, build)
            gm.graph.erase_node(node)
        n += 1
    return n


def _avg_pool_int8(gm: torch.fx.GraphModule) -> int:
    """``avg_pool2d`` (zero padding counted, floor mode) -> depthwise conv with weights 1/(kh*kw).

    XNNPACK's AVERAGE_POOL_2D is float-only, so every int8 one cuts the delegated graph (ESPNet's
    image pyramid, GhostNetV2's DFC attention); a depthwise conv computes the same numbers and is
    an int8 XNNPACK op (1/k^2 is exact in per-channel int8: 127 * scale)."""
    aten = torch.ops.aten
    n = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.avg_pool2d.default:
            continue
        args = list(node.args) + [None] * (7 - len(node.args))
        x, kernel, stride, padding, ceil_mode, count_pad, divisor = args[:7]
        kw = node.kwargs
        ceil_mode = kw.get("ceil_mode", ceil_mode or False)
        count_pad = kw.get("count_include_pad", True if count_pad is None else count_pad)
        divisor = kw.get("divisor_override", divisor)
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        kernel = list(kernel) * (2 // len(kernel))
        stride = list(stride or kernel) * (2 // len(stride or kernel))
        padding = list(padding or [0]) * (2 // len(padding or [0]))
        if val is None or val.dim() != 4 or ceil_mode or divisor is not None or (any(padding) and not count_pad):
            continue
        c = int(val.shape[1])
        weight = torch.full((c, 1, kernel[0], kernel[1]), 1.0 / (kernel[0] * kernel[1]))

        def build(g, x=x, weight=weight, stride=stride, padding=padding, c=c):
            return g.call_function(aten.conv2d.default, (x, _constant(gm, weight, "avg_weight"),
                                                         _constant(gm, torch.zeros(c), "avg_bias"),
                                                         stride, padding, [1, 1], c))

        _replace(gm, node, build)
        n += 1
    return n


_INT8_REWRITES = (_hardswish_int8, _bn_prelu_int8, _prelu_int8, _avg_pool_int8)


def _check_example(example_nchw: Any, layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r} must be one of {LAYOUTS}")
    if not isinstance(example_nchw, torch.Tensor) or example_nchw.dim() != 4:
        shape = tuple(example_nchw.shape) if isinstance(example_nchw, torch.Tensor) else type(example_nchw).__name__
        raise ValueError(f"example input must be a 4-D NCHW tensor (B, C, H, W), got {shape}")


def _prepared(model: nn.Module, example_nchw: torch.Tensor, layout: str,
              int8_rewrites: bool = False) -> tuple[nn.Module, torch.Tensor, str]:
    """The module litert-torch converts, its example input, and the output layout."""
    model = copy.deepcopy(model).eval()
    example_nchw = example_nchw.detach().float()
    with torch.no_grad():
        out = model(example_nchw)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"the model must return one tensor, got {type(out).__name__}")
    spatial = out.dim() == 4
    if layout == "NCHW":
        wrapper, example = model, example_nchw
    else:
        wrapper, example = _ChannelsLast(model, spatial).eval(), example_nchw.permute(0, 2, 3, 1).contiguous()
    with torch.no_grad():
        program = torch.export.export(wrapper, (example,), strict=False)
    gm = _rewrite_for_nhwc(program.module())
    if _fold_channel_shuffles(gm):
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    for sub in gm.modules():  # the graph was exported in eval mode already; the flag only quiets
        sub.training = False  # litert-torch's warning (GraphModule.eval() is refused for exported graphs)
    if int8_rewrites and sum(rewrite(gm) for rewrite in _INT8_REWRITES):
        gm.graph.lint()
        gm.recompile()
    return gm, example, layout


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
    return _export_fp32(model, example_nchw, layout, int8_rewrites=False)


def _export_fp32(model: nn.Module, example_nchw: torch.Tensor, layout: str, *, int8_rewrites: bool) -> TfliteExport:
    _check_example(example_nchw, layout)
    t0 = time.perf_counter()
    with _quiet_tools("TFLite conversion") as where:
        module, example, io_layout = _prepared(model, example_nchw, layout, int8_rewrites)
        where.graph = module
        data = _convert(module, example)
    seconds = time.perf_counter() - t0
    ins, outs = io_tensors(data, io_layout)
    return TfliteExport(model_bytes=data, precision="fp32", inputs=ins, outputs=outs, op_histogram=op_histogram(data),
                        tools=tool_versions(), route="litert-torch", convert_seconds=seconds)


def convert_float_graphs(model: nn.Module, example_nchw: torch.Tensor, *, layout: str = "NHWC",
                         fp32: bool = True, int8: bool = True) -> dict[str, TfliteExport]:
    """The float conversions an export needs, in one call (``edgekit.export`` runs it in a worker
    process, beside the ONNX work): ``"fp32"``, the file :func:`export_tflite_fp32` gives, and
    ``"int8"``, the float graph with the int8 rewrites that :func:`plan_tflite_int8` takes as
    ``graph=``. When no rewrite applies the two graphs are the same and converted once."""
    out = {}
    if fp32:
        out["fp32"] = export_tflite_fp32(model, example_nchw, layout=layout)
    if int8:
        out["int8"] = _export_fp32(model, example_nchw, layout, int8_rewrites=True)
    return out


# ---- running ------------------------------------------------------------------------------------

def _to_input(x: np.ndarray, detail: Mapping[str, Any]) -> np.ndarray:
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


def run_tflite(model_bytes: bytes, inputs_nhwc: np.ndarray, *, threads: int = 1) -> np.ndarray:
    """Float outputs for float inputs (N, ...) laid out as the file's input; N may exceed the file's
    batch (run in chunks of that batch). Integer I/O is quantized / dequantized with the tensors'
    own scale and zero point.

    >>> run_tflite(exp.model_bytes, np.zeros((4, 64, 64, 1), np.float32)).shape   # doctest: +SKIP
    (4, 10)
    """
    it = _interpreter(model_bytes, threads)
    (inp,) = it.get_input_details()
    outs = it.get_output_details()
    x = _check_batch(inputs_nhwc, inp["shape"])
    b = int(inp["shape"][0])
    if len(x) % b:
        raise ValueError(f"{len(x)} inputs are not a whole number of the file's batch {b}")
    results = []
    for i in range(0, len(x), b):
        it.set_tensor(inp["index"], _to_input(x[i:i + b], inp))
        it.invoke()
        results.append(_from_output(it.get_tensor(outs[0]["index"]), outs[0]))
    return np.concatenate(results)


def benchmark_tflite(model_bytes: bytes, inputs: np.ndarray, *, threads: int = 1, runs: int = 50,
                     warmup: int = 10) -> dict[str, float]:
    """Latency of one ``invoke`` (XNNPACK, ``threads`` threads) on the first input: median, p90, min,
    mean in ms and the run count. The input is set once, outside the timed region.

    >>> benchmark_tflite(exp.model_bytes, x, runs=50)["median_ms"]    # doctest: +SKIP
    0.31
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs {runs} must be >= 1 and warmup {warmup} >= 0")
    it = _interpreter(model_bytes, threads)
    (inp,) = it.get_input_details()
    x = _check_batch(inputs, inp["shape"])[: int(inp["shape"][0])]
    it.set_tensor(inp["index"], _to_input(x, inp))
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


# ---- int8 -----------------------------------------------------------------------------------------

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
    from .._background import usable_cpus
    it = _interpreter(model_bytes, min(usable_cpus(), 4), preserve=True)
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


def _measure_ranges(model_bytes: bytes, calib_nhwc: np.ndarray, estimator: Any) -> dict[str, tuple[float, float]]:
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


def _unify_same_scale(model_bytes: bytes, ranges: Mapping[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
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
    (``convert_float_graphs(...)["int8"]`` of the same model, example and layout)."""
    from edgekit.calibration.ranges import RangeEstimator, method_from_name
    estimator = method if isinstance(method, RangeEstimator) else method_from_name(method)
    _check_example(example_nchw, layout)
    calib = _check_calib(calib, tuple(example_nchw.shape[1:]))
    t0 = time.perf_counter()
    if graph is not None and (graph.precision != "fp32" or graph.inputs[0].shape != _file_input_shape(example_nchw,
                                                                                                      layout)):
        raise ValueError(f"graph= must be the float conversion of this model for input "
                         f"{_file_input_shape(example_nchw, layout)}; got a {graph.precision} file for "
                         f"{graph.inputs[0].shape}")
    fp32 = graph if graph is not None else _export_fp32(model, example_nchw, layout, int8_rewrites=True)
    calib_in = fp32.inputs[0].from_nchw(calib)
    with _quiet_tools("TFLite int8 calibration"):
        measured = _measure_ranges(fp32.model_bytes, calib_in, estimator)
        unknown = sorted(set(ranges or {}) - set(measured))
        if unknown:
            raise ValueError(f"injected ranges name tensors the float graph does not have: {unknown[:3]}; "
                             f"valid names are the keys of an export's .ranges")
        measured.update({k: (float(lo), float(hi)) for k, (lo, hi) in (ranges or {}).items()})
        final = _unify_same_scale(fp32.model_bytes, measured)
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
    with _quiet_tools("TFLite int8 quantization"):
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
                layer = layer or _module_of_tensor(tensor, model)
        out.append({"op": op["op"], "output": name, "layer": layer or name})
    return out


def _module_of_tensor(name: str, model: nn.Module) -> str | None:
    """litert-torch names a tensor after the module stacks of the nodes fused into it, joined by ';',
    each stack ``<class>_<attr>/<class>_<attr>/...`` under the NHWC wrapper. The stack whose last
    module has a weight of rank >= 2 (the conv, not the BN or activation fused into it) gives the path."""
    paths = []
    for loc in name.split(";"):
        parts = loc.split("/")
        if len(parts) < 2 or not parts[0].endswith("_ChannelsLast"):
            continue
        path = _walk(model, parts[2:]) if parts[1].endswith("_model") else None
        if path is not None:
            paths.append(path)
    for path in paths:
        weight = getattr(model.get_submodule(path), "weight", None) if path else None
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2:
            return path
    return paths[0] if paths and paths[0] else None


def _walk(model: nn.Module, segments: Sequence[str]) -> str | None:
    """'features.2.conv' from ['torch.nn.modules.container.Sequential_features', ..., 'torch.nn...Conv2d_conv']."""
    module, path = model, []
    for seg in segments:
        for attr, child in module.named_children():
            cls = type(child)
            if seg == f"{cls.__module__}.{cls.__qualname__}_{attr}":
                module = child
                path.append(attr)
                break
        else:
            return None
    return ".".join(path)


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
    PReLU, average pooling; see ``_INT8_REWRITES``), so the int8 file runs as one delegated graph.
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

"""PyTorch -> ONNX (fp32), and ONNX fp32 -> ONNX int8 (static QDQ: int8 weights AND activations).

>>> import numpy as np, torch
>>> from edgekit.models import create_model
>>> from edgekit.exporters.onnx import export_onnx_fp32, quantize_onnx_int8
>>> model = create_model("fbnet_c", num_classes=10, in_chans=1, resolution=64)
>>> fp32 = export_onnx_fp32(model, torch.zeros(1, 1, 64, 64))
>>> fp32(np.zeros((2, 1, 64, 64), np.float32)).shape      # callable like the PyTorch model
(2, 10)
>>> calib = np.random.default_rng(0).normal(size=(8, 1, 64, 64)).astype(np.float32)  # real data in practice
>>> int8 = quantize_onnx_int8(fp32, calib, speed_check=False)
>>> int8.precision, int8.outputs[0].layout
('int8', 'NC')

Which torch.onnx exporter, and why (measured with torch 2.13, onnx 1.23, onnxscript 0.7, ORT 1.32):
both the ``dynamo=True`` (torch.export) exporter and the legacy TorchScript one export all 40 zoo
models at 64x64 and their outputs match PyTorch in onnxruntime. The dynamo exporter is used because
(1) its graph is clean: ghostnet_1_0 has 223 nodes against 469 (the TorchScript graph keeps 58
Identity and 156 Constant nodes), and ghostnetv2's DFC-attention resize gets static sizes, where the
TorchScript graph computes them at run time with 40 Shape/Gather/Cast/Concat chains, which neither
ORT's quantizer nor a TFLite converter wants; (2) it folds every BatchNorm that follows a Conv
(onnxscript's FuseBatchNormIntoConv) and constant-folds in the same pass; (3) every node carries the
module it came from (``pkg.torch.onnx.name_scopes``), so nodes are renamed here to module paths
(``stages.2.0.se.conv_reduce/Conv``) and ORT and quantizer errors name the module; (4) TorchScript
export is deprecated (DeprecationWarning "will be removed") and dynamo is torch's default. Its
costs: export takes ~5-20 s instead of ~1-5 s, and the default opset is 20 (not 17).
BatchNormalization nodes that remain are those with no Conv before them (ESPNet's BN after a Concat
or an Add); ORT runs them as they are.

Why int8 defaults to QDQ with uint8 activations (U8S8), per-channel int8 weights, and why S8S8 is
slow on x86 -- measured on an AMD EPYC (Zen 4, AVX-512 VNNI), ORT
1.32, 1 thread, batch 1:
* ORT on x86 only fuses a QDQ group ``DQ -> Conv -> Q`` into ``QLinearConv`` when the activations are
  uint8: the session option ``session.qdqisint8allowed`` defaults to off on x86. With int8 (S8S8)
  activations 72 of ghostnet's 95 Convs stay float Convs wrapped in DequantizeLinear/QuantizeLinear,
  and Add/Concat/Mul are not fused either, so the int8 file does the fp32 work plus the (de)quantize
  work: 2.7-4x slower than fp32. Forcing the fusion (``session.qdqisint8allowed=1``) does not help:
  MLAS' S8S8 QLinearConv kernels are ~6x slower than its U8S8 ones on this CPU (VNNI's VPDPBUSD
  multiplies u8 by s8). With U8S8 every Conv, Add, Concat and the SE Mul fuse into QLinear* ops.
* The other choices (per-tensor weights, reduce_range, QOperator format, quant_pre_process, leaving
  SE/Sigmoid/Mul float) and the graph optimisation level were measured too and did not beat QDQ
  U8S8 per-channel; ``ORT_ENABLE_ALL`` (the ORT default) is what a device runs.
S8S8 remains available (``activation_type="int8"``): it is what ARM kernels prefer and what ORT
enables there by default. Whatever is chosen, :func:`quantize_onnx_int8` measures int8 against fp32
on this machine and records (and warns) when int8 is the slower one.
"""
from __future__ import annotations

import ast
import contextlib
import difflib
import functools
import io
import logging
import math
import os
import platform
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .._checks import is_count
from .artifact import TensorInfo, sha256_bytes

__all__ = ["OnnxExport", "OnnxExportError", "Int8Settings", "export_onnx_fp32", "quantize_onnx_int8",
           "quantize_onnx_nodes", "with_speed_check", "inference_session", "weighted_layers", "node_outputs",
           "calibrated_tensors", "benchmark_onnx", "int8_structure", "sqnr_db", "tool_versions", "CALIB_METHODS",
           "ACTIVATION_TYPES", "INPUT_NAME", "OUTPUT_NAME", "PARITY_RTOL", "output_names"]

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# max |ORT - PyTorch| must be <= PARITY_RTOL * max |PyTorch|. Folded BatchNorms and a different
# summation order leave up to ~2e-4 of the output scale on the deep FBNetV3 variants with random BN
# statistics (fbnetv3_f: 1.7e-3 at a max |logit| of 7.9); a wrong op is off by the order of the output.
PARITY_RTOL = 1e-3
CALIB_METHODS = ("minmax", "percentile", "entropy", "mse")
ACTIVATION_TYPES = ("uint8", "int8")
QUANT_FORMATS = ("qdq", "qoperator")
# Ops kept in float by default: none. Quantizing the SE gate's Mul lets ORT fuse it (QLinearMul);
# leaving Sigmoid/Mul float measured no more accurate and no faster (see the module docstring).
DEFAULT_FLOAT_OP_TYPES: tuple[str, ...] = ()
_ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile"}
# Range estimators taken from edgekit.calibration.ranges. "entropy" is among them because ORT's
# EntropyCalibrater, with the 128 histogram bins and 128 quantized bins quantize_static gives it,
# has exactly one candidate threshold, the full range: every range equals MinMax's (checked on all
# 9 tensors of a 3-conv net). With 2048 bins it searches, but in Python loops at ~2.3 s per tensor.
_EDGEKIT_METHODS = ("entropy", "mse")


class OnnxExportError(RuntimeError):
    """The model could not be converted, or the converted file does not do what the model does."""


def _check_choice(label: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        close = difflib.get_close_matches(str(value), choices, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{label} {value!r} is not one of {tuple(choices)}{hint}")


# ---- result -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Int8Settings:
    """How an int8 file was made; validated here so a typo fails before any work is done."""

    method: str = "minmax"
    per_channel: bool = True
    activation_type: str = "uint8"
    reduce_range: bool = False
    quant_format: str = "qdq"
    percentile: float = 99.999
    float_op_types: tuple[str, ...] = DEFAULT_FLOAT_OP_TYPES

    def __post_init__(self):
        object.__setattr__(self, "float_op_types", tuple(self.float_op_types))
        _check_choice("method", self.method, CALIB_METHODS)
        _check_choice("activation_type", self.activation_type, ACTIVATION_TYPES)
        _check_choice("quant_format", self.quant_format, QUANT_FORMATS)
        for label in ("per_channel", "reduce_range"):
            if not isinstance(getattr(self, label), bool):
                raise ValueError(f"{label}={getattr(self, label)!r} must be True or False")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile {self.percentile} must be in (50, 100], e.g. 99.999")
        unknown = sorted(set(self.float_op_types) - set(_quantizable_op_types(())))
        if unknown:
            raise ValueError(f"float_op_types {unknown} are not ops ORT quantizes; choose from "
                             f"{sorted(_quantizable_op_types(()))}")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "per_channel": self.per_channel, "activation_type": self.activation_type,
                "weight_type": "int8", "reduce_range": self.reduce_range, "quant_format": self.quant_format,
                "percentile": self.percentile if self.method == "percentile" else None,
                "float_op_types": list(self.float_op_types)}


@dataclass(frozen=True)
class OnnxExport:
    """An ONNX model in memory plus what the manifest needs; call it like the PyTorch model."""

    model_bytes: bytes
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    precision: str  # "fp32", "int8" (integer weights AND activations) or "mixed" (int8 but ``float_nodes``)
    opset: int
    tools: Mapping[str, str]
    settings: Int8Settings | None = None  # int8 only
    calibration_samples: int | None = None  # int8 only
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # int8: activation (lo, hi) used
    notes: tuple[str, ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=dict)
    float_nodes: tuple[str, ...] = ()  # mixed: the nodes the quantizer left in float

    def __post_init__(self):
        object.__setattr__(self, "float_nodes", tuple(self.float_nodes))
        if self.precision not in ("fp32", "int8", "mixed"):
            raise ValueError(f"precision {self.precision!r} must be 'fp32', 'int8' or 'mixed'")
        if (self.precision != "fp32") != (self.settings is not None):
            raise ValueError("int8 and mixed exports carry their Int8Settings, fp32 exports none")
        if (self.precision == "mixed") != bool(self.float_nodes):
            raise ValueError("a mixed export lists its float nodes; fp32 and int8 exports list none")

    @property
    def sha256(self) -> str:
        return sha256_bytes(self.model_bytes)

    @functools.cached_property
    def _session(self):
        return inference_session(self.model_bytes, threads=None)

    def __call__(self, x: np.ndarray | torch.Tensor) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run (N, C, H, W) through the batch-1 file one sample at a time; returns (N, ...) float32,
        or a tuple of them, in the module's order, for a file with several outputs."""
        x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        want = self.inputs[0].shape
        if x.ndim != len(want) or tuple(x.shape[1:]) != want[1:]:
            raise ValueError(f"input shape {tuple(x.shape)} does not fit the model input (N, {', '.join(map(str, want[1:]))})")
        x = np.ascontiguousarray(x, dtype=np.float32)
        runs = [self._session.run(None, {self.inputs[0].name: x[i:i + 1]}) for i in range(len(x))]
        outs = tuple(np.concatenate(parts) for parts in zip(*runs))
        return outs[0] if len(outs) == 1 else outs


def tool_versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript
    return {"torch": torch.__version__.split("+")[0], "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__, "onnxruntime": onnxruntime.__version__}


# ---- fp32 export ------------------------------------------------------------------------------

def output_names(count: int) -> list[str]:
    """The graph's output names: ``logits`` for one output, ``output_0``, ``output_1``, ... for several."""
    return [OUTPUT_NAME] if count == 1 else [f"output_{i}" for i in range(count)]


def export_onnx_fp32(model: nn.Module, example: torch.Tensor, *, opset: int | None = None) -> OnnxExport:
    """ONNX bytes of ``model`` in eval mode for a static (1, C, H, W) float32 input named ``input``
    and its outputs (a tensor or a tuple of tensors) named by :func:`output_names`; BatchNorm folded
    into the Conv before it, graph constant-folded, checked by ``onnx.checker``, and run in
    onnxruntime against PyTorch (max abs error <= ``PARITY_RTOL`` x max |output| for every output),
    else :class:`OnnxExportError`."""
    import onnx

    example = _check_example(example)
    if opset is not None and not is_count(opset, 18):
        raise ValueError(f"opset {opset!r} must be an int >= 18 (the lowest the torch.export-based exporter "
                         f"emits; asked for 17 it silently gives 18), or None for torch's default")
    with _eval_mode(model), torch.no_grad():
        out = model(example)
        refs = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        if not refs or not all(isinstance(r, torch.Tensor) for r in refs):
            raise OnnxExportError(f"{type(model).__name__} returns {type(out).__name__}; the export needs a tensor "
                                  f"or a tuple of tensors")
        proto = _torch_export(model, example, opset, output_names(len(refs)))
    if opset is not None and _opset_of(proto) != opset:
        raise OnnxExportError(f"asked for opset {opset}, torch.onnx produced opset {_opset_of(proto)}")
    _name_nodes_by_module(proto)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise OnnxExportError(f"the exported graph is not valid ONNX: {_first_line(e)}") from None
    data = proto.SerializeToString()
    err, scale = _parity(data, example.numpy(), [r.numpy() for r in refs])
    metrics = {"parity_max_abs": err, "parity_max_ref": scale, "parity_rtol": PARITY_RTOL}
    return OnnxExport(model_bytes=data, inputs=(_tensor_info(INPUT_NAME, tuple(example.shape)),),
                      outputs=tuple(_tensor_info(n, tuple(r.shape)) for n, r in zip(output_names(len(refs)), refs)),
                      precision="fp32", opset=_opset_of(proto), tools=tool_versions(), metrics=metrics)


def _check_example(example: Any) -> torch.Tensor:
    if not isinstance(example, torch.Tensor):
        raise ValueError(f"example must be a torch.Tensor of shape (1, C, H, W), not {type(example).__name__}")
    if example.ndim != 4 or example.shape[0] != 1:
        raise ValueError(f"example shape {tuple(example.shape)} must be (1, C, H, W): the file has a static "
                         f"batch-1 NCHW input")
    if example.dtype != torch.float32:
        raise ValueError(f"example dtype {example.dtype} must be torch.float32")
    return example.detach().cpu().contiguous()


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for the export, each module's own mode restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _torch_export(model: nn.Module, example: torch.Tensor, opset: int | None, outputs: list[str]):
    """torch.export (non-strict), then torch.onnx's dynamo translation + onnxscript optimisation."""
    with _quiet_torch_onnx():
        try:
            ep = torch.export.export(model, (example,), strict=False)
        except Exception as e:  # tracing failed: torch's message names the code that did it
            raise OnnxExportError(f"torch.export could not trace {type(model).__name__}: "
                                  f"{_first_line(e)}") from e
        try:
            prog = torch.onnx.export(ep, (example,), dynamo=True, input_names=[INPUT_NAME],
                                     output_names=outputs, opset_version=opset, external_data=False,
                                     optimize=True, verbose=False)
        except Exception as e:
            raise OnnxExportError(_conversion_message(e, ep)) from e
    return prog.model_proto


@contextlib.contextmanager
def _quiet_torch_onnx() -> Iterator[None]:
    """torch.onnx logs one warning per optional torchvision op it could register; not the user's concern."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(e: BaseException) -> str:
    text = _ANSI.sub("", str(e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _conversion_message(e: BaseException, ep) -> str:
    """Name the op that failed to convert and the module it sits in (from torch.export's module stack)."""
    text = _ANSI.sub("", str(e))
    node_m = re.search(r"Error when translating node %(\w+)", text)
    target_m = re.search(r"target=([\w.:]+)", text)
    op = target_m.group(1).removeprefix("torch.ops.") if target_m else "an op"
    causes = []
    cause = e.__cause__ or e.__context__
    while cause is not None and len(causes) < 5:
        causes.append(_first_line(cause))
        cause = cause.__cause__ or cause.__context__
    reason = next((c for c in causes if "No ONNX function" in c or "not supported" in c), causes[-1] if causes else "")
    if not reason:
        summary = re.search(r"## Exception summary\s+(.+)", text)
        reason = summary.group(1).strip() if summary else _first_line(e)
    module = _module_of_fx_node(ep, node_m.group(1) if node_m else None, op)
    where = f" in module {module}" if module else ""
    return (f"ONNX conversion failed at op {op}{where}: {reason}. Replace that op in the model (or register "
            f"an ONNX translation for it with torch.onnx's custom_translation_table)")


def _module_of_fx_node(ep, node_name: str | None, op: str) -> str:
    for node in ep.graph.nodes:
        if node.name == node_name or (node_name is None and op in str(node.target)):
            stack = node.meta.get("nn_module_stack") or {}
            if not stack:
                return ""
            path, cls = list(stack.values())[-1]
            cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
            return f"'{path}' ({cls_name.rsplit('.', 1)[-1]})" if path else f"(root, {cls_name.rsplit('.', 1)[-1]})"
    return ""


def _name_nodes_by_module(proto) -> None:
    """Rename each node to ``<module path>/<OpType>`` from the exporter's name scopes, and drop the
    per-node metadata (stack traces with local file paths): the file stays small and deterministic,
    and ORT's and the quantizer's messages, which quote node names, name the module."""
    taken: dict[str, int] = {}
    for node in proto.graph.node:
        base = f"{_module_path(node)}/{node.op_type}".lstrip("/")
        k = taken.get(base, 0)
        taken[base] = k + 1
        node.name = base if k == 0 else f"{base}_{k}"
        del node.metadata_props[:]
    for v in (*proto.graph.input, *proto.graph.output):
        del v.metadata_props[:]


def _module_path(node) -> str:
    """Dotted path of the module a node came from ('' for the root). A Conv with a BatchNorm folded
    into it carries the BN's scope; name it after the module holding both (``stem``, not ``stem.1``)."""
    meta = {p.key: p.value for p in node.metadata_props}
    try:
        scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))[:-1]  # last: the aten op
        classes = ast.literal_eval(meta.get("pkg.torch.onnx.class_hierarchy", "[]"))[:-1]
    except (ValueError, SyntaxError):
        return ""
    if node.op_type == "Conv" and len(scopes) > 1 and classes and "BatchNorm" in str(classes[-1]):
        scopes = scopes[:-1]
    return scopes[-1] if scopes else ""


def _opset_of(proto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def _tensor_info(name: str, shape: tuple[int, ...]) -> TensorInfo:
    layout = {2: "NC", 4: "NCHW"}.get(len(shape), "")
    return TensorInfo(name=name, shape=shape, dtype="float32", layout=layout)


def _parity(data: bytes, x: np.ndarray, refs: Sequence[np.ndarray]) -> tuple[float, float]:
    """(max abs error, max |output|) of the output furthest from PyTorch, relative to its scale."""
    try:
        outs = inference_session(data, threads=1).run(None, {INPUT_NAME: x})
    except Exception as e:  # ORT names the node, which carries the module path
        raise OnnxExportError(f"onnxruntime cannot run the exported model: {_first_line(e)}") from e
    worst_err = None
    for i, (out, ref) in enumerate(zip(outs, refs)):
        which = f"output {i}" if len(refs) > 1 else "output"
        if out.shape != ref.shape:
            raise OnnxExportError(f"onnxruntime {which} shape {out.shape} differs from PyTorch's {ref.shape}")
        diff = np.abs(out.astype(np.float64) - ref)
        err, scale = float(diff.max(initial=0.0)), float(np.abs(ref).max(initial=0.0))
        if not err <= PARITY_RTOL * scale + 1e-7:
            worst = np.unravel_index(int(diff.argmax()), diff.shape)
            raise OnnxExportError(f"onnxruntime {which} differs from PyTorch: max abs {err:.3g} > {PARITY_RTOL:g} x "
                                  f"max |output| {scale:.3g}; worst element {tuple(map(int, worst))}: ORT "
                                  f"{out[worst]:.6g} vs PyTorch {ref[worst]:.6g}; SQNR {sqnr_db(ref, out):.1f} dB")
        if worst_err is None or err / max(scale, 1e-30) > worst_err[0] / max(worst_err[1], 1e-30):
            worst_err = (err, scale)
    return worst_err


# ---- int8 -------------------------------------------------------------------------------------

def quantize_onnx_int8(fp32: OnnxExport, calib: np.ndarray, *, method: str = "minmax", per_channel: bool = True,
                       activation_type: str = "uint8", reduce_range: bool = False, quant_format: str = "qdq",
                       percentile: float = 99.999, float_op_types: Sequence[str] = DEFAULT_FLOAT_OP_TYPES,
                       ranges: Mapping[str, tuple[float, float]] | None = None,
                       float_nodes: Sequence[str] = (), speed_check: bool = True) -> OnnxExport:
    """Static int8 quantization with onnxruntime.quantization: int8 weights (per output channel by
    default) and ``activation_type`` activations, ranges calibrated on ``calib``, a preprocessed
    float32 (N, C, H, W) array of real inputs.

    ``method``: ``minmax``/``percentile`` are ORT's calibrators (percentile: both tails, 2048 bins);
    ``entropy`` (KL, TensorRT-style) and ``mse`` take ranges from ``edgekit.calibration.ranges``.
    ``ranges`` injects precomputed (lo, hi) per activation tensor (names: :func:`calibrated_tensors`);
    they replace the calibrated ones. ``float_op_types`` are op types left in float; ``float_nodes``
    are single nodes left in float (names as in the fp32 graph, e.g. ``stages.2.0.conv_pw/Conv``),
    which makes the result precision ``"mixed"``.
    ``speed_check`` times int8 against fp32 on this host (1 thread, batch 1) into
    ``metrics["speed"]`` and, when int8 is the slower one, says so in ``notes`` and warns.
    The ranges used are returned in ``ranges``.
    """
    settings = Int8Settings(method=method, per_channel=per_channel, activation_type=activation_type,
                            reduce_range=reduce_range, quant_format=quant_format, percentile=percentile,
                            float_op_types=tuple(float_op_types))
    if fp32.precision != "fp32":
        raise ValueError(f"quantize_onnx_int8 takes an fp32 export, not a {fp32.precision!r} one")
    calib = _check_calib(calib, fp32.inputs[0])
    float_nodes = _check_nodes(fp32.model_bytes, float_nodes)
    op_types = _quantizable_op_types(settings.float_op_types)
    with tempfile.TemporaryDirectory(prefix="edgekit-int8-") as tmp:
        src = Path(tmp, "fp32.onnx")
        src.write_bytes(fp32.model_bytes)
        tensor_ranges = _calibrate(src, calib, settings, op_types, Path(tmp))
        _inject_ranges(tensor_ranges, ranges)
        data = _quantize_with_ranges(src, tensor_ranges, settings, op_types, Path(tmp), exclude=float_nodes)
    structure = int8_structure(data)
    float_convs = sorted(set(structure.pop("float_convs")) - set(float_nodes))
    if float_convs:
        raise OnnxExportError(f"these Conv/Gemm nodes kept float weights, so the file is not int8: {float_convs[:5]}")
    metrics: dict[str, Any] = {"structure": structure, "sqnr_db_calib": _calib_sqnr(fp32, data, calib[:32])}
    int8 = OnnxExport(model_bytes=data, inputs=fp32.inputs, outputs=fp32.outputs,
                      precision="mixed" if float_nodes else "int8", opset=_opset_of_bytes(data), tools=tool_versions(),
                      settings=settings, calibration_samples=len(calib), ranges=tensor_ranges,
                      metrics=metrics, float_nodes=float_nodes)
    return with_speed_check(fp32, int8, calib[:1]) if speed_check else int8


def with_speed_check(fp32: OnnxExport, int8: OnnxExport, x: np.ndarray) -> OnnxExport:
    """``int8`` with its speed against ``fp32`` on this host (1 thread, batch 1, input ``x``) in
    ``metrics["speed"]``; when int8 is the slower one, a note says so and a RuntimeWarning is raised.
    (``quantize_onnx_int8`` does this itself unless told ``speed_check=False``.)"""
    speed = _speed_check(fp32.model_bytes, int8.model_bytes, x)
    note = _speed_note(speed)
    if note:
        warnings.warn(note, RuntimeWarning, stacklevel=2)
    return replace(int8, metrics={**int8.metrics, "speed": speed}, notes=int8.notes + ((note,) if note else ()))


def quantize_onnx_nodes(fp32: OnnxExport, ranges: Mapping[str, tuple[float, float]], settings: Int8Settings, *,
                        only: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> bytes:
    """QDQ bytes of ``fp32`` with ``ranges`` (an int8 export's ``.ranges``: no calibration is run),
    quantizing only the nodes ``only`` (None: every node the quantizer takes) minus ``exclude``.
    What sensitivity analysis builds its one-layer-at-a-time variants from."""
    exclude = _check_nodes(fp32.model_bytes, exclude)
    if only is not None:
        only = _check_nodes(fp32.model_bytes, only)
    with tempfile.TemporaryDirectory(prefix="edgekit-int8-") as tmp:
        src = Path(tmp, "fp32.onnx")
        src.write_bytes(fp32.model_bytes)
        return _quantize_with_ranges(src, dict(ranges), settings, _quantizable_op_types(settings.float_op_types),
                                     Path(tmp), exclude=exclude, only=only)


WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def weighted_layers(model_bytes: bytes) -> dict[str, tuple[str, ...]]:
    """``{PyTorch module path: (node names, ...)}`` of the Conv / Gemm / MatMul nodes, in graph order.
    Nodes are named ``<module path>/<OpType>[_k]`` at export, so the module path is the name up to
    the last ``/``; a node of the root module keeps its own name."""
    import onnx
    layers: dict[str, list[str]] = {}
    for node in onnx.load_from_string(model_bytes).graph.node:
        if node.op_type in WEIGHTED_OPS:
            path = node.name.rsplit("/", 1)[0] if "/" in node.name else node.name
            layers.setdefault(path or node.name, []).append(node.name)
    return {k: tuple(v) for k, v in layers.items()}


def node_outputs(model_bytes: bytes, nodes: Sequence[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """``{node name: its first output over the batch x}``: the graph run with those tensors exposed
    (one sample at a time; the file has a batch-1 input)."""
    import onnx
    graph = onnx.load_from_string(model_bytes).graph
    by_name = {n.name: n for n in graph.node}
    tensors = [by_name[n].output[0] for n in nodes]
    with tempfile.TemporaryDirectory(prefix="edgekit-nodes-") as tmp:
        src = Path(tmp, "m.onnx")
        src.write_bytes(model_bytes)
        sess = inference_session(_exposing(src, tensors), threads=None)
    runs = [sess.run(tensors, {INPUT_NAME: x[i:i + 1]}) for i in range(len(x))]
    return {n: np.concatenate([r[k] for r in runs]) for k, n in enumerate(nodes)}


def _check_nodes(model_bytes: bytes, nodes: Sequence[str]) -> tuple[str, ...]:
    import onnx
    if isinstance(nodes, str):
        raise ValueError(f"node names must be a list, not the string {nodes!r}")
    names = [n.name for n in onnx.load_from_string(model_bytes).graph.node]
    for node in nodes:
        if node not in names:
            close = difflib.get_close_matches(node, names, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"node {node!r} is not in the graph{hint} (names are '<module path>/<OpType>')")
    return tuple(dict.fromkeys(nodes))


def calibrated_tensors(fp32: OnnxExport, *, float_op_types: Sequence[str] = DEFAULT_FLOAT_OP_TYPES) -> list[str]:
    """Names of the activation tensors :func:`quantize_onnx_int8` gives a range to (the keys its
    ``ranges`` argument accepts): inputs and outputs of the nodes it quantizes."""
    with tempfile.TemporaryDirectory(prefix="edgekit-int8-") as tmp:
        src = Path(tmp, "fp32.onnx")
        src.write_bytes(fp32.model_bytes)
        return _tensors_to_calibrate(src, _quantizable_op_types(float_op_types), Path(tmp))


def _tensors_to_calibrate(src: Path, op_types: list[str], tmp: Path) -> list[str]:
    from onnxruntime.quantization import MinMaxCalibrater
    with _quiet_ort():
        selector = MinMaxCalibrater(src, op_types, augmented_model_path=str(tmp / "unused.onnx"))
        return sorted(selector.select_tensors_to_calibrate(selector.model)[0])


def _speed_note(speed: Mapping[str, Any]) -> str | None:
    """The user-facing note when int8 is slower than fp32 on this host, else None."""
    if not speed["int8_median_ms"] > speed["fp32_median_ms"]:
        return None
    return (f"int8 is slower than fp32 here: {speed['int8_median_ms']:.2f} ms vs {speed['fp32_median_ms']:.2f} ms "
            f"median ({speed['ratio']:.2f}x) on {speed['host']}, onnxruntime {speed['onnxruntime']}, "
            f"{speed['threads']} thread, batch 1; ops ORT runs in float between int8 ones (e.g. PRelu, "
            f"HardSwish) cost a dequantize and a quantize each")


def _check_calib(calib: Any, inp: TensorInfo) -> np.ndarray:
    want = "(N, " + ", ".join(map(str, inp.shape[1:])) + ")"
    if not isinstance(calib, np.ndarray):
        raise ValueError(f"calibration data must be a numpy array {want}, not {type(calib).__name__}")
    if calib.dtype != np.float32:
        raise ValueError(f"calibration data dtype {calib.dtype} must be float32 (the model input's); "
                         f"preprocess it as the model expects, then .astype(np.float32)")
    if calib.ndim != len(inp.shape) or tuple(calib.shape[1:]) != tuple(inp.shape[1:]):
        raise ValueError(f"calibration data shape {calib.shape} does not fit the model input: expected {want}")
    if len(calib) == 0:
        raise ValueError(f"calibration data is empty: shape {calib.shape}; pass at least one sample {want}")
    bad = ~np.isfinite(calib)
    if bad.any():
        samples = np.unique(np.nonzero(bad)[0])
        kinds = "NaN" if np.isnan(calib).any() else "Inf"
        raise ValueError(f"calibration data has {int(bad.sum())} non-finite values ({kinds}) in {len(samples)} "
                         f"sample(s), first at index {int(samples[0])}; fix the preprocessing or drop them")
    return np.ascontiguousarray(calib)


def _quantizable_op_types(float_op_types: Sequence[str]) -> list[str]:
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
    return sorted((set(QLinearOpsRegistry) | set(QDQRegistry)) - set(float_op_types))


class _Reader:
    """ORT CalibrationDataReader over a (N, ...) array, one batch-1 sample per call."""

    def __init__(self, x: np.ndarray, name: str = INPUT_NAME):
        self.x, self.name, self.i = x, name, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.i >= len(self.x):
            return None
        self.i += 1
        return {self.name: self.x[self.i - 1:self.i]}

    def __len__(self) -> int:
        return len(self.x)


def _calibrate(src: Path, calib: np.ndarray, settings: Int8Settings, op_types: list[str], tmp: Path) -> dict:
    """Per-tensor (lo, hi) for every activation the quantizer will need, by ``settings.method``."""
    from onnxruntime.quantization import CalibrationMethod, create_calibrator

    if settings.method in _EDGEKIT_METHODS:
        return _edgekit_ranges(src, calib, _tensors_to_calibrate(src, op_types, tmp), settings.method)
    extra: dict[str, Any] = {"symmetric": False}  # real asymmetric ranges; the quantizer picks scale/zero point
    if settings.method == "percentile":
        extra["percentile"] = settings.percentile
    with _quiet_ort():
        calibrator = create_calibrator(src, op_types, augmented_model_path=str(tmp / "augmented.onnx"),
                                       calibrate_method=getattr(CalibrationMethod, _ORT_METHODS[settings.method]),
                                       extra_options=extra)
        for start in range(0, len(calib), 64):  # histogram calibrators hold every output of a chunk
            calibrator.collect_data(_Reader(calib[start:start + 64]))
        data = calibrator.compute_data()
    return {name: (float(np.min(td.range_value[0])), float(np.max(td.range_value[1]))) for name, td in data.items()}


def _edgekit_ranges(src: Path, calib: np.ndarray, names: list[str], method: str) -> dict:
    """Ranges from edgekit.calibration.ranges' estimator ``method``, fed one sample's activations at a
    time (its observers keep bounded histograms, so no activation outlives its batch)."""
    try:
        from edgekit.calibration.ranges import method_from_name, ranges_for_arrays
    except ImportError as e:
        raise ValueError(f"method {method!r} needs edgekit.calibration.ranges, which cannot be imported ({e}); "
                         f"use 'minmax' or 'percentile'") from None
    sess = inference_session(_exposing(src, names), threads=None)
    batches = (dict(zip(names, sess.run(names, {INPUT_NAME: calib[i:i + 1]}))) for i in range(len(calib)))
    ranges = ranges_for_arrays(batches, method_from_name(method), symmetric=False)
    return {k: (float(lo), float(hi)) for k, (lo, hi) in ranges.items()}


def _exposing(src: Path, names: list[str]) -> bytes:
    """The model at ``src`` with the tensors ``names`` as its outputs."""
    import onnx
    model = onnx.load(str(src))
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    del model.graph.output[:]
    model.graph.output.extend(infos[n] for n in names)
    return model.SerializeToString()


def _inject_ranges(tensor_ranges: dict, ranges: Mapping[str, tuple[float, float]] | None) -> None:
    if not ranges:
        return
    for name, value in ranges.items():
        if name not in tensor_ranges:
            close = difflib.get_close_matches(name, tensor_ranges, n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"range given for tensor {name!r}, which the quantizer does not calibrate{hint} "
                             f"({len(tensor_ranges)} activation tensors are calibrated)")
        lo, hi = (float(v) for v in value)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise ValueError(f"range for tensor {name!r} is ({lo}, {hi}); it must be finite with lo <= hi")
        tensor_ranges[name] = (lo, hi)


def _quantize_with_ranges(src: Path, tensor_ranges: dict, settings: Int8Settings, op_types: list[str],
                          tmp: Path, *, exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> bytes:
    """ORT's quantize_static fed the ranges through its calibration cache (ORT >= 1.32), so the
    quantizer uses exactly these ranges and runs no calibration of its own."""
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType, TensorData, TensorsData,
                                          quantize_static, save_tensors_data)

    cache = tmp / "ranges.json"
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, {
        k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in tensor_ranges.items()}), cache)
    dst = tmp / "int8.onnx"
    act = QuantType.QUInt8 if settings.activation_type == "uint8" else QuantType.QInt8
    fmt = QuantFormat.QDQ if settings.quant_format == "qdq" else QuantFormat.QOperator
    try:
        with _quiet_ort():
            quantize_static(str(src), str(dst), None, quant_format=fmt, op_types_to_quantize=op_types,
                            per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                            activation_type=act, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                            nodes_to_quantize=None if only is None else list(only),
                            calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                            # a float layer reads the tensor before its Q/DQ pair (see _float_layers_read_float),
                            # which must then be the activation's output, not the conv's before a folded ReLU
                            extra_options={"QDQKeepRemovableActivations": bool(exclude) or only is not None})
    except Exception as e:  # name the node (= module path) where the quantizer says it failed
        raise OnnxExportError(f"onnxruntime.quantization failed: {_first_line(e)}") from e
    return _float_layers_read_float(dst.read_bytes())


def _float_layers_read_float(data: bytes) -> bytes:
    """Feed each Conv / ConvTranspose / Gemm left float (float weight initializer) the float tensor
    before its input's QuantizeLinear -> DequantizeLinear pair, and drop pairs nobody reads any more.

    Why: onnxruntime's WeightBiasQuantization graph transformer (on by default) quantizes the weight
    of any such node whose input comes from a per-tensor DequantizeLinear, per tensor (per-channel
    would at least keep each channel's scale): a layer left float in the file would run int8 with
    coarser weights than the int8 file's. Measured on a conv whose int8 weights are wrecked by an
    outlier (tests/test_sensitivity.py): left float behind a DequantizeLinear, the file's logits had
    an SQNR of -1.8 dB in a default session and 39.4 dB with graph optimisations off. The tensor
    before the pair is the activation's output only when the quantizer keeps ReLU / Clip nodes
    (``QDQKeepRemovableActivations``), which it is told to whenever layers are left float."""
    import onnx
    model = onnx.load_from_string(data)
    g = model.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: t.data_type for t in g.initializer}
    changed = False
    for node in g.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm") or len(node.input) < 2:
            continue
        if inits.get(node.input[1]) != onnx.TensorProto.FLOAT:
            continue  # weight quantized (DequantizeLinear output): an int8 layer
        dq = producer.get(node.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[0] = q.input[0]
            changed = True
    if not changed:
        return data
    while True:  # Q / DQ nodes whose outputs nothing reads
        used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
        dead = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            g.node.remove(n)
    return model.SerializeToString()


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """ORT's calibrators print progress to stdout and advise pre-processing through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def _opset_of_bytes(data: bytes) -> int:
    import onnx
    return _opset_of(onnx.load_from_string(data))


def int8_structure(model_bytes: bytes) -> dict[str, Any]:
    """Counts of QuantizeLinear / DequantizeLinear / QLinear* nodes, and the Conv/Gemm nodes whose
    weight is not an int8 tensor (must be empty for precision "int8")."""
    import onnx
    from onnx import TensorProto
    g = onnx.load_from_string(model_bytes).graph
    init = {t.name: t.data_type for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    counts: dict[str, int] = {}
    float_convs = []
    for n in g.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
        if n.op_type in ("Conv", "Gemm", "ConvTranspose"):
            w = producer.get(n.input[1])
            ok = w is not None and w.op_type == "DequantizeLinear" and init.get(w.input[0]) == TensorProto.INT8
            if not ok:
                float_convs.append(n.name)
        elif n.op_type in ("QLinearConv", "ConvInteger") and init.get(n.input[3]) != TensorProto.INT8:
            float_convs.append(n.name)
    return {"QuantizeLinear": counts.get("QuantizeLinear", 0), "DequantizeLinear": counts.get("DequantizeLinear", 0),
            "qlinear": {k: v for k, v in sorted(counts.items()) if k.startswith("QLinear")},
            "convs": sum(counts.get(k, 0) for k in ("Conv", "QLinearConv", "ConvTranspose")),
            "float_convs": float_convs}


def _calib_sqnr(fp32: OnnxExport, data: bytes, x: np.ndarray) -> float:
    """SQNR of the int8 graph against fp32 on calibration images: the lowest over the outputs."""
    s = inference_session(data, threads=None)
    runs = [s.run(None, {INPUT_NAME: x[i:i + 1]}) for i in range(len(x))]
    ref = fp32(x)
    refs = ref if isinstance(ref, tuple) else (ref,)
    return round(min(sqnr_db(r, np.concatenate(q)) for r, q in zip(refs, zip(*runs))), 2)


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio 10 log10(sum ref^2 / sum (ref - test)^2), in dB."""
    ref = np.asarray(ref, np.float64)
    noise = float(((ref - np.asarray(test, np.float64)) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


# ---- latency ----------------------------------------------------------------------------------

def inference_session(data: bytes, *, threads: int | None):
    """An onnxruntime CPU session of ``data`` with every graph optimisation; ``threads`` intra-op
    threads (one inter-op), or onnxruntime's default when None."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _feed(sess, inputs: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(inputs, Mapping):
        return {k: np.ascontiguousarray(v) for k, v in inputs.items()}
    return {sess.get_inputs()[0].name: np.ascontiguousarray(inputs)}


@contextlib.contextmanager
def _pinned() -> Iterator[None]:
    """Pin the calling thread (which runs ORT's single intra-op thread) to one core, then restore."""
    if not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _stats(times_s: Sequence[float], threads: int) -> dict[str, Any]:
    t = np.asarray(times_s) * 1e3
    import onnxruntime as ort
    return {"median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)), "min_ms": float(t.min()),
            "mean_ms": float(t.mean()), "std_ms": float(t.std()), "cv": float(t.std() / t.mean()), "n": len(t),
            "threads": threads, "runtime": f"onnxruntime {ort.__version__}"}


def benchmark_onnx(model_bytes: bytes, inputs: np.ndarray | Mapping[str, np.ndarray], *, threads: int = 1,
                   runs: int = 50, warmup: int = 10) -> dict[str, Any]:
    """Latency of one model on this host with ORT's CPU provider (ORT_ENABLE_ALL, ``threads``
    intra-op threads, pinned to one core when threads == 1): median / p90 / min / mean / std / CV
    in ms over ``runs`` timed runs after ``warmup`` untimed ones.

    >>> stats = benchmark_onnx(fp32.model_bytes, calib[:1])  # doctest: +SKIP
    >>> stats["median_ms"], stats["p90_ms"]                   # doctest: +SKIP
    """
    for label, v, low in (("threads", threads, 1), ("runs", runs, 1), ("warmup", warmup, 0)):
        if not is_count(v, low):
            raise ValueError(f"{label}={v!r} must be an int >= {low}")
    sess = inference_session(model_bytes, threads=threads)
    feed = _feed(sess, inputs)
    with (_pinned() if threads == 1 else contextlib.nullcontext()):
        for _ in range(warmup):
            sess.run(None, feed)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, feed)
            times.append(time.perf_counter() - t0)
    return _stats(times, threads)


def _speed_check(fp32: bytes, int8: bytes, x: np.ndarray, *, runs: int = 50, warmup: int = 10) -> dict[str, Any]:
    """fp32 vs int8 medians from alternating single runs (fp32, int8, fp32, ...), so load from other
    processes on a shared host falls on both alike (measured: sequential blocks drifted 2-5x here)."""
    import onnxruntime as ort
    sessions = [inference_session(fp32, threads=1), inference_session(int8, threads=1)]
    feeds = [_feed(s, x) for s in sessions]
    times: list[list[float]] = [[], []]
    with _pinned():
        for s, f in zip(sessions, feeds):
            for _ in range(warmup):
                s.run(None, f)
        for _ in range(runs):
            for i, (s, f) in enumerate(zip(sessions, feeds)):
                t0 = time.perf_counter()
                s.run(None, f)
                times[i].append(time.perf_counter() - t0)
    f_ms, q_ms = (float(np.median(t) * 1e3) for t in times)
    return {"fp32_median_ms": round(f_ms, 3), "int8_median_ms": round(q_ms, 3), "ratio": round(q_ms / f_ms, 3),
            "runs": runs, "threads": 1, "host": _cpu_name(), "onnxruntime": ort.__version__}


@functools.lru_cache(maxsize=1)
def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()

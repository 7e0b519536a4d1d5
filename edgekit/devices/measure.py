"""``measure``: run an artifact on a device with real inputs, compare with its PyTorch reference,
store the complete result. This is what ``edgekit run`` calls.

>>> # m = measure("out/ghostnet_0_5-tflite-int8.tflite", device="local", compare=True)  # doctest: +SKIP

With ``per_layer=True`` the agent also returns every op's output (``agent.Intermediates``) and each is
compared with the output of the PyTorch module it belongs to (``layer_parity``): an SQNR per layer,
in graph order, and the first layer where it drops (``PerLayerParity.first_jump``).

>>> # m = measure("out/ghostnet_0_5-tflite-int8.tflite", compare=True, per_layer=True)  # doctest: +SKIP
>>> # m.per_layer.first_jump.layer                                                       # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import math
import numpy as np

from ..parity import ParityReport, compare
from . import open_device
from .agent import INTERMEDIATE_PREFIX
from .base import AgentDevice, Inputs, InputShapes, ModelFile, RunResult, load_npz, open_model
from .stats import Protocol
from .store import ResultStore

__all__ = ["Measurement", "measure", "Feed", "feed_of", "real_inputs", "run_with_intermediates", "LayerParity",
           "PerLayerParity", "layer_parity"]


@dataclass(frozen=True)
class Measurement:
    result: RunResult
    inputs_source: str
    parity: dict[str, ParityReport] | None  # output name -> metrics against PyTorch
    parity_note: str | None  # why parity was not measured
    stored_id: int | None
    per_layer: "PerLayerParity | None" = None  # with per_layer=True and a PyTorch reference

    def to_dict(self) -> dict[str, Any]:
        d = {**self.result.to_dict(), "inputs": self.inputs_source,
             "parity": None if self.parity is None else {k: v.to_dict() for k, v in self.parity.items()},
             "parity_note": self.parity_note, "stored_id": self.stored_id}
        if self.per_layer is not None:
            d["per_layer"] = self.per_layer.to_dict()
        return d


def real_inputs(model: ModelFile, *, data: str, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """(device inputs ``(S, *input shape)`` in the manifest's layout, the same images ``(S*B, C, H, W)``
    for PyTorch), preprocessed exactly as the manifest says."""
    from ..calibration.data import load_dataset, preprocess

    m = model.manifest
    if len(m.inputs) != 1:
        raise ValueError(f"{model.path.name} has {len(m.inputs)} inputs; images can feed only a one-input model")
    if m.preprocessing is None:
        raise ValueError(f"{model.path.name}'s manifest records no preprocessing; cannot feed it images")
    spec = m.inputs[0]
    batch = spec.shape[0]
    ds = load_dataset(data, split="test", limit=samples * batch, fit=m.preprocessing)
    if len(ds) < samples * batch:
        raise ValueError(f"{data!r} has {len(ds)} images; {samples} samples of batch {batch} need {samples * batch}")
    nchw = preprocess(ds.images, m.preprocessing, layout="NCHW")  # (S*B, C, H, W)
    return spec.from_nchw(nchw).reshape(samples, *spec.shape), nchw


def _reference_model(model: ModelFile, weights: str | Path | None):
    from ..exporters.artifact import load_artifact
    from ..validate import reference_model

    return reference_model(load_artifact(model.path), weights)


def _reference(model: ModelFile, nchw: np.ndarray, weights: str | Path | None):
    import torch

    ref = _reference_model(model, weights)
    if ref is None:
        return None
    torch.set_num_threads(1)
    with torch.no_grad():
        out = ref(torch.from_numpy(nchw))
    outs = out if isinstance(out, (tuple, list)) else (out,)
    return [o.numpy() for o in outs]


def _parity(model: ModelFile, result: RunResult, nchw: np.ndarray | None, weights) -> tuple[dict | None, str | None]:
    if model.manifest is None:
        return None, ("not measured: a third-party file has no manifest, so nothing says which PyTorch model "
                      "it came from or how to preprocess images for it")
    if not result.outputs:
        return None, "not measured: " + "; ".join(n for n in result.notes if n.startswith("outputs")) or "no outputs"
    refs = _reference(model, nchw, weights)
    if refs is None:
        return None, ("not measured: the manifest names no PyTorch weights (exported from untrained weights); "
                      "export with --weights or pass --weights FILE")
    if len(refs) != len(result.output_names):
        raise ValueError(f"PyTorch gives {len(refs)} outputs, the file {len(result.output_names)}")
    reports = {}
    outputs = model.manifest.outputs
    for i, (name, ref) in enumerate(zip(result.output_names, refs)):
        got = result.outputs[f"output_{i}"]  # (S, B, ...)
        if i < len(outputs) and outputs[i].layout == "NHWC" and got.ndim == 5:  # a map, channels last
            got = got.transpose(0, 1, 4, 2, 3)
        reports[name] = compare(ref, got.reshape(ref.shape))  # (S, B, ...) -> (S*B, ...)
    return reports, None


# ---- per-layer parity ---------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerParity:
    """One runtime tensor against the output of the PyTorch module(s) it corresponds to."""

    layer: str  # outermost module whose output this tensor is
    modules: tuple[str, ...]  # every module whose output it is (nested modules ending on the same op)
    tensor: str  # the runtime's tensor name
    node: str  # ONNX node name / TFLite tensor name
    op: str  # Conv, Relu, CONV_2D, ADD, ...
    report: ParityReport

    @property
    def sqnr_db(self) -> float:
        return self.report.sqnr_db

    def to_dict(self) -> dict[str, Any]:
        rep = self.report.to_dict()
        return {"layer": self.layer, "modules": list(self.modules), "tensor": self.tensor, "node": self.node,
                "op": self.op, "shape": rep["shape"], "sqnr_db": rep["sqnr_db"], "cosine": rep["cosine"],
                "max_abs": rep["max_abs"]}


@dataclass(frozen=True)
class PerLayerParity:
    """Per-layer SQNR against PyTorch, in graph order, and the first layer where the error jumps.

    The jump rule (``first_jump``): walking the layers in graph order, the first one whose SQNR is
    NaN (non-finite values), or below ``floor_db``, or more than ``drop_db`` below the median SQNR of
    the ``window`` layers before it while also below ``ok_db``. SQNRs above ``ok_db`` are never a
    jump (fp32 files differ from PyTorch by float rounding at 60-150 dB, with swings of tens of dB
    between layers that mean nothing); int8 error grows slowly with depth, which the running window
    follows, so only a step down is named. Layers whose PyTorch output is all zeros have no SQNR
    (no signal) and are skipped by the rule.
    """

    layers: tuple[LayerParity, ...]  # graph order
    first_jump: LayerParity | None
    runtime_tensors: int  # tensors the runtime returned; those matching no module are not compared
    drop_db: float
    floor_db: float
    ok_db: float
    window: int

    def worst(self, n: int) -> tuple[LayerParity, ...]:
        def key(lp: LayerParity) -> float:
            return -math.inf if math.isnan(lp.sqnr_db) else lp.sqnr_db
        return tuple(sorted(self.layers, key=key)[:n])

    @property
    def rule(self) -> str:
        return (f"first layer in graph order with SQNR NaN, < {self.floor_db:g} dB, or < {self.ok_db:g} dB and "
                f"more than {self.drop_db:g} dB below the median of the {self.window} layers before it")

    def to_dict(self) -> dict[str, Any]:
        return {"matched": len(self.layers), "runtime_tensors": self.runtime_tensors, "rule": self.rule,
                "first_jump": None if self.first_jump is None else self.first_jump.to_dict(),
                "layers": [lp.to_dict() for lp in self.layers]}


def first_jump(layers: tuple[LayerParity, ...], *, drop_db: float = 10.0, floor_db: float = 5.0,
               ok_db: float = 40.0, window: int = 8) -> LayerParity | None:
    """The first layer where the SQNR drops (the rule of ``PerLayerParity``)."""
    seen: list[float] = []
    for lp in layers:
        v = lp.sqnr_db
        if v == -math.inf:
            continue  # all-zero reference: no signal to measure noise against
        if math.isnan(v) or v < floor_db:
            return lp
        recent = seen[-window:]
        if recent and v < ok_db and v < float(np.median(recent)) - drop_db:
            return lp
        seen.append(min(v, 1e3))  # +inf (bit-identical) counts as very good, not as infinitely good
    return None


def _torch_module_outputs(model, nchw: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Output of every named module (called once per forward, returning a tensor) on ``nchw`` and
    the order in which the modules finished."""
    import torch

    outs: dict[str, Any] = {}
    calls: dict[str, int] = {}
    order: dict[str, int] = {}

    def hook(name):
        def fn(module, args, output):
            calls[name] = calls.get(name, 0) + 1
            order.setdefault(name, len(order))
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                outs[name] = output.detach().numpy().copy()
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]
    try:
        torch.set_num_threads(1)
        with torch.no_grad():
            model(torch.from_numpy(nchw))
    finally:
        for h in handles:
            h.remove()
    return {n: v for n, v in outs.items() if calls[n] == 1}, order


def _paths_of(entry: Mapping[str, str], fmt: str, model) -> tuple[str, ...]:
    """Module paths a runtime tensor's name points at: the ONNX node name up to its last ``/``
    (``<module path>/<OpType>[_k]``); for TFLite every module named in the tensor's name."""
    if fmt == "onnx":
        node = entry["node"]
        return (node.rsplit("/", 1)[0],) if "/" in node else ()
    from ..exporters.tflite.tensor_names import module_paths
    return tuple(path for path in module_paths(entry["tensor"], model) if path)


def _as_nchw(y: np.ndarray, fmt: str, nhwc: bool) -> np.ndarray:
    return y.transpose(0, 3, 1, 2) if fmt == "tflite" and nhwc and y.ndim == 4 else y


def _clamping_activations() -> tuple[type, ...]:
    from torch import nn
    return nn.ReLU, nn.ReLU6, nn.Hardtanh


def layer_parity(model, nchw: np.ndarray, index: list[Mapping[str, str]], tensors: Mapping[str, np.ndarray], *,
                 fmt: str, nhwc: bool = True, drop_db: float = 10.0, floor_db: float = 5.0, ok_db: float = 40.0,
                 window: int = 8) -> PerLayerParity:
    """Match the runtime's intermediate tensors (``index`` from the agent: key, tensor, node, op;
    ``tensors[key]`` of shape ``(samples, batch, ...)``) to the outputs of ``model``'s modules on
    the same images ``nchw`` and compare each pair.

    Matching: each runtime tensor is attributed to one module path from its name (ONNX: the node
    name's module path; TFLite: of the modules its name lists, the one PyTorch finishes last, since
    a fused op's output is the output of its last fused module). A module's output is then the
    *last* runtime tensor in graph order attributed to it or to a module inside it, if its shape
    (NHWC tensors transposed to NCHW) equals the module's output shape. So a Conv with BN folded
    in and a ReLU after it is compared as the ``ConvBNAct`` module's output (after the activation);
    the bare conv and BN modules have no tensor of their own and are not compared. An int8 file
    that dropped an activation op (ONNX QDQ: a Conv's output quantized with the ReLU's range, so
    the clamp happens there) has that op's output compared with the activation module's output
    when the activation (ReLU, ReLU6, Hardtanh) is the module PyTorch finishes next and no runtime
    tensor names it. A module called
    more than once per forward is left out (its output is ambiguous). Several nested modules ending
    on the same op share one row, named by the outermost of them that holds no other compared
    module (``stages.3.0.ghost1.primary_conv``, not ``stages`` for the last block's output, nor
    ``...primary_conv.2``, its ReLU). Rows are in graph order.
    """
    _CLAMPS = _clamping_activations()
    ref, order = _torch_module_outputs(model, nchw)
    attributed: list[str | None] = []
    for e in index:
        paths = [p for p in _paths_of(e, fmt, model) if p in order]
        attributed.append(max(paths, key=order.__getitem__) if paths else None)
    # an int8 file may drop an activation module's op and clamp in the previous op's output
    # quantization (QDQ Conv -> Q with the ReLU's range): that output is then the activation's
    modules, by_order, seen = dict(model.named_modules()), sorted(order, key=order.__getitem__), set(attributed)
    for k, p in enumerate(attributed):
        nxt = by_order[order[p] + 1] if p is not None and order[p] + 1 < len(by_order) else None
        if nxt is not None and nxt not in seen and isinstance(modules[nxt], _CLAMPS):
            attributed[k] = nxt
    matched: dict[int, list[str]] = {}
    for name, out in ref.items():
        inside = [k for k, p in enumerate(attributed) if p is not None and (p == name or p.startswith(name + "."))]
        for k in reversed(inside):
            y = tensors[index[k]["key"]]
            y = _as_nchw(y.reshape(-1, *y.shape[2:]), fmt, nhwc)
            if y.shape == out.shape:
                matched.setdefault(k, []).append(name)
            break
    every = [m for mods in matched.values() for m in mods]
    rows = []
    for k in sorted(matched):
        mods = tuple(sorted(matched[k], key=lambda n: (n.count("."), order[n])))
        own = [m for m in mods if not any(o.startswith(m + ".") and o not in mods for o in every)]
        e = index[k]
        y = tensors[e["key"]]
        y = _as_nchw(y.reshape(-1, *y.shape[2:]), fmt, nhwc)
        name = own[0] if own else mods[-1]
        rows.append(LayerParity(name, mods, e["tensor"], e["node"], e["op"], compare(ref[name], y)))
    rows_t = tuple(rows)
    jump = first_jump(rows_t, drop_db=drop_db, floor_db=floor_db, ok_db=ok_db, window=window)
    return PerLayerParity(rows_t, jump, len(index), drop_db, floor_db, ok_db, window)


def run_with_intermediates(dev, model: ModelFile, inputs: Inputs, protocol: Protocol, *,
                           input_shapes: InputShapes = ()
                           ) -> tuple[RunResult, list[dict[str, str]], dict[str, np.ndarray], str | None]:
    """``dev.run`` with the agent asked for every op's output too; those come back apart: (result,
    the agent's index of them, the tensors by key, which kernels computed them)."""
    if not isinstance(dev, AgentDevice) or type(dev).run is not AgentDevice.run:
        raise ValueError(f"per-layer outputs need the edgekit agent to run the model; device {dev.address!r} "
                         f"runs it another way (use a local, ssh or qemu device)")
    request = dict(dev.request(model, protocol, input_shapes=input_shapes), intermediates=True)
    result, files = dev._invoke(model, request, inputs)
    outs = files["outputs"]
    tensors = {k: v for k, v in outs.items() if k.startswith(INTERMEDIATE_PREFIX)}
    files = {**files, "outputs": {k: v for k, v in outs.items() if not k.startswith(INTERMEDIATE_PREFIX)}}
    return (dev._result(model, protocol, result, files), list(result.get("intermediates", [])), tensors,
            result.get("intermediates_kernels"))


def measure(path: str | Path, *, device: str = "local", protocol: Protocol = Protocol(), compare: bool = False,
            data: str | None = None, samples: int | None = None, weights: str | Path | None = None,
            store: bool = True, profile: str | Path | None = None, per_layer: bool = False,
            input_shapes: InputShapes = (), inputs: str | Path | None = None, **device_options: Any) -> Measurement:
    """Run ``path`` on ``device`` under ``protocol``; with ``compare`` also its PyTorch reference on the
    same real images (``data``, default fashion-mnist; ``samples`` batches, default 16). ``per_layer``
    (implies ``compare``) also compares every intermediate tensor with its PyTorch module's output
    (``layer_parity``); the timed runs are unaffected. ``input_shapes`` ((input name or None, shape)
    pairs) sets the file's dynamic dimensions; ``inputs`` (an ``.npz`` of input name -> tensor) feeds
    those arrays instead of images or seeded random inputs. Appends to the results store only after
    everything succeeded.

    >>> # measure("bert.onnx", input_shapes=[("input_ids", (1, 128))], inputs="ids.npz")  # doctest: +SKIP
    """
    model = open_model(path)
    feed = feed_of(model, data=data, samples=samples, weights=weights, compare=compare, per_layer=per_layer,
                 inputs=inputs)
    dev = open_device(device, profile=profile, **device_options)
    try:
        return _measure(model, dev, protocol=protocol, compare=compare, feed=feed, weights=weights, store=store,
                        per_layer=per_layer, input_shapes=input_shapes)
    finally:
        dev.release()


@dataclass(frozen=True)
class Feed:
    """What a run is fed: real images (``data``, ``samples``) for an edgekit file, the arrays of an
    ``.npz`` (``arrays``, from ``source``), or seeded random inputs (neither)."""

    data: str | None
    samples: int
    arrays: dict[str, np.ndarray] | None
    source: str


def feed_of(model: ModelFile, *, data: str | None, samples: int | None, weights, compare: bool, per_layer: bool,
          inputs: str | Path | None) -> Feed:
    """The inputs of a run, with the options that do not apply to this file refused."""
    if samples is not None and samples < 1:
        raise ValueError(f"samples {samples} must be >= 1")
    if inputs is not None:
        clash = [flag for flag, on in (("--data", data), ("--samples", samples), ("--compare", compare),
                                       ("--per-layer", per_layer)) if on]
        if clash:
            raise ValueError(f"{model.path.name}: {', '.join(clash)} go(es) with image inputs; --inputs {inputs} "
                             f"feeds arrays instead (drop one or the other)")
        if not Path(inputs).is_file():
            raise ValueError(f"--inputs {inputs} does not exist; give an .npz of input name -> array "
                             f"(numpy.savez(FILE, name=array))")
        try:
            arrays = load_npz(inputs)
        except (OSError, ValueError) as e:
            raise ValueError(f"--inputs {inputs} is not a readable .npz ({e}); write it with numpy.savez") from None
        return Feed(None, 1, arrays, f"arrays from {inputs}")
    if model.manifest is None:
        given = [flag for flag, on in (("--data", data), ("--samples", samples), ("--weights", weights),
                                       ("--per-layer", per_layer)) if on]
        if given:
            raise ValueError(f"{model.path.name} has no manifest, so {', '.join(given)} cannot apply (nothing says "
                             f"which PyTorch model it came from or how to preprocess images for it); feed it with "
                             f"--inputs FILE.npz or seeded random inputs")
        return Feed(None, 1, None, "seeded random inputs (seed 0) in each input's dtype and shape")
    data = data or "fashion-mnist"
    return Feed(data, 16 if samples is None else samples, None, "")


def _measure(model: ModelFile, dev, *, protocol: Protocol, compare: bool, feed: Feed, weights, store: bool,
             per_layer: bool, input_shapes: InputShapes = ()) -> Measurement:
    nchw, source = None, feed.source
    if feed.data is not None:
        inputs, nchw = real_inputs(model, data=feed.data, samples=feed.samples)
        source = f"{feed.data} test images 0..{len(nchw) - 1}"
        if per_layer:
            result, index, tensors, _ = run_with_intermediates(dev, model, [inputs], protocol,
                                                               input_shapes=input_shapes)
        else:
            result = dev.run(model, [inputs], protocol=protocol, input_shapes=input_shapes)
    else:
        result = dev.run(model, feed.arrays, protocol=protocol, input_shapes=input_shapes)
    parity, note = (None, "not asked (pass --compare)")
    layers = None
    if feed.arrays is None and (compare or per_layer):
        parity, note = _parity(model, result, nchw, weights)
    elif feed.arrays is not None:
        note = "not measured: fed --inputs arrays, and the PyTorch reference runs on images"
    if per_layer and parity is not None:
        nhwc = model.manifest.inputs[0].layout == "NHWC"
        layers = layer_parity(_reference_model(model, weights), nchw, index, tensors, fmt=model.format, nhwc=nhwc)
    stored = None
    if store:
        stored = ResultStore().record(result, artifact_path=str(model.path),
                                      parity=None if parity is None else {k: v.to_dict() for k, v in parity.items()})
    return Measurement(result, source, parity, note, stored, layers)

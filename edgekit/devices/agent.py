"""The device agent: load an exported model with whatever runtime the device has, run it on float
inputs the way its manifest says (layout, int8 scale / zero point) and time it.

This file must stay importable on its own on a device: standard library + numpy + one runtime
(``ai_edge_litert``, else ``tflite_runtime``, else ``tensorflow.lite`` for .tflite; ``onnxruntime``
for .onnx). edgekit imports it in-process too (``edgekit validate``), so host and device share
one code path. The transports copy this one file to the device and run it as a script::

    python agent.py REQUEST.json

The request (JSON) names the model file, its sha256 (and ``data_sha256``: location -> sha256 of an
ONNX file's external data files beside it), the manifest (or null for a third-party file), the
inputs: ``inputs``, one ``.npy`` of stacked samples per input, or ``input_arrays``, an ``.npz`` of
name -> one input tensor, or neither: seeded random inputs in each input's dtype and shape;
``input_shapes`` (``[{"name": NAME or null, "shape": [...]}]``) sets the file's dynamic dimensions
(without it an input with a dynamic dimension other than a lone batch is refused); threads,
warm-up, runs, the CV target and run cap, and the cores to pin to. The agent writes the outputs
``.npz`` and a result JSON (also printed as the last line on stdout): runtime name and version,
delegate, threads, CPU model, cores, arch, OS, load average, per-run latencies in ns, the inputs'
names, shapes and dtypes as fed (``input_tensors``) and notes on the shapes it chose.

With ``"intermediates": true`` in the request the agent also returns every op's output (see
``Intermediates``), stacked over the samples in the same ``.npz`` as ``layer_<k>`` (k in graph
order), and the result JSON lists them under ``"intermediates"`` (key, tensor name, producing op,
op type). They come from a second copy of the model opened for that purpose, so the timed runs use
the file exactly as it is. ONNX needs the ``onnx`` package on the device for this. A
failure is a result JSON too, ``{"ok": false, "kind": ..., "message": ...}``, with a non-zero exit:
kinds are ``bad-request``, ``bad-input``, ``runtime-missing``, ``model-rejected``, ``checksum-mismatch``,
``interrupted`` and ``internal``.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["RuntimeMissing", "Runner", "Intermediates", "INTERMEDIATE_PREFIX", "tflite_runtime_info", "quantize", "dequantize", "AgentError", "main"]

_TFLITE_RUNTIMES = (
    ("ai_edge_litert", "ai_edge_litert.interpreter"),
    ("tflite_runtime", "tflite_runtime.interpreter"),
    ("tensorflow", "tensorflow.lite"),
)


class RuntimeMissing(RuntimeError):
    """No runtime for this model format on this machine."""


def tflite_runtime_info() -> tuple[Any, str, str]:
    """(Interpreter class, runtime name, version) of the first TFLite runtime found."""
    tried = []
    for dist, module in _TFLITE_RUNTIMES:
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            tried.append(f"{dist} ({e})")
            continue
        root = importlib.import_module(dist)
        version = getattr(root, "__version__", None) or _dist_version(dist)
        return mod.Interpreter, dist, version
    raise RuntimeMissing("no TFLite runtime: install one of ai-edge-litert, tflite-runtime or tensorflow "
                         f"(tried {'; '.join(tried)})")


def _onnx_runtime() -> tuple[Any, str]:
    try:
        import onnxruntime
    except ImportError as e:
        raise RuntimeMissing(f"no ONNX runtime: install onnxruntime ({e})") from None
    return onnxruntime, onnxruntime.__version__


def _dist_version(dist: str) -> str:
    try:
        from importlib.metadata import version
        return version(dist.replace("_", "-"))
    except Exception:  # metadata is optional on a device; the name alone still identifies the runtime
        return "unknown"


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    info = np.iinfo(dtype)
    q = np.round(x / scale) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float32) - zero_point) * np.float32(scale)


class Runner:
    """Callable on one float input batch in the manifest's layout; returns float outputs.

    ``manifest`` is the manifest as a plain dict (``Manifest.to_dict()`` or the JSON file), so the
    agent needs nothing of edgekit's to read it.

    With ``raw=True`` inputs are fed in the file's own dtype and outputs come back in it (a
    third-party file with no manifest: nothing says how its integers map to real values).
    """

    def __init__(self, model_path: str, manifest: Mapping[str, Any] | None, *, threads: int = 1,
                 raw: bool = False):
        self.path = str(model_path)
        self.manifest = manifest
        self.threads = threads
        self.raw = raw
        self._shapes: list[tuple[int, ...]] | None = None
        if self.path.endswith(".tflite"):
            self.format = "tflite"
            cls, self.runtime, self.runtime_version = tflite_runtime_info()
            self._it = cls(model_path=self.path, num_threads=threads)
            self._it.allocate_tensors()
            self._in = self._it.get_input_details()
            self._out = self._it.get_output_details()
            self.xnnpack = xnnpack_delegation(self._it._get_ops_details())
        elif self.path.endswith(".onnx"):
            self.format = "onnx"
            ort, self.runtime_version = _onnx_runtime()
            self.runtime = "onnxruntime"
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            self._sess = ort.InferenceSession(self.path, opts, providers=["CPUExecutionProvider"])
        else:
            raise ValueError(f"{self.path}: unknown model format; expected a .tflite or .onnx file")

    @property
    def declared_inputs(self) -> list[dict[str, Any]]:
        """name, dims, dtype (and quantization) of each input as the file declares it: a dynamic
        dimension is its ONNX name (``"batch"``), or None where the file names none (TFLite's -1)."""
        if self.format == "tflite":
            return [{"name": d["name"], "dims": tuple(None if int(v) < 0 else int(v)
                                                      for v in d.get("shape_signature", d["shape"])),
                     "dtype": np.dtype(d["dtype"]).name, "quantization": tuple(d["quantization"])} for d in self._in]
        return [{"name": i.name, "dims": tuple(v if isinstance(v, int) and v > 0 else (v if isinstance(v, str) and v
                                                                               else None) for v in i.shape),
                 "dtype": _ort_dtype(i.type), "quantization": (0.0, 0)} for i in self._sess.get_inputs()]

    @property
    def input_specs(self) -> list[dict[str, Any]]:
        """name, shape, dtype (and quantization) of each input as it is fed: the file's dims with
        the dynamic ones as ``set_shapes`` set them (None until then)."""
        specs = []
        for k, spec in enumerate(self.declared_inputs):
            shape = self._shapes[k] if self._shapes is not None else tuple(
                v if isinstance(v, int) else None for v in spec["dims"])
            specs.append({"name": spec["name"], "shape": tuple(shape), "dtype": spec["dtype"],
                          "quantization": spec["quantization"]})
        return specs

    def set_shapes(self, shapes: Sequence[Sequence[int]]) -> None:
        """Give every input its full shape (the file's dynamic dimensions set); a TFLite
        interpreter is resized and its tensors allocated again."""
        self._shapes = [tuple(int(v) for v in s) for s in shapes]
        if self.format == "tflite":
            for d, shape in zip(self._in, self._shapes):
                if tuple(int(v) for v in d["shape"]) != shape:
                    self._it.resize_tensor_input(d["index"], list(shape))
            self._it.allocate_tensors()
            self._in = self._it.get_input_details()
            self._out = self._it.get_output_details()

    @property
    def output_names(self) -> list[str]:
        if self.format == "tflite":
            return [d["name"] for d in self._out]
        return [o.name for o in self._sess.get_outputs()]

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        self.feed(inputs)
        self.invoke()
        return self.fetch()

    def feed(self, inputs: Sequence[np.ndarray]) -> None:
        """Set the inputs (quantized as the file declares unless ``raw``) without running."""
        specs = self.input_specs
        if len(inputs) != len(specs):
            raise ValueError(f"{self.path} takes {len(specs)} input(s), got {len(inputs)}")
        if self.format == "onnx":
            self._feeds = {}
            for spec, x in zip(specs, inputs):
                q = self._manifest_quant("inputs", spec["name"])
                if q is not None and np.dtype(spec["dtype"]).kind in "iu":
                    x = quantize(x, q[0], q[1], spec["dtype"])
                self._feeds[spec["name"]] = np.ascontiguousarray(x, dtype=spec["dtype"])
            return
        for d, x in zip(self._in, inputs):
            if tuple(x.shape) != tuple(d["shape"]):
                raise ValueError(f"{self.path}: input {d['name']!r} has shape {tuple(d['shape'])}, got {tuple(x.shape)}")
            scale, zp = d["quantization"]
            dtype = np.dtype(d["dtype"])
            if not self.raw and dtype.kind in "iu" and scale > 0:
                x = quantize(x, scale, zp, dtype.name)
            self._it.set_tensor(d["index"], np.ascontiguousarray(x, dtype=dtype))

    def _manifest_quant(self, kind: str, name: str) -> tuple[float, int] | None:
        """(scale, zero point) the manifest records for an ONNX integer input/output, if any."""
        if self.raw or not self.manifest:
            return None
        for t in self.manifest.get(kind, ()):
            if t.get("name") == name and t.get("scale") is not None:
                return float(t["scale"]), int(t["zero_point"])
        return None

    def invoke(self) -> None:
        """One inference on the inputs last fed: the only work inside the timed loop."""
        if self.format == "tflite":
            self._it.invoke()
        else:
            self._results = self._sess.run(None, self._feeds)

    def fetch(self) -> list[np.ndarray]:
        """Outputs of the last ``invoke``: float32 (int8 dequantized) unless ``raw``."""
        if self.format == "onnx":
            outs = []
            for name, o in zip(self.output_names, self._results):
                q = self._manifest_quant("outputs", name)
                if self.raw:
                    outs.append(np.array(o))
                elif q is not None and np.asarray(o).dtype.kind in "iu":
                    outs.append(dequantize(np.asarray(o), q[0], q[1]))
                else:
                    outs.append(np.asarray(o, dtype=np.float32))
            return outs
        outs = []
        for d in self._out:
            y = np.array(self._it.get_tensor(d["index"]))
            scale, zp = d["quantization"]
            if self.raw:
                outs.append(y)
            elif np.dtype(d["dtype"]).kind in "iu" and scale > 0:
                outs.append(dequantize(y, scale, zp))
            else:
                outs.append(y.astype(np.float32))
        return outs


def _tflite_all_outputs(path: str) -> bytes | None:
    """The .tflite file with every op output of its main graph added to the graph's outputs, or None
    when this runtime has no flatbuffer schema to rewrite it with. Constant data stored past the end
    of the flatbuffer (offset buffers) is moved inline."""
    try:
        import flatbuffers
        try:
            from ai_edge_litert import schema_py_generated as schema
        except ImportError:
            from tensorflow.lite.python import schema_py_generated as schema
    except ImportError:
        return None
    with open(path, "rb") as f:
        buf = f.read()
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(buf, 0))
    for b in model.buffers or ():
        if b.offset and b.offset > 1:
            b.data = np.frombuffer(buf[b.offset:b.offset + b.size], dtype=np.uint8)
            b.offset, b.size = 0, 0
    graph = model.subgraphs[0]
    outputs = [int(t) for t in graph.outputs]
    seen = set(outputs)
    for op in graph.operators:
        for t in (op.outputs if op.outputs is not None else ()):
            if int(t) >= 0 and int(t) not in seen:
                outputs.append(int(t))
                seen.add(int(t))
    graph.outputs = np.array(outputs, dtype=np.int32)
    builder = flatbuffers.Builder(len(buf) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def xnnpack_delegation(ops: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How much of a TFLite graph XNNPACK took, from the interpreter's node list after
    ``allocate_tensors``: the runtime applies XNNPACK by default and appends one ``DELEGATE`` node
    per partition it took; the file's own ops stay listed. An op is delegated when it lies between a
    partition's inputs and outputs (walked back from the outputs through the producing ops).
    Returns ``ops`` (the file's), ``delegated_ops``, ``partitions`` and ``left`` (op type -> count
    of the ops left on LiteRT's own kernels)."""
    own = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {int(t): i for i, op in enumerate(own) for t in op["outputs"]}
    delegated: set[int] = set()
    partitions = [op for op in ops if op["op_name"] == "DELEGATE"]
    for part in partitions:
        stop = {int(t) for t in part["inputs"]}
        todo = [int(t) for t in part["outputs"]]
        while todo:
            t = todo.pop()
            i = producer.get(t)
            if t in stop or i is None or i in delegated:
                continue
            delegated.add(i)
            todo += [int(v) for v in own[i]["inputs"] if int(v) >= 0]
    left: dict[str, int] = {}
    for i, op in enumerate(own):
        if i not in delegated:
            left[op["op_name"]] = left.get(op["op_name"], 0) + 1
    return {"expected": True, "ops": len(own), "delegated_ops": len(delegated), "partitions": len(partitions),
            "left": left}


INTERMEDIATE_PREFIX = "layer_"
_ONNX_SKIP = frozenset({"Constant", "ConstantOfShape", "Shape", "Size", "QuantizeLinear", "DequantizeLinear",
                        "Identity"})


class Intermediates:
    """Every op output of a model file as float32, for per-layer parity: callable on one input batch
    (fed like ``Runner``), returns ``{tensor name: value}`` in graph order; ``ops`` lists
    ``(tensor name, producing op name, op type)``.

    TFLite: the file opened again with ``experimental_preserve_all_tensors=True``; every non-constant
    output of every op, int8 / uint8 ones dequantized with their tensor's scale and zero point. The
    op name is the output tensor's (TFLite ops have no names of their own).

    ONNX (needs ``onnx``): the graph with the first output of every node added as a graph output,
    except the nodes that only move data or quantization (Constant, Shape, Identity, QuantizeLinear,
    DequantizeLinear). In a QDQ int8 file a node's float output feeds a QuantizeLinear; that
    QuantizeLinear's int8 output is returned instead, dequantized with its scale and zero point, so
    the value is the one the next int8 op actually reads (exposing the Q output leaves the runtime's
    QDQ fusion in place). Values that are not float or int8 / uint8 (shapes, indices) are left out.
    """

    def __init__(self, runner: "Runner"):
        self.runner = runner
        self.format = runner.format
        if self.format == "tflite":
            self._open_tflite()
        else:
            self._open_onnx()

    def _open_tflite(self) -> None:
        r = self.runner
        cls, _, _ = tflite_runtime_info()
        exposed = _tflite_all_outputs(r.path)
        if exposed is not None:
            # every op output made a graph output: the runtime's default delegate (XNNPACK) still runs
            # the graph, so the values are the ones the timed file computes
            self._it = cls(model_content=exposed, num_threads=r.threads)
            self.kernels = "as timed (every op output made a graph output; XNNPACK still applies)"
        else:
            self._it = cls(model_path=r.path, num_threads=r.threads, experimental_preserve_all_tensors=True)
            self.kernels = ("LiteRT's own kernels, not XNNPACK: this runtime cannot rewrite the file "
                            "(no flatbuffer schema), so the tensors are kept with preserve_all_tensors")
        for d in r._in:  # the shapes the runner was given (a file's dynamic dimensions set)
            self._it.resize_tensor_input(d["index"], list(d["shape"]))
        self._it.allocate_tensors()
        details = {d["index"]: d for d in self._it.get_tensor_details()}
        self._tensors: list[dict[str, Any]] = []
        self.ops: list[tuple[str, str, str]] = []
        for op in self._it._get_ops_details():
            if op["op_name"] == "DELEGATE":
                continue
            for idx in op["outputs"]:
                d = details.get(int(idx))
                if d is None or np.dtype(d["dtype"]).kind not in "fiu":
                    continue
                self._tensors.append(d)
                self.ops.append((d["name"], d["name"], str(op["op_name"])))
        self.scales = {d["name"]: float(d["quantization"][0]) for d in self._tensors
                       if np.dtype(d["dtype"]).kind in "iu" and d["quantization"][0] > 0}

    def _open_onnx(self) -> None:
        try:
            import onnx
            from onnx import numpy_helper
        except ImportError as e:
            raise RuntimeMissing(f"per-layer outputs of an ONNX file need the onnx package on the device "
                                 f"(pip install onnx): {e}") from None
        ort, _ = _onnx_runtime()
        model = onnx.load(self.runner.path)
        graph = model.graph
        consts = {t.name: t for t in graph.initializer}
        for node in graph.node:  # scales and zero points may be Constant nodes instead of initializers
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                consts[node.output[0]] = node.attribute[0].t
        quantized_by: dict[str, Any] = {}
        for node in graph.node:
            if node.op_type == "QuantizeLinear" and len(node.input) >= 3 and node.input[1] in consts:
                quantized_by.setdefault(node.input[0], node)
        existing = {o.name for o in graph.output}
        self._expose: list[tuple[str, str, str, tuple[float, int] | None]] = []  # tensor, node, op, (scale, zp)
        for node in graph.node:
            if node.op_type in _ONNX_SKIP or not node.output or not node.output[0]:
                continue
            tensor, q = node.output[0], None
            qnode = quantized_by.get(tensor)
            if qnode is not None:
                scale = numpy_helper.to_array(consts[qnode.input[1]])
                zp = numpy_helper.to_array(consts[qnode.input[2]])
                if scale.size == 1:  # per-tensor activations; per-channel Q is a weight, not an output
                    tensor, q = qnode.output[0], (float(scale.reshape(())), int(zp.reshape(())))
            self._expose.append((tensor, node.name or tensor, node.op_type, q))
        for tensor, _, _, _ in self._expose:
            if tensor not in existing:
                graph.output.append(onnx.ValueInfoProto(name=tensor))
                existing.add(tensor)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.runner.threads
        opts.inter_op_num_threads = 1
        self._sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        self._names = [tensor for tensor, _, _, _ in self._expose]
        self.ops = [(tensor, node, op) for tensor, node, op, _ in self._expose]
        self.scales = {tensor: q[0] for tensor, _, _, q in self._expose if q is not None}
        self.kernels = "onnxruntime CPU kernels, with every node output made a graph output"

    def __call__(self, *inputs: np.ndarray) -> dict[str, np.ndarray]:
        r = self.runner
        if self.format == "tflite":
            r.feed(inputs)  # quantizes as the file declares; then copy the fed tensors to this interpreter
            for d in r._in:
                self._it.set_tensor(d["index"], r._it.get_tensor(d["index"]))
            self._it.invoke()
            out = {}
            for d in self._tensors:
                y = np.array(self._it.get_tensor(d["index"]))
                scale, zp = d["quantization"]
                out[d["name"]] = dequantize(y, scale, zp) if y.dtype.kind in "iu" and scale > 0 else y
            return out
        r.feed(inputs)
        values = self._sess.run(self._names, r._feeds)
        out = {}
        for (tensor, _, _, q), y in zip(self._expose, values):
            y = np.asarray(y)
            if q is not None and y.dtype.kind in "iu":
                out[tensor] = dequantize(y, q[0], q[1])
            elif y.dtype.kind == "f":
                out[tensor] = y.astype(np.float32)
        return out


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
               "tensor(int8)": "int8", "tensor(int16)": "int16", "tensor(int32)": "int32", "tensor(int64)": "int64",
               "tensor(uint8)": "uint8", "tensor(uint16)": "uint16", "tensor(uint32)": "uint32",
               "tensor(uint64)": "uint64", "tensor(bool)": "bool", "tensor(string)": "str"}


def _ort_dtype(type_str: str) -> str:
    """numpy's name for an onnxruntime tensor type (``tensor(float16)`` -> ``float16``)."""
    return _ORT_DTYPES.get(type_str, type_str)


# ---- the agent as a script -------------------------------------------------------------------

class AgentError(Exception):
    """A failure the agent reports as a structured result: ``kind`` says which step went wrong."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class _Interrupted(BaseException):
    pass


def _on_signal(signum, frame):
    raise _Interrupted(f"signal {signum}")


def _sha256(path: str) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---- what the CPU is: the same decoding on real boards and emulated ones --------------------------

# CPU implementer -> (name, {CPU part -> core}); the part numbers are the MIDR_EL1 PartNum values
# the vendors publish (Linux prints them in /proc/cpuinfo as "CPU implementer" / "CPU part").
_ARM_CORES: dict[int, tuple[str, dict[int, str]]] = {
    0x41: ("ARM", {0xd03: "Cortex-A53", 0xd04: "Cortex-A35", 0xd05: "Cortex-A55", 0xd07: "Cortex-A57",
                   0xd08: "Cortex-A72", 0xd09: "Cortex-A73", 0xd0a: "Cortex-A75", 0xd0b: "Cortex-A76",
                   0xd0c: "Neoverse-N1", 0xd0d: "Cortex-A77", 0xd0e: "Cortex-A76AE", 0xd40: "Neoverse-V1",
                   0xd41: "Cortex-A78", 0xd42: "Cortex-A78AE", 0xd44: "Cortex-X1", 0xd46: "Cortex-A510",
                   0xd47: "Cortex-A710", 0xd48: "Cortex-X2", 0xd49: "Neoverse-N2", 0xd4b: "Cortex-A78C",
                   0xd4c: "Cortex-X1C", 0xd4d: "Cortex-A715", 0xd4e: "Cortex-X3", 0xd4f: "Neoverse-V2",
                   0xd80: "Cortex-A520", 0xd81: "Cortex-A720", 0xd82: "Cortex-X4"}),
    0x42: ("Broadcom", {0x516: "Vulcan"}),
    0x4e: ("NVIDIA", {0x003: "Denver 2", 0x004: "Carmel"}),
    0x51: ("Qualcomm", {0x800: "Kryo 2xx Gold (Cortex-A73)", 0x801: "Kryo 2xx Silver (Cortex-A53)",
                        0x802: "Kryo 3xx Gold (Cortex-A75)", 0x803: "Kryo 3xx Silver (Cortex-A55)",
                        0x804: "Kryo 4xx Gold (Cortex-A76)", 0x805: "Kryo 4xx Silver (Cortex-A55)",
                        0xc00: "Falkor", 0xc01: "Saphira"}),
    0x53: ("Samsung", {0x001: "Exynos M1", 0x002: "Exynos M3", 0x003: "Exynos M4", 0x004: "Exynos M5"}),
    0x61: ("Apple", {}),
    0xc0: ("Ampere", {0xac3: "Ampere-1", 0xac4: "Ampere-1a"}),
}
# The ISA features that decide which int8 kernels XNNPACK and onnxruntime pick on ARM: plain NEON,
# the SDOT/UDOT dot product (ARMv8.2), the SMMLA int8 matrix multiply (ARMv8.6) and SVE.
INT8_FEATURES = ("asimd", "asimddp", "i8mm", "sve", "sve2")
_ARM64 = ("aarch64", "arm64")  # what platform.machine() / uname -m say on a 64-bit ARM CPU
# Linux arm64 AT_HWCAP / AT_HWCAP2 bits, in bit order, named as /proc/cpuinfo names them.
_HWCAP = ("fp", "asimd", "evtstrm", "aes", "pmull", "sha1", "sha2", "crc32", "atomics", "fphp", "asimdhp",
          "cpuid", "asimdrdm", "jscvt", "fcma", "lrcpc", "dcpop", "sha3", "sm3", "sm4", "asimddp", "sha512",
          "sve", "asimdfhm", "dit", "uscat", "ilrcpc", "flagm", "ssbs", "sb", "paca", "pacg")
_HWCAP2 = ("dcpodp", "sve2", "sveaes", "svepmull", "svebitperm", "svesha3", "svesm4", "flagm2", "frint",
           "svei8mm", "svef32mm", "svef64mm", "svebf16", "i8mm", "bf16", "dgh", "rng", "bti", "mte", "ecv",
           "afp", "rpres", "mte3", "sme")
BOARD_MARKER = "/etc/edgekit-board.json"  # written into an emulated board's root by ``edgekit board``


def hwcap_features(hwcap: int, hwcap2: int = 0) -> list[str]:
    """The /proc/cpuinfo feature names of an arm64 ``getauxval(AT_HWCAP)`` / ``AT_HWCAP2`` pair."""
    return ([name for bit, name in enumerate(_HWCAP) if hwcap >> bit & 1]
            + [name for bit, name in enumerate(_HWCAP2) if hwcap2 >> bit & 1])


def _auxv_features() -> list[str] | None:
    """Features from the kernel's (or the emulator's) auxiliary vector, where /proc/cpuinfo has none."""
    import ctypes
    import platform
    if platform.machine() not in _ARM64:
        return None
    try:
        getauxval = ctypes.CDLL(None).getauxval
    except (OSError, AttributeError):
        return None
    getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
    return hwcap_features(getauxval(16), getauxval(26))  # AT_HWCAP, AT_HWCAP2


def parse_cpuinfo(text: str) -> dict[str, Any]:
    """What a /proc/cpuinfo text says: ``cpu_model`` (ARM cores decoded from implementer and part,
    e.g. ``Cortex-A72`` or ``2x Cortex-X1 + 2x Cortex-A76 + 4x Cortex-A55``; elsewhere the model
    name), ``cpu_cores`` (core name -> count), ``features`` (all flags of the first processor),
    ``board`` (the ``Model`` line a Raspberry Pi prints) and ``isa`` (``arm`` / ``x86`` / None)."""
    blocks, tail = [], {}
    current: dict[str, str] = {}
    for line in text.splitlines() + [""]:
        key, sep, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if not sep:
            if current:
                blocks.append(current)
                current = {}
            continue
        if key == "processor" and "processor" in current:
            blocks.append(current)
            current = {}
        current[key] = value
    per_cpu = [b for b in blocks if "processor" in b]
    for b in blocks:
        if "processor" not in b:
            tail.update(b)
    cores: dict[str, int] = {}
    for b in per_cpu:
        impl, part = b.get("CPU implementer"), b.get("CPU part")
        if impl and part:
            try:
                impl_i, part_i = int(impl, 16), int(part, 16)
            except ValueError:
                continue
            vendor, parts = _ARM_CORES.get(impl_i, (f"implementer {impl}", {}))
            name = parts.get(part_i, f"{vendor} part {part}")
            cores[name] = cores.get(name, 0) + 1
    first = per_cpu[0] if per_cpu else tail
    flags = first.get("Features") or first.get("flags") or tail.get("Features") or ""
    if cores:
        names = list(cores)[::-1]  # big cores are the higher-numbered ones: name them first
        model = names[0] if len(names) == 1 else " + ".join(f"{cores[n]}x {n}" for n in names)
        isa = "arm"
    else:
        model = next((b.get(k) for b in (first, tail) for k in ("model name", "Hardware", "Processor", "cpu model")
                      if b.get(k)), None)
        isa = "x86" if "vendor_id" in first or " sse" in f" {flags}" else ("arm" if "CPU implementer" in first
                                                                              else None)
    return {"cpu_model": model, "cpu_cores": cores, "features": flags.split(),
            "board": tail.get("Model") or first.get("Model"), "isa": isa}


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def emulation(info: Mapping[str, Any], machine: str, marker: str | None = None) -> dict[str, Any] | None:
    """Whether a CPU is emulated: an edgekit board says so in its marker file (``marker``, the text
    of ``BOARD_MARKER`` where it exists); any other user-mode emulator shows itself by an ARM
    process reading an x86 /proc/cpuinfo (``info`` from ``parse_cpuinfo``)."""
    import json
    if marker is not None:
        try:
            data = json.loads(marker)
        except ValueError:
            data = {"emulator": "unknown (the board marker is unreadable)"}
        return {"emulator": data.get("emulator"), "board": data.get("board"), "cpu": data.get("cpu")}
    if machine in ("aarch64", "arm64", "armv7l", "armv8l") and info.get("isa") == "x86":
        return {"emulator": f"unknown: this {machine} Python reads an x86 /proc/cpuinfo (a user-mode emulator "
                            f"such as qemu-user)", "board": None, "cpu": None}
    return None


def cpu_description() -> dict[str, Any]:
    """The CPU this agent runs on: model, cores by kind, the int8-relevant ISA features, the board
    and whether it is emulated."""
    import platform
    machine = platform.machine()
    text = _read("/proc/cpuinfo")
    info = parse_cpuinfo(text or "")
    features = info["features"]
    if machine in _ARM64 and not features:
        features = _auxv_features() or []
    board = info["board"] or (_read("/proc/device-tree/model") or "").rstrip("\x00\n") or None
    return {"cpu_model": info["cpu_model"] or platform.processor() or machine or "unknown",
            "cpu_cores": info["cpu_cores"], "board": board, "isa_features": int8_features(features, machine),
            "emulated": emulation(info, machine, _read(BOARD_MARKER))}


def int8_features(features: Sequence[str], machine: str) -> list[str] | None:
    """Which of ``INT8_FEATURES`` an arm64 CPU has (None on other machines: the names are ARM's)."""
    return [f for f in INT8_FEATURES if f in features] if machine in _ARM64 else None


def _loadavg() -> list[float] | None:
    import os
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def cpu_caches(core: int = 0, root: str = "/sys/devices/system/cpu") -> dict[str, int] | None:
    """The data and unified caches of ``core`` in KiB by level (``{"L1d": 48, "L2": 2048, ...}``), from
    Linux's sysfs (Android's too); None where it is not readable."""
    import os
    base = f"{root}/cpu{core}/cache"
    try:
        names = sorted(n for n in os.listdir(base) if n.startswith("index"))
    except OSError:
        return None
    out: dict[str, int] = {}
    for name in names:
        level, kind, size = (_read(f"{base}/{name}/{f}") for f in ("level", "type", "size"))
        if not (level and kind and size) or kind.strip() == "Instruction":
            continue
        size = size.strip().upper()
        scale = {"K": 1, "M": 1024, "G": 1024 * 1024}.get(size[-1:], None)
        digits = size[:-1] if scale else size
        if not digits.isdigit():
            continue
        kib = int(digits) * scale if scale else int(digits) // 1024
        out[f"L{level.strip()}" + ("d" if kind.strip() == "Data" else "")] = kib
    return out or None


def fingerprint(runner: Runner | None, threads: int, pinned: list[int] | None) -> dict[str, Any]:
    """Where and with what the model ran: an absolute time means nothing without this."""
    import os
    import platform
    fp = {**cpu_description(), "cores": os.cpu_count(), "arch": platform.machine(),
          "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
          "numpy": np.__version__, "threads": threads, "pinned_cores": pinned,
          "caches": cpu_caches(pinned[0] if pinned else 0)}
    if runner is not None:
        fp.update(runtime=runner.runtime, runtime_version=runner.runtime_version)
        # the same for every file on a device (a LUT's header compares it); what XNNPACK took of this
        # file is in the result's "xnnpack"
        fp["delegate"] = ("CPUExecutionProvider" if runner.format == "onnx"
                          else "default CPU kernels (XNNPACK where the runtime enables it)")
    return fp


def _pin(request: Mapping[str, Any]) -> list[int] | None:
    """Pin to ``pin_cores`` (a list), or ``"auto"``: the last ``threads`` cores this process may use."""
    import os
    want = request.get("pin_cores")
    if want is None:
        return None
    if not hasattr(os, "sched_setaffinity"):
        return None  # macOS and friends cannot pin; the fingerprint then says pinned_cores null
    allowed = sorted(os.sched_getaffinity(0))
    if want == "auto":
        cores = allowed[-max(1, int(request.get("threads", 1))):]
    else:
        cores = [int(c) for c in want]
        bad = [c for c in cores if c not in allowed]
        if bad:
            raise AgentError("bad-request", f"cannot pin to core(s) {bad}: this process may use {allowed}")
    os.sched_setaffinity(0, cores)
    return cores


def _random_inputs(runner: Runner, seed: int) -> list[np.ndarray]:
    """One seeded batch per input in the file's own dtype and shape (third-party files)."""
    rng = np.random.default_rng(seed)
    out = []
    for spec in runner.input_specs:
        dtype = np.dtype(spec["dtype"])
        if dtype.kind == "f":
            out.append(rng.standard_normal(spec["shape"]).astype(dtype))
        elif dtype.kind in "iu":
            info = np.iinfo(dtype)
            lo, hi = max(int(info.min), -128), min(int(info.max), 255)
            out.append(rng.integers(lo, hi + 1, size=spec["shape"]).astype(dtype))
        else:  # bool: _load_inputs refused every other kind
            out.append(rng.integers(0, 2, size=spec["shape"]).astype(dtype))
    return out


def _dims_text(dims: Sequence[Any]) -> str:
    """``batch x 3 x height x width`` as ``batchx3xheightxwidth`` (``?`` for an unnamed dynamic one)."""
    return "x".join(str(v) if v is not None else "?" for v in dims)


def _flag_example(spec: Mapping[str, Any]) -> str:
    dims = "x".join(str(v) if isinstance(v, int) else f"<{v or f'dim{k}'}>" for k, v in enumerate(spec["dims"]))
    return f"--input-shape {spec['name']}={dims}"


def _is_batch(label: Any) -> bool:
    """A dynamic first dimension that names a batch, or names nothing (TFLite's -1)."""
    return label is None or "batch" in str(label).lower() or str(label).lower() in ("n", "b", "bs")


def _check_shape(spec: Mapping[str, Any], shape: Sequence[int], source: str) -> tuple[int, ...]:
    """``shape`` for ``spec`` from ``source`` (``--input-shape``, ``--inputs``, ...), checked against
    the file's rank and static dimensions."""
    shape, dims = tuple(int(v) for v in shape), spec["dims"]
    if any(v < 1 for v in shape):
        raise AgentError("bad-input", f"{source} gives input {spec['name']!r} shape {_dims_text(shape)}: every "
                                      f"dimension must be positive")
    if len(shape) != len(dims):
        raise AgentError("bad-input", f"{source} gives input {spec['name']!r} rank {len(shape)} "
                                      f"({_dims_text(shape)}); the file's is rank {len(dims)} ({_dims_text(dims)})")
    for k, (v, want) in enumerate(zip(shape, dims)):
        if isinstance(want, int) and v != want:
            raise AgentError("bad-input", f"{source} gives input {spec['name']!r} shape {_dims_text(shape)}, but "
                                          f"its axis {k} is {want} in the file ({_dims_text(dims)})")
    return shape


def _given_shapes(request: Mapping[str, Any], declared: Sequence[Mapping[str, Any]]) -> dict[int, tuple[int, ...]]:
    """The request's ``input_shapes`` (``{"name": NAME or null, "shape": [...]}``, null naming the
    only input) by input position, checked against the file."""
    names = [d["name"] for d in declared]
    given: dict[int, tuple[int, ...]] = {}
    for item in request.get("input_shapes") or ():
        name = item.get("name")
        if name is None and len(names) != 1:
            raise AgentError("bad-input", f"the file has {len(names)} inputs ({', '.join(names)}); name the one "
                                          f"each --input-shape is for, e.g. --input-shape {names[0]}=...")
        if name is not None and name not in names:
            raise AgentError("bad-input", f"--input-shape: the file has no input {name!r}; its inputs are "
                                          f"{', '.join(names)}")
        k = 0 if name is None else names.index(name)
        if k in given:
            raise AgentError("bad-input", f"--input-shape gives input {names[k]!r} twice")
        given[k] = _check_shape(declared[k], item["shape"], "--input-shape")
    return given


def _shape_to_make(spec: Mapping[str, Any]) -> tuple[tuple[int, ...], str | None]:
    """The shape of generated inputs for an input no shape was given for, and a note when its
    dynamic batch dimension was set to 1. Any other dynamic dimension is refused: no size is a
    fair guess for a sequence length or an image side."""
    dims = spec["dims"]
    dynamic = [k for k, v in enumerate(dims) if not isinstance(v, int)]
    if not dynamic:
        return tuple(dims), None
    if dynamic == [0] and len(dims) > 1 and _is_batch(dims[0]):
        label = f" {dims[0]!r}" if dims[0] else ""
        return (1, *dims[1:]), (f"input {spec['name']!r}: its dynamic batch dimension{label} was set to 1 (give "
                                f"another batch with --input-shape {spec['name']}=Nx{_dims_text(dims[1:])})")
    named = ", ".join(f"{dims[k] or '?'} (axis {k})" for k in dynamic)
    raise AgentError("bad-input", f"input {spec['name']!r} has dynamic dimension(s) {named} in its shape "
                                  f"{_dims_text(dims)}; give its shape with {_flag_example(spec)}")


def _accepted_dtype(runner: Runner, spec: Mapping[str, Any]) -> np.dtype:
    """The dtype arrays for an input must have: the file's own, or float32 for a file with a
    manifest (fed like images: quantized by the runner as the file declares)."""
    return np.dtype(spec["dtype"]) if runner.raw else np.dtype("float32")


def _named_inputs(arrays: Mapping[str, np.ndarray], runner: Runner,
                  declared: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
    """The request's ``input_arrays`` (name -> one input tensor) in the file's input order, as
    one-sample stacks; names, dtypes and shapes checked against the file."""
    names = [d["name"] for d in declared]
    missing, extra = [n for n in names if n not in arrays], [n for n in arrays if n not in names]
    if missing or extra:
        what = [f"no array for input(s) {', '.join(map(repr, missing))}"] if missing else []
        what += [f"array(s) {', '.join(map(repr, extra))} name no input"] if extra else []
        raise AgentError("bad-input", f"--inputs: {'; '.join(what)} (the file's inputs: {', '.join(names)})")
    out = []
    for spec in declared:
        x, want = arrays[spec["name"]], _accepted_dtype(runner, spec)
        if x.dtype != want:
            raise AgentError("bad-input", f"--inputs: array {spec['name']!r} is {x.dtype}; the input takes {want}")
        _check_shape(spec, x.shape, "--inputs")
        out.append(x[None])
    return out


def _stacked_inputs(paths: Sequence[str], declared: Sequence[Mapping[str, Any]]) -> list[np.ndarray]:
    """The request's ``inputs``: one ``.npy`` of (samples, *shape) per input, in the file's order."""
    if len(paths) != len(declared):
        raise AgentError("bad-input", f"the model takes {len(declared)} input(s) {[s['name'] for s in declared]}, "
                                      f"the request gives {len(paths)}")
    arrays = []
    for spec, path in zip(declared, paths):
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise AgentError("bad-input", f"cannot read inputs {path}: {e}") from None
        if len(x) == 0:
            raise AgentError("bad-input", f"inputs {path} hold no samples")
        _check_shape(spec, x.shape[1:], f"inputs {path}")
        arrays.append(x)
    if len({len(a) for a in arrays}) != 1:
        raise AgentError("bad-input", "every input needs the same number of samples")
    return arrays


def _load_inputs(request: Mapping[str, Any], runner: Runner) -> tuple[list[np.ndarray], list[str]]:
    """Inputs as (samples, *input shape) arrays, one per model input, and notes on the shapes
    chosen; the runner is given the shapes. Shapes come from the arrays fed, else from the
    request's ``input_shapes``, else from the file (a dynamic batch set to 1)."""
    declared = runner.declared_inputs
    for spec in declared:
        if np.dtype(spec["dtype"]).kind not in "fiub":
            raise AgentError("bad-input", f"input {spec['name']!r} takes {spec['dtype']} tensors (strings): "
                                          f"edgekit feeds and times numeric tensors only; run the file's string "
                                          f"handling outside it")
    given = _given_shapes(request, declared)
    notes: list[str] = []
    if request.get("input_arrays") is not None:
        try:
            with np.load(request["input_arrays"], allow_pickle=False) as z:
                named = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise AgentError("bad-input", f"cannot read inputs {request['input_arrays']}: {e}") from None
        arrays = _named_inputs(named, runner, declared)
    elif request.get("inputs") is not None:
        arrays = _stacked_inputs(request["inputs"], declared)
    else:
        arrays = None
    if arrays is not None:
        for k, shape in given.items():
            if tuple(arrays[k].shape[1:]) != shape:
                raise AgentError("bad-input", f"--input-shape gives input {declared[k]['name']!r} shape "
                                              f"{_dims_text(shape)}, the inputs fed have "
                                              f"{_dims_text(arrays[k].shape[1:])}")
        runner.set_shapes([a.shape[1:] for a in arrays])
        return arrays, notes
    shapes, notes = shapes_to_make(declared, given)
    runner.set_shapes(shapes)
    return [x[None] for x in _random_inputs(runner, int(request.get("seed", 0)))], notes


def shapes_to_make(declared: Sequence[Mapping[str, Any]], given: Mapping[int, tuple[int, ...]]
                   ) -> tuple[list[tuple[int, ...]], list[str]]:
    """The shape of every input of generated inputs (``given`` by position, else from the file)
    and the notes on dynamic batches set to 1; an input with other dynamic dimensions is refused."""
    shapes, notes = [], []
    for k, spec in enumerate(declared):
        shape, note = (given[k], None) if k in given else _shape_to_make(spec)
        shapes.append(shape)
        notes += [note] if note else []
    return shapes, notes


def input_plan(path: str, input_shapes: Sequence[tuple[str | None, Sequence[int]]]) -> list[dict[str, Any]]:
    """name, shape and dtype of each input of generated inputs for the file at ``path`` given
    ``input_shapes`` ((input name or None, shape) pairs), read with this machine's runtime: for a
    tool that runs the file without the agent (``benchmark_model``). Raises ``AgentError`` as the
    agent would."""
    declared = Runner(path, None, raw=True).declared_inputs
    request = {"input_shapes": [{"name": name, "shape": list(shape)} for name, shape in input_shapes]}
    shapes, _ = shapes_to_make(declared, _given_shapes(request, declared))
    return [{"name": d["name"], "shape": list(s), "dtype": d["dtype"]} for d, s in zip(declared, shapes)]


def _cv(lat: list[int]) -> float:
    a = np.asarray(lat, dtype=np.float64)
    return float(a.std() / a.mean()) if len(a) > 1 and a.mean() > 0 else 0.0


def measure(runner: Runner, inputs: Sequence[np.ndarray], *, warmup: int, runs: int, max_runs: int,
            target_cv: float, blocks: int = 1, gap_ms: float = 0.0) -> dict[str, Any]:
    """Warm up, then time ``runs`` inferences (perf_counter_ns around ``invoke`` only); while the CV
    is above ``target_cv`` time ``runs`` more, up to ``max_runs`` in all. Every ``runs`` is split into
    ``blocks`` blocks with ``gap_ms`` of sleep between consecutive blocks; after each sleep the
    ``warmup`` runs are repeated, untimed (the first runs after a sleep find cold caches)."""
    import time
    sizes = [runs // blocks + (1 if i < runs % blocks else 0) for i in range(blocks)]
    runner.feed(list(inputs))
    t0 = time.perf_counter_ns()
    runner.invoke()
    first = time.perf_counter_ns() - t0
    for _ in range(warmup):
        runner.invoke()
    lat: list[int] = []
    while True:
        for size in sizes:
            n = min(size, max_runs - len(lat))
            if n <= 0:
                break
            if lat and gap_ms > 0:
                time.sleep(gap_ms / 1e3)
                for _ in range(warmup):
                    runner.invoke()
            for _ in range(n):
                t0 = time.perf_counter_ns()
                runner.invoke()
                lat.append(time.perf_counter_ns() - t0)
        if len(lat) >= max_runs or _cv(lat) <= target_cv:
            break
    return {"first_inference_ns": first, "latencies_ns": lat, "cv": _cv(lat), "cv_target": target_cv,
            "cv_target_met": _cv(lat) <= target_cv, "blocks": blocks, "gap_ms": gap_ms}


def _outputs(runner: Runner, inputs: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Every sample through the model; output i stacked as (samples, *shape) under ``output_<i>``."""
    per_output: list[list[np.ndarray]] = [[] for _ in runner.output_names]
    for k in range(len(inputs[0])):
        for i, y in enumerate(runner(*[x[k] for x in inputs])):
            per_output[i].append(y)
    return {f"output_{i}": np.stack(ys) for i, ys in enumerate(per_output)}


def _intermediates(runner: Runner, inputs: Sequence[np.ndarray]) -> tuple[dict[str, np.ndarray], list[dict], str]:
    """Every op output over every sample, stacked as (samples, *shape) under ``layer_<k>``, the
    list that names them (key, tensor, op name, op type, and the int8 scale of a quantized tensor),
    in graph order, and which kernels computed them."""
    try:
        inter = Intermediates(runner)
    except RuntimeMissing as e:
        raise AgentError("runtime-missing", str(e)) from None
    per_tensor: dict[str, list[np.ndarray]] = {}
    for k in range(len(inputs[0])):
        for name, y in inter(*[x[k] for x in inputs]).items():
            per_tensor.setdefault(name, []).append(y)
    arrays, index, seen = {}, [], set()
    for tensor, node, op in inter.ops:
        ys = per_tensor.get(tensor)
        if ys is None or len(ys) != len(inputs[0]) or any(y.shape != ys[0].shape for y in ys):
            continue
        if tensor in seen:
            continue
        seen.add(tensor)
        key = f"{INTERMEDIATE_PREFIX}{len(index):04d}"
        arrays[key] = np.stack(ys)
        index.append({"key": key, "tensor": tensor, "node": node, "op": op, "scale": inter.scales.get(tensor)})
    return arrays, index, inter.kernels


def _open(request: Mapping[str, Any]) -> Runner:
    import os
    path = request["model"]
    if not os.path.isfile(path):
        raise AgentError("bad-request", f"model file {path} is not on this device")
    want = request.get("model_sha256")
    if want and _sha256(path) != want:
        raise AgentError("checksum-mismatch", f"model file {path} does not have sha256 {want}: it was corrupted "
                                              f"on the way or on the device")
    for location, sha in (request.get("data_sha256") or {}).items():  # an ONNX file's external data
        data = os.path.join(os.path.dirname(path), location)
        if not os.path.isfile(data):
            raise AgentError("bad-request", f"external data file {data} of {path} is not on this device")
        if _sha256(data) != sha:
            raise AgentError("checksum-mismatch", f"external data file {data} does not have sha256 {sha}: it was "
                                                  f"corrupted on the way or on the device")
    try:
        return Runner(path, request.get("manifest"), threads=int(request.get("threads", 1)),
                      raw=request.get("manifest") is None)
    except RuntimeMissing as e:
        raise AgentError("runtime-missing", str(e)) from None
    except Exception as e:  # runtimes raise RuntimeError, ValueError, their own types, for a bad file
        raise AgentError("model-rejected", f"the runtime refused {path}: {type(e).__name__}: {e}") from None


def run_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """Everything ``python agent.py REQUEST.json`` does except reading and writing files."""
    import time
    for key in ("model", "outputs"):
        if key not in request:
            raise AgentError("bad-request", f"request has no {key!r}")
    threads = int(request.get("threads", 1))
    runs, warmup = int(request.get("runs", 50)), int(request.get("warmup", 10))
    max_runs = int(request.get("max_runs", 4 * runs))
    blocks, gap_ms = int(request.get("blocks", 1)), float(request.get("gap_ms", 0.0))
    if threads < 1 or runs < 1 or warmup < 0 or max_runs < runs:
        raise AgentError("bad-request", f"threads {threads} and runs {runs} must be >= 1, warmup {warmup} >= 0, "
                                        f"max_runs {max_runs} >= runs")
    if not (1 <= blocks <= runs and 0 <= gap_ms <= 10_000):
        raise AgentError("bad-request", f"blocks {blocks} must be between 1 and runs {runs}, gap_ms {gap_ms} "
                                        f"between 0 and 10000")
    pinned = _pin(request)
    load_before = _loadavg()
    t0 = time.perf_counter_ns()
    runner = _open(request)
    init_ns = time.perf_counter_ns() - t0
    try:
        inputs, notes = _load_inputs(request, runner)
        outputs = _outputs(runner, inputs)
        index = None
        if request.get("intermediates"):
            extra, index, kernels = _intermediates(runner, inputs)
            outputs.update(extra)
        timing = measure(runner, [x[0] for x in inputs], warmup=warmup, runs=runs, max_runs=max_runs,
                         target_cv=float(request.get("target_cv", 0.10)), blocks=blocks, gap_ms=gap_ms)
    except ValueError as e:
        raise AgentError("bad-input", str(e)) from None
    except AgentError:
        raise
    except Exception as e:  # an op the runtime cannot execute on this device
        raise AgentError("model-rejected", f"the runtime failed running {request['model']}: {type(e).__name__}: {e}") from None
    np.savez(request["outputs"], **outputs)
    if request.get("inputs") is None and request.get("input_arrays") is None:
        np.savez(request["outputs"][:-4] + ".inputs.npz", **{f"input_{i}": x for i, x in enumerate(inputs)})
    return {"ok": True, "fingerprint": fingerprint(runner, threads, pinned), "init_ns": init_ns,
            "xnnpack": getattr(runner, "xnnpack", None),
            "warmup": warmup, "samples": len(inputs[0]), "output_names": runner.output_names,
            "input_tensors": [{"name": i["name"], "shape": list(i["shape"]), "dtype": i["dtype"]}
                              for i in runner.input_specs], "notes": notes,
            "load_average_before": load_before, "load_average_after": _loadavg(),
            **({} if index is None else {"intermediates": index, "intermediates_kernels": kernels}), **timing}


def main(argv: Sequence[str] | None = None) -> int:
    import json
    import signal
    import sys
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 1:
        print("usage: python agent.py REQUEST.json", file=sys.stderr)
        return 2
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, _on_signal)
    result_path = None
    try:
        with open(argv[0]) as f:
            request = json.load(f)
        result_path = request.get("result")
        result = run_request(request)
        code = 0
    except AgentError as e:
        result, code = {"ok": False, "kind": e.kind, "message": str(e)}, 3
    except (OSError, ValueError, KeyError, TypeError) as e:
        result, code = {"ok": False, "kind": "bad-request", "message": f"{type(e).__name__}: {e}"}, 3
    except _Interrupted as e:
        result, code = {"ok": False, "kind": "interrupted", "message": f"the agent was stopped by {e}"}, 4
    result["fingerprint"] = result.get("fingerprint") or fingerprint(None, 0, None)
    text = json.dumps(result)
    if result_path:
        with open(result_path, "w") as f:
            f.write(text + "\n")
    print(text, flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())

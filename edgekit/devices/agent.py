"""The device agent: load an exported model with whatever runtime the device has, run it on float
inputs the way its manifest says (layout, int8 scale / zero point) and time it.

This file must stay importable on its own on a device: standard library + numpy + one runtime
(``ai_edge_litert``, else ``tflite_runtime``, else ``tensorflow.lite`` for .tflite; ``onnxruntime``
for .onnx). edgekit imports it in-process too (``edgekit validate``), so host and device share
one code path. The transports copy this one file to the device and run it as a script::

    python agent.py REQUEST.json

The request (JSON) names the model file, its sha256, the manifest (or null for a third-party file),
the inputs ``.npy`` files (or null: seeded random inputs matched to each input's dtype and shape),
threads, warm-up, runs, the CV target and run cap, and the cores to pin to. The agent writes the
outputs ``.npz`` and a result JSON (also printed as the last line on stdout): runtime name and
version, delegate, threads, CPU model, cores, arch, OS, load average, per-run latencies in ns.

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
        if self.path.endswith(".tflite"):
            self.format = "tflite"
            cls, self.runtime, self.runtime_version = tflite_runtime_info()
            self._it = cls(model_path=self.path, num_threads=threads)
            self._it.allocate_tensors()
            self._in = self._it.get_input_details()
            self._out = self._it.get_output_details()
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
    def input_specs(self) -> list[dict[str, Any]]:
        """name, shape, dtype (and quantization) of each input as the file declares it; a dynamic
        ONNX dimension (a name or None) is reported as 1."""
        if self.format == "tflite":
            return [{"name": d["name"], "shape": tuple(int(v) for v in d["shape"]), "dtype": np.dtype(d["dtype"]).name,
                     "quantization": tuple(d["quantization"])} for d in self._in]
        return [{"name": i.name, "shape": tuple(v if isinstance(v, int) and v > 0 else 1 for v in i.shape),
                 "dtype": _ort_dtype(i.type), "quantization": (0.0, 0)} for i in self._sess.get_inputs()]

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
        cls, _, _ = tflite_runtime_info()
        r = self.runner
        self._it = cls(model_path=r.path, num_threads=r.threads, experimental_preserve_all_tensors=True)
        self._it.allocate_tensors()
        details = {d["index"]: d for d in self._it.get_tensor_details()}
        self._tensors: list[dict[str, Any]] = []
        self.ops: list[tuple[str, str, str]] = []
        for op in self._it._get_ops_details():
            for idx in op["outputs"]:
                d = details.get(int(idx))
                if d is None or np.dtype(d["dtype"]).kind not in "fiu":
                    continue
                self._tensors.append(d)
                self.ops.append((d["name"], d["name"], str(op["op_name"])))

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


def _ort_dtype(type_str: str) -> str:
    return {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
            "tensor(int64)": "int64", "tensor(int32)": "int32"}.get(type_str, type_str)


def _np_dtype(type_str: str) -> np.dtype:
    return np.dtype(_ort_dtype(type_str))


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


def _cpu_model() -> str:
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Processor", "cpu model") and value.strip():
                    return value.strip()
    except OSError:
        pass  # not Linux: platform.processor() below
    return platform.processor() or platform.machine() or "unknown"


def _loadavg() -> list[float] | None:
    import os
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def fingerprint(runner: Runner | None, threads: int, pinned: list[int] | None) -> dict[str, Any]:
    """Where and with what the model ran: an absolute time means nothing without this."""
    import os
    import platform
    fp = {"cpu_model": _cpu_model(), "cores": os.cpu_count(), "arch": platform.machine(),
          "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
          "numpy": np.__version__, "threads": threads, "pinned_cores": pinned}
    if runner is not None:
        fp.update(runtime=runner.runtime, runtime_version=runner.runtime_version,
                  delegate="CPUExecutionProvider" if runner.format == "onnx" else "default CPU kernels (XNNPACK where the runtime enables it)")
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
        elif dtype.kind == "b":
            out.append(rng.integers(0, 2, size=spec["shape"]).astype(dtype))
        else:
            raise AgentError("bad-input", f"input {spec['name']!r} has dtype {dtype}; random inputs are made only "
                                          f"for float, integer and bool inputs")
    return out


def _load_inputs(request: Mapping[str, Any], runner: Runner) -> list[np.ndarray]:
    """Inputs as (samples, *input shape) arrays, one per model input."""
    paths = request.get("inputs")
    if paths is None:
        return [x[None] for x in _random_inputs(runner, int(request.get("seed", 0)))]
    specs = runner.input_specs
    if len(paths) != len(specs):
        raise AgentError("bad-input", f"the model takes {len(specs)} input(s) {[s['name'] for s in specs]}, "
                                      f"the request gives {len(paths)}")
    arrays = []
    for spec, path in zip(specs, paths):
        try:
            x = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise AgentError("bad-input", f"cannot read inputs {path}: {e}") from None
        if tuple(x.shape[1:]) != tuple(spec["shape"]):
            raise AgentError("bad-input", f"inputs {path} hold samples of shape {tuple(x.shape[1:])} but input "
                                          f"{spec['name']!r} takes {tuple(spec['shape'])}")
        if len(x) == 0:
            raise AgentError("bad-input", f"inputs {path} hold no samples")
        arrays.append(x)
    if len({len(a) for a in arrays}) != 1:
        raise AgentError("bad-input", "every input needs the same number of samples")
    return arrays


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


def _intermediates(runner: Runner, inputs: Sequence[np.ndarray]) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Every op output over every sample, stacked as (samples, *shape) under ``layer_<k>``, and the
    list that names them (key, tensor, op name, op type), in graph order."""
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
        index.append({"key": key, "tensor": tensor, "node": node, "op": op})
    return arrays, index


def _open(request: Mapping[str, Any]) -> Runner:
    import os
    path = request["model"]
    if not os.path.isfile(path):
        raise AgentError("bad-request", f"model file {path} is not on this device")
    want = request.get("model_sha256")
    if want and _sha256(path) != want:
        raise AgentError("checksum-mismatch", f"model file {path} does not have sha256 {want}: it was corrupted "
                                              f"on the way or on the device")
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
    inputs = _load_inputs(request, runner)
    try:
        outputs = _outputs(runner, inputs)
        index = None
        if request.get("intermediates"):
            extra, index = _intermediates(runner, inputs)
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
    if request.get("inputs") is None:
        np.savez(request["outputs"][:-4] + ".inputs.npz", **{f"input_{i}": x for i, x in enumerate(inputs)})
    return {"ok": True, "fingerprint": fingerprint(runner, threads, pinned), "init_ns": init_ns,
            "warmup": warmup, "samples": len(inputs[0]), "output_names": runner.output_names,
            "load_average_before": load_before, "load_average_after": _loadavg(),
            **({} if index is None else {"intermediates": index}), **timing}


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

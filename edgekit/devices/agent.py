"""The device agent's core: load an exported model with whatever runtime the device has and run it
on float inputs the way its manifest says (layout, int8 scale / zero point).

This file must stay importable on its own on a device: standard library + numpy + one runtime
(``ai_edge_litert``, else ``tflite_runtime``, else ``tensorflow.lite`` for .tflite; ``onnxruntime``
for .onnx). edgekit imports it in-process too (``edgekit validate``), so host and device share
one code path.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["RuntimeMissing", "Runner", "tflite_runtime_info", "quantize", "dequantize"]

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
    """

    def __init__(self, model_path: str, manifest: Mapping[str, Any] | None, *, threads: int = 1):
        self.path = str(model_path)
        self.manifest = manifest
        self.threads = threads
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
        """name, shape, dtype (and quantization) of each input as the file declares it."""
        if self.format == "tflite":
            return [{"name": d["name"], "shape": tuple(int(v) for v in d["shape"]), "dtype": np.dtype(d["dtype"]).name,
                     "quantization": tuple(d["quantization"])} for d in self._in]
        return [{"name": i.name, "shape": tuple(i.shape), "dtype": _ort_dtype(i.type), "quantization": (0.0, 0)}
                for i in self._sess.get_inputs()]

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        if self.format == "tflite":
            return self._run_tflite(inputs)
        feeds = {i.name: np.ascontiguousarray(x, dtype=_np_dtype(i.type))
                 for i, x in zip(self._sess.get_inputs(), inputs)}
        return [np.asarray(o, dtype=np.float32) for o in self._sess.run(None, feeds)]

    def _run_tflite(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(inputs) != len(self._in):
            raise ValueError(f"{self.path} takes {len(self._in)} input(s), got {len(inputs)}")
        for d, x in zip(self._in, inputs):
            if tuple(x.shape) != tuple(d["shape"]):
                raise ValueError(f"{self.path}: input {d['name']!r} has shape {tuple(d['shape'])}, got {tuple(x.shape)}")
            scale, zp = d["quantization"]
            dtype = np.dtype(d["dtype"])
            if dtype.kind in "iu" and scale > 0:
                x = quantize(x, scale, zp, dtype.name)
            self._it.set_tensor(d["index"], np.ascontiguousarray(x, dtype=dtype))
        self._it.invoke()
        outs = []
        for d in self._out:
            y = self._it.get_tensor(d["index"])
            scale, zp = d["quantization"]
            outs.append(dequantize(y, scale, zp) if np.dtype(d["dtype"]).kind in "iu" and scale > 0
                        else y.astype(np.float32))
        return outs


def _ort_dtype(type_str: str) -> str:
    return {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
            "tensor(int64)": "int64", "tensor(int32)": "int32"}.get(type_str, type_str)


def _np_dtype(type_str: str) -> np.dtype:
    return np.dtype(_ort_dtype(type_str))

"""What every device shares: the ``Device`` protocol, ``RunResult``, ``DeviceError``, the model file
a device runs, and ``AgentDevice`` (build the agent's request, read its result) that the ``local``
and ``ssh`` transports extend with how they move files and start a process.

>>> # dev = open_device("local"); res = dev.run(open_model("m.tflite"), None)  # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol as TypingProtocol, Sequence

import numpy as np

from ..exporters.artifact import Manifest, load_artifact, manifest_path, sha256_file
from .stats import Protocol, Stats, summarize

__all__ = ["AGENT_PATH", "DeviceError", "fingerprint_notes", "DataFile", "ModelFile", "external_data", "RunResult",
           "Device", "AgentDevice", "open_model", "parse_agent_output", "write_inputs", "Inputs", "InputShapes"]

AGENT_PATH = Path(__file__).with_name("agent.py")
# what a device run is fed: None (seeded random inputs), one (samples, *shape) array per input in
# order, or input name -> one tensor (``--inputs FILE.npz``)
Inputs = Sequence[np.ndarray] | Mapping[str, np.ndarray] | None
InputShapes = Sequence[tuple[str | None, tuple[int, ...]]]  # (input name or None for the only one, shape)
EXTENSIONS = {".onnx": "onnx", ".tflite": "tflite"}


class DeviceError(RuntimeError):
    """A run failed on ``device`` at ``step`` (connect, upload, run, download ...); ``kind`` is the
    agent's error kind where the agent reported one (runtime-missing, model-rejected, ...)."""

    def __init__(self, device: str, step: str, message: str, *, kind: str = "transport"):
        super().__init__(f"{device}: {step} failed: {message}")
        self.device, self.step, self.kind, self.detail = device, step, kind, message

    def __reduce__(self):  # whole across processes (a Ray actor's failure reaches the driver as it was)
        return type(self), (self.device, self.step, self.detail), {"kind": self.kind}


@dataclass(frozen=True)
class DataFile:
    """An ONNX file's external data (weights kept beside it, ``X.onnx.data``): its location as
    the model names it, relative to the model's folder, and its content's sha256."""

    location: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class ModelFile:
    """A model file to run: an edgekit artifact (``manifest`` set, sha256 verified) or a third-party
    .onnx / .tflite file (``manifest`` None), with the external data files it reads."""

    path: Path
    format: str
    sha256: str
    manifest: Manifest | None
    data: tuple[DataFile, ...] = ()

    @property
    def name(self) -> str:
        return self.manifest.model if self.manifest else self.path.stem

    @property
    def precision(self) -> str:
        return self.manifest.precision if self.manifest else "unknown"

    @property
    def extension(self) -> str:
        return "." + self.format

    @property
    def cache_path(self) -> str:
        """Where a device cache keeps the model: ``models/<sha256>.<ext>``; a model with external
        data ``models/<key>/model.onnx`` with its data files beside it, the key a digest of the
        model's and every data file's sha256, so new weights in the same graph are a new entry."""
        if not self.data:
            return f"models/{self.sha256}{self.extension}"
        key = hashlib.sha256(json.dumps([self.sha256, [(d.location, d.sha256) for d in self.data]]).encode())
        return f"models/{key.hexdigest()}/model{self.extension}"

    def cache_files(self) -> list[tuple[Path, str, str]]:
        """(local path, sha256, path in the device cache) of every file a device needs, the model last."""
        folder = self.cache_path.rpartition("/")[0]
        return [(d.path, d.sha256, f"{folder}/{d.location}") for d in self.data] + [
            (self.path, self.sha256, self.cache_path)]


def open_model(path: str | Path) -> ModelFile:
    path = Path(path)
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown model format {path.suffix!r}; edgekit runs .onnx and .tflite files")
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    data = external_data(path) if fmt == "onnx" else ()
    if manifest_path(path).is_file():
        art = load_artifact(path)  # verifies the sha256 against the manifest
        return ModelFile(path.resolve(), fmt, art.manifest.file_sha256, art.manifest, data)
    return ModelFile(path.resolve(), fmt, sha256_file(path), None, data)


def external_data(path: Path) -> tuple[DataFile, ...]:
    """The external data files an ONNX file reads (``onnx.save(..., save_as_external_data=True)``,
    ``torch.onnx.export(..., dynamo=True)`` of a large model), each checked to lie beside it."""
    import onnx
    from google.protobuf.message import DecodeError
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    try:
        model = onnx.load(str(path), load_external_data=False)
    except DecodeError:  # not an ONNX model: the device's runtime refuses it with its own words
        return ()
    locations = sorted({ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)})
    files = []
    for loc in locations:
        if Path(loc).is_absolute() or ".." in Path(loc).parts:
            raise ValueError(f"{path} reads external data from {loc!r}, outside its own folder; edgekit copies "
                             f"only data files beside the model (re-save it with a relative location)")
        data = path.parent / loc
        if not data.is_file():
            raise ValueError(f"{path} keeps its weights in {loc}, which is not beside it; copy {loc} next to "
                             f"{path.name}")
        files.append(DataFile(loc, data.resolve(), sha256_file(data)))
    return tuple(files)


@dataclass(frozen=True)
class RunResult:
    """One complete measurement: outputs (each ``(samples, *shape)``, float32 unless the file has no
    manifest), per-run latencies (ns; empty when the device's tool reports aggregates only), stats,
    the device fingerprint and the settings it ran with."""

    device: str
    model: str
    format: str
    precision: str
    artifact_sha256: str
    outputs: Mapping[str, np.ndarray]
    output_names: tuple[str, ...]
    latencies_ns: tuple[int, ...]
    stats: Stats
    fingerprint: Mapping[str, Any]
    settings: Mapping[str, Any]
    conditions: Mapping[str, Any] = field(default_factory=dict)  # load average, CV target, first run
    inputs: Mapping[str, np.ndarray] | None = None  # the generated inputs of a third-party file
    notes: tuple[str, ...] = ()
    input_tensors: tuple[Mapping[str, Any], ...] = ()  # name, shape, dtype of each input as fed

    @property
    def output_tensors(self) -> list[dict[str, Any]]:
        """name (the runtime's), shape and dtype of each output of one sample."""
        return [{"name": name, "shape": list(self.outputs[f"output_{i}"].shape[1:]),
                 "dtype": self.outputs[f"output_{i}"].dtype.name}
                for i, name in enumerate(self.output_names) if f"output_{i}" in self.outputs]

    @property
    def input_shape(self) -> str | None:
        """The inputs' shapes in one string (``1x3x224x224``; ``ids=1x16,mask=1x16`` for several)."""
        shapes = ["x".join(map(str, t["shape"])) for t in self.input_tensors]
        if len(shapes) < 2:
            return shapes[0] if shapes else None
        return ",".join(f"{t['name']}={s}" for t, s in zip(self.input_tensors, shapes))

    def to_dict(self, *, latencies: bool = False) -> dict[str, Any]:
        outs = self.output_tensors
        d = {"device": self.device, "model": self.model, "format": self.format, "precision": self.precision,
             "artifact_sha256": self.artifact_sha256, "input_tensors": [dict(t) for t in self.input_tensors],
             "input_shape": self.input_shape, "output_names": list(self.output_names), "output_tensors": outs,
             "output_shapes": {t["name"]: t["shape"] for t in outs}, "stats": self.stats.to_dict(),
             "fingerprint": dict(self.fingerprint), "settings": dict(self.settings),
             "conditions": dict(self.conditions), "notes": list(self.notes)}
        if latencies:
            d["latencies_ns"] = list(self.latencies_ns)
        return d


class Device(TypingProtocol):
    address: str

    def run(self, model: ModelFile, inputs: Inputs, *, protocol: Protocol = Protocol(),
            input_shapes: InputShapes = ()) -> RunResult: ...


def fingerprint_notes(fp: Mapping[str, Any], xnnpack: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """What a user must know about where a file ran: emulation, and XNNPACK not (fully) taking a
    TFLite graph (LiteRT's own kernels round int8 differently and run slower)."""
    notes = []
    emu = fp.get("emulated")
    if emu:
        where = f" as a {emu['cpu']}" if emu.get("cpu") else ""
        notes.append(f"emulated ({emu.get('emulator')}{where}): its timings are the emulator's, not a latency of "
                     f"the board; measure latency on real hardware")
    x = xnnpack
    if x and x.get("expected"):
        left = ", ".join(f"{op} x{n}" for op, n in sorted(x.get("left", {}).items(), key=lambda kv: -kv[1]))
        if not x.get("delegated_ops"):
            notes.append(f"XNNPACK took none of the {x['ops']} ops: LiteRT ran its own kernels, whose int8 "
                         f"results and speed differ from XNNPACK's (the runtime could not start XNNPACK on this "
                         f"CPU, or it takes none of these ops: {left})")
        elif x["delegated_ops"] < x["ops"]:
            notes.append(f"XNNPACK took {x['delegated_ops']} of {x['ops']} ops in {x['partitions']} partition(s); "
                         f"left on LiteRT's own kernels: {left}")
    return tuple(notes)


def parse_agent_output(device: str, step: str, stdout: str, stderr: str, returncode: int) -> dict[str, Any]:
    """The agent's result JSON (its last stdout line); a structured failure becomes a DeviceError."""
    result = None
    for line in reversed(stdout.strip().splitlines()):
        try:
            result = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    if not isinstance(result, dict):
        tail = stderr.strip().splitlines()[-5:]
        raise DeviceError(device, step, f"the agent exited with status {returncode} and no result "
                                        f"({' | '.join(tail) or 'no output'})", kind="agent-crashed")
    if not result.get("ok"):
        raise DeviceError(device, step, f"{result.get('kind')}: {result.get('message')}",
                          kind=result.get("kind", "unknown"))
    if returncode != 0:
        raise DeviceError(device, step, f"the agent reported success but exited with status {returncode}")
    return result


def write_inputs(folder: Path, request: dict[str, Any], inputs: Inputs) -> list[Path]:
    """Save ``inputs`` into ``folder`` for the agent and name them in ``request``: a list (one
    (samples, *shape) array per input, in order) as ``input_<i>.npy``, a mapping (input name -> one
    tensor) as ``inputs.npz``. Returns the files written."""
    if inputs is None:
        return []
    if isinstance(inputs, Mapping):
        np.savez(folder / "inputs.npz", **inputs)
        request["input_arrays"] = "inputs.npz"
        return [folder / "inputs.npz"]
    request["inputs"] = [f"input_{i}.npy" for i in range(len(inputs))]
    for name, x in zip(request["inputs"], inputs):
        np.save(folder / name, x)
    return [folder / name for name in request["inputs"]]


class AgentDevice:
    """Runs ``agent.py`` somewhere. Subclasses implement ``_invoke``: move the model, the request and
    the inputs, start the agent, bring back its result and outputs."""

    address = "agent"

    def run(self, model: ModelFile, inputs: Inputs, *, protocol: Protocol = Protocol(),
            input_shapes: InputShapes = ()) -> RunResult:
        request = self.request(model, protocol, input_shapes=input_shapes)
        result, outputs = self._invoke(model, request, inputs)
        return self._result(model, protocol, result, outputs)

    def request(self, model: ModelFile, protocol: Protocol, *, input_shapes: InputShapes = ()) -> dict[str, Any]:
        return {"model": None, "model_sha256": model.sha256, "data_sha256": {d.location: d.sha256 for d in model.data},
                "input_shapes": [{"name": name, "shape": list(shape)} for name, shape in input_shapes],
                "manifest": None if model.manifest is None else model.manifest.to_dict(),
                "inputs": None, "outputs": "outputs.npz", "result": "result.json", "seed": 0,
                "threads": protocol.threads, "warmup": protocol.warmup, "runs": protocol.runs,
                "max_runs": protocol.max_runs, "target_cv": protocol.target_cv,
                "blocks": protocol.blocks, "gap_ms": protocol.gap_ms,
                "pin_cores": "auto" if protocol.pin else None}

    def _invoke(self, model: ModelFile, request: dict[str, Any], inputs: Inputs
                ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        raise NotImplementedError

    def release(self) -> None:
        """Stop what this device started for its runs (an emulated board's sshd); nothing by default."""

    def _result(self, model: ModelFile, protocol: Protocol, result: Mapping[str, Any],
                files: Mapping[str, Mapping[str, np.ndarray]]) -> RunResult:
        lat = tuple(int(v) for v in result["latencies_ns"])
        try:
            stats = summarize(lat)
        except ValueError as e:
            raise DeviceError(self.address, "run", f"the agent's latencies are unusable: {e}") from None
        outputs = dict(files["outputs"])
        names = tuple(result["output_names"])
        if len(outputs) != len(names):
            raise DeviceError(self.address, "download", f"outputs hold {len(outputs)} arrays for {len(names)} outputs")
        conditions = {"load_average_before": result.get("load_average_before"),
                      "load_average_after": result.get("load_average_after"), "cv": result.get("cv"),
                      "cv_target": result.get("cv_target"), "cv_target_met": result.get("cv_target_met"),
                      "first_inference_ms": result.get("first_inference_ns", 0) / 1e6,
                      "init_ms": result.get("init_ns", 0) / 1e6, "samples": result.get("samples"),
                      "transfer": result.get("transfer"), "xnnpack": result.get("xnnpack"),
                      "latency_representative": not result["fingerprint"].get("emulated")}
        notes = (() if result.get("cv_target_met", True) else (
            f"CV {100 * result['cv']:.1f} % stayed above the {100 * protocol.target_cv:.0f} % target after "
            f"{len(lat)} runs: the device was busy or its clock unsteady",)) + fingerprint_notes(result["fingerprint"],
                                                                                   result.get("xnnpack"))
        notes += tuple(result.get("notes", ()))
        return RunResult(device=self.address, model=model.name, format=model.format, precision=model.precision,
                         artifact_sha256=model.sha256, outputs=outputs, output_names=names, latencies_ns=lat,
                         stats=stats, fingerprint={"device": self.address, **result["fingerprint"]},
                         settings=protocol.to_dict(), conditions=conditions, inputs=files.get("inputs"),
                         notes=notes, input_tensors=tuple(result.get("input_tensors", ())))


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}

"""What every device shares: the ``Device`` protocol, ``RunResult``, ``DeviceError``, the model file
a device runs, and ``AgentDevice`` (build the agent's request, read its result) that the ``local``
and ``ssh`` transports extend with how they move files and start a process.

>>> # dev = open_device("local"); res = dev.run(open_model("m.tflite"), None)  # doctest: +SKIP
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol as TypingProtocol, Sequence

import numpy as np

from ..exporters.artifact import Manifest, load_artifact, manifest_path, sha256_file
from .stats import Protocol, Stats, summarize

__all__ = ["AGENT_PATH", "DeviceError", "fingerprint_notes", "ModelFile", "RunResult", "Device", "AgentDevice",
           "open_model", "parse_agent_output"]

AGENT_PATH = Path(__file__).with_name("agent.py")
EXTENSIONS = {".onnx": "onnx", ".tflite": "tflite"}


class DeviceError(RuntimeError):
    """A run failed on ``device`` at ``step`` (connect, upload, run, download ...); ``kind`` is the
    agent's error kind where the agent reported one (runtime-missing, model-rejected, ...)."""

    def __init__(self, device: str, step: str, message: str, *, kind: str = "transport"):
        super().__init__(f"{device}: {step} failed: {message}")
        self.device, self.step, self.kind, self.detail = device, step, kind, message


@dataclass(frozen=True)
class ModelFile:
    """A model file to run: an edgekit artifact (``manifest`` set, sha256 verified) or a third-party
    .onnx / .tflite file (``manifest`` None)."""

    path: Path
    format: str
    sha256: str
    manifest: Manifest | None

    @property
    def name(self) -> str:
        return self.manifest.model if self.manifest else self.path.stem

    @property
    def precision(self) -> str:
        return self.manifest.precision if self.manifest else "unknown"

    @property
    def extension(self) -> str:
        return "." + self.format


def open_model(path: str | Path) -> ModelFile:
    path = Path(path)
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unknown model format {path.suffix!r}; edgekit runs .onnx and .tflite files")
    if not path.is_file():
        raise ValueError(f"model file {path} does not exist")
    if manifest_path(path).is_file():
        art = load_artifact(path)  # verifies the sha256 against the manifest
        return ModelFile(path.resolve(), fmt, art.manifest.file_sha256, art.manifest)
    return ModelFile(path.resolve(), fmt, sha256_file(path), None)


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

    def to_dict(self, *, latencies: bool = False) -> dict[str, Any]:
        d = {"device": self.device, "model": self.model, "format": self.format, "precision": self.precision,
             "artifact_sha256": self.artifact_sha256, "output_names": list(self.output_names),
             "output_shapes": {k: list(v.shape) for k, v in self.outputs.items()}, "stats": self.stats.to_dict(),
             "fingerprint": dict(self.fingerprint), "settings": dict(self.settings),
             "conditions": dict(self.conditions), "notes": list(self.notes)}
        if latencies:
            d["latencies_ns"] = list(self.latencies_ns)
        return d


class Device(TypingProtocol):
    address: str

    def run(self, model: ModelFile, inputs: Sequence[np.ndarray] | None, *, protocol: Protocol = Protocol()
            ) -> RunResult: ...


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


class AgentDevice:
    """Runs ``agent.py`` somewhere. Subclasses implement ``_invoke``: move the model, the request and
    the inputs, start the agent, bring back its result and outputs."""

    address = "agent"

    def run(self, model: ModelFile, inputs: Sequence[np.ndarray] | None, *, protocol: Protocol = Protocol()
            ) -> RunResult:
        request = self.request(model, protocol, with_inputs=inputs is not None)
        result, outputs = self._invoke(model, request, None if inputs is None else list(inputs))
        return self._result(model, protocol, result, outputs)

    def request(self, model: ModelFile, protocol: Protocol, *, with_inputs: bool) -> dict[str, Any]:
        return {"model": None, "model_sha256": model.sha256,
                "manifest": None if model.manifest is None else model.manifest.to_dict(),
                "inputs": None, "outputs": "outputs.npz", "result": "result.json", "seed": 0,
                "threads": protocol.threads, "warmup": protocol.warmup, "runs": protocol.runs,
                "max_runs": protocol.max_runs, "target_cv": protocol.target_cv,
                "blocks": protocol.blocks, "gap_ms": protocol.gap_ms,
                "pin_cores": "auto" if protocol.pin else None}

    def _invoke(self, model: ModelFile, request: dict[str, Any], inputs: list[np.ndarray] | None
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
        return RunResult(device=self.address, model=model.name, format=model.format, precision=model.precision,
                         artifact_sha256=model.sha256, outputs=outputs, output_names=names, latencies_ns=lat,
                         stats=stats, fingerprint={"device": self.address, **result["fingerprint"]},
                         settings=protocol.to_dict(), conditions=conditions, inputs=files.get("inputs"),
                         notes=notes)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}

"""``adb://SERIAL``: an Android device through the ``adb`` CLI (``adb -s SERIAL push/pull/shell``).

Latency comes from the TFLite ``benchmark_model`` binary the user provides (``--benchmark-binary``):
it is pushed once (content-addressed, like the model), run with the protocol's threads, warm-up and
runs, and its output parsed into the same ``RunResult``; output that does not parse is an error,
never a zero. Outputs (and so parity) come from the Python agent when the device has a Python
(``--device-python``); otherwise they are reported as not measured. ``adb shell`` takes one command
string, so every part of it is ``shlex.quote``-d.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..exporters.artifact import sha256_file
from .agent import AgentError, emulation, input_plan, int8_features, parse_cpuinfo
from .base import (AGENT_PATH, AgentDevice, DeviceError, Inputs, InputShapes, ModelFile, RunResult, load_npz,
                   parse_agent_output, write_inputs)
from .stats import Protocol, from_aggregate

__all__ = ["AdbDevice", "parse_benchmark_output"]

_COUNT = re.compile(r"^count=(\d+)\s+(.*)$")
_TIMINGS = re.compile(r"Inference timings in us:\s*(.*)$")


def parse_benchmark_output(text: str) -> dict[str, Any]:
    """The measured run of TFLite ``benchmark_model``: its last ``count=N first=.. curr=.. min=..
    max=.. avg=.. std=..`` line (microseconds; the earlier one is the warm-up) and the ``Inference
    timings in us: Init: .., First inference: .., Warmup (avg): .., Inference (avg): ..`` summary.
    Raises ValueError naming what is missing."""
    counts, timings = [], None
    for line in text.splitlines():
        line = line.strip()
        m = _COUNT.match(line)
        if m:
            fields = dict(kv.split("=", 1) for kv in m.group(2).split() if "=" in kv)
            counts.append({"count": int(m.group(1)), **{k: float(v) for k, v in fields.items()}})
        m = _TIMINGS.search(line)
        if m:
            timings = {k.strip(): float(v) for k, v in (p.split(":", 1) for p in m.group(1).split(",") if ":" in p)}
    if not counts:
        raise ValueError("benchmark_model printed no 'count=N first=... min=... avg=... std=...' line")
    run = counts[-1]
    missing = [k for k in ("min", "max", "avg", "std") if k not in run]
    if missing:
        raise ValueError(f"benchmark_model's count line lacks {missing}: {run}")
    if timings is None or "Inference (avg)" not in timings:
        raise ValueError("benchmark_model printed no 'Inference timings in us: ... Inference (avg): ...' line")
    if abs(timings["Inference (avg)"] - run["avg"]) > 0.01 * max(run["avg"], 1.0):
        raise ValueError(f"benchmark_model's summary Inference (avg) {timings['Inference (avg)']} us disagrees with "
                         f"its last count line's avg {run['avg']} us")
    return {"run": run, "warmup": counts[-2] if len(counts) > 1 else None, "timings": timings}


class AdbDevice(AgentDevice):
    def __init__(self, address: str, *, adb: str = "adb", benchmark_binary: str | None = None,
                 python: str | None = None, device_dir: str = "/data/local/tmp/edgekit", timeout: float = 1800.0):
        serial = address[len("adb://"):]
        if not serial or "/" in serial:
            raise ValueError(f"device {address!r} must look like adb://SERIAL (the serial `adb devices` lists)")
        if benchmark_binary is not None and not Path(benchmark_binary).is_file():
            raise ValueError(f"benchmark binary {benchmark_binary} does not exist; pass the TFLite benchmark_model "
                             f"built for the device's ABI")
        self.address, self.serial, self.adb = address, serial, adb
        self.benchmark_binary, self.python, self.timeout = benchmark_binary, python, timeout
        self.dir = device_dir.rstrip("/")

    def _adb(self, *args: str, step: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        try:
            return subprocess.run([self.adb, "-s", self.serial, *args], capture_output=True, text=True,
                                  timeout=timeout or self.timeout)
        except FileNotFoundError:
            raise DeviceError(self.address, step, f"no adb executable {self.adb!r}; install adb or pass --adb PATH") from None
        except subprocess.TimeoutExpired:
            raise DeviceError(self.address, step, f"adb did not answer within {timeout or self.timeout:.0f} s") from None

    def shell(self, *words: str, step: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = self._adb("shell", " ".join(w if w in ("&&", "||", ";", "2>/dev/null") else shlex.quote(w) for w in words),
                         step=step)
        if check and proc.returncode != 0:
            raise DeviceError(self.address, step, f"`{' '.join(words)}` failed (exit {proc.returncode}): "
                                                  f"{(proc.stderr or proc.stdout).strip()[-500:]}")
        return proc

    def _push(self, local: str | Path, remote: str, *, step: str) -> None:
        proc = self._adb("push", str(local), remote, step=step)
        if proc.returncode != 0:
            err = (proc.stderr or proc.stdout).strip()
            kind = "disk-full" if "No space left" in err else "transport"
            raise DeviceError(self.address, step, f"adb push {Path(local).name} failed: {err}", kind=kind)

    def _connect(self) -> None:
        proc = self._adb("get-state", step="connect", timeout=60)
        if proc.returncode != 0 or proc.stdout.strip() != "device":
            raise DeviceError(self.address, "connect", f"device {self.serial!r} is not available "
                                                       f"({(proc.stderr or proc.stdout).strip()}); check `adb devices`")
        self.shell("mkdir", "-p", f"{self.dir}/models", f"{self.dir}/bin", f"{self.dir}/run", step="connect")

    def _install(self, local: Path, sha: str, remote: str, *, step: str) -> bool:
        """Push ``local`` to ``remote`` unless it is there already; verify its sha256 on the device."""
        if self.shell("test", "-f", remote, step=step, check=False).returncode == 0:
            return False
        self._push(local, remote + ".partial", step=step)
        got = self.shell("sha256sum", remote + ".partial", step=step).stdout.split()
        if not got or got[0] != sha:
            self.shell("rm", "-f", remote + ".partial", step=step, check=False)
            raise DeviceError(self.address, step, f"{local.name} arrived with sha256 {got[0][:16] if got else '?'}... "
                                                  f"instead of {sha[:16]}...: corrupted in transit", kind="checksum-mismatch")
        self.shell("mv", remote + ".partial", remote, step=step)
        return True

    def run(self, model: ModelFile, inputs: Inputs, *, protocol: Protocol = Protocol(),
            input_shapes: InputShapes = ()) -> RunResult:
        self._connect()
        uploaded = False
        for local, sha, rel in model.cache_files():  # the model last: present means complete
            self.shell("mkdir", "-p", f"{self.dir}/{rel.rpartition('/')[0]}", step="upload")
            uploaded = self._install(local, sha, f"{self.dir}/{rel}", step="upload")
        model_remote = f"{self.dir}/{model.cache_path}"
        if self.benchmark_binary is None or model.format != "tflite":
            if self.python is None:
                why = "benchmark_model runs .tflite files only" if self.benchmark_binary else "no --benchmark-binary given"
                raise DeviceError(self.address, "run", f"cannot time {model.path.name}: {why}, and no --device-python "
                                                       f"for the agent")
            result, files = self._agent(model, model_remote, self.request(model, protocol, input_shapes=input_shapes),
                                        inputs)
            result["transfer"] = {"model_uploaded": uploaded}
            return self._result(model, protocol, result, files)
        notes = ["latency from benchmark_model: aggregates only (no per-run times, so no median or p90)"]
        if protocol.blocks > 1:
            notes.append(f"benchmark_model times its runs back to back: the protocol's {protocol.blocks} blocks "
                         f"and {protocol.gap_ms:g} ms gaps were not applied")
        files: dict[str, Any] = {"outputs": {}}
        names: tuple[str, ...] = ()
        if self.python is not None:  # first: its one run checks the inputs and names their shapes for benchmark_model
            req = self.request(model, Protocol(threads=protocol.threads, warmup=0, runs=1, max_runs=1, pin=False),
                               input_shapes=input_shapes)
            agent, files = self._agent(model, model_remote, req, inputs)
            names, tensors = tuple(agent["output_names"]), agent["input_tensors"]
            notes += agent.get("notes", [])
        else:
            notes.append("outputs not measured: no Python on the device (pass --device-python), so no parity")
            try:  # the agent's checks of the file's inputs, run here with this machine's runtime
                tensors = input_plan(str(model.path), input_shapes)
            except AgentError as e:
                raise ValueError(f"{model.path.name}: {e}") from None
        bench = self._benchmark(model_remote, protocol, tensors)
        return self._bench_result(model, protocol, bench, files, names, notes, uploaded, tensors)

    def _benchmark(self, model_remote: str, protocol: Protocol, tensors: Sequence[Mapping[str, Any]]
                   ) -> dict[str, Any]:
        binary = Path(self.benchmark_binary)
        sha = sha256_file(binary)
        remote = f"{self.dir}/bin/benchmark_model-{sha[:16]}"
        if self._install(binary, sha, remote, step="upload"):
            self.shell("chmod", "755", remote, step="upload")
        shapes = [f"--input_layer={','.join(t['name'] for t in tensors)}",
                  f"--input_layer_shape={':'.join(','.join(map(str, t['shape'])) for t in tensors)}"] if tensors else []
        proc = self.shell(remote, f"--graph={model_remote}", f"--num_threads={protocol.threads}",
                          f"--warmup_runs={protocol.warmup}", "--warmup_min_secs=0", f"--num_runs={protocol.runs}",
                          "--min_secs=0", *shapes, step="benchmark")
        try:
            parsed = parse_benchmark_output(proc.stdout)
        except ValueError as e:
            raise DeviceError(self.address, "parse", f"{e}; benchmark_model printed:\n{proc.stdout[-1500:]}",
                              kind="parse") from None
        parsed["binary_sha256"] = sha
        return parsed

    def _fingerprint(self) -> dict[str, Any]:
        script = ("getprop ro.product.model 2>/dev/null; echo '|'; uname -m; echo '|'; uname -sr; echo '|'; "
                  "grep -c ^processor /proc/cpuinfo; echo '|'; cat /proc/loadavg; echo '|'; cat /proc/cpuinfo")
        out = self._adb("shell", script, step="fingerprint").stdout  # a fixed string, no user input in it
        parts = [p.strip() for p in out.split("|", 5)]
        parts += [""] * (6 - len(parts))
        info = parse_cpuinfo(parts[5])  # the agent's decoding: ARM cores by part number, int8 features
        return {"device_model": parts[0] or None, "arch": parts[1], "os": parts[2],
                "cpu_model": info["cpu_model"] or "unknown", "cpu_cores": info["cpu_cores"], "board": info["board"],
                "isa_features": int8_features(info["features"], parts[1]),
                "emulated": emulation(info, parts[1]),
                "cores": int(parts[3]) if parts[3].isdigit() else None,
                "load_average": [float(v) for v in parts[4].split()[:3]] if parts[4] else None}

    def _bench_result(self, model: ModelFile, protocol: Protocol, bench: Mapping[str, Any], files, names, notes,
                      uploaded: bool, tensors: Sequence[Mapping[str, Any]]) -> RunResult:
        run = bench["run"]
        try:
            stats = from_aggregate(n=run["count"], min_ms=run["min"] / 1e3, max_ms=run["max"] / 1e3,
                                   mean_ms=run["avg"] / 1e3, std_ms=run["std"] / 1e3,
                                   median_ms=run["median"] / 1e3 if "median" in run else None)
        except ValueError as e:
            raise DeviceError(self.address, "parse", str(e), kind="parse") from None
        fp = self._fingerprint()
        load = fp.pop("load_average")
        fingerprint = {"device": self.address, **fp, "runtime": "tflite benchmark_model",
                       "runtime_version": f"binary sha256 {bench['binary_sha256'][:16]}", "threads": protocol.threads,
                       "pinned_cores": None, "delegate": "benchmark_model defaults"}
        timings = bench["timings"]
        conditions = {"load_average_before": load, "load_average_after": None, "cv": stats.cv,
                      "cv_target": protocol.target_cv, "cv_target_met": stats.cv <= protocol.target_cv,
                      "first_inference_ms": timings.get("First inference", 0) / 1e3,
                      "init_ms": timings.get("Init", 0) / 1e3, "transfer": {"model_uploaded": uploaded}}
        return RunResult(device=self.address, model=model.name, format=model.format, precision=model.precision,
                         artifact_sha256=model.sha256, outputs=dict(files["outputs"]), output_names=names,
                         latencies_ns=(), stats=stats, fingerprint=fingerprint, settings=protocol.to_dict(),
                         conditions=conditions, inputs=files.get("inputs"), notes=tuple(notes),
                         input_tensors=tuple(tensors))

    def _agent(self, model: ModelFile, model_remote: str, request: dict[str, Any], inputs):
        agent_sha = sha256_file(AGENT_PATH)
        agent_remote = f"{self.dir}/bin/agent-{agent_sha[:16]}.py"
        self._install(AGENT_PATH, agent_sha, agent_remote, step="upload")
        work = f"{self.dir}/run/{model.sha256[:16]}"
        self.shell("rm", "-rf", work, "&&", "mkdir", "-p", work, step="upload")
        request = dict(request, model=model_remote)
        with tempfile.TemporaryDirectory(prefix="edgekit-adb-") as tmp:
            tmp = Path(tmp)
            for local in write_inputs(tmp, request, inputs):
                self._push(local, f"{work}/{local.name}", step="upload")
            (tmp / "request.json").write_text(json.dumps(request))
            self._push(tmp / "request.json", f"{work}/request.json", step="upload")
            proc = self._adb("shell", f"cd {shlex.quote(work)} && {shlex.quote(self.python)} "
                                      f"{shlex.quote(agent_remote)} request.json", step="run")
            result = parse_agent_output(self.address, "run", proc.stdout, proc.stderr, proc.returncode)
            files = {}
            for key, name in (("outputs", "outputs.npz"), ("inputs", "outputs.inputs.npz")):
                if key == "inputs" and inputs is not None:
                    continue
                pulled = self._adb("pull", f"{work}/{name}", str(tmp / name), step="download")
                if pulled.returncode != 0:
                    raise DeviceError(self.address, "download", f"adb pull {name} failed: {pulled.stderr.strip()}")
                files[key] = load_npz(tmp / name)
            return result, files

"""The adb runner. No phone exists here: a stand-in ``adb`` (push/pull copy files, ``shell`` runs
the command with ``sh -c`` in the stand-in's directory, ``get-state`` answers for one serial) plays
the device, and a stand-in ``benchmark_model`` really times the model with LiteRT and prints its
report in the real binary's format. The code path under test is the same as for real hardware."""
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.devices.adb import parse_benchmark_output
from edgekit.devices.base import DeviceError
from edgekit.devices.measure import measure
from edgekit.devices.stats import Protocol
from edgekit.devices.store import ResultStore
from test_devices import cli
from test_foreign_files import check_external_data_runs_on, dynamic_relu_tflite

SERIAL = "emulator-5554"
FAST = Protocol(runs=50, warmup=5, max_runs=100)

RECORDED = """STARTING!
Log parameter values verbosely: [0]
Num threads: [4]
Graph: [/data/local/tmp/espcn.tflite]
#threads used for CPU inference: [4]
Loaded model /data/local/tmp/espcn.tflite
The input model file size (MB): 0.004448
Initialized session in 0.855ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=15 first=49060 curr=33682 min=32825 max=49060 avg=34825.1 std=3930

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=32891 curr=33978 min=32641 max=34005 avg=33209.4 std=450

Inference timings in us: Init: 855, First inference: 49060, Warmup (avg): 34825.1, Inference (avg): 33209.4
Peak memory footprint (MB): init=0 overall=12.8672
"""

STANDIN_ADB = '''#!{python}
import os, shutil, subprocess, sys
args = sys.argv[1:]
if args[:1] != ["-s"] or args[1] != {serial!r}:
    print("error: device '%s' not found" % (args[1] if len(args) > 1 else ""), file=sys.stderr)
    sys.exit(1)
cmd, rest = args[2], args[3:]
if cmd == "get-state":
    print("device")
elif cmd in ("push", "pull"):
    os.makedirs(os.path.dirname(rest[1]) or ".", exist_ok=True)
    shutil.copyfile(rest[0], rest[1])
    print("%s: 1 file pushed" % rest[0])
elif cmd == "shell":
    sys.exit(subprocess.call(["sh", "-c", " ".join(rest)], cwd={root!r}))
else:
    print("adb: unknown command " + cmd, file=sys.stderr)
    sys.exit(1)
'''

STANDIN_BENCHMARK = '''#!{python}
import sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter
flags = dict(a[2:].split("=", 1) for a in sys.argv[1:])
with open("benchmark_calls.log", "a") as log:  # in the phone's root: what the tool was asked to do
    log.write(" ".join(sys.argv[1:]) + "\\n")
graph, threads = flags["graph"], int(flags.get("num_threads", 1))
warmup, runs = int(flags.get("warmup_runs", 1)), int(flags.get("num_runs", 50))
print("STARTING!")
print("Log parameter values verbosely: [0]")
print("Num threads: [%d]" % threads)
print("Graph: [%s]" % graph)
print("#threads used for CPU inference: [%d]" % threads)
t0 = time.perf_counter()
it = Interpreter(model_path=graph, num_threads=threads)
it.allocate_tensors()
init_us = (time.perf_counter() - t0) * 1e6
print("Loaded model " + graph)
print("Initialized session in %.3fms." % (init_us / 1e3))
if "input_layer" in flags:  # the real tool's --input_layer=a,b --input_layer_shape=1,3:1,5
    names = flags["input_layer"].split(",")
    for name, shape in zip(names, flags["input_layer_shape"].split(":")):
        (d,) = [d for d in it.get_input_details() if d["name"] == name]
        it.resize_tensor_input(d["index"], [int(v) for v in shape.split(",")])
    it.allocate_tensors()
rng = np.random.default_rng(0)
for d in it.get_input_details():
    it.set_tensor(d["index"], rng.integers(-100, 100, d["shape"]).astype(d["dtype"]))
def timed(n):
    out = []
    for _ in range(n):
        t = time.perf_counter(); it.invoke(); out.append((time.perf_counter() - t) * 1e6)
    return np.array(out)
def line(a):
    return "count=%d first=%d curr=%d min=%d max=%d avg=%g std=%d" % (len(a), a[0], a[-1], a.min(), a.max(), a.mean(), a.std())
print("Running benchmark for at least %d iterations and at least 0 seconds but terminate if exceeding 150 seconds." % warmup)
w = timed(max(warmup, 1))
print(line(w)); print()
print("Running benchmark for at least %d iterations and at least 0 seconds but terminate if exceeding 150 seconds." % runs)
r = timed(runs)
print(line(r)); print()
print("Inference timings in us: Init: %d, First inference: %d, Warmup (avg): %g, Inference (avg): %g" % (init_us, w[0], w.mean(), r.mean()))
print("Peak memory footprint (MB): init=0 overall=3.1")
'''


def _script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.fixture
def phone(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_HOME", str(tmp_path / "home"))
    root = tmp_path / "phone"
    root.mkdir()
    adb = _script(tmp_path / "adb", STANDIN_ADB.format(python=sys.executable, serial=SERIAL, root=str(root)))
    bench = _script(tmp_path / "benchmark_model", STANDIN_BENCHMARK.format(python=sys.executable))
    return {"adb": adb, "benchmark_binary": bench, "device_dir": str(root / "data/local/tmp/edgekit")}


def test_parse_recorded_benchmark_model_output():
    p = parse_benchmark_output(RECORDED)
    assert p["run"] == {"count": 50, "first": 32891.0, "curr": 33978.0, "min": 32641.0, "max": 34005.0,
                        "avg": 33209.4, "std": 450.0}
    assert p["warmup"]["count"] == 15 and p["timings"]["Init"] == 855.0
    with pytest.raises(ValueError, match="no 'count=N"):
        parse_benchmark_output("STARTING!\nError: could not load model\n")
    with pytest.raises(ValueError, match="no 'Inference timings"):
        parse_benchmark_output(RECORDED.split("Inference timings")[0])
    with pytest.raises(ValueError, match="lacks"):
        parse_benchmark_output("count=50 first=1 curr=2\nInference timings in us: Inference (avg): 2\n")


@pytest.mark.slow
def test_adb_benchmark_latency_and_agent_parity(artifacts, phone):
    path = artifacts[("tflite", "int8")]
    m = measure(path, device=f"adb://{SERIAL}", protocol=FAST, compare=True, samples=8, python=sys.executable, **phone)
    r = m.result
    assert r.stats.n == 50 and r.stats.median_ms is None and 0 < r.stats.min_ms <= r.stats.mean_ms
    assert r.latencies_ns == () and r.fingerprint["runtime"] == "tflite benchmark_model"
    assert r.fingerprint["arch"] and r.fingerprint["cores"] == os.cpu_count()
    assert r.conditions["transfer"]["model_uploaded"] is True
    (rep,) = m.parity.values()
    rep.check(min_sqnr_db=20)
    local = measure(path, protocol=FAST, samples=8, store=False)
    np.testing.assert_array_equal(r.outputs["output_0"], local.result.outputs["output_0"])
    again = measure(path, device=f"adb://{SERIAL}", protocol=FAST, python=sys.executable, **phone)
    assert again.result.conditions["transfer"]["model_uploaded"] is False
    rows = ResultStore().query(device=f"adb://{SERIAL}")
    assert len(rows) == 2 and rows[0]["median_ms"] is None and rows[0]["stats"]["mean_ms"] > 0


@pytest.mark.slow
def test_adb_without_python_reports_parity_not_measured(artifacts, phone, tmp_path):
    profile = tmp_path / "phone.toml"
    adb, device_dir = phone["adb"], phone["device_dir"]
    profile.write_text(f'adb = "{adb}"\ndevice_dir = "{device_dir}"\n')
    r = cli("run", str(artifacts[("tflite", "int8")]), "--device", f"adb://{SERIAL}", "--device-profile", str(profile),
            "--benchmark-binary", phone["benchmark_binary"], "--compare", "--runs", "50",
            env={**os.environ, "EDGEKIT_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stderr
    assert "median - ms" in r.stdout and "parity: not measured: outputs not measured: no Python" in r.stdout
    m = measure(artifacts[("tflite", "int8")], device=f"adb://{SERIAL}", protocol=FAST, compare=True, **phone)
    assert m.parity is None and "no Python on the device" in m.parity_note
    assert m.result.outputs == {} and m.result.stats.n == 50


@pytest.mark.slow
def test_adb_faults_are_clear_and_store_nothing(artifacts, phone, tmp_path):
    path = artifacts[("tflite", "int8")]
    with pytest.raises(DeviceError, match="adb://R58M123: connect failed: device 'R58M123' is not available"):
        measure(path, device="adb://R58M123", protocol=FAST, **phone)
    junk = _script(tmp_path / "junk_benchmark", "#!/bin/sh\necho 'STARTING!'\necho 'Segmentation fault'\n")
    with pytest.raises(DeviceError, match="parse failed: benchmark_model printed no 'count=N") as e:
        measure(path, device=f"adb://{SERIAL}", protocol=FAST, **{**phone, "benchmark_binary": junk})
    assert e.value.kind == "parse"
    with pytest.raises(DeviceError, match="no --device-python"):
        measure(path, device=f"adb://{SERIAL}", protocol=FAST, **{**phone, "benchmark_binary": None})
    assert ResultStore().count() == 0


def test_onnx_with_external_data_and_dynamic_dims_over_adb(phone, tmp_path):
    options = {**phone, "benchmark_binary": None, "python": sys.executable}
    check_external_data_runs_on(f"adb://{SERIAL}", tmp_path, options)
    cached = sorted(p.name for p in Path(phone["device_dir"], "models").rglob("*") if p.is_file())
    assert cached == ["model.onnx", "model.onnx", "net.onnx.data", "net.onnx.data"], cached


def test_dynamic_tflite_over_adb_benchmark_model_gets_the_shapes(phone, tmp_path):
    path = dynamic_relu_tflite(tmp_path / "relu.tflite")
    with pytest.raises(DeviceError, match="--input-shape x=1x3x<dim2>x<dim3>"):
        measure(path, device=f"adb://{SERIAL}", protocol=FAST, python=sys.executable, **phone)
    m = measure(path, device=f"adb://{SERIAL}", protocol=FAST, python=sys.executable, input_shapes=[(None, (1, 3, 5, 7))],
                **phone)
    r = m.result
    assert r.fingerprint["runtime"] == "tflite benchmark_model" and r.stats.n == 50
    assert r.input_shape == "1x3x5x7" and r.to_dict()["output_shapes"] == {"y": [1, 3, 5, 7]}
    assert ResultStore().query(input_shape="1x3x5x7")[0]["device"] == f"adb://{SERIAL}"
    call = (tmp_path / "phone" / "benchmark_calls.log").read_text().splitlines()[-1]
    assert "--input_layer=x --input_layer_shape=1,3,5,7" in call, call
    no_python = {**phone, "python": None}  # the file's inputs are read on this machine instead
    with pytest.raises(ValueError, match="--input-shape x=1x3x<dim2>x<dim3>"):
        measure(path, device=f"adb://{SERIAL}", protocol=FAST, **no_python)
    m = measure(path, device=f"adb://{SERIAL}", protocol=FAST, input_shapes=[(None, (1, 3, 6, 2))], **no_python)
    assert m.result.input_shape == "1x3x6x2" and m.result.outputs == {}
    call = (tmp_path / "phone" / "benchmark_calls.log").read_text().splitlines()[-1]
    assert "--input_layer=x --input_layer_shape=1,3,6,2" in call, call

"""Device runners on this machine: the agent run as ``python -I agent.py`` in a subprocess for every
format x precision of a small model (32x32, 1 channel, 10 classes), parity against PyTorch on real
Fashion-MNIST test images, the results store, third-party files and the agent's structured errors."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.devices.agent import Runner
from edgekit.devices.base import AGENT_PATH, DeviceError, open_model
from edgekit.devices.measure import measure, real_inputs
from edgekit.devices.stats import Protocol, from_aggregate, summarize
from edgekit.devices.store import ResultStore
from edgekit.export import ExportSettings, export
from edgekit.exporters.artifact import load_artifact, sha256_file
from edgekit.models import create_model
from edgekit.train import save_weights
from helpers import randomise_bn

COMBOS = [("onnx", "fp32"), ("onnx", "int8"), ("tflite", "fp32"), ("tflite", "int8")]
FAST = Protocol(runs=50, warmup=5, max_runs=100)


SMALL_KEY = {"model": "ghostnet_0_5", "resolution": 32, "in_chans": 1, "num_classes": 10, "seed": 0,
             "weights": "randomise_bn", "formats": ["onnx", "tflite"], "precisions": ["fp32", "int8"],
             "calib_samples": 64, "holdout": 32}


def export_small(out: Path) -> None:
    """ghostnet_0_5 at 32x32, 1 channel, 10 classes with saved (random, BN-randomised) weights, so
    ``--compare`` can rebuild the PyTorch reference: the four files of ``SMALL_KEY`` into ``out``."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = randomise_bn(create_model("ghostnet_0_5", num_classes=10, in_chans=1, resolution=32)).eval()
    weights = out / "ghostnet_0_5.pt"
    save_weights(weights, model, {"model": "ghostnet_0_5", "num_classes": 10, "in_chans": 1, "resolution": [32, 32]})
    export(model, name="ghostnet_0_5", out=out, weights_file=weights, weights_sha256=sha256_file(weights),
           settings=ExportSettings(formats=tuple(SMALL_KEY["formats"]), precisions=tuple(SMALL_KEY["precisions"]),
                                   calib_samples=SMALL_KEY["calib_samples"], holdout=SMALL_KEY["holdout"]))


def small_files(folder: Path) -> dict:
    """{(format, precision): path} of the exported files in ``folder``, read from their manifests."""
    files = {}
    for path in sorted([*folder.glob("*.onnx"), *folder.glob("*.tflite")]):
        m = load_artifact(path).manifest
        files[(m.format, m.precision)] = path
    return files


def cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "edgekit.cli", *args], capture_output=True, text=True, timeout=600,
                          env=env, cwd=cwd)


@pytest.mark.slow
@pytest.mark.parametrize("fmt,precision", COMBOS)
def test_local_run_every_format_and_precision(artifacts, home, fmt, precision):
    path = artifacts[(fmt, precision)]
    m = measure(path, device="local", protocol=FAST, compare=True, samples=16)
    r = m.result
    assert (r.format, r.precision, r.model) == (fmt, precision, "ghostnet_0_5")
    assert 50 <= r.stats.n <= 100 and len(r.latencies_ns) == r.stats.n
    assert 0 < r.stats.min_ms <= r.stats.median_ms <= r.stats.p90_ms <= r.stats.p99_ms
    assert r.outputs["output_0"].shape == (16, 1, 10) and r.outputs["output_0"].dtype == np.float32
    fp = r.fingerprint
    assert fp["runtime"] == ("onnxruntime" if fmt == "onnx" else "ai_edge_litert") and fp["runtime_version"]
    assert fp["threads"] == 1 and fp["pinned_cores"] == [sorted(os.sched_getaffinity(0))[-1]]
    assert fp["cores"] == os.cpu_count() and fp["arch"] and fp["cpu_model"]
    assert len(r.conditions["load_average_before"]) == 3
    (name, rep), = m.parity.items()
    assert rep.n == 16
    rep.check(min_sqnr_db=60 if precision == "fp32" else 20)
    rows = ResultStore().query(model="ghostnet_0_5", format=fmt, precision=precision)
    assert len(rows) == 1 and rows[0]["artifact_sha256"] == sha256_file(path) and rows[0]["id"] == m.stored_id
    assert rows[0]["latencies_ns"] == list(r.latencies_ns) and rows[0]["parity"][name]["n"] == 16


@pytest.mark.slow
def test_agent_outputs_equal_the_in_process_runner(artifacts, home):
    path = artifacts[("tflite", "int8")]
    model = open_model(path)
    x, _ = real_inputs(model, data="fashion-mnist", samples=4)
    m = measure(path, protocol=FAST, samples=4, store=False)
    runner = Runner(str(path), model.manifest.to_dict())
    expected = np.stack([runner(x[k])[0] for k in range(4)])
    np.testing.assert_array_equal(m.result.outputs["output_0"], expected)
    assert m.stored_id is None and not (home / "results.db").exists()


@pytest.mark.slow
def test_third_party_file_with_shell_metacharacters_in_its_name(artifacts, home, tmp_path):
    odd = tmp_path / "odd dir; $(touch pwned)"
    odd.mkdir()
    target = odd / "net; rm -rf x $(touch pwned2) `touch pwned3`.tflite"
    target.write_bytes(artifacts[("tflite", "int8")].read_bytes())  # no manifest beside it
    r = cli("run", str(target), "--compare", "--runs", "50", "--json", cwd=tmp_path,
            env={**os.environ, "EDGEKIT_HOME": str(home)})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["precision"] == "unknown" and doc["parity"] is None
    assert "third-party file has no manifest" in doc["parity_note"]
    assert doc["inputs"].startswith("seeded random inputs")
    assert not any(p.name.startswith("pwned") for p in tmp_path.rglob("*")) and not Path("pwned").exists()
    m = measure(target, protocol=FAST, store=False)
    assert m.result.inputs["input_0"].dtype == np.int8 and m.result.outputs["output_0"].dtype == np.int8
    again = measure(target, protocol=FAST, store=False)  # seeded: the same inputs, the same outputs
    np.testing.assert_array_equal(again.result.outputs["output_0"], m.result.outputs["output_0"])


@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_corrupt_model_is_rejected_and_nothing_stored(tmp_path, home, suffix):
    bad = tmp_path / f"broken{suffix}"
    bad.write_bytes(b"\x00garbage, not a model" * 50)
    with pytest.raises(DeviceError, match="local: run failed: model-rejected") as e:
        measure(bad, protocol=FAST)
    assert e.value.kind == "model-rejected" and e.value.step == "run"
    r = cli("run", str(bad), env={**os.environ, "EDGEKIT_HOME": str(home)})
    assert r.returncode == 3 and "model-rejected" in r.stderr and "runtime refused" in r.stderr
    assert ResultStore().count() == 0


@pytest.mark.slow
def test_artifact_changed_after_export_is_refused(artifacts, tmp_path, home):
    src = artifacts[("onnx", "fp32")]
    copy = tmp_path / src.name
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    (tmp_path / (src.stem + ".manifest.json")).write_text(src.with_name(src.stem + ".manifest.json").read_text())
    r = cli("run", str(copy))
    assert r.returncode == 2 and "truncated or corrupted" in r.stderr


def test_unknown_device_and_format_are_clear_errors(tmp_path, edgekit_cli):
    f = tmp_path / "m.pb"
    f.write_bytes(b"x")
    r = edgekit_cli("run", str(f))
    assert r.returncode == 2 and "unknown model format '.pb'" in r.stderr
    g = tmp_path / "m.onnx"
    g.write_bytes(b"x")
    r = edgekit_cli("run", str(g), "--device", "tcp://phone")
    assert r.returncode == 2 and "ssh://user@host[:port]" in r.stderr and "adb://SERIAL" in r.stderr


def _agent(tmp_path, request, *, python=sys.executable):
    (tmp_path / "agent.py").write_bytes(AGENT_PATH.read_bytes())
    (tmp_path / "request.json").write_text(json.dumps(request))
    return subprocess.Popen([python, "-I", "agent.py", "request.json"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_agent_reports_structured_errors(tmp_path):
    p = _agent(tmp_path, {"model": str(tmp_path / "missing.tflite"), "outputs": "o.npz", "result": "r.json"})
    out, _ = p.communicate(timeout=120)
    doc = json.loads(out.strip().splitlines()[-1])
    assert p.returncode == 3 and doc == json.loads((tmp_path / "r.json").read_text())
    assert doc["ok"] is False and doc["kind"] == "bad-request" and "missing.tflite" in doc["message"]
    p = _agent(tmp_path, {"model": str(AGENT_PATH), "outputs": "o.npz", "runs": 0})
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 3 and json.loads(out.splitlines()[-1])["kind"] == "bad-request"


@pytest.mark.slow
def test_agent_bad_inputs_and_checksum(artifacts, tmp_path):
    path = artifacts[("onnx", "fp32")]
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 1, 28, 28), np.float32))  # 28x28 into a 32x32 model
    p = _agent(tmp_path, {"model": str(path), "outputs": "o.npz", "inputs": ["x.npy"], "manifest": None})
    doc = json.loads(p.communicate(timeout=120)[0].splitlines()[-1])
    assert doc["kind"] == "bad-input" and "1x1x28x28, but its axis 2 is 32 in the file (1x1x32x32)" in doc["message"]
    p = _agent(tmp_path, {"model": str(path), "outputs": "o.npz", "model_sha256": "0" * 64})
    doc = json.loads(p.communicate(timeout=120)[0].splitlines()[-1])
    assert p.returncode == 3 and doc["kind"] == "checksum-mismatch"


@pytest.mark.slow
def test_agent_stopped_by_a_signal_says_so(artifacts, tmp_path):
    p = _agent(tmp_path, {"model": str(artifacts[("onnx", "fp32")]), "outputs": "o.npz", "runs": 10_000_000,
                          "max_runs": 10_000_000, "target_cv": 1e-9})
    time.sleep(3)
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    doc = json.loads(out.splitlines()[-1])
    assert p.returncode == 4 and doc["kind"] == "interrupted" and "signal 15" in doc["message"]
    assert not (tmp_path / "o.npz").exists()


@pytest.mark.slow
def test_results_cli_lists_and_filters(artifacts, home):
    env = {**os.environ, "EDGEKIT_HOME": str(home)}
    for key in (("onnx", "fp32"), ("tflite", "int8")):
        r = cli("run", str(artifacts[key]), "--runs", "50", "--samples", "2", env=env)
        assert r.returncode == 0, r.stderr
        assert "stored as result" in r.stdout and "parity: not asked" in r.stdout
    r = cli("results", "--json", env=env)
    rows = json.loads(r.stdout)["results"]
    assert [(x["format"], x["precision"]) for x in rows] == [("onnx", "fp32"), ("tflite", "int8")]
    r = cli("results", "--json", "--format", "tflite", "--device", "local", "--model", "ghostnet_0_5", env=env)
    (row,) = json.loads(r.stdout)["results"]
    assert row["precision"] == "int8" and row["fingerprint"]["runtime"] == "ai_edge_litert"
    assert row["settings"]["threads"] == 1 and row["median_ms"] > 0
    assert json.loads(cli("results", "--json", "--precision", "mixed", env=env).stdout)["results"] == []
    r = cli("results", env=env)
    assert r.returncode == 0 and "2 result(s)" in r.stdout


@pytest.mark.slow
def test_run_several_files_prints_one_table(artifacts, home):
    env = {**os.environ, "EDGEKIT_HOME": str(home)}
    files = [str(artifacts[k]) for k in COMBOS]
    r = cli("run", *files, "--runs", "50", "--samples", "4", "--compare", env=env)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if "ghostnet_0_5-" in line and ("onnx " in line or "tflite " in line)]
    table = rows[-4:]
    for (fmt, precision), line in zip(COMBOS, table):
        cells = [c.strip() for c in line.split("│") if c.strip()]
        assert cells[:3] == [Path(artifacts[(fmt, precision)]).name, fmt, precision], line
        median, p90, sqnr = float(cells[3]), float(cells[4]), float(cells[6])
        assert 0 < median <= p90 and sqnr > (60 if precision == "fp32" else 20), line
    r = cli("run", *files[:2], "--runs", "50", "--samples", "2", "--json", env=env)
    runs = json.loads(r.stdout)["runs"]
    assert [(x["format"], x["precision"]) for x in runs] == COMBOS[:2]


def test_stats():
    s = summarize([3_000_000, 1_000_000, 2_000_000, 4_000_000])
    assert (s.n, s.min_ms, s.median_ms, s.max_ms) == (4, 1.0, 2.5, 4.0)
    assert s.cv == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2.5)
    with pytest.raises(ValueError, match="no latencies"):
        summarize([])
    with pytest.raises(ValueError, match="positive"):
        summarize([0, 5])
    agg = from_aggregate(n=50, min_ms=1.0, max_ms=2.0, mean_ms=1.5, std_ms=0.15)
    assert agg.median_ms is None and agg.cv == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not a measurement"):
        from_aggregate(n=50, min_ms=0.0, max_ms=0.0, mean_ms=0.0, std_ms=0.0)
    with pytest.raises(ValueError, match="runs 0"):
        Protocol(runs=0)
    with pytest.raises(ValueError, match="blocks 0 must be between 1 and runs 50"):
        Protocol(blocks=0)
    with pytest.raises(ValueError, match="blocks 60 must be between 1 and runs 50"):
        Protocol(blocks=60)
    for gap in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="gap_ms .* must be between 0 and 10000"):
            Protocol(gap_ms=gap)


@pytest.mark.slow
def test_timed_runs_are_spread_in_blocks_with_sleeps_between(artifacts, home):
    """The protocol's blocks: the real runtime timed in blocks of 4, 3, 3 runs with 200 ms sleeps
    between them, each sleep followed by the 2 warm-up runs again (seen from the start time of
    every invoke), and the same request through the local device keeps its settings."""
    from edgekit.devices import agent
    path = artifacts[("tflite", "int8")]
    model = open_model(path)
    runner = Runner(str(path), model.manifest.to_dict())
    starts, invoke = [], runner.invoke

    def observed():
        starts.append(time.perf_counter())
        invoke()

    runner.invoke = observed
    x, _ = real_inputs(model, data="fashion-mnist", samples=1)
    t = agent.measure(runner, [x[0]], warmup=2, runs=10, max_runs=10, target_cv=1.0, blocks=3, gap_ms=200)
    assert len(t["latencies_ns"]) == 10 and (t["blocks"], t["gap_ms"]) == (3, 200)
    assert len(starts) == 1 + 2 + 10 + 2 * 2  # first inference, warm-up, timed runs, warm-up after each sleep
    steps = np.diff(starts[3:])  # after the first inference and the warm-up: 4 timed, (2 + 3), (2 + 3)
    assert list(np.flatnonzero(steps > 0.15)) == [3, 8]
    r = measure(path, protocol=Protocol(runs=12, warmup=1, max_runs=12, blocks=3, gap_ms=20), store=False).result
    assert r.stats.n == 12 and (r.settings["blocks"], r.settings["gap_ms"]) == (3, 20)


@pytest.mark.slow
def test_a_map_output_is_compared_in_pytorch_layout(tmp_path, home):
    """ESPNet-C returns a (N, classes, H, W) map; the TFLite file gives it channels last (NHWC).
    Export and `run --compare` must transpose it back before comparing, not reshape it."""
    torch.manual_seed(0)
    model = randomise_bn(create_model("espnet_v1_c", num_classes=10, in_chans=1, resolution=32)).eval()
    weights = tmp_path / "espnet_v1_c.pt"
    save_weights(weights, model, {"model": "espnet_v1_c", "num_classes": 10, "in_chans": 1, "resolution": [32, 32]})
    files = export(model, name="espnet_v1_c", out=tmp_path, weights_file=weights, weights_sha256=sha256_file(weights),
                   settings=ExportSettings(formats=("tflite",), calib_samples=64, holdout=32))
    for f in files:
        m = f.artifact.manifest
        assert m.outputs[0].layout == "NHWC" and m.outputs[0].shape == (1, 4, 4, 10)
        assert f.parity.sqnr_db > (60 if m.precision == "fp32" else 20)
        run = measure(f.artifact.path, device="local", protocol=FAST, compare=True, samples=8)
        (rep,) = run.parity.values()
        assert rep.n == 8 and rep.sqnr_db == pytest.approx(f.parity.sqnr_db, abs=6)


@pytest.mark.slow
def test_inputs_npz_feeds_an_artifact_like_its_images(artifacts, home, tmp_path):
    path = artifacts[("tflite", "int8")]
    model = open_model(path)
    images, _ = real_inputs(model, data="fashion-mnist", samples=1)  # (1, *input shape), float32
    np.savez(tmp_path / "image.npz", **{model.manifest.inputs[0].name: images[0]})
    fed = measure(path, protocol=FAST, inputs=tmp_path / "image.npz", store=False)
    seen = measure(path, protocol=FAST, samples=1, store=False)
    np.testing.assert_array_equal(fed.result.outputs["output_0"], seen.result.outputs["output_0"])
    assert "image.npz" in fed.inputs_source and fed.parity is None and "--inputs" in fed.parity_note
    with pytest.raises(ValueError, match="--compare go"):
        measure(path, protocol=FAST, inputs=tmp_path / "image.npz", compare=True)

"""LUT builds fanned out on Ray: several devices of one kind measuring at once, the LUT and the
results store the record, a killed build resumed, a lost device's work redone, bad input refused."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from edgekit.devices.local import LocalDevice
from edgekit.devices.stats import Protocol
from edgekit.devices.store import ResultStore
from edgekit.lut import DeviceTimer, FBNetV1Space, Lut, LutMismatchError, build_on_device, load_lut, plan, save_lut
from edgekit.lut.device import fingerprint_differences
from edgekit.lut.fanout import _adopt, _check_reachable, build_on_devices, local_cores

# one searchable layer: 10 units (stem, 8 candidates, head), each an ONNX fp32 file timed briefly
ONE_LAYER = FBNetV1Space(resolution=32, width=0.25, in_chans=1, num_classes=10, head_channels=64,
                         stages=((16, 1, 1),), groups=None)
ROOT = Path(__file__).resolve().parent.parent
QUICK = Protocol(runs=5, warmup=1, max_runs=5)

# the build a user's script would run: two local devices (this machine twice, each on a core of its
# own) through a local Ray; argv: space JSON, LUT path, work dir, passes, python of the second device
BUILD = """
import json, sys
from edgekit.devices.local import LocalDevice
from edgekit.devices.stats import Protocol
from edgekit.lut import FBNetV1Space
from edgekit.lut.device import DeviceTimer
from edgekit.lut.fanout import build_on_devices, local_cores

space = FBNetV1Space.from_dict(json.loads(sys.argv[1]))
pythons = [None, sys.argv[5] if len(sys.argv) > 5 else None]
timers = [DeviceTimer(space, work_dir=sys.argv[3], device=LocalDevice(cores=c, python=p), format="onnx",
                      precision="fp32", protocol=Protocol(runs=5, warmup=1, max_runs=5), passes=int(sys.argv[4]),
                      calib_samples=8, run_samples=2) for c, p in zip(local_cores(2, 1), pythons)]
lut = build_on_devices(space, timers, out=sys.argv[2], chunk=4)
print(json.dumps({"entries": len(lut.entries), "measured": [[u.key for u in t.log] for t in timers]}))
"""


@pytest.fixture
def short_tmp(monkeypatch):
    """A short TMPDIR for the builds (Ray's socket paths must stay under 107 characters)."""
    path = Path(tempfile.mkdtemp(prefix="ekray-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def exported_work(tmp_path_factory) -> Path:
    """ONE_LAYER's units exported once, with the recipe every build below uses; each test copies
    them into its work dir, where a build re-uses a file whose sha256 checks out (as a resumed build
    does), so the tests spend their time on Ray and the devices, not on the exporter."""
    root = tmp_path_factory.mktemp("ray-work")
    timer = DeviceTimer(ONE_LAYER, work_dir=root / "work", device="local", store=ResultStore(root / "results.db"),
                        format="onnx", precision="fp32", protocol=QUICK, calib_samples=8, run_samples=2)
    build_on_device(ONE_LAYER, timer, out=root / "lut.json", chunk=10)
    return root / "work"


def _build(tmp: Path, *extra: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "EDGEKIT_HOME": str(tmp / "home"), "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
    args = [json.dumps(ONE_LAYER.to_dict()), str(tmp / "lut.json"), str(tmp / "work"), *extra]
    return subprocess.Popen([sys.executable, "-c", BUILD, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _entries(path: Path) -> int:
    try:
        return len(load_lut(path).entries)
    except ValueError:  # not written yet
        return 0


def _processes_under(folder: Path) -> list[str]:
    """Command lines of running processes that name ``folder`` (a Ray left behind would)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(folder) in cmd and "pytest" not in cmd:
            found.append(cmd)
    return found


@pytest.mark.slow
def test_ray_build_on_two_local_devices_stores_each_entry_once_and_resumes_after_a_kill(short_tmp, exported_work):
    shutil.copytree(exported_work, short_tmp / "work")
    out, t0 = short_tmp / "lut.json", time.monotonic()
    first = _build(short_tmp, "1", start_new_session=True)
    while _entries(out) < 3:
        assert first.poll() is None, first.communicate()[1][-2000:]
        assert time.monotonic() - t0 < 240, "no 3 entries stored within 240 s"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the build and the Ray it started, at once
    first.wait()
    killed_at = time.monotonic() - t0
    stored = load_lut(out)  # whole: saved atomically
    assert 3 <= len(stored.entries) < len(ONE_LAYER.distinct_signatures())

    second = _build(short_tmp, "1")
    stdout, stderr = second.communicate(timeout=300)
    assert second.returncode == 0, stderr[-2000:]
    report = json.loads(stdout.splitlines()[-1])
    lut = load_lut(out, format="onnx", precision="fp32", threads=1, device="local")
    print(f"killed after {killed_at:.1f} s with {len(stored.entries)} entries; resumed in "
          f"{time.monotonic() - t0 - killed_at:.1f} s")

    assert plan(ONE_LAYER, lut) == [] and len(lut.entries) == len(ONE_LAYER.distinct_signatures())
    assert {k: lut.entries[k] for k in stored.entries} == dict(stored.entries)  # stored values kept
    resumed = [k for keys in report["measured"] for k in keys]
    assert set(resumed).isdisjoint(stored.entries) and sorted(resumed) == sorted(set(resumed))
    assert all(report["measured"]), report  # both devices measured
    rows = ResultStore(short_tmp / "home" / "results.db").query(device="local", format="onnx")
    per_file = Counter(r["artifact_path"] for r in rows)
    assert len(per_file) == len(lut.entries) and set(per_file.values()) == {1}  # every unit measured once
    assert {tuple(r["fingerprint"]["pinned_cores"]) for r in rows} == {tuple(c) for c in local_cores(2, 1)}
    assert lut.device["devices"] == ["local"] and lut.device["runtime"] == "onnxruntime"
    time.sleep(1)
    assert _processes_under(short_tmp) == []  # no Ray process outlived either build


@pytest.mark.slow
def test_a_device_lost_mid_build_is_dropped_and_its_work_redone(short_tmp, exported_work):
    """The second device's Python disappears once two entries are stored: its next run fails to
    start, that unit goes to the first device, which finishes the LUT; nothing is stored twice."""
    shutil.copytree(exported_work, short_tmp / "work")
    python = short_tmp / "python"  # this Python, through a script that can disappear
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    out = short_tmp / "lut.json"

    def lose_the_device():
        while _entries(out) < 2 and build.poll() is None:
            time.sleep(0.05)
        python.unlink()

    build = _build(short_tmp, "2", str(python))
    watcher = threading.Thread(target=lose_the_device)
    watcher.start()
    stdout, stderr = build.communicate(timeout=300)
    watcher.join()
    assert build.returncode == 0, stderr[-2000:]
    # its next run could not start Python, or the shell lost the script it was reading
    assert re.search(r"device 2 of 2 lost: local: (start failed: no Python at|run failed: the agent exited)", stderr)
    first, second = json.loads(stdout.splitlines()[-1])["measured"]
    lut = load_lut(out)
    assert len(lut.entries) == len(ONE_LAYER.distinct_signatures())
    assert second and len(first) > len(second)  # the second device measured until it was lost
    assert Counter(first + second) == {k: 2 for k in lut.entries}  # every unit's two passes, once each
    rows = ResultStore(short_tmp / "home" / "results.db").query(device="local")
    assert sorted(Counter(r["artifact_path"] for r in rows).values()) == [2] * len(lut.entries)


@pytest.mark.slow
def test_results_stored_after_the_luts_last_save_become_its_entries(tmp_path, exported_work):
    """A build killed between storing a unit's result and saving its entry: the resume takes the
    stored result instead of measuring the unit again, and never a result older than the LUT."""
    shutil.copytree(exported_work, tmp_path / "work")
    store = ResultStore(tmp_path / "results.db")

    def timer(device="local"):
        return DeviceTimer(ONE_LAYER, work_dir=tmp_path / "work", device=device, store=store, format="onnx",
                           precision="fp32", protocol=QUICK, calib_samples=8, run_samples=2)

    single = timer()
    full = build_on_device(ONE_LAYER, single, out=tmp_path / "full.json", chunk=10)
    keys, rows = [u.key for u in single.log], store.query()
    assert len(rows) == len(keys) == len(full.entries)
    out = save_lut(full.replace(entries={k: v for k, v in full.entries.items() if k not in keys[-2:]}),
                   tmp_path / "lut.json")
    saved = (rows[-3]["created"] + rows[-2]["created"]) / 2  # after the third-last result, before the last two
    os.utime(out, (saved, saved))
    timers = [timer(LocalDevice(cores=c)) for c in local_cores(2, 1)]
    todo = plan(ONE_LAYER, load_lut(out))
    adopted, left = _adopt(dict(full.device), todo, timers, since=rows[-1]["created"] - 1e-6)
    assert [u.key for u, _ in adopted] == keys[-1:] and [u.key for u in left] == keys[-2:-1]

    lut = build_on_devices(ONE_LAYER, timers, out=out)  # both stored: nothing to measure, no Ray started
    assert lut.entries == full.entries and all(t.log == [] for t in timers)
    assert len(store.query()) == len(keys) and lut.device == full.device


def test_an_unreachable_ray_address_fails_fast_and_says_what_to_do(tmp_path, edgekit_cli):
    with socket_closed_port() as port:
        t0 = time.monotonic()
        res = edgekit_cli("lut", "build", "--resolution", "16", "--width", "0.25", "--in-chans", "1",
                          "--num-classes", "10", "--ray-address", f"127.0.0.1:{port}", "--out", tmp_path / "lut.json")
        took = time.monotonic() - t0
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in res.stderr and "ray start --head" in res.stderr
    assert took < 15 and not (tmp_path / "lut.json").exists()
    t0 = time.monotonic()
    with pytest.raises(ValueError, match=r"cannot reach the Ray cluster at 10\.255\.255\.1:6379 within 0\.5 s"):
        _check_reachable("10.255.255.1:6379", 0.5)  # no Ray there: ray.init would retry for 20 s and more
    assert time.monotonic() - t0 < 0.5 + 3 + 2  # the timeout, the probe's start, a busy host
    with pytest.raises(ValueError, match="'head-node' is not HOST:PORT, ray://HOST:PORT or auto"):
        _check_reachable("head-node", 0.5)


class socket_closed_port:
    """A local TCP port nothing listens on (bound, then closed)."""

    def __enter__(self) -> int:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        pass


def test_fan_out_refuses_torch_and_more_local_devices_than_cores(tmp_path, edgekit_cli):
    space = ["--resolution", "16", "--width", "0.25", "--in-chans", "1", "--num-classes", "10"]
    res = edgekit_cli("lut", "build", *space, "--format", "torch", "--device", "local", "--device", "local",
                      "--out", tmp_path / "lut.json")
    assert res.returncode == 2 and "--format torch times eager PyTorch on this host only" in res.stderr
    n = len(os.sched_getaffinity(0)) + 1
    res = edgekit_cli("lut", "build", *space, *["--device", "local"] * n, "--out", tmp_path / "lut.json")
    assert res.returncode == 2 and f"{n} local devices x 1 thread(s) need {n} cores of their own" in res.stderr
    assert not (tmp_path / "lut.json").exists()


def _local_fp(pinned: list[int], **changes) -> dict:
    from edgekit.devices.agent import fingerprint
    return {"device": "local", **fingerprint(None, 1, pinned), **changes}


def test_devices_of_one_kind_agree_and_another_kind_is_refused():
    a, b = _local_fp([1]), _local_fp([0])
    header = {**a, "devices": ["local"]}
    assert fingerprint_differences(header, b) == []  # another core of the same CPU
    assert fingerprint_differences(header, {**b, "device": "ssh://pi@rpi2"}) == [
        "device device is 'ssh://pi@rpi2', the LUT has 'local'"]
    pis = {**a, "device": "ssh://pi@rpi1", "devices": ["ssh://pi@rpi1", "ssh://pi@rpi2"]}
    assert fingerprint_differences(pis, {**b, "device": "ssh://pi@rpi2"}) == []
    assert fingerprint_differences(header, {**b, "cpu_model": "Cortex-A76"}) == [
        f"device cpu_model is 'Cortex-A76', the LUT has {a['cpu_model']!r}"]
    assert fingerprint_differences(header, {**b, "threads": 2}) == ["device threads is 2, the LUT has 1"]
    big_little = {"Cortex-A76": 4, "Cortex-A55": 4}  # a phone: which cores ran it matters
    assert fingerprint_differences({**header, "cpu_cores": big_little}, {**b, "cpu_cores": big_little}) == [
        "device pinned_cores is [0], the LUT has [1]"]

    lut = Lut(space=ONE_LAYER.to_dict(), device=pis, format="onnx", precision="fp32", threads=1)
    lut.check_compatible(device="ssh://pi@rpi2")  # one of the boards that measured it
    with pytest.raises(LutMismatchError, match="device device is 'ssh://pi@rpi1', expected 'ssh://pi@rpi3'"):
        lut.check_compatible(device="ssh://pi@rpi3")

"""Emulated ARM boards (``qemu://pi4``, ``qemu://pi5``), what the agent says about the CPU it runs
on, how much of a TFLite graph XNNPACK took, and one file compared on two devices.

The slow tests build a board from nothing, as the test command does on a fresh machine: Debian's
arm64 Python unpacked by mmdebstrap and the aarch64 wheels from the package index, run by
qemu-user as a Cortex-A76. The emulated board stands in for a Raspberry Pi 5, which this machine
does not have; it is reached through the same ssh transport, agent and store as a real Pi. Its
timings are the emulator's and are never checked as latencies.
"""
import json
import os
import signal
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.devices import agent, boards, open_device
from edgekit.devices.base import DeviceError, fingerprint_notes, open_model
from edgekit.devices.crosscheck import FLOAT_PART_REL, agreement, compare_devices
from edgekit.devices.measure import measure
from edgekit.devices.stats import Protocol
from edgekit.devices.store import ResultStore

CPUINFO = Path(__file__).parent / "data" / "cpuinfo"
QUICK = Protocol(warmup=0, runs=2, max_runs=2, target_cv=1.0)


# ---- what the agent says about a CPU ------------------------------------------------------------

@pytest.mark.parametrize("name,model,cores,int8_features,board", [
    ("raspberry-pi-3b.txt", "Cortex-A53", {"Cortex-A53": 4}, ["asimd"], "Raspberry Pi 3 Model B Rev 1.2"),
    ("raspberry-pi-4b.txt", "Cortex-A72", {"Cortex-A72": 4}, ["asimd"], "Raspberry Pi 4 Model B Rev 1.4"),
    ("raspberry-pi-5.txt", "Cortex-A76", {"Cortex-A76": 4}, ["asimd", "asimddp"], "Raspberry Pi 5 Model B Rev 1.0"),
    ("phone-tensor-g1.txt", "2x Cortex-X1 + 2x Cortex-A76 + 4x Cortex-A55",
     {"Cortex-A55": 4, "Cortex-A76": 2, "Cortex-X1": 2}, ["asimd", "asimddp"], None),
    ("phone-tensor-g3.txt", "1x Cortex-X3 + 4x Cortex-A715 + 4x Cortex-A510",
     {"Cortex-A510": 4, "Cortex-A715": 4, "Cortex-X3": 1}, ["asimd", "asimddp", "i8mm", "sve", "sve2"], None),
    ("phone-snapdragon-835.txt", "4x Kryo 2xx Gold (Cortex-A73) + 4x Kryo 2xx Silver (Cortex-A53)",
     {"Kryo 2xx Silver (Cortex-A53)": 4, "Kryo 2xx Gold (Cortex-A73)": 4}, ["asimd"], None),
])
def test_arm_cores_and_int8_features_decoded_from_cpuinfo(name, model, cores, int8_features, board):
    info = agent.parse_cpuinfo((CPUINFO / name).read_text())
    assert info["cpu_model"] == model and info["cpu_cores"] == cores and info["isa"] == "arm"
    assert [f for f in agent.INT8_FEATURES if f in info["features"]] == int8_features
    assert info["board"] == board


def test_x86_cpuinfo_keeps_its_model_name_and_an_unknown_part_is_named_by_number():
    info = agent.parse_cpuinfo((CPUINFO / "x86-xeon.txt").read_text())
    assert info["cpu_model"] == "Intel(R) Xeon(R) Processor" and info["isa"] == "x86" and info["cpu_cores"] == {}
    odd = (CPUINFO / "raspberry-pi-4b.txt").read_text().replace("0xd08", "0xdff")
    assert agent.parse_cpuinfo(odd)["cpu_model"] == "ARM part 0xdff"


def test_hwcap_bits_named_as_cpuinfo_names_them():
    assert agent.hwcap_features(0b11) == ["fp", "asimd"]
    assert agent.hwcap_features(1 << 20 | 1 << 22, 1 << 1 | 1 << 13) == ["asimddp", "sve", "sve2", "i8mm"]


def test_emulation_is_told_by_the_board_marker_or_by_a_foreign_cpuinfo():
    x86 = agent.parse_cpuinfo((CPUINFO / "x86-xeon.txt").read_text())
    pi = agent.parse_cpuinfo((CPUINFO / "raspberry-pi-4b.txt").read_text())
    assert agent.emulation(pi, "aarch64") is None and agent.emulation(x86, "x86_64") is None
    foreign = agent.emulation(x86, "aarch64")  # an ARM Python reading an x86 CPU list: qemu-user
    assert foreign is not None and "x86 /proc/cpuinfo" in foreign["emulator"]
    marker = json.dumps({"board": "pi4", "emulator": "qemu-aarch64 7.2", "cpu": "cortex-a72"})
    told = agent.emulation(pi, "aarch64", marker)
    assert told == {"emulator": "qemu-aarch64 7.2", "board": "pi4", "cpu": "cortex-a72"}
    notes = fingerprint_notes({"emulated": told})
    assert len(notes) == 1 and "not a latency" in notes[0]


# ---- XNNPACK: how much of the graph it took ------------------------------------------------------

def _op(name, inputs, outputs):
    return {"op_name": name, "inputs": inputs, "outputs": outputs}


def test_xnnpack_delegation_counted_from_the_partitions():
    ops = [_op("CONV_2D", [0, 10, 11], [1]), _op("CUMSUM", [1, 12], [2]), _op("ADD", [2, 1], [3]),
           _op("DELEGATE", [0], [1]), _op("DELEGATE", [2, 1], [3])]
    got = agent.xnnpack_delegation(ops)
    assert got == {"expected": True, "ops": 3, "delegated_ops": 2, "partitions": 2, "left": {"CUMSUM": 1}}
    none = agent.xnnpack_delegation(ops[:3])
    assert none["delegated_ops"] == 0 and none["left"] == {"CONV_2D": 1, "CUMSUM": 1, "ADD": 1}
    assert "took none of the 3 ops" in fingerprint_notes({}, none)[0]
    assert "took 2 of 3 ops" in fingerprint_notes({}, got)[0] and "CUMSUM x1" in fingerprint_notes({}, got)[0]
    assert fingerprint_notes({}, agent.xnnpack_delegation([_op("ADD", [0, 1], [2]), _op("DELEGATE", [0, 1], [2])])) == ()


class _Cumsum(nn.Module):
    """A conv, then an op XNNPACK does not take (CUMSUM)."""

    def __init__(self, conv: bool):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3) if conv else None

    def forward(self, x):
        return torch.cumsum(self.conv(x), dim=3) if self.conv is not None else torch.cumsum(x, dim=1)


@pytest.mark.slow
def test_a_file_xnnpack_takes_only_in_part_or_not_at_all_says_so(tmp_path, home, edgekit_cli):
    import litert_torch
    from edgekit.exporters.tflite.tools import captured_output

    litert_torch.config.show_progress = False
    paths = {}
    for conv in (True, False):  # with a conv: XNNPACK takes the conv; alone (2-D, no layout change): nothing
        example = torch.zeros(1, 1, 8, 8) if conv else torch.zeros(1, 8)
        with captured_output():
            data = litert_torch.convert(_Cumsum(conv).eval(), (example,)).model_content()
        paths[conv] = tmp_path / f"cumsum-{'conv' if conv else 'alone'}.tflite"
        paths[conv].write_bytes(bytes(data))
    part = measure(paths[True], device="local", protocol=QUICK)
    x = part.result.conditions["xnnpack"]
    assert 0 < x["delegated_ops"] < x["ops"] and x["left"] == {"CUMSUM": 1}
    assert any("left on LiteRT's own kernels: CUMSUM x1" in n for n in part.result.notes)
    stored = ResultStore().query()[-1]
    assert stored["conditions"]["xnnpack"] == x  # the stored result says so too
    res = edgekit_cli("run", paths[False], "--runs", "2", "--warmup", "0", "--json")
    doc = json.loads(res.stdout)
    assert res.returncode == 0 and doc["conditions"]["xnnpack"]["delegated_ops"] == 0
    assert any("XNNPACK took none of the" in n for n in doc["notes"])
    text = edgekit_cli("run", paths[False], "--runs", "2", "--warmup", "0").stdout
    assert "XNNPACK took none of" in text


# ---- device against device: units -----------------------------------------------------------------

def test_agreement_in_int8_steps_and_in_float_terms():
    a = np.zeros((2, 1, 4), np.float32)
    b = a.copy()
    b[0, 0, 1] = 0.5  # 2 steps of 0.25
    got = agreement("y", a + [[[1, 0, 0, 0]]], b + [[[1, 0, 0, 0]]], scale=0.25, logits=True)
    assert (got.unit, got.differing, got.max_diff, got.top1_agreement) == ("int8 steps", 1, 2.0, 1.0)
    rounding = agreement("y", np.full((2, 3), 100.0), np.full((2, 3), 100.0 + 100 * FLOAT_PART_REL / 10), scale=None)
    assert rounding.unit == "abs" and rounding.differing == 0 and rounding.max_diff > 0
    real = agreement("y", np.array([[1.0, 2.0]]), np.array([[1.0, np.nan]]), scale=None)
    assert real.differing == 1
    with pytest.raises(ValueError, match="shapes"):
        agreement("y", np.zeros((1, 2)), np.zeros((1, 3)), scale=None)


# ---- boards: bad input without building anything --------------------------------------------------

def test_unknown_board_lists_the_known_ones(tmp_path, monkeypatch, edgekit_cli):
    monkeypatch.setenv("EDGEKIT_BOARDS_DIR", str(tmp_path / "boards"))
    with pytest.raises(ValueError, match=r"unknown board 'pi9'.*qemu://pi4, qemu://pi5"):
        open_device("qemu://pi9")
    res = edgekit_cli("board", "build", "pi9")
    assert res.returncode == 2 and "unknown board 'pi9'; known boards: pi4, pi5" in res.stderr
    assert not (tmp_path / "boards" / "pi9").exists()


def test_missing_qemu_or_mmdebstrap_named_with_its_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_BOARDS_DIR", str(tmp_path / "boards"))
    bare = tmp_path / "bin"
    bare.mkdir()
    monkeypatch.setenv("PATH", str(bare))
    with pytest.raises(boards.BoardError, match=r"qemu-aarch64-static is missing.*apt-get install qemu-user-static"):
        boards.ensure_board("pi4", log=lambda m: None)
    fake = bare / "qemu-aarch64-static"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    with pytest.raises(boards.BoardError, match=r"mmdebstrap is missing.*apt-get install mmdebstrap"):
        boards.ensure_board("pi4", log=lambda m: None)
    assert [p.name for p in (tmp_path / "boards").iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.slow
def test_a_runtime_without_an_aarch64_wheel_is_named_with_the_python_version(tmp_path):
    """Asks the package index for a release that never had an aarch64 wheel (onnxruntime 1.0.0)."""
    with pytest.raises(boards.BoardError, match=r"no aarch64 wheel of onnxruntime==1\.0\.0 for CPython 3\.11"):
        boards._pip_wheels(tmp_path / "site", {"onnxruntime": "1.0.0"})


def test_lut_build_refuses_an_emulated_board_unless_told(tmp_path, edgekit_cli):
    from edgekit.lut.device import DeviceTimer
    from edgekit.lut import FBNetV1Space

    space = FBNetV1Space(resolution=16, width=0.25, in_chans=1, num_classes=10)
    with pytest.raises(ValueError, match="qemu://pi4 is emulated.*--allow-emulated"):
        DeviceTimer(space, work_dir=tmp_path, device="qemu://pi4")
    timer = DeviceTimer(space, work_dir=tmp_path, device="local", store=False)
    with pytest.raises(ValueError, match="is emulated"):
        timer._check_fingerprint({"device": "ssh://pi@board", "emulated": {"emulator": "qemu-aarch64"}})
    res = edgekit_cli("lut", "build", "--resolution", "16", "--width", "0.25", "--in-chans", "1", "--num-classes",
                      "10", "--format", "tflite", "--device", "qemu://pi5", "--out", tmp_path / "lut.json")
    assert res.returncode == 2 and "--allow-emulated" in res.stderr and not (tmp_path / "lut.json").exists()


# ---- a real emulated board ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def board_dir(shared_root):
    """EDGEKIT_BOARDS_DIR for this module: a folder of this run, so the board is built from nothing."""
    root = shared_root / "boards"
    before = os.environ.get("EDGEKIT_BOARDS_DIR")
    os.environ["EDGEKIT_BOARDS_DIR"] = str(root)
    yield root
    if before is None:
        os.environ.pop("EDGEKIT_BOARDS_DIR", None)
    else:
        os.environ["EDGEKIT_BOARDS_DIR"] = before


@pytest.fixture(scope="module")
def pi5(board_dir):
    return boards.ensure_board("pi5", log=lambda m: None)


def _export_fbnet(out: Path) -> None:
    from edgekit.export import ExportSettings, export
    from edgekit.models import create_model

    torch.manual_seed(0)
    model = create_model("fbnet_a", num_classes=10, in_chans=1, resolution=32).eval()
    export(model, name="fbnet_a", out=out, settings=ExportSettings(formats=("onnx", "tflite"), precisions=("int8",),
                                                                   calib_samples=64, holdout=32, force=True))


@pytest.mark.slow
def test_board_built_from_nothing_then_rebuilt_when_damaged(board_dir, pi5, edgekit_cli, tmp_path):
    cpuinfo = (pi5.path / "root" / "proc" / "cpuinfo").read_text()
    assert "CPU part\t: 0xd0b" in cpuinfo and "asimddp" in pi5.info["features"] and "sve" not in pi5.info["features"]
    assert set(pi5.info["runtimes"]) == set(boards.RUNTIMES)
    res = edgekit_cli("board", "list", "--json")
    rows = {r["name"]: r for r in json.loads(res.stdout)["boards"]}
    assert rows["pi5"]["state"] == "ready" and rows["pi4"]["state"] == "missing"
    # a copy damaged: found damaged, rebuilt whole (never half-used), then removed
    copy = tmp_path / "boards"
    shutil.copytree(board_dir / "pi5", copy / "pi5", symlinks=True)
    (copy / "pi5" / "site" / "numpy" / "__init__.py").unlink()
    os.environ["EDGEKIT_BOARDS_DIR"] = str(copy)
    try:
        state, why = boards.board_status("pi5")
        assert state == "damaged" and "changed since it was built" in why
        said = []
        rebuilt = boards.ensure_board("pi5", log=said.append)
        assert "damaged" in said[0] and boards.board_status("pi5")[0] == "ready"
        assert (rebuilt.path / "site" / "numpy" / "__init__.py").is_file()
        res = edgekit_cli("board", "remove", "pi5")
        assert res.returncode == 0 and "removed" in res.stdout and not (copy / "pi5").exists()
        assert [p.name for p in copy.iterdir() if not p.name.endswith(".lock")] == []
    finally:
        os.environ["EDGEKIT_BOARDS_DIR"] = str(board_dir)


@pytest.mark.slow
def test_int8_tflite_and_onnx_of_two_families_on_the_board_against_this_machine(pi5, artifacts, exported, home,
                                                                               edgekit_cli):
    fbnet = {open_model(p).format: p for p in exported({"model": "fbnet_a", "resolution": 32, "int8": "tflite+onnx",
                                                          "calib": 64}, _export_fbnet).glob("fbnet_a-*")
             if p.suffix in (".onnx", ".tflite")}
    files = [artifacts[("tflite", "int8")], artifacts[("onnx", "int8")], fbnet["tflite"], fbnet["onnx"]]
    for path in files:
        per_layer = path == files[0]
        c = compare_devices(path, "qemu://pi5", against="local", protocol=QUICK, samples=8, per_layer=per_layer)
        arm, x86 = c.a.fingerprint, c.b.fingerprint
        assert arm["emulated"]["board"] == "pi5" and arm["cpu_model"] == "Cortex-A76" and arm["arch"] == "aarch64"
        assert "asimddp" in arm["isa_features"] and not x86["emulated"]
        assert any("emulated" in n for n in c.a.notes) and not c.a.conditions["latency_representative"]
        if path.suffix == ".tflite":  # XNNPACK found the emulated CPU and took the whole graph
            x = c.a.conditions["xnnpack"]
            assert x["delegated_ops"] == x["ops"] > 0
        (out,) = c.outputs
        assert out.unit == ("int8 steps" if path.suffix == ".tflite" else "abs") and out.values == 80
        assert out.top1_agreement >= 0.75 and (out.max_diff <= 16 if out.unit == "int8 steps" else True)
        if per_layer:
            assert len(c.layers) > 50 and c.kernels.startswith("as timed")
            assert (c.first_parting is None) == (not any(lay.parts for lay in c.layers))
            if out.parts:
                assert c.first_parting is not None
    rows = json.loads(edgekit_cli("results", "--json").stdout)["results"]
    assert [bool(r["fingerprint"]["emulated"]) for r in rows] == [True, False] * 4
    assert "rows marked emulated ran under an emulator" in edgekit_cli("results").stdout
    text = edgekit_cli("run", files[1], "--device", "qemu://pi5", "--against", "local", "--samples", "4", "--runs",
                       "2", "--warmup", "0", "--no-store").stdout
    assert "on qemu://pi5 against local" in text and "Cortex-A76 (aarch64, asimd asimddp, emulated)" in text


@pytest.mark.slow
def test_board_killed_mid_run_stores_nothing_and_the_next_run_works(pi5, artifacts, home):
    """The emulated agent (the board's Python running ``agent.py request.json``) dies mid-run. Only
    the agent is killed, not the guard that starts it (``python -c GUARD ... request.json``): the
    guard may be alone for a while as the agent starts under the emulator, and killing it first
    would leave the agent running out its 100,000 runs instead of dying."""
    path = artifacts[("tflite", "int8")]
    errors = []

    def long_run():
        try:
            measure(path, device="qemu://pi5", protocol=Protocol(warmup=0, runs=100000, max_runs=100000), samples=2)
        except DeviceError as e:
            errors.append(e)

    worker = threading.Thread(target=long_run)
    worker.start()
    deadline, killed = time.monotonic() + 120, False
    while time.monotonic() < deadline and not killed:
        for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            agent = (any(b"qemu-aarch64" in c for c in cmd[:1]) and any(c.endswith(b"request.json") for c in cmd)
                     and b"-c" not in cmd)
            if agent:
                os.kill(int(pid), signal.SIGKILL)
                killed = True
        time.sleep(0.5)
    worker.join(timeout=120)
    assert killed and len(errors) == 1 and errors[0].step == "run"
    assert ResultStore().count() == 0
    again = measure(path, device="qemu://pi5", protocol=QUICK, samples=2)
    assert again.stored_id is not None and again.result.fingerprint["emulated"]["board"] == "pi5"

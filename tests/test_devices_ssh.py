"""The ssh runner against a REAL OpenSSH server started on 127.0.0.1 at a free port with throwaway
host and user keys and its own sshd_config; host-key verification stays on (a known_hosts file
built from the host key). Nothing is skipped: without /usr/sbin/sshd these tests fail and say to
run `make test`, which installs openssh-server."""
import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgekit.devices.base import DeviceError
from edgekit.devices.measure import measure
from edgekit.devices.sshd import LocalSSHD, descendants, free_port
from edgekit.devices.stats import Protocol
from edgekit.devices.store import ResultStore
from test_devices import cli
from test_foreign_files import check_external_data_runs_on

FAST = Protocol(runs=50, warmup=5, max_runs=100)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = LocalSSHD(tmp_path_factory.mktemp("sshd")).start()
    yield server
    server.stop()


def opts(srv, tmp_path, **kw):
    return {"ssh_options": srv.ssh_options, "cache_dir": str(tmp_path / "device cache"), "python": sys.executable, **kw}


def test_model_uploaded_once_then_served_from_the_cache(srv, artifacts, home, tmp_path):
    path = artifacts[("tflite", "int8")]
    first = measure(path, device=srv.address, protocol=FAST, compare=True, samples=8, **opts(srv, tmp_path))
    assert first.result.conditions["transfer"]["model_uploaded"] is True
    cached = tmp_path / "device cache" / "models" / f"{first.result.artifact_sha256}.tflite"
    assert cached.read_bytes() == path.read_bytes()
    mtime = cached.stat().st_mtime_ns
    second = measure(path, device=srv.address, protocol=FAST, compare=True, samples=8, **opts(srv, tmp_path))
    transfer = second.result.conditions["transfer"]
    assert (transfer["uploaded"], transfer["model_uploaded"]) == (["input_0.npy", "request.json"], False)
    assert cached.stat().st_mtime_ns == mtime
    local = measure(path, device="local", protocol=FAST, samples=8, store=False)
    np.testing.assert_array_equal(second.result.outputs["output_0"], local.result.outputs["output_0"])
    (rep,) = second.parity.values()
    rep.check(min_sqnr_db=20)
    fp = second.result.fingerprint
    assert fp["device"] == srv.address and fp["runtime"] == "ai_edge_litert" and fp["pinned_cores"]
    assert [r["device"] for r in ResultStore().query()] == [srv.address, srv.address]
    for run in (first, second):  # the device work directories are gone
        work = run.result.conditions["transfer"].pop("workdir")
        assert work.startswith("/tmp/edgekit-run-") and not Path(work).exists()


def test_cli_over_ssh_with_a_profile_and_a_file_name_full_of_metacharacters(srv, artifacts, home, tmp_path):
    odd = tmp_path / "a b; $(touch pwned) `id`.tflite"
    odd.write_bytes(artifacts[("tflite", "fp32")].read_bytes())
    profile = tmp_path / "board.json"
    profile.write_text(json.dumps({"python": sys.executable, "ssh_options": srv.ssh_options,
                                   "cache_dir": str(tmp_path / "c; $(touch pwned)")}))
    r = cli("run", str(odd), "--device", srv.address, "--device-profile", str(profile), "--runs", "50", "--compare", "--json",
            env={**os.environ, "EDGEKIT_HOME": str(home)}, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["device"] == srv.address and doc["stats"]["n"] >= 50 and "third-party" in doc["parity_note"]
    assert (tmp_path / "c; $(touch pwned)" / "models").is_dir()
    assert not any(p.name == "pwned" for p in tmp_path.rglob("*")) and not Path.home().joinpath("pwned").exists()


def _numpy_only_python(tmp_path: Path) -> str:
    """A venv with numpy but no model runtime, as on a board where only numpy was installed."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    import numpy
    only = tmp_path / "numpy-only"
    only.mkdir()
    src = Path(numpy.__file__).parent
    (only / "numpy").symlink_to(src)
    if (src.parent / "numpy.libs").exists():
        (only / "numpy.libs").symlink_to(src.parent / "numpy.libs")
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "numpy_only.pth").write_text(str(only) + "\n")
    return str(venv / "bin" / "python")


def test_device_python_without_runtime_or_numpy_or_at_all(srv, artifacts, home, tmp_path):
    path = artifacts[("tflite", "int8")]
    py = _numpy_only_python(tmp_path)
    with pytest.raises(DeviceError, match=r"run failed: runtime-missing: no TFLite runtime: install one of "
                                          r"ai-edge-litert") as e:
        measure(path, device=srv.address, protocol=FAST, **opts(srv, tmp_path, python=py))
    assert e.value.device == srv.address and e.value.kind == "runtime-missing"
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True, timeout=120)
    with pytest.raises(DeviceError, match="connect failed: .*has no numpy"):
        measure(path, device=srv.address, protocol=FAST, **opts(srv, tmp_path, python=str(bare / "bin" / "python")))
    with pytest.raises(DeviceError, match="connect failed: no Python at '/opt/none/python3'"):
        measure(path, device=srv.address, protocol=FAST, **opts(srv, tmp_path, python="/opt/none/python3"))
    assert ResultStore().count() == 0


def test_wrong_port_failed_auth_and_unknown_host_key(srv, artifacts, home, tmp_path):
    path = artifacts[("tflite", "int8")]
    port = free_port()  # nothing listens there
    with pytest.raises(DeviceError, match=rf"127.0.0.1:{port}: connect failed: nothing accepts ssh connections"):
        measure(path, device=f"ssh://{srv.user}@127.0.0.1:{port}", protocol=FAST, **opts(srv, tmp_path))
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "stranger")], check=True)
    # ControlPath=none: an open master connection must not hide the failure
    # (IdentityFile accumulates, so the server's own key is left out)
    stranger = [f"IdentityFile={tmp_path / 'stranger'}", "ControlPath=none",
                *(o for o in srv.ssh_options if not o.startswith("IdentityFile="))]
    with pytest.raises(DeviceError, match="connect failed: authentication as .* failed") as e:
        measure(path, device=srv.address, protocol=FAST, **opts(srv, tmp_path, ssh_options=stranger))
    assert e.value.kind == "connection"
    (tmp_path / "empty_known_hosts").write_text("")
    unknown = [f"UserKnownHostsFile={tmp_path / 'empty_known_hosts'}", "ControlPath=none", *srv.ssh_options]
    with pytest.raises(DeviceError, match="host key of 127.0.0.1"):
        measure(path, device=srv.address, protocol=FAST, **opts(srv, tmp_path, ssh_options=unknown))
    r = cli("run", str(path), "--device", f"ssh://{srv.user}@127.0.0.1:{port}", *sum((["--ssh-option", o] for o in
            srv.ssh_options), []), env={**os.environ, "EDGEKIT_HOME": str(home)})
    assert r.returncode == 3 and "connect failed" in r.stderr and str(port) in r.stderr
    assert ResultStore().count() == 0


def test_model_corrupted_in_transit_is_caught(srv, artifacts, home, tmp_path):
    """An scp that flips a byte of every .tflite it delivers (the device is this machine)."""
    fake = tmp_path / "corrupting-scp"
    fake.write_text(f"""#!{sys.executable}
import glob, subprocess, sys
rc = subprocess.call(["scp", *sys.argv[1:]])
dest = sys.argv[-1].split(":", 1)[1]
for f in glob.glob(dest + "*.tflite"):
    data = bytearray(open(f, "rb").read()); data[100] ^= 0xFF; open(f, "wb").write(bytes(data))
sys.exit(rc)
""")
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    from edgekit.devices.ssh import SSHDevice
    from edgekit.devices.base import open_model
    dev = SSHDevice(srv.address, ssh_options=srv.ssh_options, python=sys.executable,
                    cache_dir=str(tmp_path / "cache"), scp=str(fake))
    with pytest.raises(DeviceError, match="verify failed: checksum-mismatch: model.tflite arrived with sha256") as e:
        dev.run(open_model(artifacts[("tflite", "fp32")]), None, protocol=FAST)
    assert e.value.step == "verify"
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # nothing corrupt enters the cache


def test_sshd_killed_mid_run_then_the_next_run_works(srv, artifacts, home, tmp_path):
    path = artifacts[("tflite", "fp32")]
    long = Protocol(runs=5_000_000, warmup=0, max_runs=5_000_000)
    box = {}
    t_start = time.time() - 1

    def run():
        try:
            measure(path, device=srv.address, protocol=long, **opts(srv, tmp_path))
        except DeviceError as e:
            box["error"] = e

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for the agent to be running under sshd
        if any("request.json" in Path(f"/proc/{p}/cmdline").read_text(errors="replace")
               for p in descendants(srv.proc.pid) if Path(f"/proc/{p}/cmdline").exists()):
            break
        time.sleep(0.2)
    else:
        pytest.fail("the agent never started on the device")
    time.sleep(1)
    srv.kill()
    t.join(timeout=120)
    assert not t.is_alive()
    err = box["error"]
    assert err.step == "run" and err.kind == "connection" and srv.address in str(err)
    assert "lost" in str(err) or "Connection" in str(err)
    assert _agents_left(tmp_path) == []  # the device kept running, the agent did not
    assert ResultStore().count() == 0
    # the cut-off run could not remove its work directory; the first run a day later does
    left = [p for p in Path("/tmp").glob("edgekit-run-*") if p.stat().st_mtime >= t_start]
    assert left
    day_old = time.time() - 86400 - 60
    for p in left:
        os.utime(p, (day_old, day_old))
    srv.start()
    m = measure(path, device=srv.address, protocol=FAST, **opts(srv, tmp_path))
    assert m.result.stats.n >= 50 and ResultStore().count() == 1
    assert not any(p.exists() for p in left)


def _agents_left(tmp_path: Path, wait: float = 10.0) -> list[str]:
    """Processes on the "device" (this machine) still running an agent of this test's cache, after
    ``wait`` seconds at most."""
    pattern = re.escape(str(tmp_path / "device cache" / "agents"))
    deadline = time.monotonic() + wait
    while True:
        found = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True).stdout.splitlines()
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _wait_for_agent(tmp_path: Path) -> None:
    deadline = time.monotonic() + 120
    pattern = re.escape(str(tmp_path / "device cache" / "agents"))
    while subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            pytest.fail("the agent never started on the device")
        time.sleep(0.2)


def _terminal_sigint() -> None:
    """SIGINT as a terminal's shell leaves it (pytest-xdist's workers ignore it, and an ignored
    signal stays ignored across exec: Python would then never raise KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_the_agent_on_the_device_and_says_interrupted(srv, artifacts, home, tmp_path):
    profile = tmp_path / "board.json"
    profile.write_text(json.dumps({"python": sys.executable, "ssh_options": srv.ssh_options,
                                   "cache_dir": str(tmp_path / "device cache")}))
    proc = subprocess.Popen([sys.executable, "-m", "edgekit.cli", "run", str(artifacts[("tflite", "fp32")]), "--device",
                             srv.address, "--device-profile", str(profile), "--runs", "5000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "EDGEKIT_HOME": str(home)}, preexec_fn=_terminal_sigint)
    try:
        _wait_for_agent(tmp_path)
        time.sleep(1)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted (Ctrl-C)"], err
    assert _agents_left(tmp_path, wait=0) == []  # gone when the command returns, not 40 s later
    assert ResultStore().count() == 0


@pytest.fixture(scope="module")
def no_sftp(tmp_path_factory):
    """An OpenSSH server without the sftp subsystem, as on dropbear and minimal images."""
    server = LocalSSHD(tmp_path_factory.mktemp("sshd-no-sftp"))
    config = server.root / "sshd_config"
    config.write_text(config.read_text().replace("Subsystem sftp internal-sftp\n", ""))
    assert "Subsystem" not in config.read_text()
    yield server.start()
    server.stop()


def test_a_server_without_sftp_still_receives_the_files(no_sftp, artifacts, home, tmp_path):
    path = artifacts[("tflite", "int8")]
    m = measure(path, device=no_sftp.address, protocol=FAST, compare=True, samples=8, **opts(no_sftp, tmp_path))
    assert m.result.conditions["transfer"]["model_uploaded"] is True and m.result.stats.n >= 50
    local = measure(path, device="local", protocol=FAST, samples=8, store=False)
    np.testing.assert_array_equal(m.result.outputs["output_0"], local.result.outputs["output_0"])
    cached = tmp_path / "device cache" / "models" / f"{m.result.artifact_sha256}.tflite"
    assert cached.read_bytes() == path.read_bytes()


def test_a_server_that_refused_then_was_fixed_is_connected_afresh(artifacts, home, tmp_path):
    """A server that turns every session away (a ForceCommand of maintenance), then is fixed. Its
    session process outlives the fix (a restart keeps open connections, as systemd's sshd does), so
    a master connection kept from the failed run would meet the old refusal for another minute."""
    server = LocalSSHD(tmp_path / "sshd")
    config = server.root / "sshd_config"
    fixed = config.read_text()
    config.write_text(fixed + "ForceCommand echo this device is in maintenance >&2; exit 1\n")
    server.start()
    sessions: list[int] = []
    try:
        path = artifacts[("tflite", "fp32")]
        with pytest.raises(DeviceError, match="connect failed: .*this device is in maintenance"):
            measure(path, device=server.address, protocol=FAST, **opts(server, tmp_path))
        config.write_text(fixed)
        sessions = descendants(server.proc.pid)  # a kept master connection's session process, if any
        server.proc.terminate()  # the listener only: its session processes stay
        server.proc.wait(timeout=30)
        server.start()
        m = measure(path, device=server.address, protocol=FAST, **opts(server, tmp_path))
        assert m.result.stats.n >= 50
    finally:
        server.stop()
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):  # ended with its connection
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs: the device's cache filesystem, too small for the model. Mounting needs root
    (the test command runs as root on the CI machine)."""
    mnt = tmp_path / "small disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting the small tmpfs needs root; run `make test` as root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True, timeout=30)
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True, timeout=30)


def test_device_disk_full_is_a_clear_error_and_leaves_nothing(srv, artifacts, home, tmp_path, small_disk):
    path = artifacts[("tflite", "fp32")]
    assert path.stat().st_size > 64 * 1024
    with pytest.raises(DeviceError, match=r"verify failed: disk-full: model.tflite could not be stored in the "
                                          r"cache .*No space left on device; free space on the device") as e:
        measure(path, device=srv.address, protocol=FAST, **opts(srv, tmp_path, cache_dir=str(small_disk)))
    assert e.value.kind == "disk-full" and e.value.device == srv.address
    assert list((small_disk / "models").iterdir()) == []  # no partial model in the cache
    assert ResultStore().count() == 0
    m = measure(path, device=srv.address, protocol=FAST, **opts(srv, tmp_path))  # elsewhere it runs
    assert m.result.stats.n >= 50 and ResultStore().count() == 1


def test_onnx_with_external_data_and_dynamic_dims_over_ssh(srv, home, tmp_path):
    second = check_external_data_runs_on(srv.address, tmp_path, opts(srv, tmp_path))
    entries = sorted(p.relative_to(tmp_path / "device cache") for p in (tmp_path / "device cache" / "models").rglob("*")
                     if p.is_file())
    assert len(entries) == 4 and {p.name for p in entries} == {"model.onnx", "net.onnx.data"}, entries
    assert second.result.input_tensors == ({"name": "x", "shape": [5, 8], "dtype": "float32"},)

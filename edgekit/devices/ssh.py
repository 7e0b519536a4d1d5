"""``ssh://user@host[:port]``: a device reached with the system OpenSSH client, so ~/.ssh/config,
keys, the agent and ProxyJump all work. Every command is an argument list; the one string the remote
shell sees is built from ``shlex.quote``-d parts. Host keys are verified as ssh is configured
(StrictHostKeyChecking stays as the user set it; pass ``UserKnownHostsFile=...`` with
``--ssh-option``). BatchMode is on, so a missing key fails fast instead of prompting.

A run is five steps, each named in its error: ``connect`` (check the device Python and numpy,
make a work directory), ``upload`` (scp the agent and the model unless already cached, the request
and the inputs; a server without the sftp subsystem that today's scp speaks, as dropbear and minimal
images, gets each file streamed over ssh into ``cat``), ``verify`` (sha256 of what arrived, then into the content-addressed cache
``<cache_dir>/models/<sha256>.<ext>``, or for an ONNX file with external data
``<cache_dir>/models/<key>/model.onnx`` beside its data files: ``ModelFile.cache_path``), ``run``
(the agent, under a guard that stops its process group when the connection closes: Ctrl-C or a
lost connection leaves nothing running on the device), ``download`` (the outputs back, the same way).
ControlMaster keeps one connection open for all of them and for the next runs; a failed run closes
it, so the next one connects afresh instead of meeting what the old connection saw.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

import numpy as np

from ..exporters.artifact import sha256_file
from .base import AGENT_PATH, AgentDevice, DeviceError, Inputs, ModelFile, load_npz, parse_agent_output, write_inputs

__all__ = ["SSHDevice", "parse_ssh_address"]

_SAFE_REMOTE = re.compile(r"^/[A-Za-z0-9._/-]+$")

# Runs on the device with its Python: cache dirs, a work dir, what the cache already holds.
_PROBE = r"""
import json, os, shutil, stat, sys, tempfile, time
cache = os.path.abspath(os.path.expanduser(sys.argv[1]))
for sub in ("models", "agents"):
    os.makedirs(os.path.join(cache, sub), exist_ok=True)
try:
    import numpy
    np_version = numpy.__version__
except ImportError:
    np_version = None
root = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
# work directories of runs cut off a day or more ago (a dropped connection cannot clean up after itself)
for old in os.listdir(root):
    path = os.path.join(root, old)
    try:
        st = os.lstat(path)
    except OSError:
        continue
    if old.startswith("edgekit-run-") and stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and \
            time.time() - st.st_mtime > 86400:
        shutil.rmtree(path, ignore_errors=True)
work = tempfile.mkdtemp(prefix="edgekit-run-", dir=root)
print(json.dumps({"cache": cache, "work": work, "numpy": np_version, "python": sys.version.split()[0],
                  "have": [p for p in sys.argv[2:] if os.path.isfile(os.path.join(cache, p))]}))
"""

# Runs on the device: check each uploaded file's sha256, then move it into the cache atomically.
_INSTALL = r"""
import errno, hashlib, json, os, shutil, sys
work, cache = sys.argv[1], sys.argv[2]
for name, rel, want in zip(sys.argv[3::3], sys.argv[4::3], sys.argv[5::3]):
    h = hashlib.sha256()
    with open(os.path.join(work, name), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != want:
        print(json.dumps({"ok": False, "kind": "checksum-mismatch", "message":
              f"{name} arrived with sha256 {h.hexdigest()[:16]}... instead of {want[:16]}...: corrupted in transit"}))
        sys.exit(3)
    dest = os.path.join(cache, rel)
    try:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copyfile(os.path.join(work, name), dest + ".partial")
        os.replace(dest + ".partial", dest)
    except OSError as e:  # nothing half-written stays in the cache
        if os.path.exists(dest + ".partial"):
            os.remove(dest + ".partial")
        full = e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))
        print(json.dumps({"ok": False, "kind": "disk-full" if full else "install-failed", "message":
              f"{name} could not be stored in the cache {cache}: {e.strerror}" +
              ("; free space on the device or point --device-cache elsewhere" if full else "")}))
        sys.exit(4)
print(json.dumps({"ok": True}))
"""

# Runs on the device: the agent (argv) in its own process group, stopped when stdin reaches EOF, which
# is when the client went away (Ctrl-C, a lost connection): SIGTERM (it reports "interrupted"), then
# SIGKILL after a grace period.
_GUARD = r"""
import os, signal, subprocess, sys, threading, time
agent = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, start_new_session=True)
def stop():
    while os.read(0, 65536):
        pass
    os.killpg(agent.pid, signal.SIGTERM)
    time.sleep(5)
    os.killpg(agent.pid, signal.SIGKILL)
threading.Thread(target=stop, daemon=True).start()
os._exit(agent.wait())  # not sys.exit: the watching thread stays blocked in its read
"""
INTERRUPT_GRACE_S = 15.0  # how long Ctrl-C waits for the device to stop the agent and answer


class _NoSftp(Exception):
    """scp failed on a working connection: the server has no sftp subsystem."""


def parse_ssh_address(address: str) -> tuple[str | None, str, int | None]:
    """(user, host, port) of ``ssh://[user@]host[:port]``; a bad port or empty host is an error."""
    parts = urlsplit(address)
    if parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"device {address!r} must look like ssh://user@host or ssh://user@host:2222")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"device {address!r}: the port must be a number 1..65535") from None
    return parts.username, parts.hostname, port


class SSHDevice(AgentDevice):
    def __init__(self, address: str, *, python: str = "python3", ssh_options: Sequence[str] = (),
                 cache_dir: str = ".cache/edgekit", timeout: float = 1800.0, connect_timeout: float = 10.0,
                 ssh: str = "ssh", scp: str = "scp"):
        self.user, self.host, self.port = parse_ssh_address(address)
        self.address = address
        self.python, self.cache_dir, self.timeout = python, cache_dir, timeout
        self.ssh_bin, self.scp_bin = ssh, scp
        for opt in ssh_options:
            if "=" not in opt or opt.startswith("-"):
                raise ValueError(f"ssh option {opt!r} must look like Name=value, e.g. UserKnownHostsFile=/path")
        control = Path(tempfile.gettempdir()) / f"edgekit-ssh-{os.getuid()}"
        control.mkdir(mode=0o700, exist_ok=True)
        if control.stat().st_uid != os.getuid():
            raise ValueError(f"{control} belongs to another user; remove it")
        # the user's options first: ssh keeps the first value it sees, so they override ours
        self.options = [*ssh_options, "BatchMode=yes", f"ConnectTimeout={int(connect_timeout)}",
                        "ControlMaster=auto", f"ControlPath={control}/%C", "ControlPersist=60", "ServerAliveInterval=5",
                        "ServerAliveCountMax=3"]
        self.uploads: list[str] = []  # what the last run uploaded (the cache makes repeats upload no model)
        self.stream = False  # set when the server turned scp away for want of sftp: files go through ssh

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def _opts(self) -> list[str]:
        return [a for o in self.options for a in ("-o", o)]

    def ssh(self, command: str, *, step: str, timeout: float | None = None, stdin: Any = subprocess.DEVNULL,
            stdout: Any = subprocess.PIPE) -> subprocess.CompletedProcess:
        """Run ``command`` (already quoted) on the device; a connection failure raises DeviceError.
        ``stdin`` / ``stdout`` may be open binary files (a file streamed to or from the device);
        captured output comes back as text."""
        try:
            proc = subprocess.run(self._ssh_argv(command), stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                  timeout=timeout or self.timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(self.address, step, f"no answer within {timeout or self.timeout:.0f} s") from None
        return self._checked(proc, step)

    def _ssh_argv(self, command: str) -> list[str]:
        if shutil.which(self.ssh_bin) is None:
            raise DeviceError(self.address, "connect", f"no ssh client {self.ssh_bin!r}; install openssh-client")
        port = ["-p", str(self.port)] if self.port else []
        return [self.ssh_bin, *self._opts(), *port, self.target, "--", command]

    def _checked(self, proc: subprocess.CompletedProcess, step: str) -> subprocess.CompletedProcess:
        proc.stdout = proc.stdout.decode(errors="replace") if isinstance(proc.stdout, bytes) else proc.stdout
        proc.stderr = proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr
        if proc.returncode == 255:
            raise DeviceError(self.address, step, self._explain(proc.stderr), kind="connection")
        return proc

    def _run_agent(self, command: str) -> subprocess.CompletedProcess:
        """Run the agent under ``_GUARD`` with a pipe as its stdin that stays open while it runs, in
        a session of its own (the terminal's Ctrl-C comes here only). On Ctrl-C the pipe closes, the
        guard stops the agent, and KeyboardInterrupt goes on once the device has answered."""
        read, write = os.pipe()
        try:
            proc = subprocess.Popen(self._ssh_argv(command), stdin=read, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, start_new_session=True)
        finally:
            os.close(read)
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise DeviceError(self.address, "run", f"no answer within {self.timeout:.0f} s") from None
        except KeyboardInterrupt:
            os.close(write)
            write = -1
            try:
                proc.communicate(timeout=INTERRUPT_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        finally:
            if write >= 0:
                os.close(write)
        return self._checked(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), "run")

    def _explain(self, stderr: str) -> str:
        err = stderr.strip()
        where = f"{self.host}:{self.port or 22}"
        if "Connection refused" in err:
            return f"nothing accepts ssh connections at {where} (wrong port, or sshd is not running): {err}"
        if "Permission denied" in err:
            return f"authentication as {self.user or 'the default user'} failed at {where}; check the key " \
                   f"(IdentityFile), ssh-agent and authorized_keys: {err}"
        if "Host key verification failed" in err or "REMOTE HOST IDENTIFICATION HAS CHANGED" in err:
            return f"the host key of {where} is unknown or changed; add it to known_hosts (or pass " \
                   f"--ssh-option UserKnownHostsFile=FILE): {err}"
        if "timed out" in err or "No route to host" in err or "Could not resolve" in err:
            return f"{where} is unreachable: {err}"
        return f"the connection to {where} failed or was lost (ssh exit 255): {err or 'no message'}"

    def _scp(self, sources: list[str], dest: str, *, step: str) -> None:
        port = ["-P", str(self.port)] if self.port else []
        argv = [self.scp_bin, "-q", "-B", *self._opts(), *port, *sources, dest]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise DeviceError(self.address, step, f"scp did not finish within {self.timeout:.0f} s") from None
        if proc.returncode != 0:
            err = proc.stderr.strip()
            self._refuse_full(err, step)
            if proc.returncode == 255 or "lost connection" in err:
                self.ssh("true", step=step)  # a lost connection raises here; a working one had no sftp
                raise _NoSftp(err)
            raise DeviceError(self.address, step, f"scp failed (exit {proc.returncode}): {err or 'no message'}")

    def _refuse_full(self, err: str, step: str) -> None:
        if "No space left" in err or "Disk quota" in err:
            raise DeviceError(self.address, step, f"the device's disk is full: {err}", kind="disk-full")

    def _upload(self, files: list[Path], work: str) -> None:
        """``files`` into the device's ``work`` directory: scp, or streamed into ``cat`` on a server
        without sftp."""
        if not self.stream:
            try:
                return self._scp([str(f) for f in files], self._remote(work + "/"), step="upload")
            except _NoSftp:
                self.stream = True
        for f in files:
            with open(f, "rb") as src:
                self._streamed(f"cat > {shlex.quote(f'{work}/{f.name}')}", f.name, step="upload", stdin=src)

    def _download(self, names: list[str], work: str, dest: Path) -> None:
        if not self.stream:
            try:
                return self._scp([self._remote(f"{work}/{n}") for n in names], str(dest) + "/", step="download")
            except _NoSftp:
                self.stream = True
        for name in names:
            with open(dest / name, "wb") as out:
                self._streamed(f"cat {shlex.quote(f'{work}/{name}')}", name, step="download", stdout=out)

    def _streamed(self, command: str, name: str, *, step: str, **files: Any) -> None:
        proc = self.ssh(command, step=step, **files)
        if proc.returncode != 0:
            err = proc.stderr.strip()
            self._refuse_full(err, step)
            raise DeviceError(self.address, step, f"copying {name} failed (exit {proc.returncode}): "
                                                  f"{err or 'no message'}")

    def _remote(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        return f"{user}{host}:{path}"

    def _python(self, code: str, *args: str, step: str) -> subprocess.CompletedProcess:
        cmd = " ".join(shlex.quote(a) for a in (self.python, "-c", code, *args))
        proc = self.ssh(cmd, step=step)
        if proc.returncode == 127:
            raise DeviceError(self.address, step, f"no Python at {self.python!r} on the device; install Python 3 "
                                                  f"with numpy or pass --device-python PATH", kind="no-python")
        return proc

    def _connect(self, want: list[str]) -> dict[str, Any]:
        proc = self._python(_PROBE, self.cache_dir, *want, step="connect")
        try:
            info = json.loads(proc.stdout.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            raise DeviceError(self.address, "connect", f"the device Python {self.python!r} failed (exit "
                                                       f"{proc.returncode}): {proc.stderr.strip()[-500:]}") from None
        if not info["numpy"]:
            self._cleanup(info["work"])
            raise DeviceError(self.address, "connect", f"the device Python {self.python!r} has no numpy; install it "
                                                       f"(pip install numpy) or pass --device-python", kind="no-numpy")
        if not _SAFE_REMOTE.match(info["work"]):
            raise DeviceError(self.address, "connect", f"the device made a work directory {info['work']!r} with "
                                                       f"characters edgekit will not pass to scp; set TMPDIR")
        return info

    def _invoke(self, model: ModelFile, request: dict[str, Any], inputs: Inputs
                ) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
        agent_sha = sha256_file(AGENT_PATH)
        files = [*model.cache_files(), (AGENT_PATH, agent_sha, f"agents/{agent_sha}.py")]
        try:
            info = self._connect([rel for _, _, rel in files])
            work, cache = info["work"], info["cache"]
            try:
                with tempfile.TemporaryDirectory(prefix="edgekit-ssh-") as tmp:
                    return self._in_workdir(Path(tmp), work, cache, model, request, inputs, agent_sha=agent_sha,
                                            missing=[f for f in files if f[2] not in info["have"]])
            finally:
                self._cleanup(work)
        except BaseException:
            self.close()  # the next run connects afresh, not through what this connection saw
            raise

    def _in_workdir(self, tmp: Path, work: str, cache: str, model: ModelFile, request: dict[str, Any],
                    inputs: Inputs, *, missing: list[tuple[Path, str, str]], agent_sha: str):
        request = dict(request, model=f"{cache}/{model.cache_path}")
        uploads, checks = [], []
        for i, (local, sha, rel) in enumerate(missing):
            # each file travels under a plain name (a symlink scp follows): its own may hold any character
            name = {model.cache_path: f"model{model.extension}", f"agents/{agent_sha}.py": AGENT_PATH.name}.get(
                rel, f"data_{i}")
            (tmp / name).symlink_to(local)
            uploads.append(str(tmp / name))
            checks += [name, rel, sha]
        uploads += map(str, write_inputs(tmp, request, inputs))
        (tmp / "request.json").write_text(json.dumps(request))
        uploads.append(str(tmp / "request.json"))
        self.uploads = [rel for _, _, rel in missing] + [Path(u).name for u in uploads[len(missing):]]
        self._upload([Path(u) for u in uploads], work)
        if checks:
            proc = self._python(_INSTALL, work, cache, *checks, step="verify")
            parse_agent_output(self.address, "verify", proc.stdout, proc.stderr, proc.returncode)
        agent = [self.python, "-c", _GUARD, self.python, f"{cache}/agents/{agent_sha}.py", "request.json"]
        proc = self._run_agent(f"cd {shlex.quote(work)} && exec {' '.join(map(shlex.quote, agent))}")
        result = parse_agent_output(self.address, "run", proc.stdout, proc.stderr, proc.returncode)
        wanted = ["outputs.npz"] + (["outputs.inputs.npz"] if inputs is None else [])
        self._download(wanted, work, tmp)
        files = {"outputs": load_npz(tmp / "outputs.npz")}
        if inputs is None:
            files["inputs"] = load_npz(tmp / "outputs.inputs.npz")
        result["transfer"] = {"uploaded": list(self.uploads), "model_uploaded": model.cache_path in self.uploads,
                              "workdir": work}
        return result, files

    def _cleanup(self, work: str) -> None:
        """Remove the device work directory. After a lost connection this fails too and the directory
        stays in the device's /tmp; the run's own error is the one reported."""
        try:
            self.ssh(f"rm -rf {shlex.quote(work)}", step="cleanup", timeout=30)
        except DeviceError as e:
            self.cleanup_error = str(e)

    def close(self) -> None:
        """Stop the shared master connection now instead of after ControlPersist's 60 s."""
        if shutil.which(self.ssh_bin) is None:  # nothing was ever connected
            return
        port = ["-p", str(self.port)] if self.port else []
        subprocess.run([self.ssh_bin, *self._opts(), *port, "-O", "exit", self.target], capture_output=True,
                       timeout=30)

"""A throwaway OpenSSH server on 127.0.0.1 for tests and benchmarks: fresh host and user keys
(ssh-keygen), its own sshd_config, a known_hosts file built from the host key, so the client keeps
verifying host keys exactly as against a real board.

>>> # with LocalSSHD() as srv: SSHDevice(srv.address, ssh_options=srv.ssh_options)  # doctest: +SKIP
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["LocalSSHD", "SSHD", "free_port", "descendants"]

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself, so it must be started by absolute path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            kids.append(int(entry))
    return kids


def _command(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:  # the process ended while we looked
        return None


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


class LocalSSHD:
    """``start()`` / ``stop()`` (or ``with``); ``address`` is ``ssh://user@127.0.0.1:PORT`` and
    ``ssh_options`` the client options (known_hosts, key) a device needs to reach it."""

    def __init__(self, root: str | Path | None = None, *, port: int | None = None):
        if not Path(SSHD).is_file():
            raise RuntimeError(f"{SSHD} is missing: the ssh tests and benchmarks start a real OpenSSH server; "
                               f"run `make test` (it installs openssh-server) or apt-get install openssh-server")
        self._own_root = root is None
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="edgekit-sshd-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.user = getpass.getuser()
        self.proc: subprocess.Popen | None = None
        self._keys()

    def _keys(self) -> None:
        r = self.root
        for name in ("host_key", "user_key"):
            if not (r / name).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"edgekit-{name}", "-f",
                                str(r / name)], check=True, capture_output=True, timeout=60)
        shutil.copyfile(r / "user_key.pub", r / "authorized_keys")
        host_pub = (r / "host_key.pub").read_text().split()
        (r / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        (r / "sshd_config").write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {r / 'host_key'}", f"PidFile {r / 'sshd.pid'}",
            f"AuthorizedKeysFile {r / 'authorized_keys'}", "PubkeyAuthentication yes", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
            f"AllowUsers {self.user}", "Subsystem sftp internal-sftp", "LogLevel ERROR", "MaxStartups 50",
            "MaxSessions 50", ""]))

    @property
    def address(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    @property
    def ssh_options(self) -> list[str]:
        return [f"UserKnownHostsFile={self.root / 'known_hosts'}", "StrictHostKeyChecking=yes",
                f"IdentityFile={self.root / 'user_key'}", "IdentitiesOnly=yes", "GlobalKnownHostsFile=/dev/null"]

    def start(self, timeout: float = 20.0) -> "LocalSSHD":
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.proc.returncode}: "
                                   f"{(self.root / 'sshd.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not listen on 127.0.0.1:{self.port} within {timeout} s")

    def kill(self) -> None:
        """SIGKILL sshd and its session processes: every connection drops at once, while what they
        started (the agent) is left running, as on a board whose network went away."""
        if self.proc is None:
            return
        sessions = [pid for pid in descendants(self.proc.pid) if _command(pid) == "sshd"]
        for pid in [self.proc.pid, *sessions]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # already gone
                continue
        self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        kids = descendants(self.proc.pid)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in kids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        self.proc = None

    def __enter__(self) -> "LocalSSHD":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        if self._own_root:
            shutil.rmtree(self.root)

"""``qemu://pi4`` and ``qemu://pi5``: an emulated board (``boards.py``) reached exactly as a real Pi
is, through the ssh transport: a loopback sshd (``sshd.py``) with the board's ``bin/python`` as the
device Python. Agent, upload cache, verification and store are the ones a real board uses.

>>> # dev = open_device("qemu://pi5"); dev.run(open_model("m.tflite"), None)  # doctest: +SKIP
"""
from __future__ import annotations

import atexit
import shutil
from pathlib import Path

from .boards import BOARDS, BoardError, ensure_board
from .ssh import SSHDevice

__all__ = ["QemuDevice", "parse_qemu_address"]


def parse_qemu_address(address: str) -> str:
    name = address[len("qemu://"):].strip("/")
    if name not in BOARDS:
        raise ValueError(f"device {address!r}: unknown board {name!r}; known boards: "
                         f"{', '.join(f'qemu://{b}' for b in sorted(BOARDS))}")
    return name


class QemuDevice(SSHDevice):
    """An emulated board as an ssh device. The board is built on first use; the sshd lives as long
    as this object (``close()``, or at exit)."""

    def __init__(self, address: str, *, timeout: float = 1800.0, connect_timeout: float = 10.0):
        name = parse_qemu_address(address)
        for binary, package in (("ssh", "openssh-client"), ("scp", "openssh-client")):
            if shutil.which(binary) is None:
                raise BoardError(f"{binary} is missing: emulated boards are reached over ssh like a real Pi; "
                                 f"apt-get install {package}")
        from .sshd import SSHD, LocalSSHD
        if not Path(SSHD).is_file():
            raise BoardError(f"{SSHD} is missing: emulated boards are reached over ssh like a real Pi; "
                             f"apt-get install openssh-server")
        self.board = ensure_board(name)
        self._sshd = LocalSSHD().start()
        atexit.register(self.close)
        super().__init__(self._sshd.address, python=str(self.board.python), ssh_options=self._sshd.ssh_options,
                         cache_dir=str(self.board.device_cache), timeout=timeout, connect_timeout=connect_timeout)
        self.address = address

    def release(self) -> None:
        self.close()

    def close(self) -> None:
        sshd, self._sshd = getattr(self, "_sshd", None), None
        if sshd is None:
            return
        super().close()
        sshd.stop()
        shutil.rmtree(sshd.root, ignore_errors=True)

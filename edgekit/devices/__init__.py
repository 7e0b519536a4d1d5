"""Devices: run an exported file somewhere, bring back its outputs, latencies and fingerprint.

``open_device("local" | "ssh://user@host[:port]" | "adb://SERIAL" | "qemu://pi4", **options)`` returns a
device (``qemu://`` boards are emulated: ``boards.py``);
``measure(...)`` (in ``measure.py``) runs an artifact on it, compares with PyTorch and stores the result.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

__all__ = ["open_device", "load_profile", "DEVICE_KINDS"]

DEVICE_KINDS = ("local", "ssh://user@host[:port]", "adb://SERIAL", "qemu://pi4 | qemu://pi5 (emulated)")
_PROFILE_KEYS = {"python", "ssh_options", "cache_dir", "adb", "benchmark_binary", "device_dir", "timeout",
                 "connect_timeout"}


def load_profile(path: str | Path) -> dict[str, Any]:
    """A device profile (JSON or TOML): ``python`` (device Python), ``ssh_options`` (list of ``-o``
    values such as ``UserKnownHostsFile=/path``), ``cache_dir``, ``adb``, ``benchmark_binary``,
    ``device_dir``, ``timeout``, ``connect_timeout``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"device profile {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib
            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as e:  # tomllib.TOMLDecodeError / json.JSONDecodeError
        raise ValueError(f"device profile {path} cannot be parsed ({e}); write JSON, or TOML with a .toml name") from None
    if not isinstance(data, dict):
        raise ValueError(f"device profile {path} must be a table of settings")
    unknown = sorted(set(data) - _PROFILE_KEYS)
    if unknown:
        raise ValueError(f"device profile {path} has unknown key(s) {unknown}; known: {sorted(_PROFILE_KEYS)}")
    if "ssh_options" in data and not (isinstance(data["ssh_options"], list)
                                      and all(isinstance(o, str) for o in data["ssh_options"])):
        raise ValueError(f"device profile {path}: ssh_options must be a list of strings like \"Port=2222\"")
    return data


def open_device(address: str = "local", *, profile: str | Path | None = None, **options: Any):
    """The device at ``address``; ``options`` (python, ssh_options, cache_dir, adb, benchmark_binary,
    device_dir, timeout; cores for local) override the profile's. Unknown addresses list the valid forms."""
    settings: dict[str, Any] = load_profile(profile) if profile else {}
    settings.update({k: v for k, v in options.items() if v is not None and v != [] and v != ()})
    if address == "local":
        from .local import LocalDevice
        return LocalDevice(**_pick(settings, ("python", "timeout", "cores"), address))
    if address.startswith("ssh://"):
        from .ssh import SSHDevice
        return SSHDevice(address, **_pick(settings, ("python", "ssh_options", "cache_dir", "timeout",
                                                     "connect_timeout"), address))
    if address.startswith("adb://"):
        from .adb import AdbDevice
        return AdbDevice(address, **_pick(settings, ("python", "adb", "benchmark_binary", "device_dir", "timeout"),
                                          address))
    if address.startswith("qemu://"):
        from .qemu import QemuDevice
        return QemuDevice(address, **_pick(settings, ("timeout", "connect_timeout"), address))
    raise ValueError(f"device {address!r} is not one of {', '.join(DEVICE_KINDS)}")


def _pick(settings: Mapping[str, Any], allowed: tuple[str, ...], address: str) -> dict[str, Any]:
    extra = sorted(set(settings) - set(allowed))
    if extra:
        raise ValueError(f"option(s) {extra} do not apply to {address}; it takes {list(allowed)}")
    return dict(settings)

"""Emulated ARM boards: a Raspberry Pi 4 (Cortex-A72) and a Pi 5 (Cortex-A76) without the hardware.

A board is an arm64 Debian Python (``mmdebstrap --variant=extract``: packages unpacked, nothing run),
the aarch64 wheels of numpy, onnxruntime, ai-edge-litert and onnx in the same versions as this
machine's (``pip install --platform``), and a ``bin/python`` that runs that Python under
``qemu-aarch64-static -cpu cortex-a72`` (or ``cortex-a76``). It is built on first use under
``$EDGEKIT_BOARDS_DIR`` or ``<cache dir>/boards/<name>`` and rebuilt when damaged.

QEMU's user mode shows the guest the host's files except where the board's root holds one of the
same path (``-L``). The root therefore holds the files a real board's kernel would show about its
CPU: ``/proc/cpuinfo`` with the emulated core's implementer, part and the features QEMU gives the
guest (read from the guest's own ``AT_HWCAP`` when the board is built), and a ``/sys`` CPU tree with
the board's core count; runtimes that find the host's x86 CPU there pick wrong kernels or crash.
Naming the CPU matters too: QEMU's default (``max``, with SVE and SME) makes XNNPACK take kernels
no Pi has. ``/etc/edgekit-board.json`` tells the agent it is emulated.

Runs reach a board through the ssh transport (``ssh.py``) like any Pi: ``qemu.py`` starts a
loopback sshd whose device Python is the board's ``bin/python``.

>>> # board = ensure_board("pi4"); board.python  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .agent import BOARD_MARKER
from .base import AGENT_PATH

__all__ = ["BoardSpec", "Board", "BOARDS", "BoardError", "boards_dir", "board_status", "ensure_board",
           "remove_board", "list_boards", "RUNTIMES"]

SUITE, GUEST_PYTHON = "bookworm", "3.11"  # Debian 12's Python: the wheels are chosen for it
DEBIAN_PACKAGES = ("python3.11-minimal", "libpython3.11-stdlib", "libstdc++6", "libgcc-s1")
RUNTIMES = ("numpy", "onnxruntime", "ai-edge-litert", "onnx")  # onnx: per-layer outputs of ONNX files
_PLATFORMS = ("manylinux_2_36_aarch64", "manylinux_2_35_aarch64", "manylinux_2_34_aarch64",
              "manylinux_2_31_aarch64", "manylinux_2_28_aarch64", "manylinux_2_27_aarch64",
              "manylinux_2_26_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")  # glibc 2.36
_SHADOWING = ("dev", "tmp", "proc", "sys", "run", "root", "home", "mnt", "media", "srv")
_FORMAT = 1  # board layout version; a board of another layout is rebuilt


@dataclass(frozen=True)
class BoardSpec:
    name: str
    title: str
    cpu: str  # QEMU's -cpu
    part: int  # MIDR part number (implementer 0x41, ARM)
    variant: int
    revision: int
    cores: int
    max_khz: int
    model: str  # the Model line of the board's /proc/cpuinfo


BOARDS = {
    "pi4": BoardSpec("pi4", "Raspberry Pi 4 (Cortex-A72)", "cortex-a72", 0xd08, 0x0, 3, 4, 1800000,
                     "Raspberry Pi 4 Model B (emulated)"),
    "pi5": BoardSpec("pi5", "Raspberry Pi 5 (Cortex-A76)", "cortex-a76", 0xd0b, 0x4, 1, 4, 2400000,
                     "Raspberry Pi 5 Model B (emulated)"),
}


class BoardError(ValueError):
    """A board cannot be built or used; the message names the cause and the fix."""


def boards_dir() -> Path:
    if os.environ.get("EDGEKIT_BOARDS_DIR"):
        return Path(os.environ["EDGEKIT_BOARDS_DIR"])
    from .store import cache_dir
    return cache_dir() / "boards"


def spec_of(name: str) -> BoardSpec:
    if name not in BOARDS:
        raise BoardError(f"unknown board {name!r}; known boards: {', '.join(sorted(BOARDS))}")
    return BOARDS[name]


@dataclass(frozen=True)
class Board:
    spec: BoardSpec
    path: Path
    info: dict

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def device_cache(self) -> Path:
        """Where runs keep the models they were sent (the ssh transport's ``cache_dir``)."""
        return self.path / "device-cache"


def _tree_size(root: Path) -> tuple[int, int]:
    """(files, bytes) under ``root``, leaving out the bytecode Python writes as it imports."""
    files = size = 0
    for dirpath, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for n in names:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                files += 1
                size += os.path.getsize(p)
    return files, size


def board_status(name: str) -> tuple[str, str]:
    """(``ready`` | ``missing`` | ``damaged``, why) for the board ``name``."""
    spec_of(name)
    path = boards_dir() / name
    if not path.exists():
        return "missing", "not built yet"
    try:
        info = json.loads((path / "board.json").read_text())
    except (OSError, ValueError) as e:
        return "damaged", f"its board.json is missing or unreadable ({e})"
    if info.get("format") != _FORMAT:
        return "damaged", f"it has layout {info.get('format')}, this edgekit builds layout {_FORMAT}"
    for rel in ("bin/python", f"root/usr/bin/python{GUEST_PYTHON}", "root/proc/cpuinfo", f"root{BOARD_MARKER}"):
        if not (path / rel).is_file():
            return "damaged", f"{rel} is missing"
    files, size = _tree_size(path / "root"), _tree_size(path / "site")
    if [list(files), list(size)] != [info["files"]["root"], info["files"]["site"]]:
        return "damaged", (f"its files changed since it was built (root {files[0]} files / {files[1]} bytes, site "
                           f"{size[0]} / {size[1]}; built with {info['files']['root']} and {info['files']['site']})")
    return "ready", f"built {time.strftime('%Y-%m-%d %H:%M', time.localtime(info['created']))}"


def _load(name: str) -> Board:
    path = boards_dir() / name
    return Board(spec_of(name), path, json.loads((path / "board.json").read_text()))


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One builder per board at a time (other processes wait, then find it built)."""
    root = boards_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_board(name: str, *, rebuild: bool = False, log: Callable[[str], None] | None = None) -> Board:
    """The board ``name``, built first if it is missing, damaged or ``rebuild`` is set."""
    say = log or (lambda msg: print(msg, file=sys.stderr))
    spec_of(name)
    with _locked(name):
        state, why = board_status(name)
        if state == "ready" and not rebuild:
            return _load(name)
        if state == "damaged":
            say(f"board {name} is damaged ({why}); rebuilding it")
        return _build(name, say)


def remove_board(name: str) -> bool:
    spec_of(name)
    with _locked(name):
        path = boards_dir() / name
        if not path.exists():
            return False
        _discard(path)
        return True


def list_boards() -> list[dict]:
    rows = []
    for name, spec in sorted(BOARDS.items()):
        state, why = board_status(name)
        row = {"name": name, "board": spec.title, "qemu_cpu": spec.cpu, "state": state, "detail": why,
               "path": str(boards_dir() / name)}
        if state == "ready":
            info = _load(name).info
            row.update(runtimes=info["runtimes"], features=info["features"], emulator=info["emulator"])
        rows.append(row)
    return rows


def _discard(path: Path) -> None:
    """Move aside, then delete: a half-deleted board is never found under its name."""
    trash = path.with_name(f".{path.name}.trash-{os.getpid()}-{time.monotonic_ns()}")
    os.rename(path, trash)
    shutil.rmtree(trash)


# ---- building ---------------------------------------------------------------------------------------

def _tool(binary: str, package: str) -> str:
    found = shutil.which(binary)
    if not found:
        raise BoardError(f"{binary} is missing: emulated boards need Debian's {package} "
                         f"(apt-get install {package})")
    return found


def _run(argv: list[str], what: str, *, timeout: float = 900, env: dict | None = None) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise BoardError(f"{what} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if "WARNING: Location" not in line]
        raise BoardError(f"{what} failed (exit {proc.returncode}): {' | '.join(tail[-6:]) or 'no message'}")
    return proc.stdout


def _host_versions() -> dict[str, str | None]:
    """The runtimes' versions on this machine: the board gets the same, so a difference between the
    two is the ISA's, not a release's."""
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for dist in RUNTIMES:
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _pip_wheels(site: Path, versions: dict[str, str | None]) -> None:
    reqs = [f"{d}=={v}" if v else d for d, v in versions.items()]
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
            "--only-binary=:all:", "--implementation", "cp", "--python-version", GUEST_PYTHON, "--abi",
            f"cp{GUEST_PYTHON.replace('.', '')}", *[a for p in _PLATFORMS for a in ("--platform", p)],
            "--target", str(site), *reqs]
    try:
        _run(argv, "installing the aarch64 wheels (pip)")
    except BoardError as e:
        missing = re.search(r"No matching distribution found for ([A-Za-z0-9_.-]+)(==[^\s|]+)?", str(e))
        if missing:
            raise BoardError(f"no aarch64 wheel of {missing.group(1)}{missing.group(2) or ''} for CPython "
                             f"{GUEST_PYTHON} on the package index (Debian {SUITE}'s Python); install a version "
                             f"of {missing.group(1)} that has one on this machine, then rebuild the board") from None
        raise


def _qemu_version(qemu: str) -> str:
    first = _run([qemu, "--version"], "qemu-aarch64-static --version").splitlines()[0]
    m = re.search(r"version ([0-9][^\s]*)", first)
    return f"qemu-aarch64 {m.group(1) if m else first}"


def _cpuinfo(spec: BoardSpec, features: list[str]) -> str:
    one = ["BogoMIPS\t: 108.00", f"Features\t: {' '.join(features)}", "CPU implementer\t: 0x41",
           "CPU architecture: 8", f"CPU variant\t: {spec.variant:#x}", f"CPU part\t: {spec.part:#05x}",
           f"CPU revision\t: {spec.revision}"]
    blocks = ["\n".join([f"processor\t: {i}", *one]) for i in range(spec.cores)]
    return "\n\n".join(blocks) + f"\n\nModel\t\t: {spec.model}\n"


def _sys_tree(root: Path, spec: BoardSpec) -> None:
    cpu = root / "sys" / "devices" / "system" / "cpu"
    span = f"0-{spec.cores - 1}\n"
    cpu.mkdir(parents=True)
    for name in ("possible", "present", "online"):
        (cpu / name).write_text(span)
    (cpu / "kernel_max").write_text(f"{spec.cores - 1}\n")
    midr = (0x41 << 24) | (spec.variant << 20) | (0xf << 16) | (spec.part << 4) | spec.revision
    for i in range(spec.cores):
        d = cpu / f"cpu{i}"
        for sub, files in {"topology": {"physical_package_id": "0", "cluster_id": "0", "core_id": str(i),
                                        "core_siblings_list": span.strip(), "thread_siblings_list": str(i),
                                        "package_cpus_list": span.strip(), "cluster_cpus_list": span.strip()},
                           "cpufreq": {"cpuinfo_max_freq": str(spec.max_khz),
                                       "cpuinfo_min_freq": str(spec.max_khz // 3)},
                           "regs/identification": {"midr_el1": f"{midr:#018x}", "revidr_el1": "0x0000000000000000"}
                           }.items():
            (d / sub).mkdir(parents=True)
            for fname, value in files.items():
                (d / sub / fname).write_text(value + "\n")


_WRAPPER = """#!/bin/sh
# {title}: Debian {suite} arm64 Python under {qemu_version} as a {cpu}, with its own /proc/cpuinfo and /sys.
# Emulated: its timings are the emulator's, not the board's.
here=$(dirname "$(readlink -f "$0")")/..
PYTHONPATH="$here/site" PYTHONNOUSERSITE=1 exec {qemu} -cpu {cpu} -L "$here/root" "$here/root/usr/bin/python{py}" "$@"
"""

# the agent's own reading of the CPU features, run by the guest Python on the emulated CPU
_FEATURES_PROBE = (f"import json, sys; sys.path.insert(0, {str(AGENT_PATH.parent)!r}); import agent; "
                   f"print(json.dumps(agent._auxv_features()))")
_SMOKE = ("import json, numpy, onnxruntime, onnx, ai_edge_litert, ai_edge_litert.interpreter; "
          "from importlib.metadata import version; "
          f"print(json.dumps({{d: version(d) for d in {RUNTIMES!r}}}))")


def _build(name: str, say: Callable[[str], None]) -> Board:
    spec = spec_of(name)
    qemu = _tool("qemu-aarch64-static", "qemu-user-static")
    mmdebstrap = _tool("mmdebstrap", "mmdebstrap")
    root_dir = boards_dir()
    final = root_dir / name
    work = Path(tempfile.mkdtemp(prefix=f".{name}.build-", dir=root_dir))
    try:
        t0 = time.monotonic()
        say(f"building board {name} ({spec.title}) in {final}")
        mirror = os.environ.get("EDGEKIT_DEBIAN_MIRROR", "http://deb.debian.org/debian")
        _run([mmdebstrap, "--quiet", "--variant=extract", "--architectures=arm64",
              f"--include={','.join(DEBIAN_PACKAGES)}", SUITE, str(work / "root"), mirror],
             f"extracting Debian {SUITE} arm64 Python (mmdebstrap from {mirror})")
        for d in _SHADOWING:  # the host's own /dev, /tmp, home ... must show through
            p = work / "root" / d
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.exists():
                shutil.rmtree(p)
        versions = _host_versions()
        say(f"  aarch64 wheels: {', '.join(f'{d} {v}' if v else d for d, v in versions.items())}")
        _pip_wheels(work / "site", versions)
        guest = [qemu, "-cpu", spec.cpu, "-L", str(work / "root"),
                 str(work / "root" / "usr" / "bin" / f"python{GUEST_PYTHON}")]
        features = json.loads(_run([*guest, "-c", _FEATURES_PROBE], f"starting the arm64 Python under qemu "
                                   f"({spec.cpu})", timeout=300, env={**os.environ, "PYTHONPATH": str(work / "site")}
                                   ).strip().splitlines()[-1])
        (work / "root" / "proc").mkdir()
        (work / "root" / "proc" / "cpuinfo").write_text(_cpuinfo(spec, features))
        _sys_tree(work / "root", spec)
        emulator = _qemu_version(qemu)
        (work / "root" / BOARD_MARKER.lstrip("/")).write_text(json.dumps(
            {"board": name, "emulator": emulator, "cpu": spec.cpu}) + "\n")
        (work / "bin").mkdir()
        wrapper = work / "bin" / "python"
        wrapper.write_text(_WRAPPER.format(title=spec.title, suite=SUITE, qemu_version=emulator, qemu=qemu,
                                           cpu=spec.cpu, py=GUEST_PYTHON))
        wrapper.chmod(0o755)
        (work / "device-cache").mkdir()
        runtimes = json.loads(_run([str(wrapper), "-c", _SMOKE], "importing the runtimes on the board",
                                   timeout=600).strip().splitlines()[-1])
        info = {"format": _FORMAT, "name": name, "board": spec.title, "qemu_cpu": spec.cpu, "emulator": emulator,
                "suite": SUITE, "python": GUEST_PYTHON, "runtimes": runtimes, "features": features,
                "created": time.time(), "build_s": round(time.monotonic() - t0, 1),
                "files": {"root": list(_tree_size(work / "root")), "site": list(_tree_size(work / "site"))}}
        (work / "board.json").write_text(json.dumps(info, indent=2) + "\n")
        if final.exists():
            _discard(final)
        os.rename(work, final)
        say(f"  board {name} ready in {info['build_s']:.0f} s: {', '.join(f'{k} {v}' for k, v in runtimes.items())}; "
            f"CPU features {' '.join(features)}")
        return _load(name)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise

"""A LUT measured on several devices of one kind at once, through Ray.

``edgekit lut build --device A --device B`` (or ``--ray`` / ``--ray-address``) builds with
:func:`build_on_devices`:

* the units still missing are exported by Ray tasks (:func:`_export_unit`) into the work directory
  every device reads (shared by all nodes on a cluster). When a device is this machine, a chunk's
  files are all written before any of them is timed (no export beside a timed loop); for remote
  devices the next chunk is exported while this one is measured;
* each device is a Ray actor holding its own :class:`~edgekit.lut.device.DeviceTimer`, with
  ``max_concurrency=1``: one measurement at a time on a device. This process gives the next unit
  to whichever device finished (``ray.wait`` on the devices' calls), appends the complete result to
  the results store and saves the LUT with each finished entry (atomically, as ever): the LUT and
  the store stay the record, and a killed build resumes from them;
* every measurement's fingerprint must be of the LUT's kind of device
  (:func:`~edgekit.lut.device.fingerprint_differences`; the header lists the addresses in
  ``devices``);
* a device lost mid-build (connection gone, agent crashed, actor died) is dropped and its unit
  goes to the others; a LUT entry is written only when all its passes are in, so nothing is half
  stored. Only when every device is lost does the build stop, keeping what it saved.

``local`` given N times is this machine N times, each pinned to cores of its own (the last ones
this process may use), so two timed loops never share a core.

Ray is a local one on this machine (at most 2 CPUs, no dashboard, its files in a temporary
directory) unless ``ray_address`` names a cluster (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``),
which must answer within ``connect_timeout`` seconds. A Ray the caller initialised is used as it is.

>>> # lut = build_on_devices(space, [timer_a, timer_b], out="lut.json")  # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .build import Unit, plan
from .device import DeviceTimer, Measurement, _figure, check_same_kind
from .lut import Lut, save_lut
from .space import FBNetV1Space

__all__ = ["RAY_CONNECT_TIMEOUT_S", "build_on_devices", "local_cores", "ray_session"]

RAY_CONNECT_TIMEOUT_S = 5.0
_PROBE_START_S = 3.0  # what starting the probe's Python and importing Ray's client take on a busy host
# a DeviceError of these kinds means the device is gone (connection, agent process), not the unit
_LOST_KINDS = ("transport", "agent-crashed")


def local_cores(n: int, threads: int) -> list[list[int]]:
    """Cores for ``n`` local devices of ``threads`` threads each, none shared, the last ones first."""
    from .._background import usable_cpus

    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(usable_cpus()))
    if n * threads > len(allowed):
        raise ValueError(f"{n} local devices x {threads} thread(s) need {n * threads} cores of their own; this "
                         f"process may use {len(allowed)} ({allowed}): pass --device local fewer times")
    end = len(allowed)
    return [allowed[end - (i + 1) * threads:end - i * threads] for i in range(n)]


# ---- Ray ---------------------------------------------------------------------------------------

def _check_reachable(address: str, timeout: float) -> None:
    """Refuse a cluster address that does not answer as a Ray head within ``timeout`` s (``ray.init``
    would retry for a minute or more): a TCP connection first, then, for ``HOST:PORT``, Ray's own
    client asking the head for its cluster id, in a process of its own that is stopped at the timeout."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    t0 = time.monotonic()
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        _unreachable(address, timeout, "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e)))
    if address.startswith("ray://"):
        return  # a Ray Client server: ``ray.init`` gives up on its own
    probe = f"import ray._raylet as r; r.GcsClient(address={hostport!r}).cluster_id"
    try:
        proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              timeout=max(0.1, timeout - (time.monotonic() - t0)) + _PROBE_START_S)
    except subprocess.TimeoutExpired:
        _unreachable(address, timeout, "a TCP connection, but no Ray answer")
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if "Error" in ln] or ["not a Ray head"]
        _unreachable(address, timeout, lines[-1].strip()[:200])


def _unreachable(address: str, timeout: float, reason: str) -> None:
    raise ValueError(f"cannot reach the Ray cluster at {address} within {timeout:g} s ({reason}); start it "
                     f"(`ray start --head`) or fix --ray-address, or drop it to use a local Ray")


@contextlib.contextmanager
def ray_session(address: str | None = None, *, connect_timeout: float = RAY_CONNECT_TIMEOUT_S) -> Iterator[Any]:
    """``ray``, initialised for the block: a small local Ray (``address`` None) or the cluster at
    ``address``; shut down afterwards unless the caller had initialised it."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no report sent anywhere
    temp = None
    if address is None:
        from .._background import usable_cpus
        temp = tempfile.mkdtemp(prefix="edgekit-ray-")
        options = dict(num_cpus=min(2, usable_cpus()), include_dashboard=False, object_store_memory=100 << 20,
                       _temp_dir=temp)
    else:
        if address != "auto":
            _check_reachable(address, connect_timeout)
        options = {}
    try:
        ray.init(address=address, log_to_driver=False, logging_level="ERROR", **options)
    except ConnectionError as e:
        raise ValueError(f"cannot connect to Ray at {address}: {str(e).splitlines()[0]}; fix --ray-address or "
                         f"drop it to use a local Ray") from None
    try:
        yield ray
    finally:
        ray.shutdown()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


@dataclass(frozen=True)
class _Exported:
    """A unit's file in the work directory, what exporting it took (0 when re-used)."""

    path: str
    sha256: str
    export_s: float
    reused: bool


def _export_unit(exporter: Any, unit: Unit) -> _Exported:
    """A Ray task: export ``unit`` into the work directory, unless its file is there."""
    path, export_s, reused = exporter.artifact(unit)
    return _Exported(str(path), _sha(path), export_s, reused)


class _DeviceActor:
    """A Ray actor (``max_concurrency=1``): one device, one measurement at a time, nothing kept
    (this process stores the results)."""

    def __init__(self, timer: DeviceTimer):
        self.timer = timer

    def measure(self, unit: Unit) -> Measurement:
        return self.timer.run_unit(unit)


def _outcome(ray: Any, ref: Any) -> tuple[Measurement | None, str | None]:
    """(measurement, None), or (None, why the device is lost); any other failure is raised."""
    from ..devices.base import DeviceError

    try:
        return ray.get(ref), None
    except ray.exceptions.RayActorError as e:
        return None, f"its Ray actor died ({str(e).strip().splitlines()[0]})"
    except ray.exceptions.RayTaskError as e:
        cause = _cause(e)
        if isinstance(cause, DeviceError) and cause.kind in _LOST_KINDS:
            return None, str(cause)
        raise cause from None


def _cause(error: Exception) -> BaseException:
    """What a Ray task raised (Ray wraps it with the remote traceback)."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


# ---- the build ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    unit: Unit
    repeat: int  # 0, then 1, 2, ... for the later passes


@dataclass
class _Build:
    """The LUT being built, its device record and the units' figures so far (an entry is written
    when all its passes are in)."""

    lut: Lut
    out: Path | None
    passes: int
    device: dict[str, Any] | None  # the stored LUT's record, else the first measurement's fingerprint
    figures: dict[str, list[float]]
    done: int = 0

    def check(self, fp: dict[str, Any], addresses: Sequence[str]) -> None:
        """Refuse a measurement from another kind of device; the first one sets the LUT's record."""
        if self.device is None:
            self.device = dict(fp)
        known = self.device.get("devices") or [self.device["device"]]
        self.device = {**self.device, "devices": sorted(set(known) | set(addresses))}
        check_same_kind(self.device, fp)

    def add(self, unit: Unit, ms: float) -> None:
        """Count one pass of ``unit``; with all its passes in, its entry goes into the saved LUT."""
        self.figures.setdefault(unit.key, []).append(ms)
        if len(self.figures[unit.key]) < self.passes:
            return
        entries = {**self.lut.entries, unit.key: min(self.figures[unit.key])}
        self.lut = self.lut.replace(device=self.device, entries=entries)
        if self.out is not None:
            save_lut(self.lut, self.out)
        self.done += 1


def _jobs(units: Sequence[Unit], passes: int) -> list[_Job]:
    """The chunk's sweeps, every other one backwards (as ``DeviceTimer.__call__`` does on one device)."""
    return [_Job(u, sweep) for sweep in range(passes) for u in (units if sweep % 2 == 0 else units[::-1])]


def build_on_devices(space: FBNetV1Space, timers: Sequence[DeviceTimer], *, out: str | Path | None = None,
                     chunk: int = 16, progress: Callable[[int, int], None] | None = None,
                     ray_address: str | None = None, connect_timeout: float = RAY_CONNECT_TIMEOUT_S,
                     signatures: Sequence[Unit] | None = None) -> Lut:
    """Measure every missing signature of ``space`` on the devices of ``timers`` (one per device, of
    one kind, same recipe and protocol) through Ray; resume ``out`` if it exists (see the module
    docstring). The timers' ``log`` gets what each device measured; their store gets every result.
    ``signatures`` limits the build to those (a measured share of a large space)."""
    if chunk < 1:
        raise ValueError(f"chunk {chunk} must be >= 1")
    head = _check_timers(timers)
    stored = _stored(out, space, head)
    lut = stored or Lut(space=space.to_dict(), device={"device": head.device.address}, format=head.format,
                        precision=head.precision, threads=head.threads, statistic=head.statistic)
    build = _Build(lut, None if out is None else Path(out), head.passes, None if stored is None else dict(lut.device),
                   {})
    todo = plan(space, stored, signatures=signatures)
    if stored is not None:
        adopted, todo = _adopt(build.device, todo, timers, since=Path(out).stat().st_mtime)
        for unit, figures in adopted:
            for ms in figures:
                build.add(unit, ms)
        build.done = 0  # the progress counts what this build measures
    if not todo:
        return build.lut
    with ray_session(ray_address, connect_timeout=connect_timeout) as ray:
        head.exporter.warm()  # the reference activations, computed once and carried by every copy
        _run(ray, build, todo, timers, chunk=chunk, progress=progress)
    for t in timers:  # what a later measurement on these devices (--networks) is checked against
        t.fingerprint = dict(build.lut.device)
    return build.lut


def _check_timers(timers: Sequence[DeviceTimer]) -> DeviceTimer:
    if not timers:
        raise ValueError("no device to measure on: pass --device at least once")
    head = timers[0]
    for t in timers[1:]:
        if (t.format, t.precision, t.protocol, t.statistic, t.passes, t.exporter.work_dir) != (
                head.format, head.precision, head.protocol, head.statistic, head.passes, head.exporter.work_dir):
            raise ValueError(f"device {t.device.address} is set up unlike {head.device.address} (format, precision, "
                             f"protocol, statistic, passes or work dir): one LUT is measured one way")
    return head


def _stored(out: str | Path | None, space: FBNetV1Space, head: DeviceTimer) -> Lut | None:
    from .build import _resume

    if out is None or not Path(out).exists():
        return None
    # the address is not compared: any board of the LUT's kind may go on with it (fingerprints are)
    return _resume(Path(out), space, {}, head.format, head.precision, head.threads, head.statistic)


def _adopt(device: dict[str, Any], todo: Sequence[Unit], timers: Sequence[DeviceTimer], *,
           since: float) -> tuple[list[tuple[Unit, list[float]]], list[Unit]]:
    """(unit, figures) of the units whose every pass reached the results store after the LUT's last
    save at ``since`` (the build was killed between storing a unit's last pass and saving its entry),
    and the units still to measure. So no unit is measured twice; older results (another build's)
    are never taken."""
    from ..devices.stats import Stats
    from .device import fingerprint_differences

    head = timers[0]
    if head.store is None:
        return [], list(todo)
    kind = {**device, "devices": sorted(set(device.get("devices") or [device["device"]]) |
                                        {t.device.address for t in timers})}
    settings = head.protocol.to_dict()
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in head.store.query(format=head.format, precision=head.precision):
        if r["created"] >= since and r["settings"] == settings and not fingerprint_differences(kind, r["fingerprint"]):
            rows.setdefault(r["artifact_path"], []).append(r)
    adopted, left = [], []
    for unit in todo:
        path = head.exporter.path(unit)
        mine = rows.get(str(path), [])[-head.passes:]
        if len(mine) < head.passes or not head.exporter.exported(unit) or any(
                r["artifact_sha256"] != _sha(path) for r in mine):
            left.append(unit)
        else:
            adopted.append((unit, [_figure(Stats.from_dict(r["stats"]), head.statistic) for r in mine]))
    return adopted, left


def _sha(path: Path) -> str:
    from ..exporters.artifact import load_artifact
    return load_artifact(path).manifest.file_sha256


def _run(ray: Any, build: _Build, todo: Sequence[Unit], timers: Sequence[DeviceTimer], *,
         chunk: int, progress: Callable[[int, int], None] | None) -> None:
    """Export chunk by chunk (the next one during this one's measurement when no device is local),
    and measure each chunk on the devices."""
    from ..devices.local import LocalDevice

    export = ray.remote(num_cpus=1)(_export_unit)
    exporter = ray.put(timers[0].exporter)
    submit = lambda part: [export.remote(exporter, u) for u in part]  # noqa: E731
    any_local = any(isinstance(t.device, LocalDevice) for t in timers)
    chunks = [list(todo[i:i + chunk]) for i in range(0, len(todo), chunk)]
    fleet = _Fleet(ray, timers)

    def report() -> None:
        if progress is not None and (build.done % chunk == 0 or build.done == len(todo)):
            progress(build.done, len(todo))

    try:
        exports = submit(chunks[0])
        for n, part in enumerate(chunks):
            files = dict(zip((u.key for u in part), _get(ray, exports)))
            ahead = n + 1 < len(chunks) and not any_local
            exports = submit(chunks[n + 1]) if ahead else None
            fleet.measure(build, _jobs(part, build.passes), files, report)
            if not ahead and n + 1 < len(chunks):
                exports = submit(chunks[n + 1])
    finally:
        fleet.close()


class _Fleet:
    """The devices as Ray actors: which are idle, which are lost."""

    def __init__(self, ray: Any, timers: Sequence[DeviceTimer]):
        from ..devices.local import LocalDevice

        here = ray.get_runtime_context().get_node_id()
        self.ray, self.timers = ray, list(timers)
        self.actors = [_actor(ray, t, here if isinstance(t.device, LocalDevice) else None) for t in timers]
        self.idle = list(range(len(timers)))
        self.lost: dict[int, str] = {}

    def measure(self, build: _Build, jobs: Sequence[_Job], files: dict[str, _Exported],
                report: Callable[[], None]) -> None:
        """Every job on whichever device is free (``ray.wait``); a lost device's job goes to the others."""
        from ..devices.base import DeviceError

        queue, pending = deque(jobs), {}
        addresses = [t.device.address for t in self.timers]
        while queue or pending:
            while queue and self.idle:
                i, job = self.idle.pop(0), queue.popleft()
                pending[self.actors[i].measure.remote(job.unit)] = (i, job)
            if not pending:
                raise DeviceError(", ".join(addresses), "run", _all_lost(build, self.lost))
            (ref,), _ = self.ray.wait(list(pending), num_returns=1)
            i, job = pending.pop(ref)
            m, why = _outcome(self.ray, ref)
            if m is None:
                self.lost[i] = f"{addresses[i]}: {why}"
                queue.appendleft(job)
                warnings.warn(f"device {i + 1} of {len(addresses)} lost: {why}; the others go on with its unit",
                              RuntimeWarning, stacklevel=2)
                continue
            self.idle.append(i)
            done = build.done
            _keep(build, self.timers[i], job, m, files[job.unit.key], addresses)
            if build.done > done:
                report()

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)


def _actor(ray: Any, timer: DeviceTimer, node: str | None) -> Any:
    options: dict[str, Any] = {"max_concurrency": 1, "num_cpus": 0}
    if node is not None:  # ``local`` is the machine this build runs on
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node, soft=False)
    remote = copy.copy(timer)
    remote.store, remote.log, remote.fingerprint = None, [], None
    return ray.remote(_DeviceActor).options(**options).remote(remote)


def _get(ray: Any, refs: Sequence[Any]) -> list[Any]:
    try:
        return ray.get(list(refs))
    except ray.exceptions.RayTaskError as e:
        raise _cause(e) from None


def _keep(build: _Build, timer: DeviceTimer, job: _Job, m: Measurement, file: _Exported,
          addresses: Sequence[str]) -> None:
    """Check, store and count one measurement (the LUT is saved when the unit's last pass is in)."""
    if m.result.artifact_sha256 != file.sha256:
        raise ValueError(f"{timer.device.address} ran {m.artifact}, not the file exported for {job.unit.key} "
                         f"({file.path}): every node must see the same work dir (--work-dir on a shared disk)")
    build.check(dict(m.result.fingerprint), addresses)
    first = job.repeat == 0  # the export is counted with a unit's first pass
    timer.record(job.unit, Measurement(m.result, file.path, file.export_s if first else 0.0, file.reused or not first,
                                       m.run_s), job.repeat)
    build.add(job.unit, _figure(m.result.stats, timer.statistic))


def _all_lost(build: _Build, lost: dict[int, str]) -> str:
    where = f"saved in {build.out}" if build.out is not None else "kept in memory only"
    return (f"every device was lost ({'; '.join(lost.values())}); the {build.done} entries measured are {where}: "
            f"run the same command again to resume")

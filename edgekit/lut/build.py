"""Building a LUT: the measurement plan, resumable measuring with an injected timer, the overhead fit.

The measuring itself is a callable handed in: it takes a list of units (each with ``module()``,
``example()`` and ``key``: block signatures or whole networks) and returns their latencies in ms, in
order. Device runners provide one per target; :class:`OrtTimer` (ONNX fp32 in onnxruntime on this
host) and :class:`TorchTimer` (eager PyTorch on this host) are the local ones.

The LUT is saved after every chunk, and ``plan`` returns only the signatures not stored yet, so a
build that died resumes where it stopped and never re-measures a stored entry.

>>> from edgekit.lut.space import get_space
>>> space = get_space("fbnet-v1", resolution=32, width=0.25, in_chans=1, num_classes=10)
>>> len(plan(space))  # distinct (candidate, input shape) pairs + stem + head, identity skips excluded
104
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import torch
from torch import nn

from .._checks import is_count
from ..models.arch import ArchSpec, from_arch
from .lut import Lut, LutError, load_lut, save_lut
from .predict import with_overhead
from .space import BlockSig, FBNetV1Space

__all__ = ["Measure", "NetworkUnit", "OrtTimer", "TorchTimer", "build_lut", "local_fingerprint", "measure_networks",
           "plan"]


class Unit(Protocol):
    key: str

    def module(self) -> nn.Module: ...

    def example(self, seed: int = 0) -> torch.Tensor: ...


Measure = Callable[[Sequence[Unit]], Sequence[float]]


@dataclass(frozen=True)
class NetworkUnit:
    """A whole network as a measurable unit (for the overhead fit and for LUT checks)."""

    spec: ArchSpec
    in_chans: int
    num_classes: int

    @property
    def key(self) -> str:
        """The name and a digest of the whole spec: two different networks under one name (two
        searches writing the same --out) never share an exported file."""
        digest = hashlib.sha256(self.spec.to_json().encode()).hexdigest()[:12]
        return f"network:{self.spec.name}:{digest}"

    def module(self) -> nn.Module:
        return from_arch(self.spec, num_classes=self.num_classes, in_chans=self.in_chans).eval()

    def example(self, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        side = self.spec.resolution
        return torch.randn(1, self.in_chans, side, side, generator=g)


# ---- plan and build ----------------------------------------------------------------------------

def plan(space: FBNetV1Space, stored: Lut | Mapping[str, float] | None = None, *,
         signatures: Sequence[BlockSig] | None = None) -> list[BlockSig]:
    """The signatures still to measure: every distinct one of ``space`` (or of ``signatures``, the
    share of a large space a build measures) not in ``stored``."""
    have = stored.entries if isinstance(stored, Lut) else (stored or {})
    wanted = space.distinct_signatures() if signatures is None else signatures
    return [s for s in wanted if s.key not in have]


def build_lut(space: FBNetV1Space, measure: Measure, *, device: Mapping[str, Any], format: str, precision: str,
              threads: int, out: str | os.PathLike | None = None, chunk: int = 8,
              progress: Callable[[int, int], None] | None = None, statistic: str = "median",
              signatures: Sequence[BlockSig] | None = None) -> Lut:
    """Measure every missing signature of ``space`` with ``measure`` and return the LUT.

    ``statistic`` names what ``measure`` returns per unit (``min`` or ``median``). With ``out``, an
    existing file there is resumed (it must be the same space, device, format, precision, threads
    and statistic, else a clear error) and the LUT is saved after every ``chunk``. ``signatures``
    limits the build to those (default: every distinct signature of the space).
    """
    if chunk < 1:
        raise ValueError(f"chunk {chunk} must be >= 1")
    lut = Lut(space=space.to_dict(), device=dict(device), format=format, precision=precision, threads=threads,
              statistic=statistic)
    if out is not None and Path(out).exists():
        lut = _resume(Path(out), space, device, format, precision, threads, statistic)
    todo = plan(space, lut, signatures=signatures)
    done, total = 0, len(todo)
    for start in range(0, total, chunk):
        part = todo[start:start + chunk]
        ms = list(measure(part))
        if len(ms) != len(part):
            raise ValueError(f"the measuring function returned {len(ms)} latencies for {len(part)} blocks")
        lut = lut.replace(entries={**lut.entries, **{s.key: float(m) for s, m in zip(part, ms)}})
        if out is not None:
            save_lut(lut, out)
        done += len(part)
        if progress is not None:
            progress(done, total)
    return lut


def _resume(path: Path, space: FBNetV1Space, device: Mapping[str, Any], format: str, precision: str,
            threads: int, statistic: str) -> Lut:
    lut = load_lut(path, device=device, format=format, precision=precision, threads=threads, statistic=statistic)
    if dict(lut.space) != space.to_dict():
        raise LutError(f"{path} holds a LUT of another space ({lut.space}), not {space.to_dict()}; resume it with "
                       f"the same space knobs or write to another file")
    return lut


def measure_networks(lut: Lut, space: FBNetV1Space, measure: Measure, *, samples: int, seed: int = 0) -> Lut:
    """Measure ``samples`` random points of ``space`` end to end and refit the overhead model."""
    if samples < 2:
        raise ValueError(f"samples {samples} must be >= 2 (the overhead fit has two parameters)")
    picks = [space.sample(seed * 100_003 + i) for i in range(samples)]
    units = [NetworkUnit(space.spec(c, name=f"sample-{seed}-{i}"), space.in_chans, space.num_classes)
             for i, c in enumerate(picks)]
    ms = list(measure(units))
    if len(ms) != len(units):
        raise ValueError(f"the measuring function returned {len(ms)} latencies for {len(units)} networks")
    listed = [space.point_list(c) if hasattr(space, "point_list") else list(c) for c in picks]
    return with_overhead(lut, space, [{"choices": c, "ms": float(m)} for c, m in zip(listed, ms)])


# ---- local timers ------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _cpu_model() -> str:
    """This host's CPU named as the device agent names it (ARM cores decoded from their part)."""
    from ..devices.agent import cpu_description
    return cpu_description()["cpu_model"]


def local_fingerprint(runtime: str, threads: int) -> dict[str, Any]:
    """This host as a LUT device fingerprint."""
    return {"device": "local", "cpu": _cpu_model(), "cores": os.cpu_count(), "arch": platform.machine(),
            "os": f"{platform.system()} {platform.release()}", "runtime": runtime, "threads": threads}


def _check_runs(threads: int, runs: int, warmup: int) -> None:
    for label, v, low in (("threads", threads, 1), ("runs", runs, 1), ("warmup", warmup, 0)):
        if not is_count(v, low):
            raise ValueError(f"{label}={v!r} must be an int >= {low}")


@dataclass(frozen=True)
class OrtTimer:
    """ONNX fp32 on this host: each unit exported with ``export_onnx_fp32`` (BN folded, parity
    checked) and timed with ``benchmark_onnx`` (ORT CPU provider, pinned when threads == 1);
    the median of ``runs`` timed runs."""

    threads: int = 1
    runs: int = 50
    warmup: int = 10

    def __post_init__(self):
        _check_runs(self.threads, self.runs, self.warmup)

    format = "onnx"
    precision = "fp32"

    @property
    def runtime(self) -> str:
        import onnxruntime
        return f"onnxruntime {onnxruntime.__version__}"

    def __call__(self, units: Sequence[Unit]) -> list[float]:
        from ..exporters.onnx import benchmark_onnx, export_onnx_fp32

        out = []
        for unit in units:
            x = unit.example()
            exp = export_onnx_fp32(unit.module(), x)
            stats = benchmark_onnx(exp.model_bytes, x.numpy(), threads=self.threads, runs=self.runs,
                                   warmup=self.warmup)
            out.append(stats["median_ms"])
        return out


@dataclass(frozen=True)
class TorchTimer:
    """Eager PyTorch on this host (``torch.set_num_threads(threads)`` while timing): median of ``runs``."""

    threads: int = 1
    runs: int = 50
    warmup: int = 10

    def __post_init__(self):
        _check_runs(self.threads, self.runs, self.warmup)

    format = "torch"
    precision = "fp32"

    @property
    def runtime(self) -> str:
        return f"torch {torch.__version__.split('+')[0]}"

    def __call__(self, units: Sequence[Unit]) -> list[float]:
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return [self._time(u) for u in units]
        finally:
            torch.set_num_threads(before)

    def _time(self, unit: Unit) -> float:
        model, x = unit.module(), unit.example()
        times = []
        with torch.inference_mode():
            for i in range(self.warmup + self.runs):
                t0 = time.perf_counter()
                model(x)
                if i >= self.warmup:
                    times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3

"""Latency statistics and the measurement protocol's defaults.

>>> s = summarize([1_000_000, 2_000_000, 3_000_000])
>>> s.median_ms, s.n
(2.0, 3)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["Stats", "Protocol", "summarize", "from_aggregate"]


@dataclass(frozen=True)
class Protocol:
    """How a latency is measured: one thread pinned to one core, a warm-up, at least ``runs`` timed
    runs, then more (``runs`` at a time) while the CV is above ``target_cv``, up to ``max_runs``.

    ``blocks`` > 1 splits every ``runs`` into that many blocks with ``gap_ms`` of sleep between them,
    so one measurement samples the device over a longer time (the warm-up is repeated, untimed,
    after every sleep). On a shared machine (a VM, a board with other work) a neighbour slows whole
    stretches of runs; after a sleep the process often lands on a quieter core, so the fastest run
    (``Stats.min_ms``) depends less on when the measurement happened (``bench/devices.py`` measures
    how much)."""

    threads: int = 1
    warmup: int = 10
    runs: int = 50
    max_runs: int = 200
    target_cv: float = 0.10
    pin: bool = True
    blocks: int = 1
    gap_ms: float = 0.0

    def __post_init__(self):
        if self.threads < 1:
            raise ValueError(f"threads {self.threads} must be >= 1")
        if self.warmup < 0:
            raise ValueError(f"warmup {self.warmup} must be >= 0")
        if self.runs < 1:
            raise ValueError(f"runs {self.runs} must be >= 1 (the protocol asks for >= 50)")
        if self.max_runs < self.runs:
            raise ValueError(f"max_runs {self.max_runs} must be >= runs {self.runs}")
        if not self.target_cv > 0:
            raise ValueError(f"target_cv {self.target_cv} must be > 0, e.g. 0.1")
        if not 1 <= self.blocks <= self.runs:
            raise ValueError(f"blocks {self.blocks} must be between 1 and runs {self.runs} (each block times at "
                             f"least one run)")
        if not (math.isfinite(self.gap_ms) and 0 <= self.gap_ms <= 10_000):
            raise ValueError(f"gap_ms {self.gap_ms} must be between 0 and 10000 ms of sleep between blocks")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Stats:
    """Milliseconds. ``median_ms``/``p90_ms``/``p99_ms`` are None when only aggregates were reported
    (TFLite ``benchmark_model`` prints count, min, max, mean and std, not each run)."""

    n: int
    min_ms: float
    median_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float
    std_ms: float
    cv: float
    max_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Stats":
        return cls(**d)

    def format(self) -> str:
        mid = "-" if self.median_ms is None else f"{self.median_ms:.3f}"
        p90 = "-" if self.p90_ms is None else f"{self.p90_ms:.3f}"
        return f"median {mid} ms, p90 {p90} ms, min {self.min_ms:.3f} ms, CV {100 * self.cv:.1f} % (n={self.n})"


def summarize(latencies_ns: Sequence[int]) -> Stats:
    """Stats of per-run latencies in nanoseconds; refuses an empty or non-positive list."""
    a = np.asarray(latencies_ns, dtype=np.float64) / 1e6
    if a.size == 0:
        raise ValueError("no latencies to summarize: the measurement returned no runs")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"latencies must be positive and finite; got min {a.min()} ms")
    mean, std = float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0
    return Stats(n=int(a.size), min_ms=float(a.min()), median_ms=float(np.median(a)),
                 p90_ms=float(np.percentile(a, 90)), p99_ms=float(np.percentile(a, 99)), mean_ms=mean,
                 std_ms=std, cv=std / mean, max_ms=float(a.max()))


def from_aggregate(*, n: int, min_ms: float, max_ms: float, mean_ms: float, std_ms: float,
                   median_ms: float | None = None) -> Stats:
    """Stats from a tool that reports aggregates only; every value must be a real measurement."""
    for label, v in (("min", min_ms), ("max", max_ms), ("mean", mean_ms), ("std", std_ms)):
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"latency {label} {v} is not a measurement")
    if n < 1 or not mean_ms > 0:
        raise ValueError(f"aggregate latency with n={n}, mean {mean_ms} ms is not a measurement")
    return Stats(n=n, min_ms=min_ms, median_ms=median_ms, p90_ms=None, p99_ms=None, mean_ms=mean_ms,
                 std_ms=std_ms, cv=std_ms / mean_ms, max_ms=max_ms)

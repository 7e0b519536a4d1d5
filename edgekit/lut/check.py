"""Checking a LUT against whole networks measured end to end: ``edgekit lut check``.

``check_lut`` samples ``samples`` architectures of the LUT's space (seeded), has the measuring
function export and time each whole network, and compares the LUT's prediction with the
measurement: share within +-5 % and +-10 %, MAPE, Spearman and Kendall rank correlation. The plain
sum (entries and, when the LUT has them, the junctions between them) is scored on every network,
beside the sum of entries alone; the overhead model is then fitted on the first ``fit`` networks
only and plain sum and fitted model are scored on the rest (held out from the fit).

>>> spearman([1, 2, 3, 4], [10, 20, 30, 40]), kendall([1, 2, 3], [3, 2, 1])
(1.0, -1.0)
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .._checks import check_count
from .build import Measure, NetworkUnit
from .lut import Lut
from .predict import fit_overhead, mape, predict
from .space import FBNetV1Space

__all__ = ["accuracy", "check_lut", "kendall", "plot_check", "sample_checks", "spearman"]


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties sharing their mean rank."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), dtype=np.float64)
    ranks[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tie = v == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rho (Pearson on mean ranks); None when fewer than 2 values or one side is constant."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) != len(y):
        raise ValueError(f"spearman needs equally many values, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return None
    rx, ry = _ranks(x), _ranks(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def kendall(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's tau-b (ties corrected); None when fewer than 2 values or one side is constant."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) != len(y):
        raise ValueError(f"kendall needs equally many values, got {len(x)} and {len(y)}")
    i, j = np.triu_indices(len(x), k=1)
    dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    n0 = len(i)
    tx, ty = int((dx == 0).sum()), int((dy == 0).sum())
    denom = np.sqrt(float(n0 - tx) * float(n0 - ty))
    if n0 == 0 or denom == 0:
        return None
    return float((dx * dy).sum() / denom)


def accuracy(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, Any]:
    """Share of predictions within +-5 % / +-10 % of the measurement, MAPE (%), Spearman, Kendall."""
    p, m = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    err = np.abs(p - m) / m
    return {"n": int(len(m)), "within_5pct": float(np.mean(err <= 0.05)), "within_10pct": float(np.mean(err <= 0.10)),
            "mape": mape(p, m), "spearman": spearman(p, m), "kendall": kendall(p, m)}


def sample_checks(space: FBNetV1Space, samples: int, seed: int = 0) -> list[tuple[str, ...]]:
    """``samples`` points of ``space`` drawn from one stream seeded by ``seed`` (a stream of its own:
    not the networks ``lut build --networks`` measures for the overhead fit)."""
    rng = random.Random(f"edgekit-lut-check:{seed}")
    return [space.sample(rng) for _ in range(samples)]


def check_lut(lut: Lut, measure: Measure, *, samples: int, seed: int = 0, fit: int | None = None,
              progress: Callable[[int, int], None] | None = None, chunk: int = 10) -> dict[str, Any]:
    """Measure ``samples`` sampled networks with ``measure`` and score the LUT's predictions.

    ``fit`` (default ``max(2, samples // 3)``): how many of the first networks fit the overhead
    model for the held-out part; it needs ``samples - fit >= 2``, else the held-out part is omitted
    with the reason. The networks go to ``measure`` ``chunk`` at a time (a timer with several passes
    sweeps one chunk repeatedly)."""
    check_count("chunk", chunk)
    check_count("samples", samples, minimum=2)
    fit = max(2, samples // 3) if fit is None else fit
    if fit < 2:
        raise ValueError(f"fit {fit} must be >= 2 (the overhead model has two parameters)")
    statistic = getattr(measure, "statistic", None)
    if statistic is not None:  # networks measured another way than the entries would not compare
        lut.check_compatible(statistic=statistic)
    from .space import SPACES
    space = SPACES[lut.space.get("name", "fbnet-v1")].from_dict(lut.space)
    picks = sample_checks(space, samples, seed)
    units = [NetworkUnit(space.spec(c, name=f"check-{seed}-{i}"), space.in_chans, space.num_classes)
             for i, c in enumerate(picks)]
    prepare = getattr(measure, "prepare", None)
    if prepare is not None:  # a device timer exports every network first, on all its workers
        prepare(units)
    measured: list[float] = []
    for start in range(0, len(units), chunk):
        part = units[start:start + chunk]
        ms = list(measure(part))
        if len(ms) != len(part):
            raise ValueError(f"the measuring function returned {len(ms)} latencies for {len(part)} networks")
        measured.extend(float(v) for v in ms)
        if progress is not None:
            progress(len(measured), len(units))
    preds = [predict(u.spec, lut) for u in units]
    plain = [p.plain_ms for p in preds]
    report: dict[str, Any] = {
        "lut": {"space": dict(lut.space), "device": dict(lut.device), "format": lut.format,
                "precision": lut.precision, "threads": lut.threads, "entries": len(lut.entries)},
        "samples": samples, "seed": seed,
        "networks": [{"name": u.spec.name, "choices": _listed(space, c), "measured_ms": m, "plain_ms": p.plain_ms,
                      "entries_ms": p.entries_ms, "lut_fitted_ms": p.fitted_ms}
                     for u, c, m, p in zip(units, picks, measured, preds)],
        "plain": accuracy(plain, measured),
        "entries": None,
        "lut_overhead": None,
    }
    if lut.junctions is not None:  # the plain sum has the junctions; FBNet's sum of entries beside it
        report["entries"] = accuracy([p.entries_ms for p in preds], measured)
    if lut.overhead is not None:
        report["lut_overhead"] = {"model": dict(lut.overhead),
                                  "all": accuracy([p.fitted_ms for p in preds], measured)}
    if samples - fit < 2:
        report["held_out"] = {"omitted": f"{samples} networks leave {samples - fit} after fitting on {fit}; "
                                         f"the held-out scores need >= 2 (raise --samples)"}
        return report
    model = fit_overhead(list(zip(plain[:fit], measured[:fit])))
    rest_plain, rest_measured = plain[fit:], measured[fit:]
    report["held_out"] = {"fit_networks": fit, "evaluated": samples - fit,
                          "model": {"a_ms": model.a_ms, "b": model.b},
                          "plain": accuracy(rest_plain, rest_measured),
                          "fitted": accuracy([model.predict(p) for p in rest_plain], rest_measured)}
    for n, net in enumerate(report["networks"]):
        net["role"] = "fit" if n < fit else "held-out"
        net["heldout_fitted_ms"] = model.predict(net["plain_ms"])
    return report


def plot_check(report: dict[str, Any], path: str | Path) -> Path:
    """Scatter of predicted vs measured (plain sum; held-out fitted model) with the +-10 % band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = report["networks"]
    measured = np.array([n["measured_ms"] for n in nets])
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(measured, [n["plain_ms"] for n in nets], label="plain sum", marker="o")
    held = [n for n in nets if n.get("role") == "held-out"]
    if held:
        ax.scatter([n["measured_ms"] for n in held], [n["heldout_fitted_ms"] for n in held], marker="x",
                   label=f"overhead model (fit on {report['held_out']['fit_networks']}), held-out")
    lo = float(min(measured.min(), min(n["plain_ms"] for n in nets))) * 0.9
    hi = float(max(measured.max(), max(n["plain_ms"] for n in nets))) * 1.1
    line = np.array([lo, hi])
    ax.plot(line, line, "k-", lw=0.8)
    ax.fill_between(line, line * 0.9, line * 1.1, color="grey", alpha=0.2, label="+-10 %")
    lut = report["lut"]
    ax.set_xlabel("measured ms")
    ax.set_ylabel("predicted ms")
    ax.set_title(f"{lut['device'].get('device')} {lut['format']} {lut['precision']} ({len(nets)} networks)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def _listed(space: Any, choices: Any) -> list[Any]:
    return space.point_list(choices) if hasattr(space, "point_list") else list(choices)

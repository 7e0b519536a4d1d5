"""Latency prediction from a LUT: the plain sum of block entries, and an overhead model beside it.

FBNet's sum of entries assumes blocks run independently. Each entry, though, was measured as a call
of its own, and inside a network a block pays no call but the crossing from the block before it;
a LUT built with chains (:mod:`edgekit.lut.junction`) carries a junction model measured on the
device for both, and its plain sum is the entries' sum plus the junctions between them. The table
also carries a linear model ``measured ~ a + b * plain`` fitted on whole networks measured end to
end; both numbers are reported.

>>> fit_overhead([(1.0, 1.5), (2.0, 2.5), (3.0, 3.5)]).predict(4.0)
4.5
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..models.arch import ArchSpec
from .lut import Lut, LutError
from .space import BlockSig, FBNetV1Space, network_signatures

__all__ = ["OverheadModel", "Prediction", "add_measured_network", "fit_overhead", "mape", "plain_sums", "plain_target",
           "predict", "with_overhead"]


@dataclass(frozen=True)
class OverheadModel:
    a_ms: float
    b: float

    def predict(self, plain_ms: float) -> float:
        return self.a_ms + self.b * plain_ms


@dataclass(frozen=True)
class Prediction:
    """``plain_ms`` = sum of entries and of the junctions between them (the LUT's own prediction, no
    whole network fitted); ``fitted_ms`` = the overhead model applied to it (None when the LUT has
    none); ``blocks`` = (signature key, ms) per stem / block / head, its junction included;
    ``entries_ms`` = the entries alone (FBNet's sum), equal to ``plain_ms`` for a LUT without junctions."""

    plain_ms: float
    fitted_ms: float | None
    blocks: tuple[tuple[str, float], ...]
    entries_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"plain_ms": self.plain_ms, "fitted_ms": self.fitted_ms, "entries_ms": self.entries_ms,
                "blocks": [{"signature": k, "ms": v} for k, v in self.blocks]}


def _where(i: int, n: int) -> str:
    return "stem" if i == 0 else "head" if i == n - 1 else f"block {i}"


def lookup(sigs: Sequence[BlockSig], lut: Lut, *, junctions: bool = True) -> list[float]:
    """The LUT latency of each signature in a network (identity skips cost 0): its entry plus, when
    the LUT has a junction model and ``junctions``, what a network pays for it beyond its entry (the
    call it does not pay of its own, the crossing from the unit before, its cold weights; see
    :mod:`edgekit.lut.junction`). A missing entry is an error, or, for a block of a LUT with a block
    model (``fbnet-v2``), the model's figure."""
    entries = _entries(sigs, lut)
    return _with_junctions(sigs, entries, lut) if junctions else entries


def _with_junctions(sigs: Sequence[BlockSig], entries: list[float], lut: Lut) -> list[float]:
    from .junction import junction_model
    joint = junction_model(lut)
    return entries if joint is None else [e + joint.extra(s) for s, e in zip(sigs, entries)]


def _entries(sigs: Sequence[BlockSig], lut: Lut) -> list[float]:
    out = []
    model = None
    for i, sig in enumerate(sigs):
        if sig.is_identity:
            out.append(0.0)
            continue
        if sig.key not in lut.entries and sig.kind == "block" and lut.block_model is not None:
            if model is None:
                from ..nas.channel_lut import BlockModel
                model = BlockModel.from_dict(lut.block_model)
            out.append(model.predict(sig))
            continue
        try:
            out.append(float(lut.entries[sig.key]))
        except KeyError:
            raise LutError(f"the LUT has no entry for the {_where(i, len(sigs))} signature {sig.key!r}; the spec is "
                           f"outside the LUT's space ({lut.space}) or the build is incomplete (`edgekit lut plan` "
                           f"lists what is missing; `edgekit lut build` resumes)") from None
    return out


def predict(spec: ArchSpec, lut: Lut, *, in_chans: int | None = None, num_classes: int | None = None) -> Prediction:
    """Predicted latency of ``spec`` (input channels / classes default to the LUT's space).

    >>> predict(spec, load_lut("lut.json")).plain_ms  # doctest: +SKIP
    """
    in_chans = in_chans or int(lut.space.get("in_chans", 3))
    num_classes = num_classes or int(lut.space.get("num_classes", 1000))
    sigs = network_signatures(spec, in_chans=in_chans, num_classes=num_classes)
    entries = _entries(sigs, lut)
    ms = _with_junctions(sigs, entries, lut)
    plain = float(sum(ms))
    model = overhead_of(lut)
    return Prediction(plain, None if model is None else model.predict(plain),
                      tuple((s.key, m) for s, m in zip(sigs, ms)), float(sum(entries)))


def overhead_of(lut: Lut) -> OverheadModel | None:
    o = lut.overhead
    return None if o is None else OverheadModel(float(o["a_ms"]), float(o["b"]))


def fit_overhead(pairs: Sequence[tuple[float, float]]) -> OverheadModel:
    """Least-squares ``measured = a + b * plain`` over (plain sum, measured) pairs of whole networks."""
    if len(pairs) < 2:
        raise ValueError(f"the overhead fit needs at least 2 measured networks, got {len(pairs)}")
    x = np.array([p for p, _ in pairs], dtype=np.float64)
    y = np.array([m for _, m in pairs], dtype=np.float64)
    if np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())):
        raise ValueError("the overhead fit needs networks with different plain sums; sample more varied networks")
    b, a = np.polyfit(x, y, 1)
    return OverheadModel(float(a), float(b))


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error, in %."""
    p, m = np.asarray(predicted, np.float64), np.asarray(measured, np.float64)
    if len(p) != len(m) or len(m) == 0 or (m <= 0).any():
        raise ValueError("mape needs equally many predicted and measured values, all measured > 0")
    return float(np.mean(np.abs(p - m) / m) * 100)


def with_overhead(lut: Lut, space: FBNetV1Space, networks: Sequence[Mapping[str, Any]]) -> Lut:
    """``lut`` with ``networks`` (``{"choices", "ms"}``) appended and the overhead model refitted on all
    of them; the fit's MAPE (and the plain sum's) is recorded beside it."""
    all_nets = [*lut.networks, *networks]
    plain = plain_sums(space, lut, [n["choices"] for n in all_nets])
    measured = [float(n["ms"]) for n in all_nets]
    model = fit_overhead(list(zip(plain, measured)))
    fitted = [model.predict(p) for p in plain]
    overhead = {"model": "linear", "a_ms": model.a_ms, "b": model.b, "n": len(all_nets),
                "mape_plain": mape(plain, measured), "mape_fitted": mape(fitted, measured)}
    return lut.replace(networks=tuple(dict(n) for n in all_nets), overhead=overhead)


def plain_sums(space: Any, lut: Lut, points: Sequence[Any]) -> list[float]:
    """The LUT plain sum of each point of ``space`` (fbnet-v1: its choices; fbnet-v2: its point or
    point list, entries the LUT lacks from its block model)."""
    if hasattr(space, "as_point"):
        from ..nas.channel_lut import ChannelLatency
        table = ChannelLatency(space, lut)
        return [table.point_ms(p) for p in points]
    return [float(sum(lookup(space.signatures(p), lut))) for p in points]


def plain_target(lut: Lut, target_ms: float) -> tuple[float, str | None]:
    """A latency target on the device -> the LUT's plain-sum scale, which the search works in, through
    the overhead model fitted on measured networks (``measured = a + b * plain``); unchanged, with no
    note, when the LUT has no overhead model."""
    o = lut.overhead
    if not o or not o.get("b") or o["b"] <= 0:
        return target_ms, None
    plain = (target_ms - o["a_ms"]) / o["b"]
    if plain <= 0:
        raise ValueError(f"target {target_ms:g} ms is below the fixed overhead {o['a_ms']:.4g} ms that the LUT's "
                         f"overhead model measured on {o['n']} networks: nothing in the space can run that fast")
    return plain, (f"target {target_ms:g} ms on the device = {plain:.4g} ms of LUT plain sum by the overhead model "
                   f"({o['a_ms']:.4g} ms + {o['b']:.3f} x sum, {o['n']} measured networks)")


def add_measured_network(lut: Lut, space: FBNetV1Space, choices: Sequence[str], ms: float) -> Lut:
    """``lut`` with one more measured network; the overhead model is refitted once there are two."""
    net = {"choices": _choices_list(space, choices), "ms": float(ms)}
    plain = set(plain_sums(space, lut, [n["choices"] for n in (*lut.networks, net)]))
    if len(plain) < 2:  # one network, or all with the same plain sum: nothing to fit a line to yet
        return lut.replace(networks=(*lut.networks, net))
    return with_overhead(lut, space, [net])



def _choices_list(space: Any, choices: Any) -> list[Any]:
    """A point as a LUT records it: fbnet-v1's candidate names, fbnet-v2's point list."""
    return space.point_list(space.as_point(choices)) if hasattr(space, "as_point") else list(choices)

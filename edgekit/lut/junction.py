"""What a whole network pays that its separately measured blocks do not.

A block measured alone is one call of the runtime: it pays the per-call cost (invoke, feeds,
output allocation), reads its input from and writes its output to tensors nobody else touches, and
finds its weights in the core's cache, where its own previous run left them. Inside a network the
same block pays no call of its own, its input is the tensor the block before it has just written,
and when the network's weights together outgrow the cache (wide layers, a 1,000-class classifier)
every block reads its weights from the next level down. Summing entries therefore counts one call
per block too many and misses the crossing and the cold weights.

All three are measured on the device. A *chain* is a few consecutive units of the space (stem and
first blocks, blocks, last blocks and head) exported and run as one file; its time less its units'
entries is the sum of its junctions. Per crossing into a unit the junction is ``a + b * KiB of the
tensor crossing`` (``a`` is mostly the call saved, negative), and a chain whose weights outgrow the
cache pays ``d`` per KiB of the weights of its units that fit in the device's L2 (from its
fingerprint) alone: those a unit measured alone found warm. The working set a core's L2 keeps warm
is less than its size (activations, code, the runtime's own buffers and an imperfect replacement
share it), so where a chain starts to outgrow it, its *capacity*, is fitted: the eighth of the L2
(1/8 ... 8/8) whose fits predict held-out chains best. Short chains (4 units) give ``a`` and
``b``; chains ending in a head with large weights and a few chains of every unit of a sampled
network outgrow the capacity where the others do not, and give ``d``. The coefficients are fitted by
least squares on all the chains and checked on held-out chains; the LUT's plain sum becomes the
entries plus the junctions between consecutive non-identity units, plus the cold weights of every
unit when most networks of the space outgrow the capacity (the share is recorded; a space whose
networks all fit pays none, and ``d`` is only fitted when some chains outgrow it).

>>> from edgekit.lut.space import get_space
>>> space = get_space("fbnet-v1", resolution=32, width=0.25, in_chans=1, num_classes=10)
>>> m = JunctionModel(coef=(-0.0005, -0.0002), n=3, precision="int8")
>>> head = space.head_signature()  # its input: 88 x 1 x 1 int8, 88 bytes
>>> round(m.extra(head) * 1000, 3), m.extra(space.stem_signature())  # us; nothing crosses into the stem
(-0.517, 0.0)
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .lut import Lut, LutError, save_lut
from .space import BlockSig

__all__ = ["CAPACITY_EIGHTHS", "ChainUnit", "JunctionModel", "chain_features", "cold_kib", "crossing_features",
           "fit_junctions", "junction_model", "junction_plan", "junction_signatures", "measure_junctions", "weight_kib"]

DTYPE_BYTES = {"fp32": 4, "int8": 1}


@dataclass(frozen=True)
class ChainUnit:
    """Consecutive units of one network (two or more; identity skips left out) run as one file."""

    parts: tuple[BlockSig, ...]

    def __post_init__(self):
        if len(self.parts) < 2:
            raise ValueError(f"a chain needs at least two units, got {len(self.parts)}")
        for a, b in zip(self.parts, self.parts[1:]):
            if a.out_shape != b.in_shape:
                raise ValueError(f"chain {a.key} -> {b.key}: the first's output {a.out_shape} is not the second's "
                                 f"input {b.in_shape}")

    kind = "chain"

    @property
    def key(self) -> str:
        return "chain:" + " > ".join(p.key for p in self.parts)

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return self.parts[0].in_shape

    @property
    def first(self) -> BlockSig:
        return self.parts[0]

    @property
    def unit_keys(self) -> tuple[str, ...]:
        """Its units' keys: what the LUT records a measured chain by."""
        return tuple(p.key for p in self.parts)

    def module(self) -> nn.Module:
        return nn.Sequential(*(p.module() for p in self.parts)).eval()

    def example(self, seed: int = 0) -> torch.Tensor:
        return self.parts[0].example(seed)


def crossing_features(sig: BlockSig, precision: str) -> tuple[float, float]:
    """The junction into ``sig``: (1, KiB of its input tensor). The tensor that crosses is ``sig``'s
    input whatever came before it (an identity skip keeps the shape)."""
    c, h, w = sig.in_shape
    return (1.0, c * h * w * DTYPE_BYTES.get(precision, 4) / 1024)


_WEIGHTS: dict[str, int] = {}


def weight_kib(sig: BlockSig, precision: str) -> float:
    """KiB of the weights a unit's exported graph reads (convolutions and linear layers; batch norm
    folds into them)."""
    if sig.key not in _WEIGHTS:
        module = sig.module()
        _WEIGHTS[sig.key] = sum(m.weight.numel() + (0 if m.bias is None else m.bias.numel())
                                for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    return _WEIGHTS[sig.key] * DTYPE_BYTES.get(precision, 4) / 1024


def cold_kib(units: Sequence[BlockSig], precision: str, cache_kib: float | None,
             capacity_kib: float | None = None) -> float:
    """KiB of weights read from below the cache when ``units`` run over and over: those of every
    unit that fits in the cache alone, once all of them together outgrow its ``capacity_kib`` (the
    cache's size by default; nothing without a cache size)."""
    if not cache_kib:
        return 0.0
    w = [weight_kib(s, precision) for s in units if not s.is_identity]
    return float(sum(v for v in w if v <= cache_kib)) if sum(w) > (capacity_kib or cache_kib) else 0.0


def chain_features(unit: ChainUnit, precision: str, cache_kib: float | None = None,
                   capacity_kib: float | None = None) -> np.ndarray:
    """The junction features summed over a chain's crossings, and the chain's cold KiB."""
    crossings = np.sum([crossing_features(s, precision) for s in unit.parts[1:]], axis=0)
    return np.append(crossings, cold_kib(unit.parts, precision, cache_kib, capacity_kib))


@dataclass(frozen=True)
class JunctionModel:
    """Per crossing ``a + b * KiB`` (``coef``), and ``cold_ms_per_kib`` for the
    weights read from below the cache (applied when ``cold_on``: most networks of the space outgrow
    ``cache_kib``), fitted on measured chains."""

    coef: tuple[float, float]
    n: int
    precision: str = "fp32"
    errors: Mapping[str, Any] | None = None
    cold_ms_per_kib: float = 0.0
    cache_kib: float | None = None
    cold_share: float | None = None  # share of sampled networks whose weights outgrow the capacity
    capacity_kib: float | None = None  # the weights a chain holds warm (fitted; None: the cache's size)

    @property
    def cold_on(self) -> bool:
        return bool(self.cold_ms_per_kib and self.cache_kib and (self.cold_share or 0) >= 0.5)

    def extra(self, sig: BlockSig) -> float:
        """What a network pays for ``sig`` beyond its entry: the junction into it (nothing crosses
        into the stem; an identity skip is no unit) and, when on, its cold weights."""
        if sig.is_identity:
            return 0.0
        total = 0.0 if sig.kind == "stem" else float(np.dot(self.coef, crossing_features(sig, self.precision)))
        if self.cold_on:
            w = weight_kib(sig, self.precision)
            if w <= self.cache_kib:
                total += self.cold_ms_per_kib * w
        return total

    def network_ms(self, sigs: Sequence[BlockSig]) -> float:
        """What a network of these units pays beyond their entries."""
        return float(sum(self.extra(s) for s in sigs))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"form": "per crossing a + b * KiB crossing; d * KiB of cold weights",
                             "a_ms": self.coef[0], "b_ms_per_kib": self.coef[1],
                             "d_cold_ms_per_kib": self.cold_ms_per_kib, "cache_kib": self.cache_kib,
                             "capacity_kib": self.capacity_kib, "cold_share": self.cold_share,
                             "cold_on": self.cold_on, "n": self.n,
                             "precision": self.precision}
        if self.errors is not None:
            d["errors"] = dict(self.errors)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "JunctionModel":
        try:
            coef = (float(d["a_ms"]), float(d["b_ms_per_kib"]))
            cache, share, capacity = d.get("cache_kib"), d.get("cold_share"), d.get("capacity_kib")
            return cls(coef, int(d["n"]), str(d.get("precision", "fp32")), d.get("errors"),
                       float(d.get("d_cold_ms_per_kib", 0.0)), None if cache is None else float(cache),
                       None if share is None else float(share), None if capacity is None else float(capacity))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"a LUT junction model needs a_ms, b_ms_per_kib and n ({e})") from None


def junction_plan(space: Any, count: int, *, length: int = 4, seed: int = 0, whole: int | None = None) -> list[ChainUnit]:
    """``count`` distinct chains of ``length`` consecutive units drawn from networks sampled from
    ``space`` (seeded): a quarter start at the stem, a quarter end at the head, the rest anywhere,
    so the crossing tensors span the space's sizes. Then ``whole`` (default ``count // 5``) chains
    of every unit of a sampled network: the chains long enough to outgrow a cache that holds the
    short ones, for the cold weights."""
    if length < 2:
        raise ValueError(f"a chain has at least 2 units, got length {length}")
    rng = random.Random(f"edgekit-lut-junctions:{length}:{seed}")
    seen: dict[str, ChainUnit] = {}
    tries = 0
    while len(seen) < count and tries < 50 * count:
        tries += 1
        kept = [s for s in space.signatures(space.sample(rng)) if not s.is_identity]
        if len(kept) < length:
            continue
        last = len(kept) - length
        start = 0 if tries % 4 == 1 else last if tries % 4 == 2 else rng.randint(0, last)
        unit = ChainUnit(tuple(kept[start:start + length]))
        seen.setdefault(unit.key, unit)
    whole = count // 5 if whole is None else whole
    rng = random.Random(f"edgekit-lut-junctions:whole:{seed}")
    for _ in range(whole):
        kept = [s for s in space.signatures(space.sample(rng)) if not s.is_identity]
        if len(kept) > length:
            unit = ChainUnit(tuple(kept))
            seen.setdefault(unit.key, unit)
    return list(seen.values())


CAPACITY_EIGHTHS = range(8, 0, -1)  # the capacities tried: 8/8 of the L2 down to 1/8


def fit_junctions(rows: Sequence[tuple[ChainUnit, float]], precision: str, *, held_out: float = 0.2,
                  seed: int = 0, cache_kib: float | None = None,
                  network_kib: Sequence[float] | None = None) -> JunctionModel:
    """Least squares over measured chains ``(chain, chain_ms - sum of its units' entries)``, each
    row the sum of its junctions and its cold weights, at each capacity of :data:`CAPACITY_EIGHTHS`
    (eighths of ``cache_kib``); the capacity whose fits predict held-out chains best (five folds,
    each chain held out once) is kept, the larger one on a tie. Scored on a held-out share of the
    chains, then refitted on all. ``network_kib``: the weights of sampled networks of the space,
    which give the share of networks outgrowing the kept capacity."""
    if len(rows) < 4:
        raise ValueError(f"the junction fit needs at least 4 measured chains, got {len(rows)}")
    y = np.array([j for _, j in rows], np.float64)
    order = np.random.default_rng(seed).permutation(len(rows))
    n_test = max(1, int(round(held_out * len(rows))))
    test, train = order[:n_test], order[n_test:]

    def solve(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
        cols = x[idx]
        used = [0, 1] + ([2] if cols[:, 2].any() else [])
        coef, *_ = np.linalg.lstsq(cols[:, used], y[idx], rcond=None)
        full = np.zeros(3)
        full[used] = coef
        return full

    capacities = [cache_kib * k / 8 for k in CAPACITY_EIGHTHS] if cache_kib else [None]
    folds = order % min(5, len(rows))  # five folds of random chains: each chain held out once
    crossings = np.array([chain_features(c, precision)[:2] for c, _ in rows], np.float64)  # the same at every capacity
    best = None
    for capacity in capacities:
        x = np.column_stack([crossings, [cold_kib(c.parts, precision, cache_kib, capacity) for c, _ in rows]])
        cv = float(np.mean(np.concatenate([np.abs(x[folds == f] @ solve(x, np.flatnonzero(folds != f)) - y[folds == f])
                                           for f in np.unique(folds)])))
        if best is None or cv < best[0] - 1e-12:
            best = (cv, capacity, x)
    cv, capacity, x = best
    coef = solve(x, np.arange(len(rows)))
    part = solve(x, train)
    resid = x[test] @ part - y[test]
    per = y / x[:, 0]
    share = None
    if cache_kib and network_kib is not None and len(network_kib):
        share = float(np.mean(np.asarray(network_kib, np.float64) > capacity))
    errors = {"held_out": int(n_test), "held_out_mae_ms": float(np.mean(np.abs(resid))),
              "junction_mean_ms": float(per.mean()), "fit_mae_ms": float(np.mean(np.abs(x @ coef - y))),
              "cold_chains": int((x[:, 2] > 0).sum()), "capacity_cv_mae_ms": cv}
    return JunctionModel(tuple(float(v) for v in coef[:2]), len(rows), precision, errors, float(coef[2]),
                         cache_kib, share, capacity)


def junction_signatures(space: Any, count: int, *, length: int = 4, seed: int = 0) -> list[BlockSig]:
    """The units of the planned chains, each once: a build measures them as entries too (a chain's
    junction is its time less its units' measured entries)."""
    seen: dict[str, BlockSig] = {}
    for unit in junction_plan(space, count, length=length, seed=seed):
        for part in unit.parts:
            seen.setdefault(part.key, part)
    return list(seen.values())


def measure_junctions(lut: Lut, space: Any, measure: Any, *, count: int, length: int = 4, seed: int = 0,
                      out: Any = None, chunk: int = 8, progress: Any = None) -> Lut:
    """Measure ``count`` planned chains whole (those the LUT holds already are not measured again:
    a killed build resumes), fit the junction model on them and return the LUT with both. The
    chains' units must be measured entries of ``lut`` (see :func:`junction_signatures`)."""
    units = junction_plan(space, count, length=length, seed=seed)
    if len(units) < 4:
        raise ValueError(f"the space yields {len(units)} distinct chains of {length} units; the junction fit needs 4")
    missing = sorted({p.key for u in units for p in u.parts} - set(lut.entries))
    if missing:
        raise LutError(f"the LUT lacks {len(missing)} entries of the chains it measures (e.g. {missing[0]!r}); "
                       f"measure them first (`edgekit lut build` does)")
    stored = {tuple(c["units"]): float(c["ms"]) for c in (lut.junctions or {}).get("chains", ())}
    todo = [u for u in units if u.unit_keys not in stored]
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        ms = list(measure(part))
        if len(ms) != len(part):
            raise ValueError(f"the measuring function returned {len(ms)} latencies for {len(part)} chains")
        stored.update({u.unit_keys: float(m) for u, m in zip(part, ms)})
        lut = lut.replace(junctions={"chains": _chain_records(stored), "model": None})
        if out is not None:
            save_lut(lut, out)
        if progress is not None:
            progress(start + len(part), len(todo))
    lut = lut.adopting(getattr(measure, "latest_fingerprint", None))  # the cache sizes of a LUT an older agent began
    rows = [(u, stored[u.unit_keys] - sum(float(lut.entries[k]) for k in u.unit_keys)) for u in units]
    cache = (lut.device.get("caches") or {}).get("L2")
    totals = None
    if cache:
        rng = random.Random(f"edgekit-lut-cold:{seed}")
        nets = [space.signatures(space.sample(rng)) for _ in range(32)]
        totals = [sum(weight_kib(s, lut.precision) for s in n if not s.is_identity) for n in nets]
    model = fit_junctions(rows, lut.precision, seed=seed, cache_kib=cache, network_kib=totals)
    lut = lut.replace(junctions={"chains": _chain_records(stored), "model": model.to_dict(), "length": length})
    if len(lut.networks) >= 2:  # the overhead model was fitted on the sums without junctions: refit it
        from .predict import with_overhead
        lut = with_overhead(lut, space, [])
    if out is not None:
        save_lut(lut, out)
    return lut


def _chain_records(stored: Mapping[tuple[str, ...], float]) -> list[dict[str, Any]]:
    return [{"units": list(k), "ms": v} for k, v in stored.items()]


def junction_model(lut: Lut) -> JunctionModel | None:
    """The LUT's fitted junction model, or None (a LUT built without chains: its plain sum is the
    sum of its entries)."""
    model = (lut.junctions or {}).get("model")
    return None if model is None else JunctionModel.from_dict(model)

"""FBNetV2's DMaskingNAS on a device-measured, channel-aware latency table.

The supernet (:class:`~edgekit.nas.dmasking.SuperNetV2`) holds every layer once at its widest; the
architecture parameters are one logit vector per choice: the input resolution, the stem's channels,
and per layer its block type, output channels and expansion. Every step draws a Gumbel-softmax
sample of each (temperature ``tau``), masks channels and hidden channels with it, runs the searched
resolutions by subsample and interleave, and weights the logits. The expected latency is the exact
expectation over the discrete choices (:func:`~edgekit.nas.dmasking.expected_latency`) of the table
(:class:`~edgekit.nas.channel_lut.ChannelLatency`): measured entries, the fitted block model
between them.

Training is ``fbnet-v1``'s (:mod:`edgekit.nas.dnas`, same :class:`~edgekit.nas.dnas.DnasConfig`):
the weights on 80 % of the training images with SGD and the cross-entropy, the architecture on the
other 20 % with Adam and ``log(CE) + log(alpha) + beta log(log(LAT / unit))``, alternately each
epoch after the warm-up; ``tau`` starts at 5.0 and is multiplied by ``exp(-0.045)`` each epoch; with
a target, ``beta`` follows it. The derived network takes each choice's most likely value, or, with
a target, the most likely point whose plain sum lies in ``[T (1 - band), T]``
(:func:`most_likely_point`, exact dynamic programming over the layers with the previous layer's
channel choice as state, since a layer's latency depends on it).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..lut.lut import Lut, LutError
from ..lut.predict import Prediction, predict
from ..models.arch import ArchSpec
from .channel_lut import ChannelLatency
from .dmasking import BLOCK_TYPES, FBNetV2Space, SuperNetV2, expected_latency
from .dnas import (DnasConfig, _batches, _config_dict, _set_trainable, _training, architecture_loss, check_inputs,
                   derived, fastest_instead, load_arrays)

__all__ = ["ArchParams", "ChannelSearchResult", "most_likely_point", "search_channels", "search_channels_arrays"]

_TYPES = tuple(t[0] for t in BLOCK_TYPES)


class ArchParams(nn.Module):
    """The architecture logits of a space: ``resolution`` (R), ``stem`` (S), and per layer ``block``
    (8), ``channels`` (J) and ``expansion`` (K)."""

    def __init__(self, space: FBNetV2Space):
        super().__init__()
        self.space = space
        self.resolution = nn.Parameter(torch.zeros(len(space.resolutions)))
        self.stem = nn.Parameter(torch.zeros(len(space.stem_choices)))
        self.block = nn.ParameterList(nn.Parameter(torch.zeros(len(_TYPES))) for _ in space.layers)
        self.channels = nn.ParameterList(nn.Parameter(torch.zeros(len(layer.channels))) for layer in space.layers)
        self.expansion = nn.ParameterList(nn.Parameter(torch.zeros(len(layer.expansions))) for layer in space.layers)

    def _apply_all(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
        return {"resolution": fn(self.resolution), "stem": fn(self.stem), "block": [fn(p) for p in self.block],
                "channels": [fn(p) for p in self.channels], "expansion": [fn(p) for p in self.expansion]}

    def sample(self, tau: float) -> dict[str, Any]:
        """A Gumbel-softmax sample of every choice (soft, differentiable in the logits)."""
        return self._apply_all(lambda p: F.gumbel_softmax(p, tau=tau, hard=False, dim=-1))

    def probabilities(self) -> dict[str, Any]:
        return self._apply_all(lambda p: p.detach().softmax(-1))

    def log_probabilities(self) -> dict[str, Any]:
        return self._apply_all(lambda p: p.detach().double().log_softmax(-1).numpy())

    def argmax(self) -> dict[str, Any]:
        """The point of every choice's most likely value."""
        s = self.space
        pick = lambda p: int(p.detach().argmax())  # noqa: E731
        return {"resolution": s.resolutions[pick(self.resolution)], "stem": s.stem_choices[pick(self.stem)],
                "layers": [(_TYPES[pick(b)], layer.channels[pick(c)], layer.expansions[pick(e)])
                           for layer, b, c, e in zip(s.layers, self.block, self.channels, self.expansion)]}


class _Latency:
    """The table as tensors for :func:`expected_latency`."""

    def __init__(self, table: ChannelLatency):
        self.layers = [torch.tensor(t, dtype=torch.float32) for t in table.layers]
        self.stem = torch.tensor(table.stem, dtype=torch.float32)
        self.head = torch.tensor(table.head, dtype=torch.float32)

    def expected(self, arch: dict[str, Any]) -> torch.Tensor:
        return expected_latency(self.layers, self.stem, self.head, resolution=arch["resolution"],
                                stem_weights=arch["stem"], channel_weights=arch["channels"],
                                expansion_weights=arch["expansion"], block_weights=arch["block"])


@dataclass(frozen=True)
class ChannelSearchResult:
    spec: ArchSpec
    point: dict[str, Any]
    prediction: Prediction  # the LUT's plain sum (block model between measured entries) for the derived spec
    target_ms: float | None
    fastest_ms: float
    slowest_ms: float
    history: tuple[dict[str, float], ...] = ()
    probabilities: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    argmax: dict[str, Any] | None = None
    argmax_ms: float | None = None
    peak_rss_mb: float | None = None
    # the derivation again at another plain-sum target, from the same architecture probabilities
    # (``nas search --measure`` corrects its budget by what it measured); None without a trained search
    rederive: Callable[[float], "ChannelSearchResult"] | None = field(default=None, repr=False, compare=False)

    @property
    def choices(self) -> list[Any]:
        """The point as a LUT records a measured network."""
        return FBNetV2Space.point_list(self.point)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "point": FBNetV2Space.point_list(self.point),
                "predicted": self.prediction.to_dict(), "target_ms": self.target_ms, "fastest_ms": self.fastest_ms,
                "slowest_ms": self.slowest_ms, "history": list(self.history), "probabilities": self.probabilities,
                "block_types": list(_TYPES), "notes": list(self.notes), "seconds": self.seconds,
                "config": self.config, "argmax": None if self.argmax is None else FBNetV2Space.point_list(self.argmax),
                "argmax_ms": self.argmax_ms, "peak_rss_mb": self.peak_rss_mb}


# ---- derivation under a budget ----------------------------------------------------------------------

def most_likely_point(table: ChannelLatency, log_probs: dict[str, Any], low_ms: float, high_ms: float,
                      *, grid: int = 2000) -> dict[str, Any] | None:
    """The point with the largest summed log-probability of its choices whose plain sum lies in
    ``[low_ms, high_ms]``; None when no point does.

    Dynamic programming per resolution over the layers, the state the previous layer's channel
    choice and the latency so far on a grid of ``high / grid`` ms (measured from the sum of the
    parts' negative floors when entries are negative); the window is shrunk by the worst accumulated
    rounding, so the returned point lies inside it."""
    space = table.space
    if high_ms < low_ms:
        return None
    best: tuple[float, dict[str, Any]] | None = None
    for ri in range(len(space.resolutions)):
        found = _best_at(table, log_probs, ri, low_ms, high_ms, grid)
        if found is not None and (best is None or found[0] < best[0]):
            best = found
    return None if best is None else best[1]


def _best_at(table: ChannelLatency, lp: dict[str, Any], ri: int, low_ms: float, high_ms: float,
             grid: int) -> tuple[float, dict[str, Any]] | None:
    space = table.space
    # an entry can be negative (a junction's crossing that saves more than a small block costs): each
    # part's negative floor is taken out of its entries and out of the window, so every tick is >= 0
    stem = np.asarray(table.stem[ri], dtype=np.float64)
    head = np.asarray(table.head[ri], dtype=np.float64)
    floors = [min(0.0, float(stem.min()))] + [min(0.0, float(lat[ri].min())) for lat in table.layers]
    floors.append(min(0.0, float(head.min())))
    offset = sum(floors)
    span = high_ms - offset
    if span <= 0:
        return None
    step = span / grid
    slack = (len(space.layers) + 2) * 0.5
    hi = int(math.floor(span / step - slack))
    lo = max(0, int(math.ceil((low_ms - offset) / step + slack)))
    if hi < lo:
        return None
    n = hi + 1
    cost = np.full((len(space.stem_choices), n), np.inf)
    for i, ms in enumerate(stem - floors[0]):
        t = int(np.rint(ms / step))
        if t < n:
            cost[i, t] = -lp["stem"][i] - lp["resolution"][ri]
    picks = []
    for li, (layer, lat) in enumerate(zip(space.layers, table.layers)):
        ticks = np.rint((lat[ri] - floors[li + 1]) / step).astype(np.int64)  # (B, I, J, K)
        new = np.full((len(layer.channels), n), np.inf)
        pick = np.full((len(layer.channels), n), -1, dtype=np.int32)
        for b, i, k in np.ndindex(ticks.shape[0], ticks.shape[1], ticks.shape[3]):
            if not np.isfinite(cost[i]).any():
                continue
            extra = -lp["block"][li][b] - lp["expansion"][li][k]
            for j in range(ticks.shape[2]):
                t = ticks[b, i, j, k]
                if t >= n:
                    continue
                moved = np.full(n, np.inf)
                moved[t:] = cost[i, :n - t] + (extra - lp["channels"][li][j])
                better = moved < new[j]
                new[j, better] = moved[better]
                pick[j, better] = np.ravel_multi_index((b, i, k), (ticks.shape[0], ticks.shape[1], ticks.shape[3]))
        cost = new
        picks.append((pick, ticks.shape))
    best_j, best_t, best_cost = None, None, np.inf
    for j, ms in enumerate(head - floors[-1]):
        t = int(np.rint(ms / step))
        if t >= n:
            continue
        window = cost[j, max(0, lo - t):hi - t + 1] if hi - t >= 0 else np.array([])
        if window.size and np.isfinite(window).any():
            at = int(np.argmin(window))
            if window[at] < best_cost:
                best_j, best_t, best_cost = j, max(0, lo - t) + at, float(window[at])
    if best_j is None:
        return None
    j, t, layers = best_j, best_t, []
    for (pick, shape), layer, lat, floor in zip(reversed(picks), reversed(space.layers), reversed(table.layers),
                                                reversed(floors[1:-1])):
        b, i, k = np.unravel_index(int(pick[j, t]), (shape[0], shape[1], shape[3]))
        layers.append((_TYPES[b], layer.channels[j], layer.expansions[k]))
        t -= int(np.rint((lat[ri][b, i, j, k] - floor) / step))
        j = int(i)
    point = {"resolution": space.resolutions[ri], "stem": space.stem_choices[j], "layers": layers[::-1]}
    return best_cost, point


# ---- the search -------------------------------------------------------------------------------------

def _check_lut(space: FBNetV2Space, lut: Lut) -> None:
    if lut.space.get("name") != space.name:
        raise LutError(f"the LUT is of space {lut.space.get('name')!r}, not {space.name!r}: a channel search needs a "
                       f"channel-aware table (`edgekit lut build --space fbnet-v2`)")
    if dict(lut.space) != space.to_dict():
        diff = sorted(k for k in set(lut.space) | set(space.to_dict()) if lut.space.get(k) != space.to_dict().get(k))
        raise LutError(f"the LUT was built for another fbnet-v2 space (differs in {', '.join(diff)}): "
                       f"{dict(lut.space)}; search the LUT's space or build a LUT for this one")


def search_channels(space: FBNetV2Space, lut: Lut, *, data: str = "fashion-mnist",
                    config: DnasConfig = DnasConfig(),
                    progress: Callable[[dict[str, float]], None] | None = None) -> ChannelSearchResult:
    """DMaskingNAS on ``data``'s training split; a target below the fastest point returns that point."""
    _check_lut(space, lut)
    table = ChannelLatency(space, lut)
    early = _below_fastest(space, lut, table, config)
    if early is not None:
        return early
    x, y = load_arrays(space, data, config.limit)
    return _search(space, lut, table, x, y, config, progress)


def search_channels_arrays(space: FBNetV2Space, lut: Lut, x: np.ndarray, y: np.ndarray, *,
                           config: DnasConfig = DnasConfig(),
                           progress: Callable[[dict[str, float]], None] | None = None) -> ChannelSearchResult:
    """DMaskingNAS on preprocessed NCHW ``x`` (the space's full resolution) and labels ``y``."""
    _check_lut(space, lut)
    table = ChannelLatency(space, lut)
    early = _below_fastest(space, lut, table, config)
    return early if early is not None else _search(space, lut, table, x, y, config, progress)


def _below_fastest(space: FBNetV2Space, lut: Lut, table: ChannelLatency,
                   config: DnasConfig) -> ChannelSearchResult | None:
    fastest, fast_ms = table.fastest()
    instead = fastest_instead(space, fastest, fast_ms, config)
    if instead is None:
        return None
    spec, note = instead
    return ChannelSearchResult(spec, fastest, predict(spec, lut), config.target_ms, fast_ms, table.slowest()[1],
                               notes=(note,), config=_config_dict(config))


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _search(space: FBNetV2Space, lut: Lut, table: ChannelLatency, x: np.ndarray, y: np.ndarray, config: DnasConfig,
            progress: Callable[[dict[str, float]], None] | None) -> ChannelSearchResult:
    check_inputs(space, x)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    net, arch, latency = SuperNetV2(space).train(), ArchParams(space), _Latency(table)
    _, fast_ms = table.fastest()
    _, slow_ms = table.slowest()
    unit = config.latency_unit_ms or fast_ms / math.e
    w_idx, t_idx, w_opt, w_sched, t_opt = _training(config, len(x), list(net.parameters()), list(arch.parameters()))
    rng = np.random.default_rng(config.seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    beta, history = config.beta, []
    lo, hi = config.beta_range
    for epoch in range(config.epochs):
        tau = config.temperature(epoch)
        total, seen = 0.0, 0
        for idx in _batches(w_idx, config.batch_size, rng):
            with torch.no_grad():
                sample = arch.sample(tau)
            loss = F.cross_entropy(net(xt[idx], sample), yt[idx])
            w_opt.zero_grad(set_to_none=True)
            loss.backward()
            w_opt.step()
            total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
        w_sched.step()
        w_loss, t_loss = total / max(seen, 1), math.nan
        if epoch >= config.warmup_epochs:
            _set_trainable(list(net.parameters()), False)  # gradients flow through the weights to the logits
            total, seen = 0.0, 0
            for idx in _batches(t_idx, config.batch_size, rng):
                sample = arch.sample(tau)
                loss = architecture_loss(F.cross_entropy(net(xt[idx], sample), yt[idx]), latency.expected(sample),
                                         unit, beta, config)
                t_opt.zero_grad(set_to_none=True)
                loss.backward()
                t_opt.step()
                total, seen = total + float(loss.detach()) * len(idx), seen + len(idx)
                if config.target_ms is not None:
                    expected = float(latency.expected(arch.probabilities()))
                    beta = min(hi, max(lo, beta * math.exp(config.beta_gain * (expected - config.target_ms)
                                                           / config.target_ms)))
            _set_trainable(list(net.parameters()), True)
            t_loss = total / max(seen, 1)
        record = {"epoch": epoch + 1, "tau": tau, "beta": beta, "w_loss": w_loss, "theta_log_loss": t_loss,
                  "expected_ms": float(latency.expected(arch.probabilities())),
                  "argmax_ms": table.point_ms(arch.argmax()), "seconds": time.perf_counter() - start}
        history.append(record)
        if progress is not None:
            progress(record)
    argmax = arch.argmax()
    probs = {k: ([round(float(p), 4) for p in v] if isinstance(v, torch.Tensor) else
                 [[round(float(p), 4) for p in row] for row in v]) for k, v in arch.probabilities().items()}
    with torch.no_grad():
        log_probs = arch.log_probabilities()
    base = ChannelSearchResult(space.spec(argmax), argmax, predict(space.spec(argmax), lut), config.target_ms,
                               fast_ms, slow_ms, tuple(history), probs, (), time.perf_counter() - start,
                               _config_dict(config), argmax, table.point_ms(argmax), _peak_rss_mb())
    return derived(base, "point", space, lut, config, slow_ms,
                   lambda cfg: _derive(table, log_probs, argmax, cfg, slow_ms))


def _derive(table: ChannelLatency, log_probs: dict[str, Any], argmax: dict[str, Any], config: DnasConfig,
            slow_ms: float) -> tuple[dict[str, Any], str | None]:
    target = config.target_ms
    assert target is not None
    argmax_ms = table.point_ms(argmax)
    low = target * (1 - config.band)
    if low <= argmax_ms <= target or target >= slow_ms:
        return argmax, None
    point = most_likely_point(table, log_probs, low, target)
    window = f"[{low:.4g}, {target:.4g}] ms"
    if point is None:  # the window falls between the space's points: the most likely one below the target
        point, window = most_likely_point(table, log_probs, 0.0, target), f"<= {target:.4g} ms"
    if point is None:
        raise ValueError(f"no point of the space predicts {window}")
    return point, (f"the most likely choices (argmax) predict {argmax_ms:.4g} ms; derived the most likely network "
                   f"within {window} instead (derive='argmax' keeps the argmax)")

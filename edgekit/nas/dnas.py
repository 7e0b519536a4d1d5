"""FBNet v1 DNAS: a Gumbel-softmax supernet over a layer-wise space, latency from a LUT.

Every searchable layer runs all its candidates and sums them weighted by a Gumbel-softmax sample
``m_l = GumbelSoftmax(theta_l, tau)``. The expected latency ``LAT = fixed + sum_l sum_i m_li *
LUT(b_li)`` is differentiable through ``m``. The architecture loss is the paper's
``CE * alpha * log(LAT)^beta``; the weights ``w`` and the architecture parameters ``theta`` are
updated alternately each epoch, ``w`` on 80 % of the training images with SGD, ``theta`` on the
other 20 % with Adam, and ``tau`` starts at 5.0 and is multiplied by ``exp(-0.045)`` each epoch.
Without a target the final architecture takes the most likely candidate of every layer. With a
target ``T`` it is the most likely point (largest product of the layers' probabilities) whose LUT
plain sum lies in ``[T (1 - band), T]``, found exactly by dynamic programming over the layers (the
layers' latencies add up independently): the search ranks the candidates, the budget is spent in
full, and nothing slower than ``T`` comes out. A plain argmax is sensitive to how far the last few
Adam steps moved ``beta``, and lands anywhere from the fastest point to far above ``T``.

Two points of the paper's loss matter in practice:

- ``log(LAT)`` needs ``LAT > 1`` in its unit; the paper's phone latencies (about 20 ms) gave a log
  of 2-3. LAT is therefore expressed in units of ``LAT_min / e`` (``LAT_min`` = the fastest point of
  the space), so the log is >= 1 at any scale (``latency_unit_ms`` overrides it, e.g. 1.0 for ms).
- In the product form ``alpha`` multiplies the whole loss: with Adam it changes almost nothing. The
  latency pressure is ``beta``. With a target, ``beta`` is adapted after every ``theta`` step,
  ``beta *= exp(gain * (E[LAT] - T) / T)``, so the expected latency settles near the target.

The ``theta`` step descends ``log`` of that loss: the same direction at every step, finite at any beta.
The weights train on the cross-entropy alone: the latency factor does not depend on ``w``, so it
would only rescale the weights' learning rate as the architecture changes.

>>> # result = search(get_space("fbnet-v1", resolution=32, width=0.25, in_chans=1, num_classes=10),
>>> #                 load_lut("lut.json"), data="fashion-mnist", config=DnasConfig(target_ms=0.5))
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._checks import check_count
from ..calibration.data import load_dataset, preprocess, preprocessing_for
from ..exporters.artifact import atomic_write_bytes
from ..lut.lut import Lut
from ..lut.predict import Prediction, lookup, predict
from ..lut.space import CANDIDATES, FBNetV1Space
from ..models.arch import ArchSpec, BuildContext, build_block

__all__ = ["DnasConfig", "SearchResult", "SuperNet", "fastest_choices", "most_likely_within", "save_spec", "search",
           "search_arrays", "slowest_point_ms"]

# mean / std the ArchSpec networks of ``edgekit train --arch`` use, so a searched spec trains alike
_MEAN, _STD = 0.449, 0.226


@dataclass(frozen=True)
class DnasConfig:
    """Search settings. Optimizer defaults follow the FBNet paper's recipe (SGD for ``w``, Adam for
    ``theta``, alpha 0.2, beta 0.6, tau 5.0 x exp(-0.045) per epoch); data sizes are small-scale."""

    epochs: int = 8
    warmup_epochs: int = 1  # epochs that train w only, before theta starts to move
    batch_size: int = 64
    limit: int | None = 4000  # training images used (80 % for w, 20 % for theta)
    split: float = 0.8
    w_lr: float = 0.1
    w_momentum: float = 0.9
    w_weight_decay: float = 1e-4
    theta_lr: float = 0.01
    theta_weight_decay: float = 5e-4
    alpha: float = 0.2
    beta: float = 0.6
    tau0: float = 5.0
    tau_decay: float = 0.045
    target_ms: float | None = None
    beta_gain: float = 0.5  # how fast beta follows the target
    beta_range: tuple[float, float] = (0.05, 200.0)
    latency_unit_ms: float | None = None  # None = LAT_min / e
    derive: str = "budget"  # with a target: "budget" (most likely point in [T (1 - band), T]) or "argmax"
    band: float = 0.05
    seed: int = 0

    def __post_init__(self):
        for label, v in (("epochs", self.epochs), ("batch_size", self.batch_size)):
            check_count(label, v)
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_epochs {self.warmup_epochs} must be in [0, epochs={self.epochs}) so theta "
                             f"trains at least one epoch")
        if self.batch_size < 2:
            raise ValueError(f"batch_size {self.batch_size} must be >= 2 (BatchNorm needs a batch)")
        if not 0 < self.split < 1:
            raise ValueError(f"split {self.split} must be in (0, 1): the share of images that train w")
        for label, v in (("w_lr", self.w_lr), ("theta_lr", self.theta_lr), ("alpha", self.alpha),
                         ("tau0", self.tau0), ("beta_gain", self.beta_gain)):
            if not v > 0:
                raise ValueError(f"{label} {v!r} must be > 0")
        if self.beta < 0 or self.tau_decay < 0:
            raise ValueError(f"beta {self.beta} and tau_decay {self.tau_decay} must be >= 0")
        if self.target_ms is not None and not self.target_ms > 0:
            raise ValueError(f"target_ms {self.target_ms} must be > 0 ms")
        lo, hi = self.beta_range
        if not 0 < lo <= self.beta <= hi:
            raise ValueError(f"beta {self.beta} must lie in beta_range {self.beta_range} (0 < low <= beta <= high)")
        if self.latency_unit_ms is not None and not self.latency_unit_ms > 0:
            raise ValueError(f"latency_unit_ms {self.latency_unit_ms} must be > 0")
        if self.derive not in ("budget", "argmax"):
            raise ValueError(f"derive {self.derive!r} must be 'budget' or 'argmax'")
        if not 0 < self.band < 1:
            raise ValueError(f"band {self.band} must be in (0, 1): the share below the target the derived "
                             f"architecture may use")
        if self.limit is not None and self.limit < 5 * self.batch_size:
            raise ValueError(f"limit {self.limit} must be >= 5 x batch_size ({5 * self.batch_size}) so both the "
                             f"80 % and the 20 % split hold a batch")

    def temperature(self, epoch: int) -> float:
        return self.tau0 * math.exp(-self.tau_decay * epoch)


# ---- latency table -----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class LatencyTable:
    """The LUT latencies of a space: ``fixed_ms`` (stem + head, which every point runs) and
    ``per_layer`` (layers, candidates) in ms, candidates in :data:`CANDIDATES` order. A point's
    latency here is ``fixed_ms`` plus its layers' entries, added in that order."""

    fixed_ms: float
    per_layer: np.ndarray

    def __post_init__(self):
        per_layer = np.array(self.per_layer, dtype=np.float64)  # a read-only copy
        if per_layer.ndim != 2:
            raise ValueError(f"per_layer has shape {per_layer.shape}, expected (layers, candidates)")
        per_layer.setflags(write=False)
        object.__setattr__(self, "fixed_ms", float(self.fixed_ms))
        object.__setattr__(self, "per_layer", per_layer)

    @classmethod
    def of(cls, space: FBNetV1Space, lut: Lut) -> "LatencyTable":
        """Look every stem / head / candidate entry of ``space`` up in ``lut`` (a missing one is an error)."""
        fixed = sum(lookup([space.stem_signature(), space.head_signature()], lut))
        return cls(fixed, [lookup(space.layer_signatures(layer), lut) for layer in space.layers])

    def fastest(self) -> tuple[tuple[str, ...], float]:
        """The fastest point (per-layer minimum) and its latency."""
        picks = [int(np.argmin(ms)) for ms in self.per_layer]
        total = self.fixed_ms
        for ms, i in zip(self.per_layer, picks):
            total += float(ms[i])
        return tuple(CANDIDATES[i] for i in picks), float(total)

    def slowest_ms(self) -> float:
        """The latency of the slowest point (per-layer maximum)."""
        return float(self.fixed_ms + sum(float(ms.max()) for ms in self.per_layer))


# ---- supernet ----------------------------------------------------------------------------------

class SuperNet(nn.Module):
    """Stem -> per layer the Gumbel-weighted sum of all candidates -> head; ``theta`` is (layers, 9).

    ``table`` (default: looked up from ``lut``) gives the latencies."""

    def __init__(self, space: FBNetV1Space, lut: Lut, *, table: LatencyTable | None = None):
        super().__init__()
        if table is None:
            table = LatencyTable.of(space, lut)
        self.space = space
        self.stem = space.stem_signature().module().train()
        self.layers = nn.ModuleList(
            nn.ModuleList(build_block(b, BuildContext(layer.in_shape[0])) for b in space.candidates(layer))
            for layer in space.layers)
        self.head = space.head_signature().module().train()
        self.theta = nn.Parameter(torch.zeros(len(space.layers), len(CANDIDATES)))
        self.register_buffer("lat", torch.tensor(table.per_layer, dtype=torch.float64).float())  # (L, 9) ms
        self.fixed_ms = table.fixed_ms

    def weights(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if name != "theta"]

    def forward(self, x: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
        m = F.gumbel_softmax(self.theta, tau=tau, hard=False, dim=-1)  # (L, 9), rows sum to 1
        x = self.stem(x)
        for layer, mix in zip(self.layers, m):
            x = sum(w * cand(x) for w, cand in zip(mix, layer))  # (B, C_in, H, W) -> (B, C_out, H', W')
        latency = self.fixed_ms + (m * self.lat).sum()
        return self.head(x), latency

    def probabilities(self) -> torch.Tensor:
        return self.theta.detach().softmax(-1)

    def expected_ms(self) -> float:
        return self.fixed_ms + float((self.probabilities() * self.lat).sum())

    def choices(self) -> tuple[str, ...]:
        return tuple(CANDIDATES[i] for i in self.theta.detach().argmax(-1).tolist())


def fastest_choices(space: FBNetV1Space, lut: Lut) -> tuple[tuple[str, ...], float]:
    """The fastest point of the space by the LUT (per-layer minimum) and its plain-sum latency."""
    return LatencyTable.of(space, lut).fastest()


def slowest_point_ms(space: FBNetV1Space, lut: Lut) -> float:
    """The plain-sum latency of the slowest point of the space by the LUT (per-layer maximum)."""
    return LatencyTable.of(space, lut).slowest_ms()


# ---- search ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SearchResult:
    spec: ArchSpec
    choices: tuple[str, ...]
    prediction: Prediction  # the LUT's plain sum (and overhead model) for the derived spec
    target_ms: float | None
    fastest_ms: float
    slowest_ms: float
    history: tuple[dict[str, float], ...] = ()
    probabilities: tuple[tuple[float, ...], ...] = ()
    notes: tuple[str, ...] = ()
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)
    argmax: tuple[str, ...] = ()  # the most likely candidate of each layer, before the budget derivation
    argmax_ms: float | None = None
    # the derivation again at another plain-sum target, from the same architecture probabilities
    # (``nas search --measure`` corrects its budget by what it measured); None without a trained search
    rederive: Callable[[float], "SearchResult"] | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "choices": list(self.choices), "predicted": self.prediction.to_dict(),
                "target_ms": self.target_ms, "fastest_ms": self.fastest_ms, "slowest_ms": self.slowest_ms,
                "history": list(self.history), "probabilities": [list(p) for p in self.probabilities],
                "candidates": list(CANDIDATES), "notes": list(self.notes), "seconds": self.seconds,
                "config": self.config, "argmax": list(self.argmax), "argmax_ms": self.argmax_ms}


def _check_lut_space(space: FBNetV1Space, lut: Lut) -> None:
    if dict(lut.space) != space.to_dict():
        raise ValueError(f"the LUT was built for space {dict(lut.space)}, not {space.to_dict()}; search the LUT's "
                         f"space (FBNetV1Space.from_dict(lut.space)) or build a LUT for this one")


def load_arrays(space: FBNetV1Space, data: str, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Labelled training images of ``data`` preprocessed to the space's input (resolution, channels)."""
    c, r = space.in_chans, space.resolution
    pre = preprocessing_for({"input_size": [c, r, r], "mean": [_MEAN] * c, "std": [_STD] * c})
    ds = load_dataset(data, split="train", limit=limit)
    if ds.labels is None:
        raise ValueError(f"{data!r} has no labels; the search needs a labelled dataset (fashion-mnist, IDX files "
                         f"with labels, or class folders)")
    if len(ds.class_names) != space.num_classes:
        raise ValueError(f"{data!r} has {len(ds.class_names)} classes but the space (and its LUT) was built for "
                         f"num_classes {space.num_classes}; build the LUT with --num-classes {len(ds.class_names)}")
    return preprocess(ds.images, pre), ds.labels.astype(np.int64)


def search(space: FBNetV1Space, lut: Lut, *, data: str = "fashion-mnist", config: DnasConfig = DnasConfig(),
           progress: Callable[[dict[str, float]], None] | None = None) -> SearchResult:
    """Run DNAS on ``data`` (its training split) and return the derived architecture.

    A target below the fastest point of the space returns the fastest point at once, saying so."""
    _check_lut_space(space, lut)
    table = LatencyTable.of(space, lut)
    early = _below_fastest(space, lut, table, config)
    if early is not None:
        return early
    x, y = load_arrays(space, data, config.limit)
    return _search(space, lut, table, x, y, config, progress)


def fastest_instead(space: Any, fastest: Any, fast_ms: float, config: DnasConfig) -> tuple[ArchSpec, str] | None:
    """With a target below the fastest point (its plain sum ``fast_ms``): that point's spec and the
    note saying so; else None."""
    if config.target_ms is None or config.target_ms >= fast_ms:
        return None
    note = (f"target {config.target_ms:g} ms is below the fastest point of the space ({fast_ms:.4g} ms by the "
            f"LUT's plain sum): no search can reach it, so this is the fastest point")
    return space.spec(fastest, name=f"{space.name}-fastest"), note


def _below_fastest(space: FBNetV1Space, lut: Lut, table: LatencyTable, config: DnasConfig) -> SearchResult | None:
    fastest, fast_ms = table.fastest()
    instead = fastest_instead(space, fastest, fast_ms, config)
    if instead is None:
        return None
    spec, note = instead
    return SearchResult(spec, fastest, predict(spec, lut), config.target_ms, fast_ms, table.slowest_ms(),
                        notes=(note,), config=_config_dict(config))


def _config_dict(config: DnasConfig) -> dict[str, Any]:
    d = asdict(config)
    d["beta_range"] = list(config.beta_range)
    return d


def _split(n: int, config: DnasConfig) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(config.seed).permutation(n)
    cut = int(round(n * config.split))
    return order[:cut], order[cut:]


def check_inputs(space: Any, x: np.ndarray) -> None:
    """Refuse images that are not (N, in_chans, resolution, resolution) of the space."""
    if x.ndim != 4 or tuple(x.shape[1:]) != (space.in_chans, space.resolution, space.resolution):
        raise ValueError(f"inputs of shape {x.shape} do not match the space's (N, {space.in_chans}, "
                         f"{space.resolution}, {space.resolution})")


def _training(config: DnasConfig, n: int, weights: Sequence[nn.Parameter], theta: Sequence[nn.Parameter]):
    """The 80 / 20 split of ``n`` images and the optimizers: SGD with a cosine schedule for the
    weights, Adam for the architecture."""
    w_idx, t_idx = _split(n, config)
    if min(len(w_idx), len(t_idx)) < config.batch_size:
        raise ValueError(f"{n} images split {len(w_idx)}/{len(t_idx)} leave a split smaller than a batch of "
                         f"{config.batch_size}; use more images or a smaller batch")
    w_opt = torch.optim.SGD(weights, lr=config.w_lr, momentum=config.w_momentum, weight_decay=config.w_weight_decay)
    w_sched = torch.optim.lr_scheduler.CosineAnnealingLR(w_opt, T_max=config.epochs)
    t_opt = torch.optim.Adam(theta, lr=config.theta_lr, weight_decay=config.theta_weight_decay)
    return w_idx, t_idx, w_opt, w_sched, t_opt


def _batches(idx: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    idx = rng.permutation(idx)
    return [idx[i:i + batch_size] for i in range(0, len(idx) - 1, batch_size) if len(idx[i:i + batch_size]) > 1]


def search_arrays(space: FBNetV1Space, lut: Lut, x: np.ndarray, y: np.ndarray, *, config: DnasConfig = DnasConfig(),
                  progress: Callable[[dict[str, float]], None] | None = None) -> SearchResult:
    """DNAS on preprocessed NCHW ``x`` (float32) and labels ``y``."""
    _check_lut_space(space, lut)
    table = LatencyTable.of(space, lut)
    early = _below_fastest(space, lut, table, config)
    if early is not None:
        return early
    return _search(space, lut, table, x, y, config, progress)


def _search(space: FBNetV1Space, lut: Lut, table: LatencyTable, x: np.ndarray, y: np.ndarray, config: DnasConfig,
            progress: Callable[[dict[str, float]], None] | None) -> SearchResult:
    """The search itself, after the LUT's space and the target's reachability were checked."""
    check_inputs(space, x)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    net = SuperNet(space, lut, table=table)
    _, fast_ms = table.fastest()
    slowest_ms = table.slowest_ms()
    unit = config.latency_unit_ms or fast_ms / math.e
    w_idx, t_idx, w_opt, w_sched, t_opt = _training(config, len(x), net.weights(), [net.theta])
    rng = np.random.default_rng(config.seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    beta, history = config.beta, []
    for epoch in range(config.epochs):
        tau = config.temperature(epoch)
        w_loss = _train_weights(net, w_opt, xt, yt, _batches(w_idx, config.batch_size, rng), tau)
        w_sched.step()
        t_loss = math.nan  # mean log of the paper's architecture loss
        if epoch >= config.warmup_epochs:
            t_loss, beta = _train_theta(net, t_opt, xt, yt, _batches(t_idx, config.batch_size, rng), tau, beta,
                                        unit, config)
        record = {"epoch": epoch + 1, "tau": tau, "beta": beta, "w_loss": w_loss, "theta_log_loss": t_loss,
                  "expected_ms": net.expected_ms(), "argmax_ms": _plain(space, net.choices(), lut),
                  "seconds": time.perf_counter() - start}
        history.append(record)
        if progress is not None:
            progress(record)
    argmax = net.choices()
    log_probs = net.theta.detach().double().log_softmax(-1).numpy()
    base = SearchResult(space.spec(argmax), argmax, predict(space.spec(argmax), lut), config.target_ms, fast_ms,
                        slowest_ms, tuple(history),
                        tuple(tuple(round(float(p), 4) for p in row) for row in net.probabilities()), (),
                        time.perf_counter() - start, _config_dict(config), argmax, _plain(space, argmax, lut))
    return derived(base, "choices", space, lut, config, slowest_ms,
                   lambda cfg: _derive_budget(space, lut, table, slowest_ms, log_probs, cfg.target_ms, cfg.band,
                                              argmax))


def derived(base: Any, field_name: str, space: Any, lut: Lut, config: DnasConfig, slowest_ms: float,
            derive: Callable[[DnasConfig], tuple[Any, str | None]]) -> Any:
    """A search's result from ``base`` (its argmax): derived by ``derive(config)`` (the network and a
    note) under ``config.target_ms`` when ``config.derive`` is "budget", or ``base`` with its notes
    without a target. Its ``rederive`` derives again at another plain-sum target; ``field_name`` is
    the result's field of the derived network ("choices" or "point")."""
    def rederive(target_ms: float) -> Any:
        cfg = replace(config, target_ms=target_ms)
        network, derive_note = derive(cfg) if config.derive == "budget" else (base.argmax, None)
        spec = space.spec(network)
        prediction = predict(spec, lut)
        notes = _notes(prediction, cfg, slowest_ms) + ((derive_note,) if derive_note else ())
        return replace(base, spec=spec, prediction=prediction, target_ms=target_ms, notes=notes, rederive=rederive,
                       **{field_name: network})

    if config.target_ms is None:
        return replace(base, notes=_notes(base.prediction, config, slowest_ms))
    return rederive(config.target_ms)


def most_likely_within(space: FBNetV1Space, lut: Lut, log_probs: np.ndarray, low_ms: float,
                       high_ms: float) -> tuple[str, ...] | None:
    """The point of the space with the largest ``sum_l log_probs[l, choice_l]`` whose LUT plain sum
    lies in ``[low_ms, high_ms]``; None when no point does.

    A multiple-choice knapsack solved by dynamic programming over the layers on a grid of
    ``(high - fixed) / 4000`` ms. The grid rounds each layer's latency; the window is shrunk by the
    worst accumulated rounding, so the returned point is always inside it."""
    log_probs = np.asarray(log_probs, dtype=np.float64)
    if log_probs.shape != (len(space.layers), len(CANDIDATES)):
        raise ValueError(f"log_probs has shape {log_probs.shape}, expected ({len(space.layers)}, {len(CANDIDATES)})")
    return _most_likely_within(LatencyTable.of(space, lut), log_probs, low_ms, high_ms)


def _most_likely_within(table: LatencyTable, log_probs: np.ndarray, low_ms: float,
                        high_ms: float) -> tuple[str, ...] | None:
    """:func:`most_likely_within` over ``table``; ``log_probs`` float64, one row per layer of it (the
    public function checks a caller's; the search passes its theta's log-softmax)."""
    fixed, lat = table.fixed_ms, table.per_layer
    # a layer's entries can be negative (a junction model's crossing that saves more than a small
    # block's entry costs): move each layer's negative floor into the fixed part so every tick is >= 0
    floor = np.minimum(lat.min(axis=1), 0.0)
    fixed, lat = fixed + float(floor.sum()), lat - floor[:, None]
    n_layers, n_candidates = lat.shape
    budget = high_ms - fixed
    if budget <= 0 or high_ms < low_ms:
        return None
    step = budget / 4000
    ticks = np.rint(lat / step).astype(np.int64)  # (L, 9)
    slack = n_layers * 0.5  # worst rounding of the sum, in ticks
    hi = int(math.floor(budget / step - slack))
    lo = max(0, int(math.ceil((low_ms - fixed) / step + slack)))
    if hi < lo:
        return None
    cost = np.full(hi + 1, np.inf)
    cost[0] = 0.0
    pick = np.zeros((n_layers, hi + 1), dtype=np.int8)
    for l in range(n_layers):
        best = np.full(hi + 1, np.inf)
        for i in range(n_candidates):
            k = ticks[l, i]
            if k > hi or not np.isfinite(log_probs[l, i]):
                continue
            moved = np.full(hi + 1, np.inf)
            moved[k:] = cost[:hi + 1 - k] - log_probs[l, i]
            better = moved < best
            best[better] = moved[better]
            pick[l, better] = i
        cost = best
    window = cost[lo:hi + 1]
    if not np.isfinite(window).any():
        return None
    at = lo + int(np.argmin(window))
    out = []
    for l in reversed(range(n_layers)):
        i = int(pick[l, at])
        out.append(CANDIDATES[i])
        at -= ticks[l, i]
    return tuple(reversed(out))


def _derive_budget(space: FBNetV1Space, lut: Lut, table: LatencyTable, slowest_ms: float, log_probs: np.ndarray,
                   target_ms: float, band: float, argmax: tuple[str, ...]) -> tuple[tuple[str, ...], str | None]:
    argmax_ms = _plain(space, argmax, lut)
    low = target_ms * (1 - band)
    if low <= argmax_ms <= target_ms:
        return argmax, None
    if target_ms >= slowest_ms:
        return argmax, None
    choices = _most_likely_within(table, log_probs, low, target_ms)
    window = f"[{low:.4g}, {target_ms:.4g}] ms"
    if choices is None:  # the window falls between the space's points: the most likely one below T
        choices, window = _most_likely_within(table, log_probs, 0.0, target_ms), f"<= {target_ms:.4g} ms"
    if choices is None:  # cannot happen above the fastest point, which the search checked first
        raise ValueError(f"no point of the space predicts {window}")
    return choices, (f"the most likely candidates (argmax) predict {argmax_ms:.4g} ms; derived the most likely "
                     f"architecture within {window} instead (derive='argmax' keeps the argmax)")


def _plain(space: FBNetV1Space, choices: Sequence[str], lut: Lut) -> float:
    return float(sum(lookup(space.signatures(choices), lut)))


def architecture_loss(ce: torch.Tensor, latency: torch.Tensor, unit: float, beta: float,
                      config: DnasConfig) -> torch.Tensor:
    """``log(CE * alpha * log(LAT / unit)^beta)``: at every step the paper loss's gradient direction
    (scaled by 1 / loss), and finite where the product overflows float32 (``log(LAT)^beta`` at beta ~
    100)."""
    lat_log = torch.log(latency / unit)
    if float(lat_log.detach()) <= 0:
        raise ValueError(f"log(LAT / unit) is {float(lat_log.detach()):.3g} <= 0 with latency_unit_ms {unit:g}: "
                         f"use a unit below {float(latency.detach()) / math.e:.3g} ms (or None for LAT_min / e)")
    return torch.log(ce) + math.log(config.alpha) + beta * torch.log(lat_log)


def _set_trainable(params: Sequence[nn.Parameter], on: bool) -> None:
    for p in params:
        p.requires_grad_(on)


def _train_weights(net: SuperNet, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                   batches: list[np.ndarray], tau: float) -> float:
    net.train()
    net.theta.requires_grad_(False)  # theta is fixed in the w phase (its samples still pick the paths)
    _set_trainable(net.weights(), True)
    total = 0.0
    for idx in batches:
        logits, _ = net(x[idx], tau)
        loss = F.cross_entropy(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
    net.theta.requires_grad_(True)
    return total / sum(len(i) for i in batches)


def _train_theta(net: SuperNet, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                 batches: list[np.ndarray], tau: float, beta: float, unit: float,
                 config: DnasConfig) -> tuple[float, float]:
    net.train()
    _set_trainable(net.weights(), False)  # gradients flow through the weights to theta, not into them
    total = 0.0
    lo, hi = config.beta_range
    for idx in batches:
        logits, latency = net(x[idx], tau)
        loss = architecture_loss(F.cross_entropy(logits, y[idx]), latency, unit, beta, config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        if config.target_ms is not None:
            gap = (net.expected_ms() - config.target_ms) / config.target_ms
            beta = min(hi, max(lo, beta * math.exp(config.beta_gain * gap)))
    _set_trainable(net.weights(), True)
    return total / sum(len(i) for i in batches), beta


def _notes(prediction: Prediction, config: DnasConfig, slowest: float) -> tuple[str, ...]:
    notes = []
    if config.target_ms is not None and config.target_ms >= slowest:
        notes.append(f"target {config.target_ms:g} ms is at or above the slowest point of the space "
                     f"({slowest:.4g} ms): latency did not constrain the search")
    elif config.target_ms is not None and prediction.plain_ms > config.target_ms:
        notes.append(f"the derived architecture predicts {prediction.plain_ms:.4g} ms, above the target "
                     f"{config.target_ms:g} ms; search longer or lower the target")
    return tuple(notes)


def save_spec(result: SearchResult, path: str | Path) -> Path:
    """Write the searched ArchSpec (``edgekit export --arch`` and ``edgekit train`` read it) atomically."""
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"output directory {path.parent} does not exist; create it first")
    atomic_write_bytes(path, result.spec.to_json(indent=1).encode())
    return path

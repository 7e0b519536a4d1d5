"""Int8 range estimators: which float interval [lo, hi] each tensor's 256 levels cover.

A ``RangeObserver`` sees a tensor's values batch after batch and keeps bounded statistics: the
running min / max and a histogram of a fixed number of bins (8192 by default, 64 KiB) on a uniform
grid. When a batch falls outside the grid, the grid grows by an integer factor ``k`` and a whole
number of old bins ``m``, so old bins map onto new ones exactly (``new = (old + m) // k``); no
counts are interpolated and memory does not grow with the number of batches. Exact zeros (half of
a ReLU's outputs) are counted apart: int8 holds 0 exactly, so the KL and MSE searches leave them out.

Estimators are frozen configs with ``compute(observer, *, symmetric) -> (lo, hi)``:

* ``MinMax()`` — the observed extremes.
* ``Percentile(p)`` — the p-th percentile (of |x| when symmetric; of both tails otherwise).
* ``Entropy(bins, quant_levels)`` — TensorRT-style: the clipping threshold whose quantized
  distribution has the smallest KL divergence from the observed one.
* ``MSE(candidates)`` — the clipping range with the smallest expected int8 quantization MSE.

The histogram estimators assume values spread uniformly inside a bin. Every range contains 0 (so
zero is exact in int8); a symmetric range is (-a, a). A range narrower than ``MIN_WIDTH`` (an
all-zero tensor, or a constant within 1e-6 of zero) becomes (-1.0, 1.0): any range represents such
a tensor exactly, and a unit range keeps the scale a normal float. A non-zero constant c gives
(0, c) (or (c, 0)), or (-|c|, |c|) when symmetric.

>>> import numpy as np
>>> x = np.random.default_rng(0).normal(size=100_000)
>>> lo, hi = ranges_for_arrays({"act": [x]}, Percentile(99.9), symmetric=True)["act"]
>>> 3.0 < hi < 3.6 and lo == -hi
True
"""
from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass
from typing import Any, ClassVar, Iterable, Mapping

import numpy as np

from .._checks import is_count

__all__ = ["RangeObserver", "RangeEstimator", "MinMax", "Percentile", "Entropy", "MSE", "METHODS",
           "method_from_name", "ranges_for_arrays", "scale_zero_point", "fake_quantize", "quantization_mse",
           "MIN_WIDTH"]

MIN_WIDTH = 1e-6
QMIN, QMAX = -128, 127
_CHUNK = 1 << 20  # elements converted to float64 at a time, so a large activation costs 8 MiB, not 8 bytes/value


# ---- observer ----------------------------------------------------------------------------------

class RangeObserver:
    """Running min / max and a fixed-size, exactly re-binned histogram of one tensor's values
    (``histogram=False`` keeps min / max only: what MinMax reads, at a fraction of the cost).

    >>> obs = RangeObserver("conv1")
    >>> obs.update(np.array([0.0, 1.0, 2.0])); obs.update(np.array([-4.0]))
    >>> obs.min, obs.max, obs.count
    (-4.0, 2.0, 4)
    """

    def __init__(self, name: str = "tensor", *, bins: int = 8192, histogram: bool = True):
        if not is_count(bins, 64):
            raise ValueError(f"observer bins {bins!r} must be a whole number >= 64")
        self.name = name
        self.bins = bins
        self.keeps_histogram = bool(histogram)
        self.count = 0
        self.zeros = 0       # exact zeros (ReLU outputs) are counted here, not in _counts
        self.batches = 0
        self.min = math.inf
        self.max = -math.inf
        self._lo = 0.0       # left edge of the grid
        self._width = 0.0    # bin width; 0 until the first value
        self._counts = np.zeros(bins, dtype=np.int64)

    def update(self, x: Any) -> None:
        """Add one batch (numpy array or torch tensor). NaN or Inf is refused with its count and place."""
        x = _as_numpy(x)
        if x.size == 0:
            raise ValueError(f"tensor {self.name!r}: batch {self.batches} is empty")
        flat = x.reshape(-1)
        bmin, bmax = flat.min(), flat.max()
        if not (math.isfinite(bmin) and math.isfinite(bmax)):  # a NaN makes both NaN; an Inf shows in one
            self._check_finite(flat, x.shape)
        bmin, bmax = float(bmin), float(bmax)
        if self.keeps_histogram:
            self._histogram_add(flat, bmin, bmax)
        self.min, self.max = min(self.min, bmin), max(self.max, bmax)
        self.count += flat.size
        self.batches += 1

    def _histogram_add(self, flat: np.ndarray, bmin: float, bmax: float) -> None:
        """Count ``flat`` (whose extremes are ``bmin``, ``bmax``) into the histogram, the grid widened
        first when the values fall outside it; called before ``min`` / ``max`` take the batch in."""
        if self._width == 0.0 or self.min == self.max:   # no values yet, or one constant: (re)start the grid
            self._restart_grid(min(bmin, self.min), max(bmax, self.max))
        elif bmin < self._lo or bmax > self._hi:
            self._grow(min(bmin, self.min), max(bmax, self.max))
        for i in range(0, flat.size, _CHUNK):
            chunk = flat[i:i + _CHUNK].astype(np.float64)
            chunk = chunk[chunk != 0]                                  # exact zeros are counted apart
            idx = np.floor((chunk - self._lo) / self._width).astype(np.int64)
            self._counts += np.bincount(np.clip(idx, 0, self.bins - 1), minlength=self.bins)
        self.zeros += int(flat.size - np.count_nonzero(flat))

    @property
    def _hi(self) -> float:
        return self._lo + self.bins * self._width

    def histogram(self, *, exclude_zeros: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(counts float64 (bins,), edges (bins + 1,)) with the outer edges clamped to [min, max].
        ``exclude_zeros`` leaves exact zeros out: every range holds 0 exactly, so they have no
        quantization error, and spread over their bin they would mislead the KL / MSE searches."""
        self._require_data()
        if not self.keeps_histogram:
            raise ValueError(f"tensor {self.name!r}: this observer keeps min / max only (histogram=False); "
                             f"build it with histogram=True for a histogram-based range estimator")
        edges = self._lo + self._width * np.arange(self.bins + 1, dtype=np.float64)
        edges = np.clip(edges, self.min, self.max)
        counts = self._counts.astype(np.float64)
        if not exclude_zeros and self.zeros:
            counts[self._bin_of(0.0)] += self.zeros
        return counts, edges

    def _restart_grid(self, lo: float, hi: float) -> None:
        seen = int(self._counts.sum())                 # all equal to self.min (a constant so far)
        self._counts[:] = 0
        self._lo = lo
        # a constant: a tiny grid, rebuilt from scratch when a different value comes
        self._width = (hi - lo) / self.bins if hi > lo else max(abs(lo), 1.0) * 2.0 ** -30
        if seen:
            self._counts[self._bin_of(self.min)] += seen

    def _bin_of(self, value: float) -> int:
        return int(np.clip(np.floor((value - self._lo) / self._width), 0, self.bins - 1))

    def _grow(self, lo: float, hi: float) -> None:
        w = self._width
        m = max(0, math.ceil((self._lo - lo) / w))                    # old bins added on the left
        new_lo = self._lo - m * w
        k = max(1, math.ceil((hi - new_lo) / (self.bins * w)))        # old bins per new bin
        while new_lo + self.bins * k * w < hi:                        # float rounding at the edge
            k += 1
        new_idx = np.minimum((np.arange(self.bins) + m) // k, self.bins - 1)
        self._counts = np.bincount(new_idx, weights=self._counts, minlength=self.bins).astype(np.int64)
        self._lo, self._width = new_lo, k * w

    def _check_finite(self, flat: np.ndarray, shape: tuple[int, ...]) -> None:
        if not np.issubdtype(flat.dtype, np.floating):
            return
        for i in range(0, flat.size, _CHUNK):
            bad = ~np.isfinite(flat[i:i + _CHUNK])
            if bad.any():
                n_bad = int(np.count_nonzero(~np.isfinite(flat)))
                n_nan = int(np.count_nonzero(np.isnan(flat)))
                first = np.unravel_index(i + int(np.argmax(bad)), shape)
                raise ValueError(f"tensor {self.name!r}: batch {self.batches} has {n_bad} non-finite values "
                                 f"({n_nan} NaN, {n_bad - n_nan} Inf), the first at index "
                                 f"{tuple(int(j) for j in first)}; ranges cannot be computed from them — check "
                                 f"the calibration inputs (edgekit.calibration.calibration_batch refuses NaN images)")

    def _require_data(self) -> None:
        if self.count == 0:
            raise ValueError(f"tensor {self.name!r}: the observer has seen no values; run calibration batches first")


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"observer takes numeric arrays, got dtype {x.dtype}")
    return x


# ---- estimators --------------------------------------------------------------------------------

class RangeEstimator:
    """Base of the estimator configs; subclasses are frozen dataclasses."""

    name: ClassVar[str] = ""
    needs_histogram: ClassVar[bool] = True  # False: min / max alone decide the range

    def compute(self, observer: RangeObserver, *, symmetric: bool) -> tuple[float, float]:
        observer._require_data()
        if observer.max - observer.min == 0.0 or max(abs(observer.min), abs(observer.max)) < MIN_WIDTH:
            return _finish(observer.min, observer.max, symmetric)  # a constant: nothing to clip
        return _finish(*self._compute(observer, symmetric), symmetric)

    def _compute(self, observer: RangeObserver, symmetric: bool) -> tuple[float, float]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """For ``Calibration.details`` in the manifest: ``{"method": name, **options}``."""
        return {"method": self.name, **asdict(self)}


@dataclass(frozen=True)
class MinMax(RangeEstimator):
    """The observed extremes; symmetric: (-max|x|, max|x|).

    >>> obs = RangeObserver(); obs.update(np.array([-1.0, 3.0]))
    >>> MinMax().compute(obs, symmetric=False), MinMax().compute(obs, symmetric=True)
    ((-1.0, 3.0), (-3.0, 3.0))
    """

    name: ClassVar[str] = "minmax"
    needs_histogram: ClassVar[bool] = False

    def _compute(self, observer, symmetric):
        return observer.min, observer.max


@dataclass(frozen=True)
class Percentile(RangeEstimator):
    """Clip at the ``percentile``-th percentile: of |x| when symmetric, of each tail otherwise
    (lo at 100 - p, hi at p). Interpolated inside histogram bins; ``percentile=100`` is MinMax.

    >>> Percentile(99.9).percentile
    99.9
    """

    percentile: float = 99.99
    name: ClassVar[str] = "percentile"

    def __post_init__(self):
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) \
                or not 50 < self.percentile <= 100:
            raise ValueError(f"percentile {self.percentile!r} must be in (50, 100], e.g. 99.99")

    def _compute(self, observer, symmetric):
        counts, edges = observer.histogram()
        q = self.percentile / 100.0
        if symmetric:
            a = _abs_quantile(counts, edges, q)
            return -a, a
        return _quantile(counts, edges, 1.0 - q), _quantile(counts, edges, q)


@dataclass(frozen=True)
class Entropy(RangeEstimator):
    """TensorRT-style KL calibration: |x| up to max|x| in ``bins`` bins; for each candidate threshold
    t (a bin edge), the observed distribution on [-t, t] (outliers folded into the edge bins) is
    compared with its ``quant_levels``-level quantization, and the t with the smallest KL divergence
    wins. Asymmetric: the window is [-t, t] cut to [min, max], so one-signed data (after ReLU) gets all
    ``quant_levels`` levels on [0, t]. Exact zeros are left out (int8 holds them exactly; smeared over
    a quantization bin, a ReLU's spike at 0 would drive the threshold far too low).

    >>> Entropy().bins, Entropy().quant_levels
    (2048, 256)
    """

    bins: int = 2048
    quant_levels: int = 256
    name: ClassVar[str] = "entropy"

    def __post_init__(self):
        for label, v in (("bins", self.bins), ("quant_levels", self.quant_levels)):
            if not is_count(v, 2):
                raise ValueError(f"entropy {label} {v!r} must be a whole number >= 2")
        if self.bins < self.quant_levels:
            raise ValueError(f"entropy bins {self.bins} must be >= quant_levels {self.quant_levels}, "
                             f"e.g. Entropy(bins=2048, quant_levels=256)")

    def _compute(self, observer, symmetric):
        counts, edges = observer.histogram(exclude_zeros=True)
        amax = max(abs(observer.min), abs(observer.max))
        grid = np.linspace(-amax, amax, 2 * self.bins + 1)            # bins per side, 0 on an edge
        hist = np.diff(_cdf(counts, edges, grid))
        step = amax / self.bins
        jmin = int(np.clip(np.floor((observer.min + amax) / step), 0, 2 * self.bins - 1))
        jmax = int(np.clip(np.ceil((observer.max + amax) / step), jmin + 1, 2 * self.bins))
        best, best_kl = (0, 2 * self.bins), math.inf
        for i in range(max(1, self.quant_levels // 2), self.bins + 1):
            s, e = self.bins - i, self.bins + i
            if not symmetric:
                s, e = max(s, jmin), min(e, jmax)
            if e - s < self.quant_levels:
                continue
            kl = _kl_divergence(hist, s, e, self.quant_levels)
            if kl < best_kl:
                best, best_kl = (s, e), kl
            if not symmetric and s == jmin and e == jmax:
                break                                                  # wider windows are all the same
        s, e = best
        if symmetric:
            return -(e - self.bins) * step, (e - self.bins) * step
        return max(observer.min, grid[s]), min(observer.max, grid[e])


@dataclass(frozen=True)
class MSE(RangeEstimator):
    """The clipping range that minimises the expected int8 quantization MSE (rounding inside the range
    + clipping outside), computed exactly for values uniform within each histogram bin. Searched over
    ``candidates`` evenly spaced factors alpha in (0, 1] of the min/max range (max|x| when symmetric),
    then ``candidates`` more between the best one's neighbours.

    >>> MSE(candidates=50).candidates
    50
    """

    candidates: int = 100
    name: ClassVar[str] = "mse"

    def __post_init__(self):
        if not is_count(self.candidates, 2) or self.candidates > 10_000:
            raise ValueError(f"mse candidates {self.candidates!r} must be a whole number in [2, 10000], e.g. 100")

    def _compute(self, observer, symmetric):
        counts, edges = observer.histogram(exclude_zeros=True)  # exact zeros have no error in any range
        keep = counts > 0
        a, b, c = edges[:-1][keep], edges[1:][keep], counts[keep]
        lo0, hi0 = min(observer.min, 0.0), max(observer.max, 0.0)
        if symmetric:
            lo0, hi0 = -max(-lo0, hi0), max(-lo0, hi0)
        n = self.candidates
        alphas = np.arange(1, n + 1) / n
        best = alphas[np.argmin(_expected_mse(a, b, c, lo0 * alphas, hi0 * alphas, symmetric))]
        fine = np.linspace(max(best - 1 / n, 1 / (n * n)), min(best + 1 / n, 1.0), n)
        best = fine[np.argmin(_expected_mse(a, b, c, lo0 * fine, hi0 * fine, symmetric))]
        return lo0 * best, hi0 * best


METHODS: dict[str, type[RangeEstimator]] = {"minmax": MinMax, "percentile": Percentile, "entropy": Entropy,
                                           "mse": MSE}


def method_from_name(name: str) -> RangeEstimator:
    """The estimator for a CLI ``--calib-method`` name, with its default options.

    >>> method_from_name("percentile")
    Percentile(percentile=99.99)
    """
    if name not in METHODS:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"calibration method {name!r} is not one of {', '.join(METHODS)}{hint}")
    return METHODS[name]()


def ranges_for_arrays(named_arrays: Mapping[str, Iterable[Any]] | Iterable[Mapping[str, Any]],
                      estimator: RangeEstimator | str, symmetric: bool = False, *,
                      bins: int = 8192) -> dict[str, tuple[float, float]]:
    """Observe every tensor and return ``{name: (lo, hi)}`` in first-seen order. ``named_arrays`` is
    either ``{name: [batch, batch, ...]}`` or an iterable of per-batch ``{name: array}`` dicts (e.g.
    a generator filled by forward hooks), so batches never have to be held in memory together.

    >>> ranges_for_arrays([{"x": np.array([0.0, 2.0])}, {"x": np.array([-1.0])}], "minmax")
    {'x': (-1.0, 2.0)}
    """
    if isinstance(estimator, str):
        estimator = method_from_name(estimator)
    if not isinstance(estimator, RangeEstimator):
        raise ValueError(f"estimator {estimator!r} must be MinMax(), Percentile(), Entropy(), MSE() or one of "
                         f"{list(METHODS)}")
    observers: dict[str, RangeObserver] = {}

    def observe(name: str, x: Any) -> None:
        if name not in observers:
            observers[name] = RangeObserver(name, bins=bins, histogram=estimator.needs_histogram)
        observers[name].update(x)

    if isinstance(named_arrays, Mapping):
        for name, batches in named_arrays.items():
            if isinstance(batches, np.ndarray) or hasattr(batches, "detach"):
                raise ValueError(f"tensor {name!r}: pass a list of batches ([array]), not a bare array")
            for x in batches:
                observe(name, x)
    else:
        for batch in named_arrays:
            if not isinstance(batch, Mapping):
                raise ValueError(f"each batch must be a {{name: array}} dict, got {type(batch).__name__}")
            for name in batch:  # no reference to an array outlives its observation (see tflite calibration)
                observe(name, batch[name])
    if not observers:
        raise ValueError("no tensors were observed: the calibration data gave no batches")
    return {name: estimator.compute(obs, symmetric=symmetric) for name, obs in observers.items()}


# ---- quantization arithmetic -------------------------------------------------------------------

def scale_zero_point(lo: float, hi: float, *, symmetric: bool = False) -> tuple[float, int]:
    """Int8 (scale, zero_point) for a range: symmetric = max|x| / 127 with zero point 0 (values in
    [-127, 127], the TFLite convention); asymmetric = (hi - lo) / 255 with the zero point that makes
    0.0 exact, in [-128, 127].

    >>> scale, zp = scale_zero_point(-1.0, 1.55)
    >>> round(scale, 9), zp
    (0.01, -28)
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        return max(-lo, hi) / 127.0, 0
    if hi - lo <= 0:
        raise ValueError(f"range ({lo}, {hi}) has zero width")
    scale = (hi - lo) / (QMAX - QMIN)
    return scale, int(np.clip(round(QMIN - lo / scale), QMIN, QMAX))


def fake_quantize(x: np.ndarray, lo: float, hi: float, *, symmetric: bool = False) -> np.ndarray:
    """Quantize to int8 with the range's scale / zero point and back to float64."""
    scale, zp = scale_zero_point(lo, hi, symmetric=symmetric)
    qmin = -127 if symmetric else QMIN
    q = np.clip(np.round(np.asarray(x, np.float64) / scale) + zp, qmin, QMAX)
    return (q - zp) * scale


def quantization_mse(x: np.ndarray, lo: float, hi: float, *, symmetric: bool = False) -> float:
    """Mean squared error of ``fake_quantize(x, lo, hi)`` against ``x``."""
    x = np.asarray(x, np.float64)
    return float(np.mean((x - fake_quantize(x, lo, hi, symmetric=symmetric)) ** 2))


# ---- helpers -----------------------------------------------------------------------------------

def _finish(lo: float, hi: float, symmetric: bool) -> tuple[float, float]:
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        a = max(-lo, hi)
        lo, hi = -a, a
    if hi - lo < MIN_WIDTH:
        return -1.0, 1.0
    return lo, hi


def _quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """Inverse of the piecewise-linear CDF."""
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    return _invert(cum, edges, q * cum[-1])


def _abs_quantile(counts: np.ndarray, edges: np.ndarray, q: float) -> float:
    """Quantile of |x|: P(|x| <= t) = CDF(t) - CDF(-t) is piecewise linear between the |edges|."""
    t = np.unique(np.concatenate([[0.0], np.abs(edges)]))
    mass = _cdf(counts, edges, t) - _cdf(counts, edges, -t)
    return _invert(mass, t, q * counts.sum())


def _cdf(counts: np.ndarray, edges: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The piecewise-linear CDF (counts) at ``x``; of edges repeated by clamping, the last one counts."""
    cum = np.concatenate([[0.0], np.cumsum(counts)])
    last = np.append(edges[1:] != edges[:-1], True)
    return np.interp(x, edges[last], cum[last], left=0.0, right=cum[-1])


def _invert(cum: np.ndarray, xs: np.ndarray, target: float) -> float:
    j = int(np.searchsorted(cum, target, side="left"))
    if j == 0:
        return float(xs[0])
    if j >= len(cum):
        return float(xs[-1])
    frac = (target - cum[j - 1]) / (cum[j] - cum[j - 1])
    return float(xs[j - 1] + frac * (xs[j] - xs[j - 1]))


def _kl_divergence(hist: np.ndarray, s: int, e: int, levels: int) -> float:
    """KL(P || Q): P = hist[s:e] with the outside mass folded into its edge bins; Q = hist[s:e] merged
    into ``levels`` groups, each group's mass spread evenly over the bins where P is non-zero."""
    sliced = hist[s:e]
    p = sliced.copy()
    p[0] += hist[:s].sum()
    p[-1] += hist[e:].sum()
    nonzero = p > 0
    starts = (np.arange(levels) * (e - s)) // levels
    group = np.repeat(np.arange(levels), np.diff(np.append(starts, e - s)))
    mass = np.add.reduceat(sliced, starts)
    nz = np.add.reduceat(nonzero.astype(np.float64), starts)
    q = np.where(nonzero, mass[group] / np.maximum(nz[group], 1.0), 0.0)
    p, q = p[nonzero] / p.sum(), q[nonzero] / max(q.sum(), 1e-300)
    return float(np.sum(p * np.log(p / np.maximum(q, 1e-12))))


def _expected_mse(a, b, c, los, his, symmetric):
    """Expected int8 quantization MSE of values uniform in bins [a, b] (counts c), for each candidate
    range (los[k], his[k]); returns one value per candidate."""
    out = np.empty(len(los))
    for k, (lo, hi) in enumerate(zip(los, his)):
        scale, zp = scale_zero_point(lo, hi, symmetric=symmetric) if hi - lo > 0 else (None, 0)
        if scale is None or scale <= 0:
            out[k] = np.inf
            continue
        qmin = -127 if symmetric else QMIN
        L, H = (qmin - zp) * scale, (QMAX - zp) * scale                # clipping edges (grid points)
        out[k] = np.sum(c * _bin_sq_error(a, b, L, H, scale)) / np.sum(c)
    return out


def _bin_sq_error(a, b, L, H, s):
    """Mean of (x - Q(x))^2 for x uniform on [a, b]: clipped below L / above H, rounded to multiples
    of s in between; a point (a == b) is evaluated directly."""
    def cum_round_sq(x):  # integral of (x - round-to-grid(x))^2 from -s/2 to x
        u = x / s
        n = np.floor(u + 0.5)
        f = u - n
        return s ** 3 * (n / 12.0 + (f ** 3 + 0.125) / 3.0)

    below_hi, above_lo = np.minimum(b, L), np.maximum(a, H)
    below = np.where(a < L, ((below_hi - L) ** 3 - (a - L) ** 3) / 3.0, 0.0)
    above = np.where(b > H, ((b - H) ** 3 - (above_lo - H) ** 3) / 3.0, 0.0)
    in_lo, in_hi = np.clip(a, L, H), np.clip(b, L, H)
    inside = np.where(in_hi > in_lo, cum_round_sq(in_hi) - cum_round_sq(in_lo), 0.0)
    width = b - a
    point = a - np.clip(np.round(a / s) * s, L, H)
    return np.where(width > 0, (below + inside + above) / np.where(width > 0, width, 1.0), point ** 2)

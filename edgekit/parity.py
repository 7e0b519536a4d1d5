"""How close an exported model's outputs are to the PyTorch reference: numbers, not a boolean.

>>> import numpy as np
>>> ref = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.5]])
>>> rep = compare(ref, ref + 0.01)
>>> rep.top1_agreement, round(rep.max_abs, 6)
(1.0, 0.01)
>>> rep.check(min_sqnr_db=30, min_cosine=0.999)   # passes silently; raises ParityError with a diff otherwise

The SQNR of logits can mislead: when every class's logit carries one large common offset (an
untrained network's logits are nearly constant across classes), that offset is most of the signal
and a file can keep 48 dB while its arg-max disagrees on every sample. ``centered_sqnr_db`` is the
SQNR with each sample's mean over classes removed (what decides top-1), and ``warning`` says when
the plain SQNR is not meaningful.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

__all__ = ["ParityReport", "ParityError", "compare", "MEAN_GAP_DB", "CENTERED_OK_DB", "LOW_TOP1", "TOP1_SQNR_DB"]

# The plain SQNR of logits overstates what decides top-1 when removing each sample's mean over classes
# lowers it by this much: then at least 90 % of the logits' power is an offset common to all classes.
# Said only while the SQNR without that offset is below CENTERED_OK_DB (above it, the class differences
# are reproduced closely whatever the offset: an fp32 file's rounding).
MEAN_GAP_DB = 10.0
CENTERED_OK_DB = 40.0
# At TOP1_SQNR_DB or more (noise power 1 % of the signal's; export's int8 floor) an arg-max flips only
# where two classes are nearly tied: when fewer than LOW_TOP1 of the samples agree, most are.
TOP1_SQNR_DB = 20.0
LOW_TOP1 = 0.5


class ParityError(AssertionError):
    """An exported model's outputs are further from the reference than the floors allow."""


@dataclass(frozen=True)
class ParityReport:
    """Metrics of ``candidate`` against ``reference`` (see ``compare``).

    ``n`` samples (the first axis; an array of rank 0 or 1 is one sample); ``max_abs`` / ``mean_abs``
    over all elements; ``cosine`` per flattened sample, averaged (two all-zero samples count 1, one
    all-zero sample 0); ``sqnr_db`` = 10 log10(sum ref^2 / sum (ref - cand)^2), +inf when equal;
    ``top1_agreement`` = share of samples whose arg-max agrees and ``top5_agreement`` = share whose
    reference arg-max is among the candidate's 5 largest — only for (N, classes) logits (top-5 needs
    more than 5 classes), else None; ``worst`` = (index, reference value, candidate value) of the
    largest absolute error; ``centered_sqnr_db`` = the SQNR of logits with each sample's mean over
    classes removed from both sides (what decides top-1; None when not logits), and ``warning`` says
    when the plain SQNR is not meaningful (see ``MEAN_GAP_DB``, ``LOW_TOP1``). If either side has
    NaN / Inf, the float metrics are NaN, the counts say how many, ``worst`` points at the first one,
    and ``check`` always fails.
    """

    n: int
    shape: tuple[int, ...]
    max_abs: float
    mean_abs: float
    cosine: float
    sqnr_db: float
    top1_agreement: float | None
    top5_agreement: float | None
    worst: tuple[tuple[int, ...], float, float]
    nonfinite_reference: int = 0
    nonfinite_candidate: int = 0
    centered_sqnr_db: float | None = None

    @property
    def finite(self) -> bool:
        return self.nonfinite_reference == 0 and self.nonfinite_candidate == 0

    @property
    def warning(self) -> str | None:
        """One line when the SQNR of these logits is not meaningful (else None): most of their power is
        an offset common to all classes, or top-1 agrees on few samples although the SQNR is high.

        >>> ref = 100.0 + np.array([[0.0, 0.01, 0.02], [0.02, 0.0, 0.01]])   # offset 100, tiny class differences
        >>> compare(ref, ref[:, ::-1]).warning.split(":")[0]
        'SQNR 77.8 dB is not meaningful for these logits'
        """
        if self.centered_sqnr_db is None or not self.finite:
            return None
        gap = self.sqnr_db - self.centered_sqnr_db
        if gap >= MEAN_GAP_DB and self.centered_sqnr_db < CENTERED_OK_DB:
            why = (f"with each sample's mean over classes removed (what decides top-1) it is "
                   f"{self.centered_sqnr_db:.1f} dB: most of their power is an offset common to all classes")
        elif self.top1_agreement < LOW_TOP1 and self.sqnr_db >= TOP1_SQNR_DB:
            why = (f"top-1 agrees on only {self.top1_agreement:.1%} of {self.n} samples: the class differences "
                   f"that decide it are below the noise")
        else:
            return None
        return (f"SQNR {self.sqnr_db:.1f} dB is not meaningful for these logits: {why} (as in an untrained "
                f"network); judge the file by its top-1 agreement ({self.top1_agreement:.1%}) or its accuracy on "
                f"labelled images (edgekit validate), with trained weights")

    def check(self, *, min_sqnr_db: float | None = None, min_cosine: float | None = None,
              min_top1: float | None = None) -> None:
        """Raise ``ParityError`` (an ``AssertionError``) with a multi-line diff if any value is NaN / Inf
        or any given floor is not met. A ``min_top1`` on outputs that are not (N, classes) logits is a
        ``ValueError``.

        >>> import numpy as np
        >>> compare(np.ones((2, 4)), np.ones((2, 4))).check(min_sqnr_db=40)
        """
        floors = {"sqnr_db": min_sqnr_db, "cosine": min_cosine, "top1_agreement": min_top1}
        self._check_floors(floors)
        failed = [k for k, v in floors.items() if v is not None and not getattr(self, k) >= v]
        if self.finite and not failed:
            return
        raise ParityError(self._diff(floors, failed))

    def _check_floors(self, floors: Mapping[str, float | None]) -> None:
        for key, v in floors.items():
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v)):
                raise ValueError(f"floor for {key} {v!r} must be a number")
        if floors["cosine"] is not None and not -1 <= floors["cosine"] <= 1:
            raise ValueError(f"min_cosine {floors['cosine']} must be in [-1, 1]")
        if floors["top1_agreement"] is not None:
            if not 0 <= floors["top1_agreement"] <= 1:
                raise ValueError(f"min_top1 {floors['top1_agreement']} must be a share in [0, 1], e.g. 0.99")
            if self.top1_agreement is None:
                raise ValueError(f"min_top1 needs (N, classes) logits; these outputs have shape {self.shape}")

    def _diff(self, floors: Mapping[str, float | None], failed: list[str]) -> str:
        reasons = [f"{k} {_fmt(getattr(self, k))} < floor {floors[k]:g}" for k in failed]
        if not self.finite:
            reasons.insert(0, f"non-finite outputs (reference {self.nonfinite_reference}, candidate "
                              f"{self.nonfinite_candidate} NaN/Inf values)")
        lines = [f"parity check failed: {'; '.join(reasons)}",
                 f"  samples         {self.n} (shape {self.shape})"]
        for key in ("max_abs", "mean_abs", "cosine", "sqnr_db", "top1_agreement", "top5_agreement"):
            value = getattr(self, key)
            floor = floors.get(key)
            mark = "  FAILED" if key in failed else ""
            bound = f"   (floor {floor:g}){mark}" if floor is not None else ""
            lines.append(f"  {key:<15} {'-' if value is None else _fmt(value)}{bound}")
        idx, r, c = self.worst
        lines.append(f"  worst element   {list(idx)}: reference {r:.7g}, candidate {c:.7g} (diff {c - r:+.3g})")
        return "\n".join(lines)

    def format(self) -> str:
        """One line for tables, e.g. ``n=8 max_abs=0.0123 mean_abs=0.00201 cos=0.99991 sqnr=41.2dB top1=100.0%``."""
        parts = [f"n={self.n}", f"max_abs={self.max_abs:.3g}", f"mean_abs={self.mean_abs:.3g}",
                 f"cos={self.cosine:.5f}", f"sqnr={self.sqnr_db:.1f}dB"]
        if self.top1_agreement is not None:
            parts.append(f"top1={self.top1_agreement:.1%}")
        if self.top5_agreement is not None:
            parts.append(f"top5={self.top5_agreement:.1%}")
        if not self.finite:
            parts.append(f"NONFINITE ref={self.nonfinite_reference} cand={self.nonfinite_candidate}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: non-finite floats become the strings ``"inf"``, ``"-inf"``, ``"nan"``."""
        idx, r, c = self.worst
        return {"n": self.n, "shape": list(self.shape), "max_abs": _json(self.max_abs),
                "mean_abs": _json(self.mean_abs), "cosine": _json(self.cosine), "sqnr_db": _json(self.sqnr_db),
                "top1_agreement": _json(self.top1_agreement), "top5_agreement": _json(self.top5_agreement),
                "worst": {"index": list(idx), "reference": _json(r), "candidate": _json(c)},
                "nonfinite_reference": self.nonfinite_reference, "nonfinite_candidate": self.nonfinite_candidate,
                "centered_sqnr_db": _json(self.centered_sqnr_db), "warning": self.warning}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ParityReport":
        w = d["worst"]
        return cls(n=int(d["n"]), shape=tuple(d["shape"]), max_abs=_unjson(d["max_abs"]),
                   mean_abs=_unjson(d["mean_abs"]), cosine=_unjson(d["cosine"]), sqnr_db=_unjson(d["sqnr_db"]),
                   top1_agreement=_unjson(d["top1_agreement"]), top5_agreement=_unjson(d["top5_agreement"]),
                   worst=(tuple(w["index"]), _unjson(w["reference"]), _unjson(w["candidate"])),
                   nonfinite_reference=int(d.get("nonfinite_reference", 0)),
                   nonfinite_candidate=int(d.get("nonfinite_candidate", 0)),
                   centered_sqnr_db=_unjson(d.get("centered_sqnr_db")))


def compare(reference: Any, candidate: Any) -> ParityReport:
    """Metrics of ``candidate`` against ``reference`` (numpy arrays or torch tensors of one shape;
    int8 outputs must be dequantized first). Computed in float64.

    >>> compare(np.array([[0.0, 1.0]]), np.array([[0.0, 0.5]])).sqnr_db   # 10 log10(1 / 0.25)
    6.020599913279624
    """
    ref, cand = _as_float64(reference, "reference"), _as_float64(candidate, "candidate")
    if ref.shape != cand.shape:
        raise ValueError(f"reference shape {ref.shape} and candidate shape {cand.shape} differ")
    if ref.size == 0:
        raise ValueError(f"nothing to compare: the outputs are empty (shape {ref.shape})")
    n = ref.shape[0] if ref.ndim >= 2 else 1
    bad_ref, bad_cand = ~np.isfinite(ref), ~np.isfinite(cand)
    if bad_ref.any() or bad_cand.any():
        return _nonfinite_report(ref, cand, bad_ref | bad_cand, n, int(bad_ref.sum()), int(bad_cand.sum()))
    err = np.abs(ref - cand)
    worst = np.unravel_index(int(np.argmax(err)), ref.shape)
    noise, signal = float(np.sum((ref - cand) ** 2)), float(np.sum(ref ** 2))
    top1, top5 = _topk(ref, cand)
    return ParityReport(n=n, shape=ref.shape, max_abs=float(err.max()), mean_abs=float(err.mean()),
                        cosine=_mean_cosine(ref.reshape(n, -1), cand.reshape(n, -1)), sqnr_db=_sqnr_db(signal, noise),
                        top1_agreement=top1, top5_agreement=top5,
                        worst=(tuple(int(i) for i in worst), float(ref[worst]), float(cand[worst])),
                        centered_sqnr_db=None if top1 is None else _centered_sqnr_db(ref, cand))


def _as_float64(x: Any, label: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().double().numpy()
    x = np.asarray(x)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{label} dtype {x.dtype} is not numeric")
    return x.astype(np.float64)


def _sqnr_db(signal: float, noise: float) -> float:
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _centered_sqnr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    # (N, classes): a shift common to all classes of a sample changes no arg-max, so it is neither signal nor noise
    ref_c = ref - ref.mean(axis=1, keepdims=True)
    cand_c = cand - cand.mean(axis=1, keepdims=True)
    return _sqnr_db(float(np.sum(ref_c ** 2)), float(np.sum((ref_c - cand_c) ** 2)))


def _mean_cosine(ref: np.ndarray, cand: np.ndarray) -> float:
    # (n, d) rows; zero rows: both zero -> identical (1), one zero -> no direction in common (0)
    nr, nc = np.linalg.norm(ref, axis=1), np.linalg.norm(cand, axis=1)
    dot = np.sum(ref * cand, axis=1)
    both_zero, one_zero = (nr == 0) & (nc == 0), (nr == 0) ^ (nc == 0)
    cos = np.where(both_zero, 1.0, np.where(one_zero, 0.0, dot / np.where((nr * nc) > 0, nr * nc, 1.0)))
    return float(np.clip(cos, -1.0, 1.0).mean())


def _topk(ref: np.ndarray, cand: np.ndarray) -> tuple[float | None, float | None]:
    if ref.ndim != 2 or ref.shape[1] < 2:
        return None, None
    ref_top = np.argmax(ref, axis=1)
    top1 = float(np.mean(ref_top == np.argmax(cand, axis=1)))
    if ref.shape[1] <= 5:
        return top1, None
    cand_top5 = np.argpartition(-cand, 5, axis=1)[:, :5]               # (N, 5), unordered
    top5 = float(np.mean(np.any(cand_top5 == ref_top[:, None], axis=1)))
    return top1, top5


def _nonfinite_report(ref, cand, bad, n, n_ref, n_cand) -> ParityReport:
    first = tuple(int(i) for i in np.argwhere(bad)[0])
    is_logits = ref.ndim == 2 and ref.shape[1] >= 2
    return ParityReport(n=n, shape=ref.shape, max_abs=math.nan, mean_abs=math.nan, cosine=math.nan,
                        sqnr_db=math.nan, top1_agreement=math.nan if is_logits else None,
                        top5_agreement=math.nan if is_logits and ref.shape[1] > 5 else None,
                        worst=(first, float(ref[first]), float(cand[first])),
                        nonfinite_reference=n_ref, nonfinite_candidate=n_cand,
                        centered_sqnr_db=math.nan if is_logits else None)


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def _json(v: float | None) -> float | str | None:
    if v is None or math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _unjson(v: Any) -> float | None:
    return None if v is None else float(v)

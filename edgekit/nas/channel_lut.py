"""The channel-aware latency table of ``fbnet-v2``: a measured subset, a per-block model of latency
against channels fitted on it and checked on held-out measured entries, and the dense tables the
search's exact expectation reads.

A fully measured table of the space holds every distinct (block type, input channels, output
channels, expansion, input side): 5,584 entries at 32 px (resolutions 32 / 24, width 0.5), 7,784 at
64 px (64 / 48), 55,860 at 224 px (224 / 192 / 160 / 128, width 1). Layers of a stage after its
first share their entries (same channel ranges, same side), which is why these counts are far below
the layer-by-layer product the expectation sums over (25,936 at 32 and at 64 px).

What is measured (:func:`measurement_plan`): every stem and head entry (a few per resolution) and a
sample of the block entries, stratified so that every block type at every input side has its
narrowest and widest configuration and the rest are drawn at random.

The model (:class:`BlockModel`): per block type (kernel, squeeze-excitation, activation) a
non-negative linear model of latency on the work of the block's ops at the signature's channels,
expansion and side: a per-call cost, the 1x1 expansion conv's and the residual add's presence (each
an op of its own), the expansion conv's multiply-adds and output elements, the depthwise conv's
multiply-adds and output elements, the 1x1 projection's multiply-adds, the output elements, the
residual add, the input elements and the squeeze-excitation's two fully connected layers'
multiply-adds (``2 x mid x reduced``, the same at any side: on the 2 x 2 and 3 x 3 maps of the last
stages they outweigh the depthwise conv; without them the model put blocks of the 64 px space 33 %
low there). The squeeze-excitation's pooling and gating scale with the depthwise output, which the
per-type fit absorbs. It is fitted for relative error (every row weighted by 1 / measured), checked
on a held-out share of the measured entries and refitted on all of them; the check's figures are
stored in the LUT beside the model. Channel counts are the table's own discrete choices (multiples
of the space's divisor, 8), so the steps latency takes with the channel count on vector kernels are
those of the choices the model is asked about.

:class:`ChannelLatency` fills, for each resolution, layer, block type and (input, output,
expansion) choice, the measured entry when there is one and the model's figure otherwise; the
search's :func:`~edgekit.nas.dmasking.expected_latency` reads it, and :meth:`ChannelLatency.point_ms`
is a point's plain sum.

>>> from edgekit.nas.dmasking import FBNetV2Space
>>> space = FBNetV2Space(resolution=32, resolutions=(32, 24), width=0.5, in_chans=1, num_classes=10)
>>> len(space.distinct_signatures())
5584
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..lut.junction import junction_model
from ..lut.lut import Lut, LutError
from ..lut.space import BlockSig
from ..models.fbnet import _se_width, get_divisible_by
from .dmasking import BLOCK_TYPES, FBNetV2Space

__all__ = ["FEATURES", "BlockModel", "ChannelLatency", "block_features", "block_type", "fit_block_model",
           "measurement_plan"]

FEATURES = ("call", "pw_call", "residual_call", "pw_macs", "pw_out", "dw_macs", "dw_out", "pwl_macs", "out", "residual",
            "in", "se_macs")
_FEATURES_BEFORE_SE = FEATURES[:-1]  # a model stored before ``se_macs``: it predicts as it did (coefficient 0)
HOLD_OUT = 0.2  # share of the measured block entries the model's check keeps out of its fit


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def block_type(sig: BlockSig) -> str:
    """The :data:`~edgekit.nas.dmasking.BLOCK_TYPES` name of a block signature."""
    b = sig.block
    for name, k, se, act in BLOCK_TYPES:
        if (b.kernel, b.se > 0, b.act) == (k, se, act):
            return name
    raise ValueError(f"{sig.key} is not a block of fbnet-v2")


def block_features(sig: BlockSig) -> np.ndarray:
    """The work of a block signature's ops, in :data:`FEATURES` order."""
    b = sig.block
    c_in, h, w = sig.in_shape
    pw = b.expansion != 1.0
    mid = get_divisible_by(c_in * b.expansion, sig.channel_divisor) if pw else c_in
    area, out_area = h * w, _ceil_div(h, b.stride) * _ceil_div(w, b.stride)
    residual = b.stride == 1 and c_in == b.out_channels
    se = _se_width(b, mid) if b.se > 0 else 0
    return np.array([1.0, float(pw), float(residual), c_in * mid * area if pw else 0.0, mid * area if pw else 0.0,
                     mid * b.kernel ** 2 * out_area, mid * out_area, mid * b.out_channels * out_area,
                     b.out_channels * out_area, b.out_channels * out_area if residual else 0.0, c_in * area,
                     2.0 * mid * se], dtype=np.float64)


@dataclass(frozen=True)
class BlockModel:
    """Per block type, non-negative coefficients (ms per unit of each of :data:`FEATURES`)."""

    coef: Mapping[str, Sequence[float]]

    def predict(self, sig: BlockSig) -> float:
        kind = block_type(sig)
        if kind not in self.coef:
            raise LutError(f"the LUT's block model has no fit for block type {kind!r}; measure some of its entries "
                           f"(`edgekit lut build --space fbnet-v2 --sample N`)")
        return float(block_features(sig) @ np.asarray(self.coef[kind]))

    def to_dict(self) -> dict[str, Any]:
        return {"model": "channel-linear", "features": list(FEATURES),
                "coef": {k: [float(v) for v in c] for k, c in sorted(self.coef.items())}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BlockModel":
        features = list(d.get("features", ()))
        if d.get("model") == "channel-linear" and features == list(_FEATURES_BEFORE_SE):
            d = {**d, "coef": {k: [*c, 0.0] if isinstance(c, (list, tuple)) else c
                               for k, c in (d.get("coef") or {}).items()}}
        elif d.get("model") != "channel-linear" or features != list(FEATURES):
            raise LutError(f"the LUT's block model is not a channel-linear model over {list(FEATURES)}; run its "
                           f"`edgekit lut build --space fbnet-v2 ... --out` again: it refits the model on the stored "
                           f"entries")
        coef = d.get("coef") or {}
        for kind, c in coef.items():
            if len(c) != len(FEATURES) or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in c):
                raise LutError(f"the LUT's block model for {kind!r} has {c!r}, not {len(FEATURES)} finite numbers")
        return cls({k: tuple(float(v) for v in c) for k, c in coef.items()})


def _fit(rows: Sequence[tuple[BlockSig, float]]) -> BlockModel:
    from scipy.optimize import nnls

    groups: dict[str, list[tuple[BlockSig, float]]] = {}
    for sig, ms in rows:
        groups.setdefault(block_type(sig), []).append((sig, ms))
    coef = {}
    for kind, group in groups.items():
        x = np.stack([block_features(s) for s, _ in group])
        y = np.array([ms for _, ms in group], dtype=np.float64)
        if (y <= 0).any():
            raise ValueError(f"block type {kind}: measured latencies must be > 0 ms to fit relative error")
        scale = np.where(x.max(0) > 0, x.max(0), 1.0)  # columns to [0, 1]: nnls is scale-sensitive
        beta, _ = nnls((x / scale) / y[:, None], np.ones(len(y)))
        coef[kind] = tuple(beta / scale)
    return BlockModel(coef)


def _errors(model: BlockModel, rows: Sequence[tuple[BlockSig, float]]) -> dict[str, Any]:
    pred = np.array([model.predict(s) for s, _ in rows])
    meas = np.array([ms for _, ms in rows])
    rel = (pred - meas) / meas
    return {"n": len(rows), "mape": float(np.mean(np.abs(rel)) * 100),
            "within_5pct": float(np.mean(np.abs(rel) <= 0.05)), "within_10pct": float(np.mean(np.abs(rel) <= 0.10)),
            "max_abs_pct": float(np.max(np.abs(rel)) * 100)}


def fit_block_model(space: FBNetV2Space, lut: Lut, *, hold_out: float = HOLD_OUT, seed: int = 0) -> dict[str, Any]:
    """Fit the model on ``1 - hold_out`` of the LUT's measured block entries, report its error on the
    rest (``held_out``) and on the fit's own entries (``fit``), then refit on all of them: the record
    a LUT stores as ``block_model``."""
    if not 0 < hold_out < 1:
        raise ValueError(f"hold_out {hold_out} must be in (0, 1)")
    by_key = {s.key: s for s in space.distinct_signatures() if s.kind == "block"}
    rows = [(by_key[k], float(ms)) for k, ms in sorted(lut.entries.items()) if k in by_key]
    types = {block_type(s) for s, _ in rows}
    missing = [t[0] for t in BLOCK_TYPES if t[0] not in types]
    if missing:
        raise ValueError(f"the LUT has no measured block of type(s) {missing}: the block model needs each type; "
                         f"measure a larger sample (`edgekit lut build --space fbnet-v2 --sample N`)")
    order = random.Random(seed).sample(range(len(rows)), len(rows))
    cut = max(1, int(round(len(rows) * hold_out)))
    held, fit = [rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]]
    check = _fit(fit)
    model = _fit(rows)
    return {**model.to_dict(), "measured": len(rows), "hold_out": hold_out, "seed": seed,
            "held_out": _errors(check, held), "fit": _errors(check, fit), "all_after_refit": _errors(model, rows)}


def _size(sig: BlockSig) -> float:
    """What the plan calls a block's size: its convs' multiply-adds and elements (``pw_macs`` ... ``in``;
    the plan predates ``se_macs`` and keeps its choice, so a LUT built before resumes on the same plan)."""
    return float(block_features(sig)[FEATURES.index("pw_macs"):FEATURES.index("in") + 1].sum())


def measurement_plan(space: FBNetV2Space, sample: int, *, seed: int = 0) -> list[BlockSig]:
    """Every stem and head signature, and ``sample`` block signatures: per (block type, input side,
    stride) its narrowest and widest configuration, the rest drawn at random (reproducible from
    ``seed``). ``sample`` at or above the number of distinct blocks measures them all."""
    if sample < 0:
        raise ValueError(f"sample {sample} must be >= 0")
    sigs = space.distinct_signatures()
    fixed = [s for s in sigs if s.kind != "block"]
    blocks = [s for s in sigs if s.kind == "block"]
    if sample >= len(blocks):
        return fixed + blocks
    groups: dict[tuple, list[BlockSig]] = {}
    for s in blocks:
        groups.setdefault((block_type(s), s.in_shape[1], s.block.stride), []).append(s)
    corners: dict[str, BlockSig] = {}
    for group in groups.values():
        size = [_size(s) for s in group]
        for s in (group[int(np.argmin(size))], group[int(np.argmax(size))]):
            corners.setdefault(s.key, s)
    chosen = list(corners.values())
    if len(chosen) > sample:
        raise ValueError(f"sample {sample} is below the {len(chosen)} narrowest and widest blocks of every block "
                         f"type and side, which the model needs; use --sample >= {len(chosen)}")
    rest = [s for s in blocks if s.key not in corners]
    chosen += random.Random(seed).sample(rest, sample - len(chosen))
    return fixed + chosen


class ChannelLatency:
    """Dense latency tables of a space from a LUT: ``stem`` (R, S), per layer (R, B, I, J, K) and
    ``head`` (R, J_last) in ms, resolutions in the space's order; measured entries where the LUT has
    them, the LUT's block model elsewhere (a stem or head entry must be measured), each block's and
    the head's with the junction into it when the LUT has a junction model."""

    def __init__(self, space: FBNetV2Space, lut: Lut):
        if lut.space.get("name") != space.name or dict(lut.space) != space.to_dict():
            raise LutError(f"the LUT was built for space {dict(lut.space)}, not {space.to_dict()}; search the LUT's "
                           f"space or build a LUT for this one")
        model = None if lut.block_model is None else BlockModel.from_dict(lut.block_model)
        self.space, self.measured, self.modelled = space, 0, 0
        entries = lut.entries
        joint = junction_model(lut)

        def ms(sig: BlockSig) -> float:
            return entry(sig) + (0.0 if joint is None else joint.extra(sig))

        def entry(sig: BlockSig) -> float:
            if sig.key in entries:
                self.measured += 1
                return float(entries[sig.key])
            if sig.kind != "block":
                raise LutError(f"the LUT has no entry for the {sig.kind} signature {sig.key!r}; every stem and head "
                               f"is measured (`edgekit lut build --space fbnet-v2` resumes)")
            if model is None:
                raise LutError(f"the LUT has no entry for {sig.key!r} and no block model to predict it; build it with "
                               f"`edgekit lut build --space fbnet-v2 --sample N` (which fits one) or measure all")
            self.modelled += 1
            return model.predict(sig)

        types = [t[0] for t in BLOCK_TYPES]
        self.stem = np.array([[ms(space.stem_signature(r, c)) for c in space.stem_choices] for r in space.resolutions])
        self.layers: list[np.ndarray] = []
        prev = space.stem_choices
        for layer in space.layers:
            table = np.zeros((len(space.resolutions), len(types), len(prev), len(layer.channels),
                              len(layer.expansions)))
            for (ri, r), (bi, b), (i, ci), (j, cj), (k, e) in itertools.product(
                    enumerate(space.resolutions), enumerate(types), enumerate(prev), enumerate(layer.channels),
                    enumerate(layer.expansions)):
                sig = space.layer_signature(layer, r, b, ci, cj, e)
                table[ri, bi, i, j, k] = 0.0 if sig.is_identity else ms(sig)
            self.layers.append(table)
            prev = layer.channels
        self.head = np.array([[ms(space.head_signature(r, c)) for c in prev] for r in space.resolutions])

    def point_ms(self, point: dict[str, Any] | Sequence[Any]) -> float:
        """A point's plain sum: its stem, blocks and head."""
        space = self.space
        point = space.as_point(point)
        ri = space.resolutions.index(point["resolution"])
        i = space.stem_choices.index(point["stem"])
        total = self.stem[ri, i]
        types = [t[0] for t in BLOCK_TYPES]
        for layer, table, (b, c, e) in zip(space.layers, self.layers, point["layers"]):
            j, k = layer.channels.index(c), layer.expansions.index(e)
            total += table[ri, types.index(b), i, j, k]
            i = j
        return float(total + self.head[ri, i])

    def _extreme(self, pick) -> tuple[dict[str, Any], float]:
        """The point minimising (``pick=np.argmin``) or maximising the plain sum, by dynamic
        programming over the layers with the previous layer's channel choice as state."""
        space, types = self.space, [t[0] for t in BLOCK_TYPES]
        best_point, best_ms = None, None
        for ri, r in enumerate(space.resolutions):
            cost, back = self.stem[ri].copy(), []
            for table in self.layers:
                t = table[ri] + cost[None, :, None, None]  # (B, I, J, K)
                flat = np.moveaxis(t, 2, 0).reshape(t.shape[2], -1)  # (J, B*I*K)
                idx = pick(flat, axis=1)
                back.append((idx, t.shape))
                cost = flat[np.arange(flat.shape[0]), idx]
            total = cost + self.head[ri]
            j = int(pick(total))
            if best_ms is not None and pick(np.array([best_ms, total[j]])) == 0:
                continue  # an earlier resolution's point is as fast (or as slow) or more
            layers = []
            for (idx, shape), layer in zip(reversed(back), reversed(space.layers)):
                b, i, k = np.unravel_index(idx[j], (shape[0], shape[1], shape[3]))
                layers.append((types[b], layer.channels[j], layer.expansions[k]))
                j = int(i)
            best_point = {"resolution": r, "stem": space.stem_choices[j], "layers": layers[::-1]}
            best_ms = float(total.min() if pick is np.argmin else total.max())
        assert best_point is not None and best_ms is not None
        return best_point, best_ms

    def fastest(self) -> tuple[dict[str, Any], float]:
        return self._extreme(np.argmin)

    def slowest(self) -> tuple[dict[str, Any], float]:
        return self._extreme(np.argmax)

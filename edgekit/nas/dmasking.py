"""FBNetV2's DMaskingNAS (Wan et al., CVPR'20): the ``fbnet-v2`` space, channel / expansion masks
with shared weights, resolution by subsample and interleave, and the exact expected latency over
discrete channel choices read from a measured table.

The space: per layer a block type (kernel 3 / 5, squeeze-excitation on / off, ReLU / h-swish), an
expansion from a set, and output channels from the stage's range ``(min, max, step)``; one input
resolution for the network from a set. The macro-architecture follows the released FBNetV2
networks (stem, then stages of 1 / 3 / 4 / 7 / 4 inverted-residual layers at strides 1 / 2 / 2 / 2 /
2 ... , an ``ir_pool`` head), with ranges around their channel counts; ``width``, ``in_chans``,
``num_classes`` and the resolutions scale it down to Fashion-MNIST as ``fbnet-v1``'s knobs do.

Masking: a block is built once at its widest (the largest expansion of the widest input, the
largest output). After every conv + BN + act its output is multiplied by ``M = sum_i g_i 1_i``,
where ``1_i`` keeps the first ``c_i`` channels and ``g`` are the layer's Gumbel-softmax weights over
its channel choices (the expansion's over the hidden channels), so every choice shares one weight
tensor. With a one-hot ``g`` the block computes exactly the narrower block built with the sliced
weights (``narrow_block``), zeros in the channels beyond.

Resolution: a lower resolution ``r`` of the full grid ``H`` keeps the rows and columns
``floor(i * H / h)`` (nearest subsampling); a block takes the subsampled map, runs on it, and its
output is put back on the full output grid at the same kind of positions with zeros between
(``interleave``), so maps of different resolutions have one shape and can be weighted and summed.

Latency: the expected latency of a layer is ``sum g_prev[i] g[j] h[k] p[b] LUT[b, i, j, k]`` over the
previous layer's channel choice ``i``, this layer's channel choice ``j``, expansion ``k`` and block
type ``b``, all at the network's resolution choice, read from a table measured on the device for
those discrete configurations (``expected_latency``). Latency steps with the channel count on real
kernels, so a table read at a fractional "effective" width would be wrong.

The supernet (:class:`SuperNetV2`) holds every layer once at its widest (:class:`MixedIR`: a 5x5
depthwise kernel whose centre is the 3x3 choice, the SE gate and both activations mixed by the
block-type weights' marginals), so its memory is about the widest network's, whatever the number of
choices. The channel-aware table is :mod:`edgekit.nas.channel_lut`, the search loop
:mod:`edgekit.nas.channel_search`.

>>> space = FBNetV2Space(resolution=32, resolutions=(32, 24), width=0.25, in_chans=1, num_classes=10)
>>> len(space.layers), space.lut_entries() > 0
(19, True)
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import random
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .._checks import check_count
from ..models.arch import ArchSpec, BlockSpec, ClassifierHead, HeadSpec, StemSpec
from ..models.fbnet import get_divisible_by
from ..models.layers import ConvBNAct, make_act
from ..lut.space import BlockSig, network_signatures

__all__ = ["BLOCK_TYPES", "FBNetV2Space", "V2Layer", "MaskedIR", "MixedIR", "SuperNetV2", "channel_choices", "channel_mask",
           "expected_latency", "hidden_mask", "interleave", "narrow_block", "sample_positions", "subsample"]

# (name, kernel, squeeze-excitation, activation)
BLOCK_TYPES: tuple[tuple[str, int, bool, str], ...] = tuple(
    (f"k{k}{'_se' if se else ''}_{act}", k, se, act)
    for k, se, act in itertools.product((3, 5), (False, True), ("relu", "hswish")))
EXPANSIONS = (2.0, 3.0, 4.0, 5.0, 6.0)  # expansion 1 (no 1x1 expansion conv) only where a stage fixes it
SE_RATIO = 0.25

# the released networks' layout: (min, max, step) output channels, depth, first stride, expansions
_V2_STAGES = (
    ((8, 16, 4), 1, 1, (1.0,)),
    ((16, 28, 4), 3, 2, EXPANSIONS),
    ((24, 40, 8), 4, 2, EXPANSIONS),
    ((48, 112, 8), 7, 2, EXPANSIONS),
    ((112, 184, 8), 4, 2, EXPANSIONS),
)


def channel_choices(lo: int, hi: int, step: int, *, where: str = "channel range") -> tuple[int, ...]:
    """``lo, lo + step, ..., hi``; the step must divide the range."""
    for label, v in (("min", lo), ("max", hi), ("step", step)):
        check_count(f"{where} {label}", v)
    if hi < lo:
        raise ValueError(f"{where} ({lo}, {hi}, {step}): max {hi} is below min {lo}")
    if (hi - lo) % step:
        raise ValueError(f"{where} ({lo}, {hi}, {step}): step {step} does not divide {hi - lo} (max - min); "
                         f"use a step that does, e.g. {math.gcd(hi - lo, step) or 1}")
    return tuple(range(lo, hi + 1, step))


@dataclass(frozen=True)
class V2Layer:
    """One searchable layer: its index, stage, channel choices, stride and expansion choices."""

    index: int
    stage: int
    channels: tuple[int, ...]
    stride: int
    expansions: tuple[float, ...]

    @property
    def where(self) -> str:
        return f"layer {self.index} (stage {self.stage})"


@dataclass(frozen=True)
class FBNetV2Space:
    """The ``fbnet-v2`` channel / expansion / block / resolution space at a given scale."""

    resolution: int = 224  # the full grid; ``resolutions`` are the input sides searched (<= it)
    resolutions: tuple[int, ...] = (224, 192, 160, 128)
    width: float = 1.0
    in_chans: int = 3
    num_classes: int = 1000
    stem_channels: tuple[int, int, int] = (8, 16, 4)
    head_channels: int = 1984
    stages: tuple[tuple[tuple[int, int, int], int, int, tuple[float, ...]], ...] = _V2_STAGES
    name: str = "fbnet-v2"
    layers: tuple[V2Layer, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "resolutions", tuple(sorted({int(r) for r in self.resolutions}, reverse=True)))
        for label, v in (("resolution", self.resolution), ("in_chans", self.in_chans),
                         ("num_classes", self.num_classes), ("head_channels", self.head_channels)):
            check_count(f"space {label}", v)
        if not self.width > 0:
            raise ValueError(f"space width {self.width!r} must be > 0")
        if not self.resolutions or self.resolutions[0] > self.resolution or self.resolutions[-1] < 8:
            raise ValueError(f"space resolutions {self.resolutions} must lie in [8, resolution={self.resolution}]")
        layers = []
        for si, (rng, depth, stride, expansions) in enumerate(self.stages, 1):
            chs = self._scaled(channel_choices(*rng, where=f"stage {si} channel range"))
            for bi in range(depth):
                layers.append(V2Layer(len(layers) + 1, si, chs, stride if bi == 0 else 1, tuple(expansions)))
        object.__setattr__(self, "layers", tuple(layers))

    def _scaled(self, chs: Sequence[int]) -> tuple[int, ...]:
        if self.width == 1.0:
            return tuple(chs)
        return tuple(sorted({get_divisible_by(c * self.width, 8) for c in chs}))

    @property
    def stem_choices(self) -> tuple[int, ...]:
        return self._scaled(channel_choices(*self.stem_channels, where="stem channel range"))

    # ---- points -----------------------------------------------------------------------------
    def spec(self, point: dict[str, Any], *, name: str | None = None) -> ArchSpec:
        """The ArchSpec of a point: ``{"resolution": r, "stem": c, "layers": [(block, channels,
        expansion), ...]}`` with ``block`` a :data:`BLOCK_TYPES` name."""
        self.check(point)
        blocks = [self._block(layer, *choice) for layer, choice in zip(self.layers, point["layers"])]
        stages = [tuple(b for layer, b in zip(self.layers, blocks) if layer.stage == s)
                  for s in range(1, len(self.stages) + 1)]
        return ArchSpec(name or f"{self.name}-searched", StemSpec(point["stem"], act="hswish"), tuple(stages),
                        self.head_spec(), channel_divisor=8, resolution=point["resolution"])

    @staticmethod
    def _block(layer: V2Layer, block: str, channels: int, expansion: float) -> BlockSpec:
        _, k, se, act = next(t for t in BLOCK_TYPES if t[0] == block)
        return BlockSpec("ir", channels, kernel=k, stride=layer.stride, expansion=float(expansion),
                         se=SE_RATIO if se else 0.0, se_divisor=8, se_gate="hsigmoid", act=act)

    def check(self, point: dict[str, Any]) -> None:
        if point.get("resolution") not in self.resolutions:
            raise ValueError(f"{self.name}: resolution {point.get('resolution')!r} is not one of {self.resolutions}")
        if point.get("stem") not in self.stem_choices:
            raise ValueError(f"{self.name}: stem channels {point.get('stem')!r} are not one of {self.stem_choices}")
        layers = point.get("layers", ())
        if len(layers) != len(self.layers):
            raise ValueError(f"{self.name} needs {len(self.layers)} layer choices, got {len(layers)}")
        names = [t[0] for t in BLOCK_TYPES]
        for layer, (block, chs, e) in zip(self.layers, layers):
            if block not in names:
                raise ValueError(f"{layer.where}: block {block!r} is not one of {names}")
            if chs not in layer.channels:
                raise ValueError(f"{layer.where}: {chs} channels are not one of {layer.channels}")
            if e not in layer.expansions:
                raise ValueError(f"{layer.where}: expansion {e} is not one of {layer.expansions}")

    def sample(self, seed: int | random.Random | None = None) -> dict[str, Any]:
        """A uniformly random point, reproducible from ``seed``."""
        rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        return {"resolution": rng.choice(self.resolutions), "stem": rng.choice(self.stem_choices),
                "layers": [(rng.choice(BLOCK_TYPES)[0], rng.choice(layer.channels), rng.choice(layer.expansions))
                           for layer in self.layers]}

    def spec_to_point(self, spec: ArchSpec) -> dict[str, Any]:
        """The point ``spec`` is, or a ValueError naming the first part outside the space."""
        blocks = spec.blocks
        if len(blocks) != len(self.layers):
            raise ValueError(f"{spec.name!r} has {len(blocks)} blocks, {self.name} has {len(self.layers)} layers")
        layers = []
        for layer, b in zip(self.layers, blocks):
            kind = next((t[0] for t in BLOCK_TYPES if (t[1], t[2], t[3]) == (b.kernel, b.se > 0, b.act)), None)
            if b.type != "ir" or kind is None or self._block(layer, kind, b.out_channels, b.expansion) != b:
                raise ValueError(f"{spec.name!r}: {layer.where} is not a block of {self.name}: {b}")
            layers.append((kind, b.out_channels, b.expansion))
        point = {"resolution": spec.resolution, "stem": spec.stem.channels, "layers": layers}
        self.check(point)
        if self.spec(point, name=spec.name) != spec:
            raise ValueError(f"{spec.name!r}: stem, head or settings differ from {self.name}'s")
        return point

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "resolution": self.resolution, "resolutions": list(self.resolutions),
                "width": self.width, "in_chans": self.in_chans, "num_classes": self.num_classes,
                "stem_channels": list(self.stem_channels), "head_channels": self.head_channels,
                "stages": [[list(rng), depth, stride, list(ex)] for rng, depth, stride, ex in self.stages]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FBNetV2Space":
        d = dict(d)
        if d.pop("name", "fbnet-v2") != "fbnet-v2":
            raise ValueError(f"not an fbnet-v2 space record: {d!r}")
        allowed = {f.name for f in dataclasses.fields(cls) if f.init} - {"name"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ValueError(f"space record has unknown field(s) {unknown}; valid fields: {sorted(allowed)}")
        if "stages" in d:
            d["stages"] = tuple((tuple(rng), depth, stride, tuple(ex)) for rng, depth, stride, ex in d["stages"])
        for key in ("resolutions", "stem_channels"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    # ---- signatures: what a channel-aware latency table is keyed on -------------------------------
    def sides(self, resolution: int) -> list[int]:
        """The input side of every layer at input ``resolution``, then the head's."""
        side, out = _side(resolution, 2), []
        for layer in self.layers:
            out.append(side)
            side = _side(side, layer.stride)
        return out + [side]

    def head_spec(self) -> HeadSpec:
        return HeadSpec(self._scaled((self.head_channels,))[0], type="ir_pool", act="hswish", classifier="conv")

    def stem_signature(self, resolution: int, channels: int) -> BlockSig:
        return BlockSig("stem", (self.in_chans, resolution, resolution), stem=StemSpec(channels, act="hswish"))

    def layer_signature(self, layer: V2Layer, resolution: int, block: str, c_in: int, c_out: int,
                        expansion: float) -> BlockSig:
        side = self.sides(resolution)[layer.index - 1]
        return BlockSig("block", (c_in, side, side), block=self._block(layer, block, c_out, expansion),
                        channel_divisor=8)

    def head_signature(self, resolution: int, channels: int) -> BlockSig:
        side = self.sides(resolution)[-1]
        return BlockSig("head", (channels, side, side), head=self.head_spec(), num_classes=self.num_classes)

    def signatures(self, point: dict[str, Any] | Sequence[Any]) -> list[BlockSig]:
        """Stem, every layer's block and head of a point (or of its list form, :meth:`point_list`)."""
        point = self.as_point(point)
        return network_signatures(self.spec(point), in_chans=self.in_chans, num_classes=self.num_classes)

    def distinct_signatures(self, *, include_identity: bool = False) -> list[BlockSig]:
        """Every distinct (block type, input channels, output channels, expansion, input side) of the
        space, stem and head included: what a fully measured channel-aware table holds. Layers of
        one stage after its first share their signatures, so this is fewer than :meth:`lut_entries`."""
        seen: dict[str, BlockSig] = {}
        for sig in self._all_signatures():
            if include_identity or not sig.is_identity:
                seen.setdefault(sig.key, sig)
        return list(seen.values())

    def _all_signatures(self):
        for r in self.resolutions:
            for c in self.stem_choices:
                yield self.stem_signature(r, c)
            prev = self.stem_choices
            for layer in self.layers:
                for block, c_in, c_out, e in itertools.product((t[0] for t in BLOCK_TYPES), prev, layer.channels,
                                                              layer.expansions):
                    yield self.layer_signature(layer, r, block, c_in, c_out, e)
                prev = layer.channels
            for c in prev:
                yield self.head_signature(r, c)

    # ---- points as plain lists (how a LUT records its measured networks) ------------------------
    @staticmethod
    def point_list(point: dict[str, Any]) -> list[Any]:
        """``[resolution, stem, [block, channels, expansion], ...]``: a point as JSON-able list."""
        return [point["resolution"], point["stem"], *[[b, c, e] for b, c, e in point["layers"]]]

    def as_point(self, point: dict[str, Any] | Sequence[Any]) -> dict[str, Any]:
        """A point from itself or its :meth:`point_list` form, checked."""
        if not isinstance(point, dict):
            items = list(point)
            if len(items) < 2:
                raise ValueError(f"{self.name}: a point list is [resolution, stem, [block, channels, expansion], "
                                 f"...], got {items!r}")
            point = {"resolution": items[0], "stem": items[1],
                     "layers": [tuple(x) if isinstance(x, (list, tuple)) else x for x in items[2:]]}
        point = {**point, "layers": [tuple(x) for x in point["layers"]]}
        self.check(point)
        return point

    def widest(self) -> dict[str, Any]:
        return {"resolution": self.resolutions[0], "stem": self.stem_choices[-1],
                "layers": [(BLOCK_TYPES[-1][0], layer.channels[-1], layer.expansions[-1]) for layer in self.layers]}

    def lut_entries(self) -> int:
        """Distinct (block type, input channels, output channels, expansion, resolution) a
        channel-aware latency table measures: what the expectation reads."""
        total, prev = 0, self.stem_choices
        for layer in self.layers:
            total += len(BLOCK_TYPES) * len(prev) * len(layer.channels) * len(layer.expansions)
            prev = layer.channels
        return total * len(self.resolutions)


# ---- masks --------------------------------------------------------------------------------------

def channel_mask(weights: Tensor, choices: Sequence[int], width: int) -> Tensor:
    """``sum_i weights[i] * 1_{c_i}``: a (width,) vector whose first ``c_i`` entries receive weight i."""
    if weights.shape != (len(choices),):
        raise ValueError(f"{len(choices)} channel choices need {len(choices)} weights, got {tuple(weights.shape)}")
    if max(choices) > width:
        raise ValueError(f"channel choice {max(choices)} exceeds the block's width {width}")
    keep = (torch.arange(width, device=weights.device)[None, :]
            < torch.as_tensor(list(choices), device=weights.device)[:, None]).to(weights.dtype)
    return weights @ keep


def hidden_mask(prev_weights: Tensor, prev_choices: Sequence[int], expansion_weights: Tensor,
                expansions: Sequence[float], width: int, divisor: int = 8) -> Tensor:
    """The mask of a block's hidden channels: the hidden width ``get_divisible_by(c_in * e, divisor)``
    depends on both the input channel choice and the expansion, so the mask mixes every pair,
    ``sum_i sum_k g_prev[i] h[k] 1_{mid(c_i, e_k)}``, exactly as the derived networks build it."""
    mids = [get_divisible_by(c * e, divisor) for c in prev_choices for e in expansions]
    return channel_mask(torch.outer(prev_weights, expansion_weights).flatten(), mids, width)


def _masked(x: Tensor, mask: Tensor | None) -> Tensor:
    return x if mask is None else x * mask.view(1, -1, 1, 1)


class MaskedIR(nn.Module):
    """An inverted-residual block at its widest (``in_max`` -> ``mid_max`` -> ``out_max``) whose hidden
    and output channels are masked; the squeeze-excitation's reduced width is the widest block's."""

    def __init__(self, in_max: int, out_max: int, mid_max: int, *, kernel: int, stride: int, se: bool, act: str,
                 pw: bool = True, se_reduced: int | None = None):
        super().__init__()
        if not pw and mid_max != in_max:
            raise ValueError(f"a block without its 1x1 expansion conv has mid == in ({in_max}), not {mid_max}")
        self.in_max, self.out_max, self.mid_max, self.stride = in_max, out_max, mid_max, stride
        self.pw = ConvBNAct(in_max, mid_max, 1, act=act) if pw else None
        self.dw = ConvBNAct(mid_max, mid_max, kernel, stride, groups=mid_max, act=act)
        self.se_reduce = self.se_expand = None
        if se:
            reduced = se_reduced or get_divisible_by(mid_max * SE_RATIO, 8)
            self.se_reduce = nn.Conv2d(mid_max, reduced, 1)
            self.se_act = make_act(act, reduced)
            self.se_expand = nn.Conv2d(reduced, mid_max, 1)
            self.se_gate = make_act("hsigmoid")
        self.pwl = ConvBNAct(mid_max, out_max, 1, act=None)

    def forward(self, x: Tensor, mid_mask: Tensor | None = None, out_mask: Tensor | None = None) -> Tensor:
        y = x if self.pw is None else _masked(self.pw(x), mid_mask)
        y = _masked(self.dw(y), mid_mask)
        if self.se_reduce is not None:
            s = y.mean((2, 3), keepdim=True)
            y = _masked(y * self.se_gate(self.se_expand(self.se_act(self.se_reduce(s)))), mid_mask)
        y = _masked(self.pwl(y), out_mask)
        return x + y if self.stride == 1 and self.in_max == self.out_max else y


def narrow_block(block: MaskedIR, c_in: int, mid: int, c_out: int) -> MaskedIR:
    """The block built at (c_in, mid, c_out) with the first channels of ``block``'s weights: what a
    one-hot mask selects. Its squeeze-excitation keeps the widest block's reduced width."""
    if block.stride == 1 and block.in_max == block.out_max and c_in != c_out:
        raise ValueError(f"a residual block narrows to a residual block: input and output channels must be equal, "
                         f"not {c_in} and {c_out}")
    kernel = block.dw[0].kernel_size[0]
    act = "hswish" if isinstance(block.dw[2], nn.Hardswish) else "relu"
    small = MaskedIR(c_in, c_out, mid, kernel=kernel, stride=block.stride, se=block.se_reduce is not None, act=act,
                     pw=block.pw is not None,
                     se_reduced=None if block.se_reduce is None else block.se_reduce.out_channels)
    cuts = {"pw.0.weight": (mid, c_in), "dw.0.weight": (mid,), "pwl.0.weight": (c_out, mid),
            "se_reduce.weight": (None, mid), "se_expand.weight": (mid,), "se_expand.bias": (mid,)}
    state = {}
    for key, t in block.state_dict().items():
        if key in cuts:
            index = tuple(slice(None) if n is None else slice(0, n) for n in cuts[key])
        elif key.startswith(("pw.1.", "dw.1.")) and t.dim() == 1:
            index = (slice(0, mid),)
        elif key.startswith("pwl.1.") and t.dim() == 1:
            index = (slice(0, c_out),)
        else:
            index = ()
        state[key] = t[index].clone()
    small.load_state_dict(state)
    return small.eval()


# ---- resolution -----------------------------------------------------------------------------------

def sample_positions(full: int, small: int) -> Tensor:
    """The rows (or columns) of a ``full``-sided grid that a ``small``-sided map occupies:
    ``floor(i * full / small)`` (nearest subsampling)."""
    if not 1 <= small <= full:
        raise ValueError(f"a {small}-sided map does not fit a {full}-sided grid")
    return torch.div(torch.arange(small) * full, small, rounding_mode="floor")


def subsample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """The (h, w) map at the nearest-subsampled positions of an (N, C, H, W) full-grid map."""
    rows, cols = sample_positions(x.shape[2], size[0]), sample_positions(x.shape[3], size[1])
    return x[:, :, rows][:, :, :, cols]


def interleave(y: Tensor, size: tuple[int, int]) -> Tensor:
    """A small (N, C, h, w) map put back on an (H, W) grid at its sampled positions, zeros between."""
    out = y.new_zeros(*y.shape[:2], *size)
    rows, cols = sample_positions(size[0], y.shape[2]), sample_positions(size[1], y.shape[3])
    out[:, :, rows[:, None], cols[None, :]] = y
    return out


# ---- expected latency -------------------------------------------------------------------------------

def expected_latency(tables: Sequence[Tensor], stem: Tensor, head: Tensor, *, resolution: Tensor,
                     stem_weights: Tensor, channel_weights: Sequence[Tensor], expansion_weights: Sequence[Tensor],
                     block_weights: Sequence[Tensor]) -> Tensor:
    """The exact expected latency of the network over its discrete choices.

    ``tables[l]`` is layer l's measured latency, shape (R, B, I, J, K): resolution, block type,
    input channel choice (the previous layer's, or the stem's), output channel choice and expansion.
    ``stem`` is (R, S) over the stem's channel choices, ``head`` (R, J_last). The weights are each
    layer's probabilities over its choices (Gumbel-softmax samples in the search); ``resolution`` is
    (R,). Channel choices of consecutive layers are independent, so the expectation of a layer needs
    only its own and its predecessor's weights."""
    per_res = torch.einsum("rs,s->r", stem, stem_weights)
    prev = stem_weights
    for table, g, h, p in zip(tables, channel_weights, expansion_weights, block_weights):
        per_res = per_res + torch.einsum("rbijk,b,i,j,k->r", table, p, prev, g, h)
        prev = g
    per_res = per_res + torch.einsum("rj,j->r", head, prev)
    return per_res @ resolution


# ---- the supernet ---------------------------------------------------------------------------------

class MixedIR(MaskedIR):
    """A layer's every block type in one set of weights: the depthwise kernel is 5x5, a 3x3 choice
    uses its centre (``p(k3)`` of the weight masked to it), the squeeze-excitation's gate is mixed
    with 1 by ``p(se)``, and the activations are ``p(relu) relu + p(hswish) hswish`` of the same
    pre-activation. A one-hot choice computes that block type exactly; soft weights mix the
    marginals of kernel, SE and activation."""

    def __init__(self, in_max: int, out_max: int, mid_max: int, *, stride: int, pw: bool):
        super().__init__(in_max, out_max, mid_max, kernel=5, stride=stride, se=True, act="relu", pw=pw)
        centre = torch.zeros(1, 1, 5, 5)
        centre[..., 1:4, 1:4] = 1.0
        self.register_buffer("centre", centre, persistent=False)

    @staticmethod
    def marginals(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(p(kernel 3), p(SE), p(h-swish)) of a distribution over :data:`BLOCK_TYPES`."""
        k3 = sum(p[i] for i, t in enumerate(BLOCK_TYPES) if t[1] == 3)
        se = sum(p[i] for i, t in enumerate(BLOCK_TYPES) if t[2])
        hs = sum(p[i] for i, t in enumerate(BLOCK_TYPES) if t[3] == "hswish")
        return k3, se, hs

    @staticmethod
    def _act(y: Tensor, hs: Tensor) -> Tensor:
        """The activations mixed on one pre-activation: ``(1 - p(hswish)) relu + p(hswish) hswish``."""
        return (1 - hs) * torch.relu(y) + hs * nn.functional.hardswish(y)

    def forward(self, x: Tensor, p: Tensor, mid_mask: Tensor | None = None,  # type: ignore[override]
                out_mask: Tensor | None = None) -> Tensor:
        k3, se, hs = self.marginals(p)
        y = x if self.pw is None else _masked(self._act(self.pw[1](self.pw[0](x)), hs), mid_mask)
        conv = self.dw[0]
        weight = conv.weight * (k3 * self.centre + (1 - k3))  # a 3x3 choice keeps the centre taps
        y = nn.functional.conv2d(y, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        y = _masked(self._act(self.dw[1](y), hs), mid_mask)
        gate = self.se_gate(self.se_expand(self._act(self.se_reduce(y.mean((2, 3), keepdim=True)), hs)))
        y = _masked(y * (se * gate + (1 - se)), mid_mask)
        y = _masked(self.pwl(y), out_mask)
        return x + y if self.stride == 1 and self.in_max == self.out_max else y


def _side(side: int, stride: int) -> int:
    return -(-side // stride)  # a padded conv: ceil(side / stride)


class SuperNetV2(nn.Module):
    """The ``fbnet-v2`` supernet: every layer one :class:`MixedIR` at its widest, channel and
    hidden masks from the architecture weights, and each searched resolution run on the full grid
    by subsample and interleave; the logits of the resolutions are weighted and summed."""

    def __init__(self, space: FBNetV2Space):
        super().__init__()
        self.space = space
        stem_max = space.stem_choices[-1]
        self.stem = ConvBNAct(space.in_chans, stem_max, 3, 2, act="hswish")
        blocks, prev = [], stem_max
        for layer in space.layers:
            mid = prev if layer.expansions == (1.0,) else get_divisible_by(prev * max(layer.expansions), 8)
            blocks.append(MixedIR(prev, layer.channels[-1], mid, stride=layer.stride,
                                  pw=layer.expansions != (1.0,)))
            prev = layer.channels[-1]
        self.blocks = nn.ModuleList(blocks)
        self.head = ClassifierHead(space.head_spec(), prev, space.num_classes, bn_eps=1e-5, bn_momentum=0.1)

    def forward(self, x: Tensor, arch: dict[str, Tensor]) -> Tensor:
        """``arch``: ``resolution`` (R,), ``stem`` (S,), and per layer ``block`` (8,), ``channels`` and
        ``expansion`` weight vectors (Gumbel-softmax samples in a search). Every layer runs once per
        resolution on the subsampled map and the interleaved results are summed with the
        resolution weights (the paper's relaxation: with one-hot weights, exactly the network at
        that resolution)."""
        space, w = self.space, arch["resolution"]
        full = _side(space.resolution, 2)
        sides = [_side(r, 2) for r in space.resolutions]
        y = sum(w[i] * interleave(self.stem(subsample(x, (r, r))), (full, full))
                for i, r in enumerate(space.resolutions))
        y = _masked(y, channel_mask(arch["stem"], space.stem_choices, self.stem.out_channels))
        prev_w, prev_choices = arch["stem"], space.stem_choices
        for layer, block, p, g, h in zip(space.layers, self.blocks, arch["block"], arch["channels"],
                                         arch["expansion"]):
            out_mask = channel_mask(g, layer.channels, block.out_max)
            mid_mask = None if block.pw is None else hidden_mask(prev_w, prev_choices, h, layer.expansions,
                                                                block.mid_max)
            full = _side(full, layer.stride)
            small = [(s, _side(s, layer.stride)) for s in sides]
            y = sum(w[i] * interleave(block(subsample(y, (s, s)), p, mid_mask, out_mask), (full, full))
                    for i, (s, _) in enumerate(small))
            sides, prev_w, prev_choices = [o for _, o in small], g, layer.channels
        return sum(w[i] * self.head(subsample(y, (s, s))) for i, s in enumerate(sides))

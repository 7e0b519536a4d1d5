"""Search spaces: the FBNet v1 layer-wise space and the canonical block signatures a latency table keys on.

``fbnet-v1`` is the macro-architecture of Wu et al. (CVPR'19, Table 1): a 3x3 stride-2 stem, 22
searchable layers in seven stages (depths 1/4/4/4/4/4/1, channels 16/24/32/64/112/184/352, strides
1/2/2/2/1/2/1), a 1x1 conv head (1984) and the classifier. Each layer picks one of nine candidates
(paper Table 2): an inverted-residual block with kernel 3 or 5 and expansion 1, 3 or 6, the two
expansion-1 blocks also with group-2 1x1 convs and a channel shuffle, and ``skip``. Resolution,
width, head channels, input channels and classes are knobs, so the same space runs at
Fashion-MNIST scale.

Every point is an :class:`~edgekit.models.ArchSpec` that ``models.from_arch`` builds, grouped in
stages as the zoo's FBNet specs are (so ``fbnet_a``/``fbnet_b``/``fbnet_c`` are points of the space
and compare equal to the spec of their choices).

>>> space = get_space("fbnet-v1", resolution=32, width=0.25, in_chans=1, num_classes=10)
>>> len(space.layers), len(CANDIDATES)
(22, 9)
>>> choices = space.sample(seed=0)
>>> space.spec_to_choices(space.spec(choices)) == choices
True
"""
from __future__ import annotations

import difflib
import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .._checks import check_count
from ..models.arch import ArchSpec, BlockSpec, BuildContext, ClassifierHead, HeadSpec, StemSpec, build_block
from ..models.fbnet import get_divisible_by
from ..models.layers import ConvBNAct

__all__ = ["CANDIDATES", "BlockSig", "FBNetV1Space", "Layer", "SPACES", "candidate_block", "describe_block",
           "get_space", "network_signatures"]

# (name, kernel, expansion, groups); "skip" has no kernel. Paper Table 2 order.
_IR_CANDIDATES = (("k3_e1", 3, 1, 1), ("k3_e1_g2", 3, 1, 2), ("k3_e3", 3, 3, 1), ("k3_e6", 3, 6, 1),
                  ("k5_e1", 5, 1, 1), ("k5_e1_g2", 5, 1, 2), ("k5_e3", 5, 3, 1), ("k5_e6", 5, 6, 1))
CANDIDATES: tuple[str, ...] = tuple(c[0] for c in _IR_CANDIDATES) + ("skip",)

# FBNet v1 TBS stages: (channels, depth, stride of the first layer)
_V1_STAGES = ((16, 1, 1), (24, 4, 2), (32, 4, 2), (64, 4, 2), (112, 4, 1), (184, 4, 2), (352, 1, 1))
# the zoo's (mobile-vision's) grouping of the 22 layers into ArchSpec stages
_V1_GROUPS = (1, 4, 4, 8, 5)


def candidate_block(name: str, out_channels: int, stride: int) -> BlockSpec:
    """The BlockSpec of candidate ``name`` (one of :data:`CANDIDATES`) for a layer."""
    if name == "skip":
        return BlockSpec("skip", out_channels, kernel=1, stride=stride)
    for cand, k, e, g in _IR_CANDIDATES:
        if cand == name:
            return BlockSpec("ir", out_channels, kernel=k, stride=stride, expansion=float(e), groups=g)
    raise ValueError(_unknown_candidate(name))


def _unknown_candidate(name: Any) -> str:
    close = difflib.get_close_matches(str(name), CANDIDATES, n=2, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown candidate {name!r}{hint} (candidates: {', '.join(CANDIDATES)})"


def describe_block(block: BlockSpec) -> str:
    """A short human name: ``k5 e6``, ``k3 e1 g2``, ``skip``, or the fields that make it differ."""
    if block.type == "skip":
        return "skip"
    if block.type == "ir":
        text = f"k{block.kernel} e{block.expansion:g}" + (f" g{block.groups}" if block.groups > 1 else "")
        extras = [f"act={block.act}"] if block.act != "relu" else []
        extras += [f"se={block.se:g}"] if block.se else []
        extras += [f"dw_padding={block.dw_padding}"] if block.dw_padding is not None else []
        return text + (f" ({', '.join(extras)})" if extras else "")
    return f"{block.type} k{block.kernel} e{block.expansion:g} g{block.groups}"


# ---- canonical signatures ----------------------------------------------------------------------

@dataclass(frozen=True)
class BlockSig:
    """One measurable unit: the stem, a block or the head, with the input shape it sees.

    ``key`` is the canonical string a latency table is keyed on: block type and hyper-parameters,
    input shape (C x H x W, batch 1), output channels and stride. ``module()`` builds it and
    ``example()`` gives a (1, C, H, W) input, so any timer can measure it.
    """

    kind: str  # "stem", "block" or "head"
    in_shape: tuple[int, int, int]  # (C, H, W)
    block: BlockSpec | None = None
    stem: StemSpec | None = None
    head: HeadSpec | None = None
    channel_divisor: int = 1
    num_classes: int = 0

    def __post_init__(self):
        if self.kind not in ("stem", "block", "head"):
            raise ValueError(f"signature kind {self.kind!r} must be 'stem', 'block' or 'head'")
        part = {"stem": self.stem, "block": self.block, "head": self.head}[self.kind]
        if part is None:
            raise ValueError(f"a {self.kind!r} signature needs its {self.kind} spec")
        if len(self.in_shape) != 3 or min(self.in_shape) < 1:
            raise ValueError(f"signature in_shape {self.in_shape} must be (C, H, W) >= 1")

    @property
    def key(self) -> str:
        c, h, w = self.in_shape
        shape = f"in={c}x{h}x{w}"
        if self.kind == "stem":
            s = self.stem
            return f"stem:k{s.kernel}:{s.act}|{shape}|out={s.channels}|s={s.stride}"
        if self.kind == "head":
            hd = self.head
            extra = f":e{hd.expansion:g}" if hd.type == "ir_pool" else ""
            return (f"head:{hd.type}{extra}:{hd.act}:{hd.classifier}|{shape}|out={hd.channels}"
                    f"|classes={self.num_classes}")
        b = self.block
        div = f"|div={self.channel_divisor}" if self.channel_divisor != 1 else ""
        return f"{_block_hparams(b)}|{shape}|out={b.out_channels}|s={b.stride}{div}"

    @property
    def out_shape(self) -> tuple[int, int, int]:
        c, h, w = self.in_shape
        if self.kind == "stem":
            s = self.stem
            return (s.channels, _conv_out(h, s.kernel, s.stride), _conv_out(w, s.kernel, s.stride))
        if self.kind == "head":
            return (self.num_classes, 1, 1)
        b = self.block
        k = b.kernel if b.type == "ir" else 1
        pad = k // 2 if b.dw_padding is None or b.type != "ir" else b.dw_padding
        return (b.out_channels, _conv_out(h, k, b.stride, pad), _conv_out(w, k, b.stride, pad))

    @property
    def is_identity(self) -> bool:
        """A skip that changes nothing adds no node to an exported graph: it costs 0, never measured."""
        b = self.block
        return (self.kind == "block" and b.type == "skip" and b.stride == 1
                and b.out_channels == self.in_shape[0])

    def module(self) -> nn.Module:
        c = self.in_shape[0]
        if self.kind == "stem":
            s = self.stem
            return ConvBNAct(c, s.channels, s.kernel, s.stride, act=s.act).eval()
        if self.kind == "head":
            return ClassifierHead(self.head, c, self.num_classes, bn_eps=1e-5, bn_momentum=0.1).eval()
        return build_block(self.block, BuildContext(c, self.channel_divisor)).eval()

    def example(self, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(1, *self.in_shape, generator=g)


def _conv_out(side: int, kernel: int, stride: int, pad: int | None = None) -> int:
    pad = kernel // 2 if pad is None else pad
    return (side + 2 * pad - kernel) // stride + 1


def _block_hparams(b: BlockSpec) -> str:
    if b.type == "skip":
        return f"skip:{b.act}"
    if b.type == "ir":
        text = f"ir:k{b.kernel}:e{b.expansion:g}:g{b.groups}:{b.act}"
        if b.se:
            text += f":se{b.se:g}-{b.se_from}-d{b.se_divisor}-{b.se_gate}-{b.se_act or b.act}"
        if b.dw_padding is not None:
            text += f":pad{b.dw_padding}"
        return text
    # any other registered block type: every field that is not out_channels/stride, in field order
    fields = [f"{name}={getattr(b, name)}" for name in b.__dataclass_fields__
              if name not in ("type", "out_channels", "stride")]
    return f"{b.type}:" + ",".join(fields)


def network_signatures(spec: ArchSpec, *, in_chans: int, num_classes: int,
                       resolution: int | None = None) -> list[BlockSig]:
    """Stem, every block and the head of ``spec`` as signatures, input shapes walked through the net.

    >>> from edgekit.models.fbnet import fbnet_arch
    >>> sigs = network_signatures(fbnet_arch("fbnet_c"), in_chans=3, num_classes=1000)
    >>> len(sigs), sigs[0].key
    (24, 'stem:k3:relu|in=3x224x224|out=16|s=2')
    """
    side = spec.resolution if resolution is None else resolution
    if in_chans < 1 or num_classes < 1 or side < 1:
        raise ValueError(f"in_chans {in_chans}, num_classes {num_classes} and resolution {side} must be >= 1")
    stem = BlockSig("stem", (in_chans, side, side), stem=spec.stem)
    sigs, shape = [stem], stem.out_shape
    for block in spec.blocks:
        sig = BlockSig("block", shape, block=block, channel_divisor=spec.channel_divisor)
        shape = sig.out_shape
        if min(shape[1:]) < 1:
            raise ValueError(f"resolution {side} is too small for {spec.name!r}: the maps vanish before "
                             f"block {len(sigs)}")
        sigs.append(sig)
    sigs.append(BlockSig("head", shape, head=spec.head, num_classes=num_classes))
    return sigs


# ---- the FBNet v1 space ------------------------------------------------------------------------

@dataclass(frozen=True)
class Layer:
    """One searchable layer: its 1-based index, TBS stage and block numbers (1-based), output
    channels, stride and input shape (fixed by the macro-architecture whatever the choices)."""

    index: int
    stage: int
    block: int
    out_channels: int
    stride: int
    in_shape: tuple[int, int, int]

    @property
    def where(self) -> str:
        return f"layer {self.index} (stage {self.stage} block {self.block})"


@dataclass(frozen=True)
class FBNetV1Space:
    """The FBNet v1 layer-wise space at a given scale.

    ``stages`` (channels, depth, first stride) and ``groups`` (how many layers each ArchSpec stage
    holds) default to the paper's macro-architecture; a smaller ``stages`` gives a small space with
    the same candidates (``groups=None`` then puts each TBS stage in its own ArchSpec stage).
    Channels scale as the zoo's ``width`` does (``get_divisible_by(int(c * width), 8)``).
    """

    resolution: int = 224
    width: float = 1.0
    in_chans: int = 3
    num_classes: int = 1000
    head_channels: int = 1984
    stem_channels: int = 16
    stages: tuple[tuple[int, int, int], ...] = _V1_STAGES
    groups: tuple[int, ...] | None = _V1_GROUPS
    name: str = "fbnet-v1"
    layers: tuple[Layer, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(tuple(int(v) for v in s) for s in self.stages))
        self._check()
        object.__setattr__(self, "layers", self._make_layers())  # padded convs never shrink a map below 1x1

    def _check(self) -> None:
        for label, v in (("resolution", self.resolution), ("in_chans", self.in_chans),
                         ("num_classes", self.num_classes), ("head_channels", self.head_channels),
                         ("stem_channels", self.stem_channels)):
            check_count(f"space {label}", v)
        if not self.width > 0:
            raise ValueError(f"space width {self.width!r} must be > 0")
        if not self.stages:
            raise ValueError("space stages must list at least one (channels, depth, stride)")
        for s in self.stages:
            if len(s) != 3 or s[0] < 1 or s[1] < 1 or s[2] not in (1, 2):
                raise ValueError(f"space stage {s} must be (channels >= 1, depth >= 1, stride 1 or 2)")
        n = sum(s[1] for s in self.stages)
        if self.groups is not None and (sum(self.groups) != n or min(self.groups) < 1):
            raise ValueError(f"space groups {self.groups} must be positive and sum to the {n} layers")

    def ch(self, c: int) -> int:
        return c if self.width == 1.0 else get_divisible_by(int(c * self.width), 8)

    def _make_layers(self) -> tuple[Layer, ...]:
        side = _conv_out(self.resolution, 3, 2)
        chs, layers = self.ch(self.stem_channels), []
        for si, (c, depth, stride) in enumerate(self.stages, 1):
            for bi in range(1, depth + 1):
                s = stride if bi == 1 else 1
                layers.append(Layer(len(layers) + 1, si, bi, self.ch(c), s, (chs, side, side)))
                chs, side = self.ch(c), _conv_out(side, 1, s, 0)
        return tuple(layers)

    def _last_shape(self) -> tuple[int, int, int]:
        last = self.layers[-1]
        return (last.out_channels, _conv_out(last.in_shape[1], 1, last.stride, 0),
                _conv_out(last.in_shape[2], 1, last.stride, 0))

    # ---- points -----------------------------------------------------------------------------
    def candidates(self, layer: Layer) -> list[BlockSpec]:
        return [candidate_block(name, layer.out_channels, layer.stride) for name in CANDIDATES]

    def check_choices(self, choices: Sequence[str]) -> tuple[str, ...]:
        if isinstance(choices, str) or len(choices) != len(self.layers):
            n = 1 if isinstance(choices, str) else len(choices)
            raise ValueError(f"{self.name} needs {len(self.layers)} choices (one per layer), got {n}")
        for layer, name in zip(self.layers, choices):
            if name not in CANDIDATES:
                raise ValueError(f"{layer.where}: {_unknown_candidate(name)}")
        return tuple(choices)

    def spec(self, choices: Sequence[str], *, name: str | None = None) -> ArchSpec:
        """The ArchSpec of one point: ``choices`` names a candidate per layer."""
        choices = self.check_choices(choices)
        blocks = [candidate_block(c, layer.out_channels, layer.stride) for c, layer in zip(choices, self.layers)]
        groups = self.groups if self.groups is not None else tuple(s[1] for s in self.stages)
        stages, start = [], 0
        for n in groups:
            stages.append(tuple(blocks[start:start + n]))
            start += n
        return ArchSpec(name or f"{self.name}-searched", StemSpec(self.ch(self.stem_channels)), tuple(stages),
                        HeadSpec(self.ch(self.head_channels), classifier="conv"), channel_divisor=1,
                        resolution=self.resolution)

    def sample(self, seed: int | random.Random | None = None) -> tuple[str, ...]:
        """A uniformly random point (one candidate per layer), reproducible from ``seed``."""
        rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        return tuple(rng.choice(CANDIDATES) for _ in self.layers)

    def spec_to_choices(self, spec: ArchSpec) -> tuple[str, ...]:
        """The candidate names of ``spec``, or a ValueError naming the first part outside the space."""
        where = f"{spec.name!r} is not in {self.name} ({self._scale()})"
        self._check_macro(spec, where)
        blocks = spec.blocks
        if len(blocks) != len(self.layers):
            raise ValueError(f"{where}: it has {len(blocks)} blocks, the space has {len(self.layers)} layers")
        choices = []
        for layer, block in zip(self.layers, blocks):
            cands = self.candidates(layer)
            if block in cands:
                choices.append(CANDIDATES[cands.index(block)])
                continue
            if block.out_channels != layer.out_channels or block.stride != layer.stride:
                raise ValueError(f"{where}: {layer.where} has out_channels {block.out_channels} stride "
                                 f"{block.stride}; the space fixes out_channels {layer.out_channels} stride "
                                 f"{layer.stride}")
            raise ValueError(f"{where}: {layer.where}: {describe_block(block)} is not a candidate; candidates "
                             f"are {', '.join(describe_block(c) for c in cands)}")
        return tuple(choices)

    def _check_macro(self, spec: ArchSpec, where: str) -> None:
        want_stem, want_head = StemSpec(self.ch(self.stem_channels)), HeadSpec(self.ch(self.head_channels),
                                                                               classifier="conv")
        if spec.stem != want_stem:
            raise ValueError(f"{where}: stem {spec.stem} differs from the space's {want_stem}")
        if spec.head != want_head:
            hint = " (set head_channels to match)" if spec.head.channels != want_head.channels else ""
            raise ValueError(f"{where}: head {spec.head} differs from the space's {want_head}{hint}")
        if spec.resolution != self.resolution:
            raise ValueError(f"{where}: resolution {spec.resolution} differs from the space's {self.resolution}")
        if spec.channel_divisor != 1:
            raise ValueError(f"{where}: channel_divisor {spec.channel_divisor} (the space uses 1)")

    def _scale(self) -> str:
        return (f"resolution {self.resolution}, width {self.width:g}, in_chans {self.in_chans}, "
                f"num_classes {self.num_classes}, head {self.head_channels}")

    # ---- signatures -------------------------------------------------------------------------
    def stem_signature(self) -> BlockSig:
        return BlockSig("stem", (self.in_chans, self.resolution, self.resolution),
                        stem=StemSpec(self.ch(self.stem_channels)))

    def head_signature(self) -> BlockSig:
        return BlockSig("head", self._last_shape(), head=HeadSpec(self.ch(self.head_channels), classifier="conv"),
                        num_classes=self.num_classes)

    def layer_signatures(self, layer: Layer) -> list[BlockSig]:
        """The signatures of a layer's candidates, in :data:`CANDIDATES` order."""
        return [BlockSig("block", layer.in_shape, block=b) for b in self.candidates(layer)]

    def signatures(self, choices: Sequence[str]) -> list[BlockSig]:
        """Stem, the chosen block of every layer, head."""
        choices = self.check_choices(choices)
        blocks = [self.layer_signatures(layer)[CANDIDATES.index(c)] for layer, c in zip(self.layers, choices)]
        return [self.stem_signature(), *blocks, self.head_signature()]

    def distinct_signatures(self, *, include_identity: bool = False) -> list[BlockSig]:
        """Every distinct (candidate, input shape) of the space, plus stem and head, in layer order.
        Identity skips cost nothing and are left out unless ``include_identity``."""
        seen: dict[str, BlockSig] = {}
        for sig in [self.stem_signature(), *(s for layer in self.layers for s in self.layer_signatures(layer)),
                    self.head_signature()]:
            if (include_identity or not sig.is_identity) and sig.key not in seen:
                seen[sig.key] = sig
        return list(seen.values())

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "resolution": self.resolution, "width": self.width, "in_chans": self.in_chans,
                "num_classes": self.num_classes, "head_channels": self.head_channels,
                "stem_channels": self.stem_channels, "stages": [list(s) for s in self.stages],
                "groups": None if self.groups is None else list(self.groups)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FBNetV1Space":
        d = dict(d)
        if d.pop("name", "fbnet-v1") != "fbnet-v1":
            raise ValueError(f"not an fbnet-v1 space record: {d!r}")
        allowed = {"resolution", "width", "in_chans", "num_classes", "head_channels", "stem_channels", "stages",
                   "groups"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ValueError(f"space record has unknown field(s) {unknown}; valid fields: {sorted(allowed)}")
        if d.get("stages") is not None:
            d["stages"] = tuple(tuple(s) for s in d["stages"])
        if d.get("groups") is not None:
            d["groups"] = tuple(d["groups"])
        return cls(**d)


class _Spaces(dict):
    """Space name -> class; ``fbnet-v2`` (``edgekit.nas.dmasking``, which builds on this module) is
    imported on first use."""

    def __missing__(self, name: str):
        if name == "fbnet-v2":
            from ..nas.dmasking import FBNetV2Space
            self[name] = FBNetV2Space
            return FBNetV2Space
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return name in ("fbnet-v1", "fbnet-v2")

    def names(self) -> tuple[str, ...]:
        return ("fbnet-v1", "fbnet-v2")


SPACES = _Spaces({"fbnet-v1": FBNetV1Space})


def get_space(name: str, **knobs: Any) -> Any:
    """A search space by name with its knobs (resolution, width, in_chans, num_classes, head_channels;
    ``fbnet-v2`` also resolutions, the input sides it searches).

    >>> get_space("fbnet-v1", resolution=32, width=0.25, in_chans=1, num_classes=10).layers[6].where
    'layer 7 (stage 3 block 2)'
    """
    if name not in SPACES:
        close = difflib.get_close_matches(name, SPACES.names(), n=2, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown search space {name!r}{hint} (known: {', '.join(SPACES.names())})")
    knobs = {k: v for k, v in knobs.items() if v is not None}
    cls = SPACES[name]
    if name == "fbnet-v1" and "resolutions" in knobs:
        raise ValueError("fbnet-v1 searches one input resolution (--resolution); --resolutions is fbnet-v2's")
    if name == "fbnet-v2":
        side = knobs.get("resolution", 224)
        knobs.setdefault("resolutions", tuple(r for r in (side, side * 3 // 4) if r >= 8))
    return cls(**knobs)

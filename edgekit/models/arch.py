"""ArchSpec: a network as plain data (stem, stages of block specs, head), JSON round-trip.

The FBNet family, EfficientNet v1/v2 and every searched network are ArchSpecs; ``from_arch``
builds the ``nn.Module``. Block types are registered by the module that defines the block
(``@register_block("ir")``), so the spec stays plain data and the builder stays one loop.

>>> spec = ArchSpec(name="tiny", stem=StemSpec(8),
...                 stages=((BlockSpec("ir", 16, kernel=3, stride=2, expansion=3),),),
...                 head=HeadSpec(channels=32))
>>> ArchSpec.from_json(spec.to_json()) == spec
True
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .layers import ACTIVATIONS, ConvBNAct, make_act

__all__ = ["ArchSpec", "BlockSpec", "StemSpec", "HeadSpec", "BuildContext", "register_block",
           "block_types", "build_block", "from_arch", "ArchNet"]

SCHEMA_VERSION = 1
PADDINGS = ("symmetric", "same")
_ACTS = tuple(sorted(ACTIVATIONS))


def _check_act(owner: str, act: str | None) -> None:
    if act is not None and act not in ACTIVATIONS:
        raise ValueError(f"{owner}: unknown activation {act!r}; choose one of {_ACTS}")


@dataclass(frozen=True)
class BlockSpec:
    """One block. Which fields a block type reads is documented at its ``@register_block``.

    se: squeeze-excite ratio (0 = none); se_from: the ratio applies to the block's ``"mid"``
    (expanded) or ``"in"`` channels; se_divisor rounds the reduced width (1 = truncate, as
    EfficientNet does); se_act None = the block's own activation.
    """

    type: str
    out_channels: int
    kernel: int = 3
    stride: int = 1
    expansion: float = 1.0
    groups: int = 1
    se: float = 0.0
    se_from: str = "mid"
    se_divisor: int = 1
    se_gate: str = "sigmoid"
    se_act: str | None = None
    act: str = "relu"
    dw_padding: int | None = None  # None = kernel // 2; FBNetV3 overrides it on a few blocks
    pw_always: bool = False  # 'ir': a 1x1 expansion conv even at in == mid (timm's fbnetc_100)

    def __post_init__(self):
        where = f"block {self.type!r}"
        if self.out_channels < 1:
            raise ValueError(f"{where}: out_channels {self.out_channels} must be >= 1")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"{where}: kernel {self.kernel} must be odd and >= 1")
        if self.stride not in (1, 2):
            raise ValueError(f"{where}: stride {self.stride} must be 1 or 2")
        if not self.expansion > 0:
            raise ValueError(f"{where}: expansion {self.expansion} must be > 0")
        if self.groups < 1:
            raise ValueError(f"{where}: groups {self.groups} must be >= 1")
        if not 0.0 <= self.se < 1.0:
            raise ValueError(f"{where}: se ratio {self.se} must be in [0, 1)")
        if self.se_from not in ("mid", "in"):
            raise ValueError(f"{where}: se_from {self.se_from!r} must be 'mid' or 'in'")
        if self.se_divisor < 1:
            raise ValueError(f"{where}: se_divisor {self.se_divisor} must be >= 1")
        for act in (self.act, self.se_gate, self.se_act):
            _check_act(where, act)
        if self.dw_padding is not None and self.dw_padding < 0:
            raise ValueError(f"{where}: dw_padding {self.dw_padding} must be >= 0")


@dataclass(frozen=True)
class StemSpec:
    channels: int
    kernel: int = 3
    stride: int = 2
    act: str = "relu"

    def __post_init__(self):
        if self.channels < 1:
            raise ValueError(f"stem channels {self.channels} must be >= 1")
        _check_act("stem", self.act)


@dataclass(frozen=True)
class HeadSpec:
    """type ``"conv"``: 1x1 conv + BN + act -> GAP -> dropout -> classifier.
    type ``"ir_pool"`` (FBNetV2/V3): 1x1 conv to in*expansion + BN + act -> GAP -> 1x1 conv to
    ``channels`` (no BN, no bias) + act -> dropout -> classifier.
    classifier ``"linear"`` is nn.Linear, ``"conv"`` a 1x1 conv with bias (mobile-vision style)."""

    channels: int
    type: str = "conv"
    expansion: float = 6.0
    act: str = "relu"
    dropout: float = 0.0
    classifier: str = "linear"

    def __post_init__(self):
        if self.channels < 1:
            raise ValueError(f"head channels {self.channels} must be >= 1")
        if self.type not in ("conv", "ir_pool"):
            raise ValueError(f"head type {self.type!r} must be 'conv' or 'ir_pool'")
        if self.classifier not in ("linear", "conv"):
            raise ValueError(f"head classifier {self.classifier!r} must be 'linear' or 'conv'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"head dropout {self.dropout} must be in [0, 1)")
        _check_act("head", self.act)


@dataclass(frozen=True)
class ArchSpec:
    """A whole network. ``channel_divisor`` rounds expanded (mid) widths; ``resolution`` is the
    input side the spec was designed for (a default, overridable at build time)."""

    name: str
    stem: StemSpec
    stages: tuple[tuple[BlockSpec, ...], ...]
    head: HeadSpec
    channel_divisor: int = 1
    resolution: int = 224
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    drop_path_rate: float = 0.0  # stochastic depth, linear over all blocks
    padding: str = "symmetric"  # or "same": TensorFlow's, asymmetric at stride 2 (timm's tf_ checkpoints)

    def __post_init__(self):
        # accept lists (as JSON gives them) but keep tuples, so specs hash and compare
        object.__setattr__(self, "stages", tuple(tuple(s) for s in self.stages))
        if not self.stages or any(len(s) == 0 for s in self.stages):
            raise ValueError(f"arch {self.name!r}: every stage needs at least one block")
        if self.channel_divisor < 1:
            raise ValueError(f"arch {self.name!r}: channel_divisor {self.channel_divisor} must be >= 1")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"arch {self.name!r}: drop_path_rate {self.drop_path_rate} must be in [0, 1)")
        if self.padding not in PADDINGS:
            raise ValueError(f"arch {self.name!r}: padding {self.padding!r} must be one of {PADDINGS}")
        for i, stage in enumerate(self.stages):
            for j, block in enumerate(stage):
                if block.type not in _BLOCKS:
                    raise ValueError(f"arch {self.name!r}: stage {i} block {j} has unknown type "
                                     f"{block.type!r}; registered types: {sorted(_BLOCKS)}")

    @property
    def blocks(self) -> list[BlockSpec]:
        return [b for stage in self.stages for b in stage]

    def replace(self, **changes: Any) -> "ArchSpec":
        return dataclasses.replace(self, **changes)

    # ---- plain-data round trip -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stages"] = [[dataclasses.asdict(b) for b in stage] for stage in self.stages]
        return {"schema_version": SCHEMA_VERSION, **d}

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ArchSpec":
        d = dict(d)
        version = d.pop("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION:
            raise ValueError(f"ArchSpec schema_version {version} is not supported (this edgekit reads "
                             f"{SCHEMA_VERSION})")
        _check_keys(cls, d, "ArchSpec")
        stages = d.get("stages")
        if not isinstance(stages, list) or not all(isinstance(s, list) for s in stages):
            raise ValueError("ArchSpec 'stages' must be a list of lists of blocks")
        d["stem"] = _build(StemSpec, d.get("stem"), "stem")
        d["head"] = _build(HeadSpec, d.get("head"), "head")
        d["stages"] = tuple(tuple(_build(BlockSpec, b, f"stages[{i}][{j}]") for j, b in enumerate(s))
                            for i, s in enumerate(stages))
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "ArchSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"ArchSpec JSON does not parse: {e}") from None
        if not isinstance(data, dict):
            raise ValueError("ArchSpec JSON must be an object")
        return cls.from_dict(data)


def _check_keys(cls: type, d: Mapping[str, Any], where: str) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; valid fields: {sorted(names)}")
    missing = sorted(f.name for f in dataclasses.fields(cls)
                     if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                     and f.name not in d)
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")


def _build(cls: type, d: Any, where: str) -> Any:
    if not isinstance(d, Mapping):
        raise ValueError(f"ArchSpec {where} must be an object, got {type(d).__name__}")
    _check_keys(cls, d, f"ArchSpec {where}")
    try:
        return cls(**d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"ArchSpec {where}: {e}") from None


# ---- block builders ---------------------------------------------------------------------------

@dataclass(frozen=True)
class BuildContext:
    """What a block builder needs besides its spec: input channels and network-wide settings."""

    in_channels: int
    channel_divisor: int = 1
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    drop_path: float = 0.0  # this block's stochastic-depth rate
    padding: str = "symmetric"  # the ArchSpec's

    def conv_padding(self, override: int | None = None) -> int | str | None:
        """What a strided conv of the block passes as ``ConvBNAct(padding=...)``: the block's own
        override, else ``"same"`` in a TensorFlow-padded network, else None (symmetric)."""
        if override is not None:
            return override
        return "same" if self.padding == "same" else None


BlockBuilder = Callable[[BlockSpec, BuildContext], nn.Module]
_BLOCKS: dict[str, BlockBuilder] = {}


def register_block(type_name: str) -> Callable[[BlockBuilder], BlockBuilder]:
    def deco(fn: BlockBuilder) -> BlockBuilder:
        if type_name in _BLOCKS:
            raise ValueError(f"block type {type_name!r} is registered twice")
        _BLOCKS[type_name] = fn
        return fn

    return deco


def block_types() -> list[str]:
    return sorted(_BLOCKS)


def build_block(spec: BlockSpec, ctx: BuildContext) -> nn.Module:
    """One block on its own (a supernet's candidate, a latency table's measured unit)."""
    if spec.type not in _BLOCKS:
        raise ValueError(f"unknown block type {spec.type!r}; registered types: {sorted(_BLOCKS)}")
    return _BLOCKS[spec.type](spec, ctx)


class ClassifierHead(nn.Module):
    def __init__(self, head: HeadSpec, in_chs: int, num_classes: int, *, bn_eps: float, bn_momentum: float):
        super().__init__()
        if head.type == "conv":
            self.conv = ConvBNAct(in_chs, head.channels, 1, act=head.act, bn_eps=bn_eps, bn_momentum=bn_momentum)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.post = nn.Identity()
        else:  # ir_pool: expand, pool, then a BN-free projection
            mid = int(round(in_chs * head.expansion))
            self.conv = ConvBNAct(in_chs, mid, 1, act=head.act, bn_eps=bn_eps, bn_momentum=bn_momentum)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.post = nn.Sequential(nn.Conv2d(mid, head.channels, 1, bias=False), make_act(head.act, head.channels))
        self.dropout = nn.Dropout(head.dropout)
        self.classifier_type = head.classifier
        if head.classifier == "linear":
            self.classifier: nn.Module = nn.Linear(head.channels, num_classes)
        else:
            self.classifier = nn.Conv2d(head.channels, num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.post(self.pool(self.conv(x)))  # (B, C, H, W) -> (B, head, 1, 1)
        x = self.dropout(x)
        if self.classifier_type == "linear":
            return self.classifier(x.flatten(1))
        return self.classifier(x).flatten(1)


class ArchNet(nn.Module):
    """The network an ArchSpec describes: ``stem -> stages -> head``."""

    def __init__(self, spec: ArchSpec, *, num_classes: int = 1000, in_chans: int = 3):
        super().__init__()
        self.spec = spec
        eps, mom = spec.bn_eps, spec.bn_momentum
        self.stem = ConvBNAct(in_chans, spec.stem.channels, spec.stem.kernel, spec.stem.stride,
                              act=spec.stem.act, bn_eps=eps, bn_momentum=mom,
                              padding="same" if spec.padding == "same" else None)
        chs = spec.stem.channels
        n_blocks, idx = len(spec.blocks), 0
        stages = []
        for stage in spec.stages:
            blocks = []
            for block in stage:
                ctx = BuildContext(chs, spec.channel_divisor, eps, mom,
                                   drop_path=spec.drop_path_rate * idx / n_blocks, padding=spec.padding)
                blocks.append(_BLOCKS[block.type](block, ctx))
                chs = block.out_channels
                idx += 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(spec.head, chs, num_classes, bn_eps=eps, bn_momentum=mom)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def from_arch(spec: ArchSpec | Mapping[str, Any] | str, *, num_classes: int = 1000, in_chans: int = 3) -> ArchNet:
    """Build an ArchSpec (or its dict / JSON form) into a module."""
    if isinstance(spec, str):
        spec = ArchSpec.from_json(spec)
    elif not isinstance(spec, ArchSpec):
        spec = ArchSpec.from_dict(spec)
    if num_classes < 1 or in_chans < 1:
        raise ValueError(f"num_classes={num_classes} and in_chans={in_chans} must be >= 1")
    return ArchNet(spec, num_classes=num_classes, in_chans=in_chans)


@register_block("conv")
def _conv_block(spec: BlockSpec, ctx: BuildContext) -> nn.Module:
    """A plain conv + BN + act (kernel, stride, groups, act, out_channels)."""
    return ConvBNAct(ctx.in_channels, spec.out_channels, spec.kernel, spec.stride, groups=spec.groups,
                     act=spec.act, bn_eps=ctx.bn_eps, bn_momentum=ctx.bn_momentum, padding=ctx.conv_padding())


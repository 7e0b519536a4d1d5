"""EfficientNet v1 (B0-B7) and EfficientNetV2 (S, M, L) as ArchSpecs, with the MBConv and Fused-MBConv blocks.

Structure of google/automl (``efficientnetv2/effnetv2_configs.py`` ``v1_b0_block_str`` /
``efficientnetv1_params`` and the V2 S/M/L block strings, ``effnetv2_model.py``); the numbers are
checked against timm's ``tf_efficientnet*`` ports, which equal the official code (model_specs §6, §7).
A variant is a base stage table plus (width, depth) coefficients; ``compound_scale`` turns the two into
an ArchSpec, so a NAS can scale any base table the same way. Deliberate differences from that code:

- symmetric ``k // 2`` padding instead of TF "same": the same maps at every published resolution
  (and the same params / MACs), but TF weights would need asymmetric padding to reproduce their outputs;
- He fan-in init and a zero-gamma last BN on residual branches, not automl's fan-out init (see
  ``_init_block``: an untrained network's eval-mode outputs stay finite and input-dependent).

Width overrides scale the V2 head as automl does (timm leaves M/L at 1280; equal at width 1.0).

>>> spec = efficientnet_arch("efficientnet_b3")
>>> spec.stem.channels, [st[0].out_channels for st in spec.stages], spec.head.channels
(40, [24, 32, 48, 96, 136, 232, 384], 1536)
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from .arch import ArchNet, ArchSpec, BlockSpec, BuildContext, HeadSpec, StemSpec, from_arch, register_block
from .layers import ConvBNAct, DropPath, SqueezeExcite, make_divisible
from .registry import ModelCfg, register_model

__all__ = ["BaseNet", "FusedMBConv", "MBConv", "StageRow", "compound_scale", "efficientnet_arch",
           "efficientnet_names", "round_filters", "round_repeats"]

# TF BatchNorm: decay 0.99 is PyTorch momentum 0.01.
BN_EPS, BN_MOMENTUM = 1e-3, 0.01
DROP_PATH_RATE = 0.2  # survival_prob 0.8, linear over all blocks
V1_ROUND_LIMIT, V2_ROUND_LIMIT = 0.9, 0.0  # V1 adds 8 when rounding loses > 10 %; V2 has no guard


# ---- blocks ------------------------------------------------------------------------------------

def _check_fields(spec: BlockSpec, *, se_ok: bool) -> None:
    """Refuse fields the block would otherwise ignore (a typo'd spec must not build silently)."""
    if spec.groups != 1:
        raise ValueError(f"block {spec.type!r}: groups {spec.groups} is not supported (use 1)")
    if not se_ok and spec.se > 0:
        raise ValueError(f"block {spec.type!r}: se {spec.se} is not supported; Fused-MBConv has no SE "
                         f"(use 'mbconv' for a block with SE)")
    if not se_ok and spec.dw_padding is not None:
        raise ValueError(f"block {spec.type!r}: dw_padding {spec.dw_padding} is not supported: it has no "
                         f"depthwise conv (leave it None)")
    if spec.pw_always:
        raise ValueError(f"block {spec.type!r}: pw_always is an 'ir' block's option (leave it False)")


def _se_width(spec: BlockSpec, in_chs: int, mid: int) -> int:
    """SE reduced width: ``se`` times the block's input (``se_from="in"``, EfficientNet) or expanded
    width, truncated (``se_divisor`` 1, as automl's ``int(input_filters * se_ratio)``) or rounded to
    ``se_divisor``; at least 1."""
    base = in_chs if spec.se_from == "in" else mid
    if spec.se_divisor == 1:
        return max(1, int(base * spec.se))
    return make_divisible(base * spec.se, spec.se_divisor)


def _init_block(block: nn.Module, last: ConvBNAct) -> None:
    """He init (normal, fan in, zero bias) for every conv, as fbnet.py does, and, on a residual block,
    a zero gamma for the BN that ends the branch (Goyal et al. 2017; timm's ``zero_init_last``,
    mobile-vision's ``zero_last_bn_gamma``), so each residual block starts as the identity. automl's fan-out init (and
    PyTorch's default) is not used: in eval mode with unit BN statistics an untrained V2-L then grows to
    ~1e11 logits at 480 px (fp16 overflows), or every input gives the same logits. With this init every
    stage's output std stays within ~1e-4..0.4 for all eleven variants (V1's SE gates, ~0.5 at init,
    shrink the non-residual blocks)."""
    for conv in (m for m in block.modules() if isinstance(m, nn.Conv2d)):
        nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    if block.has_residual:
        nn.init.zeros_(last[1].weight)  # ConvBNAct = (conv, bn, act)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand, only when e != 1] -> dw kxk (stride) -> [SE] -> 1x1 project + BN
    (no act) [+ DropPath residual, exactly when stride is 1 and in == out]."""

    def __init__(self, spec: BlockSpec, ctx: BuildContext):
        super().__init__()
        _check_fields(spec, se_ok=True)
        in_chs, out_chs = ctx.in_channels, spec.out_channels
        mid = make_divisible(in_chs * spec.expansion, ctx.channel_divisor) if spec.expansion != 1 else in_chs
        bn = dict(bn_eps=ctx.bn_eps, bn_momentum=ctx.bn_momentum)
        self.has_residual = spec.stride == 1 and in_chs == out_chs
        if self.has_residual and spec.dw_padding not in (None, spec.kernel // 2):
            raise ValueError(f"block 'mbconv': dw_padding {spec.dw_padding} with kernel {spec.kernel} changes "
                             f"the map size of a residual block; use {spec.kernel // 2} or None")
        self.conv_pw = ConvBNAct(in_chs, mid, 1, act=spec.act, **bn) if spec.expansion != 1 else None
        self.conv_dw = ConvBNAct(mid, mid, spec.kernel, spec.stride, groups=mid,
                                 padding=ctx.conv_padding(spec.dw_padding), act=spec.act, **bn)
        self.se = (SqueezeExcite(mid, _se_width(spec, in_chs, mid), act=spec.se_act or spec.act, gate=spec.se_gate)
                   if spec.se > 0 else None)
        self.conv_pwl = ConvBNAct(mid, out_chs, 1, act=None, **bn)
        self.drop_path = DropPath(ctx.drop_path) if self.has_residual and ctx.drop_path > 0 else nn.Identity()
        _init_block(self, self.conv_pwl)

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.conv_pw is None else self.conv_pw(x)  # (B, in, H, W) -> (B, mid, H, W)
        y = self.conv_dw(y)  # -> (B, mid, H/s, W/s)
        if self.se is not None:
            y = self.se(y)
        y = self.conv_pwl(y)  # -> (B, out, H/s, W/s)
        return x + self.drop_path(y) if self.has_residual else y


class FusedMBConv(nn.Module):
    """EfficientNetV2's Fused-MBConv. e != 1: kxk conv (stride) in -> in*e + BN + act, then 1x1 project
    + BN (no act). e == 1: one kxk conv in -> out + BN + act (``conv_pwl`` is None). Residual + DropPath
    exactly when stride is 1 and in == out."""

    def __init__(self, spec: BlockSpec, ctx: BuildContext):
        super().__init__()
        _check_fields(spec, se_ok=False)
        in_chs, out_chs = ctx.in_channels, spec.out_channels
        bn = dict(bn_eps=ctx.bn_eps, bn_momentum=ctx.bn_momentum)
        self.has_residual = spec.stride == 1 and in_chs == out_chs
        if spec.expansion == 1:
            self.conv = ConvBNAct(in_chs, out_chs, spec.kernel, spec.stride, act=spec.act,
                                  padding=ctx.conv_padding(), **bn)
            self.conv_pwl = None
        else:
            mid = make_divisible(in_chs * spec.expansion, ctx.channel_divisor)
            self.conv = ConvBNAct(in_chs, mid, spec.kernel, spec.stride, act=spec.act,
                                  padding=ctx.conv_padding(), **bn)
            self.conv_pwl = ConvBNAct(mid, out_chs, 1, act=None, **bn)
        self.drop_path = DropPath(ctx.drop_path) if self.has_residual and ctx.drop_path > 0 else nn.Identity()
        _init_block(self, self.conv if self.conv_pwl is None else self.conv_pwl)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)  # (B, in, H, W) -> (B, mid or out, H/s, W/s)
        if self.conv_pwl is not None:
            y = self.conv_pwl(y)  # -> (B, out, H/s, W/s)
        return x + self.drop_path(y) if self.has_residual else y


@register_block("mbconv")
def _mbconv_block(spec: BlockSpec, ctx: BuildContext) -> nn.Module:
    """Reads out_channels, kernel, stride, expansion, se/se_from/se_divisor/se_gate/se_act, act, dw_padding."""
    return MBConv(spec, ctx)


@register_block("fused_mbconv")
def _fused_mbconv_block(spec: BlockSpec, ctx: BuildContext) -> nn.Module:
    """Reads out_channels, kernel, stride, expansion, act (no SE, no depthwise conv)."""
    return FusedMBConv(spec, ctx)


# ---- compound scaling --------------------------------------------------------------------------

@dataclass(frozen=True)
class StageRow:
    """One row of a base stage table: ``repeats`` blocks, the stride on the first."""

    type: str  # "mbconv" | "fused_mbconv"
    kernel: int
    stride: int
    expansion: float
    out: int
    repeats: int
    se: float = 0.0


@dataclass(frozen=True)
class BaseNet:
    """A base (unscaled) network: stem width, stage table, head width, and the rounding rule
    (``round_limit`` 0.9 = V1's 10 % guard, 0.0 = V2's plain rounding)."""

    stem: int
    stages: tuple[StageRow, ...]
    head: int = 1280
    round_limit: float = V1_ROUND_LIMIT


def round_filters(channels: int, width: float, round_limit: float = V1_ROUND_LIMIT) -> int:
    """``channels * width`` to the nearest multiple of 8 (at least 8); with ``round_limit`` 0.9 one
    step up when that loses more than 10 % (V1), with 0.0 never (V2).

    >>> round_filters(40, 1.1), round_filters(112, 1.1), round_filters(20, 0.5, 0.9), round_filters(20, 0.5, 0.0)
    (48, 120, 16, 8)
    """
    return make_divisible(channels * width, 8, round_limit=round_limit)


def round_repeats(repeats: int, depth: float) -> int:
    """``ceil(depth * repeats)``: any depth > 1 adds at least one block to every stage."""
    return int(math.ceil(depth * repeats))


def compound_scale(base: BaseNet, *, width: float, depth: float, name: str, resolution: int,
                   dropout: float, drop_path_rate: float = DROP_PATH_RATE) -> ArchSpec:
    """The ArchSpec of ``base`` scaled by ``width`` (stem, every stage and head, ``round_filters``) and
    ``depth`` (``round_repeats`` per stage). Pure: same inputs, same spec."""
    if not width > 0 or not depth > 0:
        raise ValueError(f"width {width!r} and depth {depth!r} must be > 0")
    ch = lambda c: round_filters(c, width, base.round_limit)  # noqa: E731
    stages = []
    for row in base.stages:
        first = _block(row, ch(row.out), row.stride)
        rest = _block(row, ch(row.out), 1)
        stages.append((first,) + (rest,) * (round_repeats(row.repeats, depth) - 1))
    return ArchSpec(name=name, stem=StemSpec(ch(base.stem), kernel=3, stride=2, act="swish"),
                    stages=tuple(stages), head=HeadSpec(ch(base.head), act="swish", dropout=dropout),
                    channel_divisor=1, resolution=resolution, bn_eps=BN_EPS, bn_momentum=BN_MOMENTUM,
                    drop_path_rate=drop_path_rate)


def _block(row: StageRow, out: int, stride: int) -> BlockSpec:
    return BlockSpec(row.type, out, kernel=row.kernel, stride=stride, expansion=float(row.expansion),
                     se=row.se, se_from="in", se_divisor=1, se_gate="sigmoid", act="swish")


# ---- variants ----------------------------------------------------------------------------------

def _mb(k: int, s: int, e: float, c: int, r: int) -> StageRow:
    return StageRow("mbconv", k, s, e, c, r, se=0.25)


def _fused(s: int, e: float, c: int, r: int) -> StageRow:
    return StageRow("fused_mbconv", 3, s, e, c, r)


V1_BASE = BaseNet(stem=32, stages=(
    _mb(3, 1, 1, 16, 1), _mb(3, 2, 6, 24, 2), _mb(5, 2, 6, 40, 2), _mb(3, 2, 6, 80, 3),
    _mb(5, 1, 6, 112, 3), _mb(5, 2, 6, 192, 4), _mb(3, 1, 6, 320, 1),
))

# name: (width, depth, resolution, dropout), the table hard-coded in the official code (not phi)
V1_COEFFS: dict[str, tuple[float, float, int, float]] = {
    "efficientnet_b0": (1.0, 1.0, 224, 0.2),
    "efficientnet_b1": (1.0, 1.1, 240, 0.2),
    "efficientnet_b2": (1.1, 1.2, 260, 0.3),
    "efficientnet_b3": (1.2, 1.4, 300, 0.3),
    "efficientnet_b4": (1.4, 1.8, 380, 0.4),
    "efficientnet_b5": (1.6, 2.2, 456, 0.4),
    "efficientnet_b6": (1.8, 2.6, 528, 0.5),
    "efficientnet_b7": (2.0, 3.1, 600, 0.5),
}

# name: (base with explicit repeats, train resolution, eval resolution, dropout)
V2_VARIANTS: dict[str, tuple[BaseNet, int, int, float]] = {
    "efficientnetv2_s": (BaseNet(24, (
        _fused(1, 1, 24, 2), _fused(2, 4, 48, 4), _fused(2, 4, 64, 4),
        _mb(3, 2, 4, 128, 6), _mb(3, 1, 6, 160, 9), _mb(3, 2, 6, 256, 15),
    ), round_limit=V2_ROUND_LIMIT), 300, 384, 0.2),
    "efficientnetv2_m": (BaseNet(24, (
        _fused(1, 1, 24, 3), _fused(2, 4, 48, 5), _fused(2, 4, 80, 5),
        _mb(3, 2, 4, 160, 7), _mb(3, 1, 6, 176, 14), _mb(3, 2, 6, 304, 18), _mb(3, 1, 6, 512, 5),
    ), round_limit=V2_ROUND_LIMIT), 384, 480, 0.3),
    "efficientnetv2_l": (BaseNet(32, (
        _fused(1, 1, 32, 4), _fused(2, 4, 64, 7), _fused(2, 4, 96, 7),
        _mb(3, 2, 4, 192, 10), _mb(3, 1, 6, 224, 19), _mb(3, 2, 6, 384, 25), _mb(3, 1, 6, 640, 7),
    ), round_limit=V2_ROUND_LIMIT), 384, 480, 0.4),
}


def efficientnet_names() -> list[str]:
    return [*V1_COEFFS, *V2_VARIANTS]


def efficientnet_arch(name: str, *, width: float | None = None, resolution: int | None = None) -> ArchSpec:
    """The ArchSpec of a variant: its own width coefficient unless ``width`` is given (V1: with the
    variant's depth; V2: repeats as published), at its published (V2: evaluation) resolution unless
    ``resolution`` is given.

    >>> [len(st) for st in efficientnet_arch("efficientnet_b1").stages]
    [2, 3, 3, 4, 4, 5, 2]
    """
    if name in V1_COEFFS:
        w, d, res, dropout = V1_COEFFS[name]
        base = V1_BASE
    elif name in V2_VARIANTS:
        base, _, res, dropout = V2_VARIANTS[name]
        w, d = 1.0, 1.0
    else:
        close = difflib.get_close_matches(name, efficientnet_names(), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown EfficientNet variant {name!r}{hint} (choose one of {efficientnet_names()})")
    return compound_scale(base, width=w if width is None else width, depth=d, name=name,
                          resolution=res if resolution is None else resolution, dropout=dropout)


# ---- registry ----------------------------------------------------------------------------------

_V1_PAPER = ("Tan, Le: EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks, ICML 2019, "
             "arXiv:1905.11946")
_V2_PAPER = "Tan, Le: EfficientNetV2: Smaller Models and Faster Training, ICML 2021, arXiv:2104.00298"


def _cfg(name: str) -> ModelCfg:
    if name in V1_COEFFS:
        width, _, res, _ = V1_COEFFS[name]
        return ModelCfg(name=name, family="efficientnet", paper=_V1_PAPER, resolution=(res, res), width=width,
                        notes="automl/timm tf_efficientnet structure; symmetric padding instead of TF 'same'")
    _, train, res, _ = V2_VARIANTS[name]
    return ModelCfg(name=name, family="efficientnetv2", paper=_V2_PAPER, resolution=(res, res), width=1.0,
                    notes=f"automl EfficientNetV2 structure; trained at {train}, evaluated at {res} (the "
                          f"default here); symmetric padding instead of TF 'same'")


def _create(name: str, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float,
            extra: dict[str, Any]) -> ArchNet:
    if extra:
        raise ValueError(f"{name} takes no option(s) {sorted(extra)}; it accepts num_classes, in_chans, "
                         f"resolution and width")
    spec = efficientnet_arch(name, width=width, resolution=resolution[0])
    return from_arch(spec, num_classes=num_classes, in_chans=in_chans)


@register_model(_cfg("efficientnet_b0"))
def efficientnet_b0(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float,
                    **kw: Any) -> nn.Module:
    """EfficientNet-B0: 5.29 M params, 0.386 G MACs at 224."""
    return _create("efficientnet_b0", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("efficientnet_b1"))
def efficientnet_b1(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float,
                    **kw: Any) -> nn.Module:
    """EfficientNet-B1: 7.79 M params, 0.687 G MACs at 240."""
    return _create("efficientnet_b1", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("efficientnet_b2"))
def efficientnet_b2(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float,
                    **kw: Any) -> nn.Module:
    """EfficientNet-B2: 9.11 M params, 0.994 G MACs at 260."""
    return _create("efficientnet_b2", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("efficientnet_b3"))
def efficientnet_b3(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float,
                    **kw: Any) -> nn.Module:
    """EfficientNet-B3: 12.23 M params, 1.83 G MACs at 300."""
    return _create("efficientnet_b3", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("efficientnet_b4"))
def efficientnet_b4(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float,
                    **kw: Any) -> nn.Module:
    """EfficientNet-B4: 19.34 M params, 4.39 G MACs at 380."""
    return _create("efficientnet_b4", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("efficientnet_b5"))
def efficientnet_b5(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float,
                    **kw: Any) -> nn.Module:
    """EfficientNet-B5: 30.39 M params, 10.27 G MACs at 456."""
    return _create("efficientnet_b5", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("efficientnet_b6"))
def efficientnet_b6(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float,
                    **kw: Any) -> nn.Module:
    """EfficientNet-B6: 43.04 M params, 19.07 G MACs at 528."""
    return _create("efficientnet_b6", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("efficientnet_b7"))
def efficientnet_b7(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float,
                    **kw: Any) -> nn.Module:
    """EfficientNet-B7: 66.35 M params, 37.75 G MACs at 600."""
    return _create("efficientnet_b7", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("efficientnetv2_s"))
def efficientnetv2_s(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float,
                     **kw: Any) -> nn.Module:
    """EfficientNetV2-S: 21.46 M params, 8.37 G MACs at 384."""
    return _create("efficientnetv2_s", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("efficientnetv2_m"))
def efficientnetv2_m(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float,
                     **kw: Any) -> nn.Module:
    """EfficientNetV2-M: 54.14 M params, 24.58 G MACs at 480."""
    return _create("efficientnetv2_m", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("efficientnetv2_l"))
def efficientnetv2_l(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float,
                     **kw: Any) -> nn.Module:
    """EfficientNetV2-L: 118.52 M params, 56.08 G MACs at 480."""
    return _create("efficientnetv2_l", num_classes, in_chans, resolution, width, kw)

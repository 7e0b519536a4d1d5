"""FBNet v1 (A-C), FBNetV2 (F1-F4, L1, L2) and FBNetV3 (A-G): ArchSpecs built from mobile-vision's IRF block.

The block lists are those of facebookresearch/mobile-vision ``mobile_cv/arch/fbnet_v2/
fbnet_modeldef_cls_{fbnet,fbnetv2,fbnetv3}.py`` (snapshot bb8465c); the block semantics those of its
``irf_block.py`` / ``basic_blocks.py``. Deliberate differences from that code:

- no conv biases in front of BN (mv v1 sets ``bias=True`` on every IR conv, and every mv stem conv
  has the ``nn.Conv2d`` default bias): BN cancels them, timm and the paper-style counts leave them out;
- no ``zero_last_bn_gamma`` initialisation (a training recipe, not structure), and He fan-in
  rather than mv's fan-out init for the block convs (see ``_init_convs``).

``fbnet_arch(name)`` gives the base spec the NAS reuses; the registered entry points build it.

>>> spec = fbnet_arch("fbnetv3_a")
>>> spec.head.channels, len(spec.blocks), spec.resolution
(1984, 29, 224)
"""
from __future__ import annotations

import difflib
import math
from dataclasses import replace
from typing import Any

from torch import Tensor, nn

from .arch import ArchNet, ArchSpec, BlockSpec, BuildContext, HeadSpec, StemSpec, from_arch, register_block
from .layers import ChannelShuffle, ConvBNAct, DropPath, SqueezeExcite
from .registry import ModelCfg, register_model

__all__ = ["IRFBlock", "fbnet_arch", "fbnet_names", "get_divisible_by", "scale_width"]


def get_divisible_by(value: float, divisor: int, min_value: int | None = None) -> int:
    """mobile-vision's width rounding: the nearest multiple of ``divisor`` (halves round up), one
    step more if that loses over 5 % of ``value``, never below ``min_value`` (default ``divisor``).

    >>> get_divisible_by(16 * 5.4566, 8), get_divisible_by(84, 8), get_divisible_by(96.0, 1)
    (88, 88, 96)
    """
    min_value = divisor if min_value is None else min_value
    out = int(value)
    if value % divisor != 0:
        out = int((math.floor(value / divisor + 0.5) or 1) * divisor)
        if out < 0.95 * value:
            out += divisor
    return max(out, min_value)


# ---- blocks ------------------------------------------------------------------------------------

def _se_width(spec: BlockSpec, mid: int) -> int:
    """SE reduced width. ``se_from="mid"``: ratio of the expanded width (FBNetV2). ``"in"``: mv's
    ``less_se_channels`` (FBNetV3), the ratio divided by the expansion, i.e. of ``mid / e`` -- the
    input width whenever ``in * e`` needed no rounding."""
    ratio = spec.se if spec.se_from == "mid" else spec.se / spec.expansion
    return get_divisible_by(int(mid * ratio), spec.se_divisor)


class IRFBlock(nn.Module):
    """mobile-vision's inverted residual: [pw 1x1 (+shuffle)] -> dw kxk -> [SE] -> pwl 1x1 (+ residual).

    The pw conv exists only when ``in != mid`` (or ``pw_always``) (``mid = get_divisible_by(in * e, channel_divisor)``);
    ``groups`` applies to pw and pwl, with a channel shuffle after the pw when > 1; the residual
    exists exactly when stride is 1 and ``in == out``. ``dw_padding`` overrides the dw padding
    (FBNetV3 shrinks its maps this way).
    """

    def __init__(self, spec: BlockSpec, ctx: BuildContext):
        super().__init__()
        in_chs, out_chs, g = ctx.in_channels, spec.out_channels, spec.groups
        mid = get_divisible_by(in_chs * spec.expansion, ctx.channel_divisor)
        self.has_residual = spec.stride == 1 and in_chs == out_chs
        _check_ir(spec, in_chs, mid, self.has_residual)
        bn = dict(bn_eps=ctx.bn_eps, bn_momentum=ctx.bn_momentum)
        self.pw = (ConvBNAct(in_chs, mid, 1, groups=g, act=spec.act, **bn)
                   if in_chs != mid or spec.pw_always else None)
        self.shuffle = ChannelShuffle(g) if g > 1 else None
        self.dw = ConvBNAct(mid, mid, spec.kernel, spec.stride, groups=mid, padding=ctx.conv_padding(spec.dw_padding),
                            act=spec.act, **bn)
        self.se = (SqueezeExcite(mid, _se_width(spec, mid), act=spec.se_act or spec.act, gate=spec.se_gate)
                   if spec.se > 0 else None)
        self.pwl = ConvBNAct(mid, out_chs, 1, groups=g, act=None, **bn)
        self.drop_path = DropPath(ctx.drop_path) if self.has_residual and ctx.drop_path > 0 else nn.Identity()
        _init_convs(self.pw, self.dw, self.pwl, None if self.se is None else self.se.conv_reduce)

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.pw is None else self.pw(x)  # (B, in, H, W) -> (B, mid, H, W)
        if self.shuffle is not None:
            y = self.shuffle(y)
        y = self.dw(y)  # stride and padding decide the output map
        if self.se is not None:
            y = self.se(y)
        y = self.pwl(y)  # (B, mid, H', W') -> (B, out, H', W')
        return x + self.drop_path(y) if self.has_residual else y


def _check_ir(spec: BlockSpec, in_chs: int, mid: int, residual: bool) -> None:
    g = spec.groups
    if in_chs % g or mid % g or spec.out_channels % g:
        raise ValueError(f"block 'ir': groups {g} must divide in {in_chs}, mid {mid} and out "
                         f"{spec.out_channels} channels")
    if residual and spec.dw_padding not in (None, spec.kernel // 2):
        raise ValueError(f"block 'ir': dw_padding {spec.dw_padding} with kernel {spec.kernel} changes the "
                         f"map size of a residual block (stride 1, in == out); use {spec.kernel // 2} or None")


def _init_convs(*modules: nn.Module | None) -> None:
    """He init (normal, fan in, zero bias). PyTorch's default, and mobile-vision's kaiming fan-out
    (which counts a depthwise conv's fan-out as channels * k * k), fade an untrained network's signal
    to ~1e-8 by the last stage, so every input gives the same logits."""
    for module in modules:
        for conv in () if module is None else (m for m in module.modules() if isinstance(m, nn.Conv2d)):
            nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)


@register_block("ir")
def _ir_block(spec: BlockSpec, ctx: BuildContext) -> nn.Module:
    """Reads out_channels, kernel, stride, expansion, groups, se/se_from/se_divisor/se_gate/se_act, act,
    dw_padding, pw_always."""
    return IRFBlock(spec, ctx)


@register_block("skip")
def _skip_block(spec: BlockSpec, ctx: BuildContext) -> nn.Module:
    """Identity when nothing changes, else mobile-vision's projection: 1x1 conv (stride) + BN + act
    (mv always uses ReLU there; the specs here keep the default ``act="relu"``). Reads out_channels,
    stride, act."""
    if ctx.in_channels == spec.out_channels and spec.stride == 1:
        return nn.Identity()
    proj = ConvBNAct(ctx.in_channels, spec.out_channels, 1, spec.stride, act=spec.act,
                     bn_eps=ctx.bn_eps, bn_momentum=ctx.bn_momentum)
    _init_convs(proj)
    return proj


# ---- block lists -------------------------------------------------------------------------------

def _ir(k: int, c: int, s: int = 1, e: float = 1.0, *, g: int = 1) -> BlockSpec:
    """FBNet v1: ReLU, no SE."""
    return BlockSpec("ir", c, kernel=k, stride=s, expansion=float(e), groups=g)


def _skip(c: int, s: int = 1) -> BlockSpec:
    return BlockSpec("skip", c, kernel=1, stride=s)


def _v2(k: int, c: int, s: int, e: float, *, se: bool = False, hs: bool = True) -> BlockSpec:
    """FBNetV2: ``_hs`` = hswish, ``sehsig`` = SE on the expanded width, rounded to 8, hsigmoid gate."""
    return BlockSpec("ir", c, kernel=k, stride=s, expansion=float(e), se=0.25 if se else 0.0, se_from="mid",
                     se_divisor=8, se_gate="hsigmoid", act="hswish" if hs else "relu")


def _v3(k: int, c: int, s: int, n: int, e: float, *, se: bool = False, pad: int | None = None) -> list[BlockSpec]:
    """FBNetV3: n repeats (stride on the first), hswish, SE width from less_se_channels."""
    first = BlockSpec("ir", c, kernel=k, stride=s, expansion=float(e), se=0.25 if se else 0.0, se_from="in",
                      se_divisor=8, se_gate="hsigmoid", act="hswish", dw_padding=pad)
    return [first] + [replace(first, stride=1, dw_padding=None)] * (n - 1)


_V1: dict[str, tuple[int, list[list[BlockSpec]]]] = {  # name: (head channels, stages)
    "fbnet_a": (1504, [
        [_skip(16)],
        [_ir(3, 24, 2, 3), _ir(3, 24), _skip(24), _skip(24)],
        [_ir(5, 32, 2, 6), _ir(3, 32, 1, 3), _ir(5, 32), _ir(3, 32, 1, 3)],
        [_ir(5, 64, 2, 6), _ir(5, 64, 1, 3), _ir(5, 64, g=2), _ir(5, 64, 1, 6),
         _ir(3, 112, 1, 6), _ir(5, 112, g=2), _ir(5, 112, 1, 3), _ir(3, 112, g=2)],
        [_ir(5, 184, 2, 6), _ir(5, 184, 1, 6), _ir(5, 184, 1, 3), _ir(5, 184, 1, 6), _ir(5, 352, 1, 6)],
    ]),
    "fbnet_b": (1984, [
        [_ir(3, 16)],
        [_ir(3, 24, 2, 6), _ir(5, 24), _ir(3, 24), _ir(3, 24)],
        [_ir(5, 32, 2, 6), _ir(5, 32, 1, 3), _ir(3, 32, 1, 6), _ir(5, 32, 1, 6)],
        [_ir(5, 64, 2, 6), _ir(5, 64, 1, 6), _skip(64), _ir(5, 64, 1, 3),
         _ir(5, 112, 1, 6), _ir(3, 112), _ir(5, 112), _ir(5, 112, 1, 3)],
        [_ir(5, 184, 2, 6), _ir(5, 184), _ir(5, 184, 1, 6), _ir(5, 184, 1, 6), _ir(3, 352, 1, 6)],
    ]),
    "fbnet_c": (1984, [
        [_ir(3, 16)],
        [_ir(3, 24, 2, 6), _skip(24), _ir(3, 24), _ir(3, 24)],
        [_ir(5, 32, 2, 6), _ir(5, 32, 1, 3), _ir(5, 32, 1, 6), _ir(3, 32, 1, 6)],
        [_ir(5, 64, 2, 6), _ir(5, 64, 1, 3), _ir(5, 64, 1, 6), _ir(5, 64, 1, 6),
         _ir(5, 112, 1, 6), _ir(5, 112, 1, 6), _ir(5, 112, 1, 6), _ir(5, 112, 1, 3)],
        [_ir(5, 184, 2, 6), _ir(5, 184, 1, 6), _ir(5, 184, 1, 6), _ir(5, 184, 1, 6), _ir(3, 352, 1, 6)],
    ]),
}

_V2_F = [  # FBNetV2-F1/F2/F3 share their blocks
    [_v2(5, 8, 1, 1, hs=False)],
    [_v2(5, 24, 2, 5.4566, hs=False), _v2(5, 24, 1, 4.7912, hs=False)],
    [_v2(5, 32, 2, 5.3501, se=True, hs=False), _v2(5, 24, 1, 4.5379, se=True, hs=False)],
    [_v2(5, 56, 2, 5.7133), _v2(3, 56, 1, 4.1212), _v2(3, 56, 1, 5.1246, se=True), _skip(80),
     _v2(5, 80, 1, 4.5070, se=True), _v2(5, 80, 1, 1.7712, se=True)],
    [_v2(3, 144, 2, 4.5685, se=True), _v2(5, 144, 1, 5.8400, se=True), _v2(5, 144, 1, 6.8754, se=True),
     _skip(224)],
]
_V2_L = [  # FBNetV2-L1/L2 share their blocks
    [_v2(3, 16, 1, 1)],
    [_v2(5, 24, 2, 5.4566), _v2(5, 24, 1, 1.7912), _v2(3, 24, 1, 1.7912), _v2(5, 24, 1, 1.7912)],
    [_v2(5, 40, 2, 5.3501, se=True), _v2(5, 32, 1, 3.5379, se=True), _v2(5, 32, 1, 4.5379, se=True),
     _v2(5, 32, 1, 4.5379, se=True)],
    [_v2(5, 64, 2, 5.7133), _v2(3, 64, 1, 2.1212), _skip(64), _v2(3, 64, 1, 3.1246), _v2(3, 112, 1, 5.0333),
     *(_v2(5, 112, 1, e, se=True) for e in (2.5070, 1.7712, 2.7712, 3.7712, 3.7712))],
    [_v2(3, 184, 2, 5.5685, se=True), *(_v2(5, 184, 1, e, se=True) for e in (2.8400, 2.8400, 4.8754, 4.8754)),
     _skip(224)],
]
_V2: dict[str, tuple[int, int, int, list[list[BlockSpec]]]] = {  # name: (res, stem, head, stages)
    "fbnetv2_f1": (128, 8, 1600, _V2_F),
    "fbnetv2_f2": (160, 8, 1600, _V2_F),
    "fbnetv2_f3": (192, 8, 1984, _V2_F),
    "fbnetv2_f4": (224, 16, 1984, [
        [_v2(3, 16, 1, 1)],
        [_v2(5, 24, 2, 5.4566), _v2(5, 24, 1, 1.7912), _v2(5, 24, 1, 1.7912)],
        [_v2(5, 32, 2, 5.3501, se=True, hs=False), _v2(5, 32, 1, 3.5379, se=True, hs=False),
         _v2(5, 32, 1, 4.5379, se=True, hs=False), _v2(5, 32, 1, 4.5379, se=True, hs=False)],
        [_v2(5, 64, 2, 5.7133), _v2(3, 64, 1, 2.1212), _skip(64), _v2(3, 104, 1, 5.0333),
         _v2(5, 104, 1, 2.5070, se=True), _v2(5, 104, 1, 1.7712, se=True), _v2(5, 112, 1, 3.7712, se=True)],
        [_v2(3, 184, 2, 5.5685, se=True), _v2(5, 184, 1, 2.8400, se=True), _v2(5, 184, 1, 4.8754, se=True),
         _skip(224)],
    ]),
    "fbnetv2_l1": (224, 16, 1984, _V2_L),
    "fbnetv2_l2": (256, 16, 1984, _V2_L),
}

_V3_AB = [
    _v3(3, 16, 1, 2, 1),
    _v3(5, 24, 2, 1, 4) + _v3(5, 24, 1, 3, 2),
    _v3(5, 40, 2, 1, 5, se=True) + _v3(5, 40, 1, 4, 3, se=True),
    _v3(5, 72, 2, 1, 5, pad=1) + _v3(3, 72, 1, 4, 3) + _v3(3, 120, 1, 1, 5, se=True) + _v3(5, 120, 1, 5, 3, se=True),
    _v3(3, 184, 2, 1, 6, se=True, pad=0) + _v3(5, 184, 1, 5, 4, se=True) + _v3(5, 224, 1, 1, 6, se=True),
]
_V3: dict[str, tuple[int, int, list[list[BlockSpec]]]] = {  # name: (res, stem, stages); head 1984
    "fbnetv3_a": (224, 16, _V3_AB),
    "fbnetv3_b": (248, 16, _V3_AB),
    "fbnetv3_c": (248, 16, [
        _v3(3, 16, 1, 2, 1),
        _v3(5, 24, 2, 1, 5) + _v3(3, 24, 1, 4, 3),
        _v3(5, 48, 2, 1, 5, se=True) + _v3(5, 48, 1, 4, 2, se=True),
        _v3(5, 88, 2, 1, 4, pad=1) + _v3(3, 88, 1, 4, 3) + _v3(3, 120, 1, 1, 4, se=True)
        + _v3(5, 120, 1, 5, 3, se=True),
        _v3(5, 216, 2, 1, 5, se=True, pad=1) + _v3(5, 216, 1, 5, 5, se=True) + _v3(5, 216, 1, 1, 6, se=True),
    ]),
    "fbnetv3_d": (248, 24, [
        _v3(3, 16, 1, 2, 1),
        _v3(3, 24, 2, 1, 5) + _v3(3, 24, 1, 5, 2),
        _v3(5, 40, 2, 1, 4, se=True) + _v3(3, 40, 1, 4, 3, se=True),
        _v3(3, 72, 2, 1, 5) + _v3(3, 72, 1, 4, 3) + _v3(3, 128, 1, 1, 5, se=True) + _v3(5, 128, 1, 6, 3, se=True),
        _v3(3, 208, 2, 1, 6, se=True) + _v3(5, 208, 1, 5, 5, se=True) + _v3(5, 240, 1, 1, 6, se=True),
    ]),
    "fbnetv3_e": (264, 24, [
        _v3(3, 16, 1, 3, 1),
        _v3(5, 24, 2, 1, 4) + _v3(5, 24, 1, 4, 2),
        _v3(5, 48, 2, 1, 4, se=True) + _v3(5, 48, 1, 4, 3, se=True),
        _v3(5, 80, 2, 1, 5, pad=1) + _v3(3, 80, 1, 4, 3) + _v3(3, 128, 1, 1, 5, se=True)
        + _v3(5, 128, 1, 7, 3, se=True),
        _v3(3, 216, 2, 1, 6, se=True) + _v3(5, 216, 1, 5, 5, se=True) + _v3(5, 240, 1, 1, 6, se=True),
    ]),
    "fbnetv3_f": (272, 24, [
        _v3(3, 24, 1, 3, 1),
        _v3(5, 32, 2, 1, 4) + _v3(5, 32, 1, 4, 2),
        _v3(5, 56, 2, 1, 4, se=True) + _v3(5, 56, 1, 4, 3, se=True),
        _v3(5, 88, 2, 1, 5) + _v3(3, 88, 1, 4, 3) + _v3(3, 144, 1, 1, 5, se=True) + _v3(5, 144, 1, 8, 3, se=True),
        _v3(3, 248, 2, 1, 6, se=True, pad=0) + _v3(5, 248, 1, 6, 5, se=True) + _v3(5, 272, 1, 1, 6, se=True),
    ]),
    "fbnetv3_g": (320, 32, [
        _v3(3, 24, 1, 3, 1),
        _v3(5, 40, 2, 1, 4) + _v3(5, 40, 1, 4, 2),
        _v3(5, 56, 2, 1, 4, se=True) + _v3(5, 56, 1, 4, 3, se=True),
        _v3(5, 104, 2, 1, 5) + _v3(3, 104, 1, 4, 3) + _v3(3, 160, 1, 1, 5, se=True)
        + _v3(5, 160, 1, 8, 3, se=True),
        _v3(3, 264, 2, 1, 6, se=True) + _v3(5, 264, 1, 6, 5, se=True) + _v3(5, 288, 1, 2, 6, se=True),
    ]),
}


def _build_archs() -> dict[str, ArchSpec]:
    archs = {}
    for name, (head, stages) in _V1.items():
        archs[name] = ArchSpec(name, StemSpec(16), stages, HeadSpec(head, classifier="conv"), channel_divisor=1)
    for name, (res, stem, head, stages) in _V2.items():
        archs[name] = ArchSpec(name, StemSpec(stem, act="hswish"), stages, _ir_pool(head), 8, res)
    for name, (res, stem, stages) in _V3.items():
        archs[name] = ArchSpec(name, StemSpec(stem, act="hswish"), stages, _ir_pool(1984), 8, res)
    return archs


def _ir_pool(channels: int) -> HeadSpec:
    return HeadSpec(channels, type="ir_pool", expansion=6.0, act="hswish", classifier="conv")


_ARCHS = _build_archs()


# ---- public spec access ------------------------------------------------------------------------

def fbnet_names() -> list[str]:
    """The FBNet variants ``fbnet_arch`` knows, in paper order."""
    return list(_ARCHS)


def fbnet_arch(name: str) -> ArchSpec:
    """The base ArchSpec of an FBNet variant (width 1.0, its published resolution).

    >>> fbnet_arch("fbnet_c").head.channels
    1984
    """
    try:
        return _ARCHS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _ARCHS, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown FBNet variant {name!r}{hint} (choose one of {list(_ARCHS)})") from None


def scale_width(spec: ArchSpec, width: float) -> ArchSpec:
    """Every channel count (stem, blocks, head) times ``width``, rounded to 8 as mobile-vision's
    builder does (``get_divisible_by(int(c * width), 8)``); width 1.0 returns ``spec`` unchanged."""
    if not width > 0:
        raise ValueError(f"width {width!r} must be > 0")
    if width == 1.0:
        return spec

    def ch(c: int) -> int:
        return get_divisible_by(int(c * width), 8)

    stages = tuple(tuple(replace(b, out_channels=ch(b.out_channels)) for b in st) for st in spec.stages)
    return replace(spec, stem=replace(spec.stem, channels=ch(spec.stem.channels)), stages=stages,
                   head=replace(spec.head, channels=ch(spec.head.channels)))


def _smallest_side(spec: ArchSpec) -> int:
    """The smallest input side every conv still produces a map for (dw padding overrides of 0 or 1
    shrink the maps, so FBNetV3 A/B/C/F need more than the other families)."""

    def fits(side: int) -> bool:
        side = _conv_out(side, spec.stem.kernel, spec.stem.stride, spec.stem.kernel // 2)
        for b in spec.blocks:
            if side < 1:
                return False
            if b.type == "ir":
                pad = b.kernel // 2 if b.dw_padding is None else b.dw_padding
                side = _conv_out(side, b.kernel, b.stride, pad)
            else:
                side = _conv_out(side, 1, b.stride, 0)
        return side >= 1

    return next(n for n in range(1, 4096) if fits(n))


def _conv_out(side: int, kernel: int, stride: int, pad: int) -> int:
    return (side + 2 * pad - kernel) // stride + 1


# ---- registry ----------------------------------------------------------------------------------

_PAPERS = {
    "fbnet": "FBNet: Hardware-Aware Efficient ConvNet Design via Differentiable Neural Architecture "
             "Search (Wu et al., CVPR 2019)",
    "fbnetv2": "FBNetV2: Differentiable Neural Architecture Search for Spatial and Channel Dimensions "
               "(Wan et al., CVPR 2020)",
    "fbnetv3": "FBNetV3: Joint Architecture-Recipe Search using Predictor Pretraining (Dai et al., CVPR 2021)",
}
_NOTES = {
    "fbnet": "mobile-vision block list without its IR-conv and stem/head-conv biases (BN follows each)",
    "fbnetv2": "mobile-vision FBNetV2_* block list (width_divisor 8), stem conv without bias",
    "fbnetv3": "mobile-vision FBNetV3_* block list with its dw padding overrides, stem conv without bias",
}


def _cfg(name: str) -> ModelCfg:
    spec = _ARCHS[name]
    family = name.split("_")[0]
    return ModelCfg(name=name, family=family, paper=_PAPERS[family], resolution=(spec.resolution,) * 2,
                    width=1.0, min_resolution=max(32, _smallest_side(spec)), notes=_NOTES[family])


def _create(name: str, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float,
            extra: dict[str, Any]) -> ArchNet:
    if extra:
        raise ValueError(f"{name} takes no option(s) {sorted(extra)}; it accepts num_classes, in_chans, "
                         f"resolution and width")
    spec = scale_width(_ARCHS[name], width).replace(resolution=resolution[0])
    return from_arch(spec, num_classes=num_classes, in_chans=in_chans)


@register_model(_cfg("fbnet_a"))
def fbnet_a(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnet_a", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("fbnet_b"))
def fbnet_b(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnet_b", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("fbnet_c"))
def fbnet_c(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnet_c", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("fbnetv2_f1"))
def fbnetv2_f1(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnetv2_f1", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("fbnetv2_f2"))
def fbnetv2_f2(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnetv2_f2", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("fbnetv2_f3"))
def fbnetv2_f3(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnetv2_f3", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("fbnetv2_f4"))
def fbnetv2_f4(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnetv2_f4", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("fbnetv2_l1"))
def fbnetv2_l1(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnetv2_l1", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("fbnetv2_l2"))
def fbnetv2_l2(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnetv2_l2", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("fbnetv3_a"))
def fbnetv3_a(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnetv3_a", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("fbnetv3_b"))
def fbnetv3_b(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnetv3_b", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("fbnetv3_c"))
def fbnetv3_c(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnetv3_c", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("fbnetv3_d"))
def fbnetv3_d(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnetv3_d", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("fbnetv3_e"))
def fbnetv3_e(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnetv3_e", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("fbnetv3_f"))
def fbnetv3_f(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnetv3_f", num_classes, in_chans, resolution, width, kw)


@register_model(_cfg("fbnetv3_g"))
def fbnetv3_g(*, num_classes: int, in_chans: int, resolution: tuple[int, int], width: float, **kw: Any) -> nn.Module:
    return _create("fbnetv3_g", num_classes, in_chans, resolution, width, kw)

"""GhostNet v1 (Han et al., CVPR'20) and GhostNetV2 (Tang et al., NeurIPS'22).

Reference: huawei-noah/Efficient-AI-Backbones ``ghostnet_pytorch/ghostnet.py`` and
``ghostnetv2_pytorch/model/ghostnetv2_torch.py`` (model_specs §8, §9). Parameter counts match
that code exactly; the module layout is edgekit's own (``stem``, ``stages``, ``final_conv``,
``head``), so official checkpoints need a key mapping.

>>> from edgekit.models import create_model
>>> m = create_model("ghostnetv2_1_0", num_classes=10, in_chans=1, resolution=64).eval()
>>> m(torch.zeros(1, 1, 64, 64)).shape
torch.Size([1, 10])
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBNAct, SqueezeExcite, make_divisible
from .registry import ModelCfg, register_model

__all__ = ["GhostModule", "DFCAttention", "GhostModuleV2", "GhostBottleneck", "GhostNet", "GHOSTNET_CFG"]

# (kernel, mid, out, se_ratio, stride) per block, grouped into stages by output stride 2..32
# (the `|` groups of model_specs §8; the official code splits the same 16 blocks into 9 lists).
GHOSTNET_CFG: tuple[tuple[tuple[int, int, int, float, int], ...], ...] = (
    ((3, 16, 16, 0.0, 1),),
    ((3, 48, 24, 0.0, 2), (3, 72, 24, 0.0, 1)),
    ((5, 72, 40, 0.25, 2), (5, 120, 40, 0.25, 1)),
    ((3, 240, 80, 0.0, 2), (3, 200, 80, 0.0, 1), (3, 184, 80, 0.0, 1), (3, 184, 80, 0.0, 1),
     (3, 480, 112, 0.25, 1), (3, 672, 112, 0.25, 1)),
    ((5, 672, 160, 0.25, 2), (5, 960, 160, 0.0, 1), (5, 960, 160, 0.25, 1), (5, 960, 160, 0.0, 1),
     (5, 960, 160, 0.25, 1)),
)
_DIVISOR = 4  # GhostNet rounds every width to a multiple of 4, not 8
_HEAD_CHS = 1280  # conv_head width, never scaled by the multiplier
_V2_PLAIN_BLOCKS = 2  # GhostNetV2: the first two bottlenecks (global index 0, 1) have no DFC attention


class GhostModule(nn.Module):
    """in -> out channels as a 1x1 "primary" conv to ceil(out/ratio) channels plus a cheap
    depthwise 3x3 on those, concatenated and sliced to ``out_chs`` (odd ``out_chs`` drops one)."""

    def __init__(self, in_chs: int, out_chs: int, *, relu: bool = True, ratio: int = 2, dw_size: int = 3):
        super().__init__()
        init_chs = math.ceil(out_chs / ratio)
        act = "relu" if relu else None
        self.out_chs = out_chs
        self.primary_conv = ConvBNAct(in_chs, init_chs, 1, act=act)
        self.cheap_operation = ConvBNAct(init_chs, init_chs * (ratio - 1), dw_size, groups=init_chs, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)  # (B, in, H, W) -> (B, init, H, W)
        x2 = self.cheap_operation(x1)  # (B, init, H, W) -> (B, init*(ratio-1), H, W)
        return torch.cat([x1, x2], dim=1)[:, :self.out_chs]  # -> (B, out, H, W)


class DFCAttention(nn.Module):
    """GhostNetV2's decoupled fully-connected attention: a gate computed from the module *input*
    at half resolution (1x1 conv, then depthwise 1x5 and 5x1, each with BN and no activation),
    squashed by a sigmoid, nearest-upsampled to the ghost output's size and multiplied into it."""

    def __init__(self, in_chs: int, out_chs: int, *, kernel: int = 5):
        super().__init__()
        self.reduce = ConvBNAct(in_chs, out_chs, 1, act=None)
        self.horizontal = ConvBNAct(out_chs, out_chs, (1, kernel), groups=out_chs, act=None)
        self.vertical = ConvBNAct(out_chs, out_chs, (kernel, 1), groups=out_chs, act=None)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) -> (B, out, H//2, W//2) in (0, 1)."""
        h, w = x.shape[-2:]
        # Official: avg_pool 2x2 (floors odd sizes). A side of 1 (a 32 px input's last stage) would
        # pool to 0 and crash there, so such a side is left unpooled; every other size is unchanged.
        pool = (min(2, h), min(2, w))
        s = F.avg_pool2d(x, pool, pool)
        return torch.sigmoid(self.vertical(self.horizontal(self.reduce(s))))

    def forward(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Gate ``out`` (B, oup, H', W') with attention from the block input ``x`` (B, in, H, W)."""
        g = F.interpolate(self.gate(x), size=out.shape[-2:], mode="nearest")  # -> (B, oup, H', W')
        return out * g


class GhostModuleV2(GhostModule):
    """GhostNetV2's ghost module: ``mode="original"`` is the v1 module, ``mode="attn"`` adds
    :class:`DFCAttention` computed from the same input."""

    MODES = ("original", "attn")

    def __init__(self, in_chs: int, out_chs: int, *, mode: str = "original", relu: bool = True):
        if mode not in self.MODES:
            raise ValueError(f"GhostModuleV2 mode {mode!r} must be one of {self.MODES}")
        super().__init__(in_chs, out_chs, relu=relu)
        self.mode = mode
        self.dfc = DFCAttention(in_chs, out_chs) if mode == "attn" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)  # (B, in, H, W) -> (B, out, H, W)
        return out if self.dfc is None else self.dfc(x, out)


class GhostBottleneck(nn.Module):
    """ghost1 (ReLU) -> [depthwise kxk stride 2 + BN, only when s=2] -> [SE on mid] -> ghost2 (no
    ReLU), plus a shortcut (identity, or depthwise kxk stride s + BN -> 1x1 + BN).

    ``ghost_mode=None`` builds the GhostNet v1 block; ``"original"`` or ``"attn"`` builds the
    GhostNetV2 block, whose ghost1 is a :class:`GhostModuleV2` of that mode.
    """

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, kernel: int = 3, stride: int = 1,
                 se_ratio: float = 0.0, *, ghost_mode: str | None = None):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"GhostBottleneck stride {stride} must be 1 or 2")
        v2 = ghost_mode is not None
        self.ghost1 = (GhostModuleV2(in_chs, mid_chs, mode=ghost_mode, relu=True) if v2
                       else GhostModule(in_chs, mid_chs, relu=True))
        self.conv_dw = (ConvBNAct(mid_chs, mid_chs, kernel, stride, groups=mid_chs, act=None)
                        if stride == 2 else nn.Identity())
        # SE squeezes the *expanded* channels, rounded to a multiple of 4, with a hard-sigmoid gate.
        se_chs = make_divisible(mid_chs * se_ratio, _DIVISOR)
        self.se = SqueezeExcite(mid_chs, se_chs, act="relu", gate="hsigmoid") if se_ratio > 0 else nn.Identity()
        self.ghost2 = (GhostModuleV2(mid_chs, out_chs, mode="original", relu=False) if v2
                       else GhostModule(mid_chs, out_chs, relu=False))
        if in_chs == out_chs and stride == 1:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                ConvBNAct(in_chs, in_chs, kernel, stride, groups=in_chs, act=None),
                ConvBNAct(in_chs, out_chs, 1, act=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ghost1(x)  # (B, in, H, W) -> (B, mid, H, W)
        y = self.se(self.conv_dw(y))  # -> (B, mid, H/s, W/s)
        y = self.ghost2(y)  # -> (B, out, H/s, W/s)
        return y + self.shortcut(x)


class GhostNet(nn.Module):
    """GhostNet v1 (``version=1``) or V2 (``version=2``) classifier at width multiplier ``width``.

    stem 3x3 s2 -> 5 stages of ghost bottlenecks -> 1x1 ConvBNAct -> GAP -> 1x1 conv_head (1280,
    bias, no BN) -> ReLU -> dropout -> Linear.
    """

    def __init__(self, *, num_classes: int = 1000, in_chans: int = 3, width: float = 1.0, version: int = 1,
                 drop_rate: float = 0.2):
        super().__init__()
        if version not in (1, 2):
            raise ValueError(f"GhostNet version {version!r} must be 1 or 2")
        chs = make_divisible(16 * width, _DIVISOR)
        self.stem = ConvBNAct(in_chans, chs, 3, 2)
        stages, block_id = [], 0
        for group in GHOSTNET_CFG:
            blocks = []
            for kernel, mid, out, se_ratio, stride in group:
                mode = None if version == 1 else ("original" if block_id < _V2_PLAIN_BLOCKS else "attn")
                out_chs = make_divisible(out * width, _DIVISOR)
                blocks.append(GhostBottleneck(chs, make_divisible(mid * width, _DIVISOR), out_chs, kernel,
                                              stride, se_ratio, ghost_mode=mode))
                chs, block_id = out_chs, block_id + 1
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        final_chs = make_divisible(GHOSTNET_CFG[-1][-1][1] * width, _DIVISOR)  # 960 * width
        self.final_conv = ConvBNAct(chs, final_chs, 1)
        self.head = nn.Sequential(OrderedDict(
            pool=nn.AdaptiveAvgPool2d(1),
            conv_head=nn.Conv2d(final_chs, _HEAD_CHS, 1, bias=True),
            act=nn.ReLU(inplace=True),
            flatten=nn.Flatten(1),
            dropout=nn.Dropout(drop_rate),
            classifier=nn.Linear(_HEAD_CHS, num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, C, H, W) -> (B, 16w, H/2, W/2)
        x = self.stages(x)  # -> (B, 160w, H/32, W/32)
        x = self.final_conv(x)  # -> (B, 960w, H/32, W/32)
        return self.head(x)  # -> (B, num_classes)


def _ghostnet(*, version: int, num_classes: int, in_chans: int, width: float,
              resolution: tuple[int, int], **kw) -> GhostNet:
    del resolution  # fully convolutional up to global pooling: any size >= 32 px works
    return GhostNet(num_classes=num_classes, in_chans=in_chans, width=width, version=version, **kw)


_V1_PAPER = "Han et al., GhostNet: More Features from Cheap Operations, CVPR 2020, arXiv:1911.11907"
_V2_PAPER = ("Tang et al., GhostNetV2: Enhance Cheap Operation with Long-Range Attention, NeurIPS 2022, "
             "arXiv:2211.12905")


def _cfg(name: str, width: float, version: int) -> ModelCfg:
    if version == 1:
        return ModelCfg(name=name, family="ghostnet", paper=_V1_PAPER, resolution=(224, 224), width=width,
                        notes="huawei-noah ghostnet_pytorch; widths rounded to multiples of 4")
    return ModelCfg(name=name, family="ghostnetv2", paper=_V2_PAPER, resolution=(224, 224), width=width,
                    notes="huawei-noah ghostnetv2_pytorch; DFC attention in ghost1 of blocks 3..16")


@register_model(_cfg("ghostnet_0_5", 0.5, 1))
def ghostnet_0_5(**kw) -> GhostNet:
    """GhostNet 0.5x: 2.59 M params, 42 M MACs at 224."""
    return _ghostnet(version=1, **kw)


@register_model(_cfg("ghostnet_1_0", 1.0, 1))
def ghostnet_1_0(**kw) -> GhostNet:
    """GhostNet 1.0x: 5.18 M params, 141 M MACs at 224."""
    return _ghostnet(version=1, **kw)


@register_model(_cfg("ghostnet_1_3", 1.3, 1))
def ghostnet_1_3(**kw) -> GhostNet:
    """GhostNet 1.3x: 7.36 M params, 227 M MACs at 224."""
    return _ghostnet(version=1, **kw)


@register_model(_cfg("ghostnetv2_1_0", 1.0, 2))
def ghostnetv2_1_0(**kw) -> GhostNet:
    """GhostNetV2 1.0x: 6.16 M params, 167 M MACs at 224."""
    return _ghostnet(version=2, **kw)


@register_model(_cfg("ghostnetv2_1_3", 1.3, 2))
def ghostnetv2_1_3(**kw) -> GhostNet:
    """GhostNetV2 1.3x: 8.96 M params, 269 M MACs at 224."""
    return _ghostnet(version=2, **kw)


@register_model(_cfg("ghostnetv2_1_6", 1.6, 2))
def ghostnetv2_1_6(**kw) -> GhostNet:
    """GhostNetV2 1.6x: 12.39 M params, 399 M MACs at 224."""
    return _ghostnet(version=2, **kw)

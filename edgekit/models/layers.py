"""Building blocks shared by more than one family.

Family-specific blocks (ESP, EESP, IRF, MBConv, Ghost, DFC) live in their family's module;
what is here is used by several of them.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "ChannelShuffle",
    "Conv2dSame",
    "ConvBNAct",
    "DropPath",
    "HardSigmoid",
    "SqueezeExcite",
    "make_act",
    "make_divisible",
]


def make_divisible(value: float, divisor: int, *, min_value: int | None = None,
                   round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never dropping more than
    ``1 - round_limit`` of it (the rule of the MobileNet/EfficientNet/GhostNet code bases).

    >>> make_divisible(16 * 0.5, 4), make_divisible(72 * 1.3, 4)
    (8, 92)
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


class HardSigmoid(nn.Module):
    """relu6(x + 3) / 6: the gate of GhostNet's and FBNet's squeeze-excite."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


ACTIVATIONS: dict[str, Callable[[int], nn.Module]] = {
    "relu": lambda c: nn.ReLU(inplace=True),
    "relu6": lambda c: nn.ReLU6(inplace=True),
    "hswish": lambda c: nn.Hardswish(inplace=True),
    "swish": lambda c: nn.SiLU(inplace=True),
    "sigmoid": lambda c: nn.Sigmoid(),
    "hsigmoid": lambda c: HardSigmoid(),
    "prelu": lambda c: nn.PReLU(c),  # one slope per channel, as ESPNet uses it
    "identity": lambda c: nn.Identity(),
}


def make_act(name: str | None, channels: int = 1) -> nn.Module:
    """An activation module by name; ``None`` means none (identity)."""
    if name is None:
        return nn.Identity()
    try:
        return ACTIVATIONS[name](channels)
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


class Conv2dSame(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding: the output side is ``ceil(in / stride)`` and
    the padding that takes is split with the extra pixel at the bottom / right. At stride 1 with an
    odd kernel that is the usual symmetric ``k // 2``; at stride 2 it is asymmetric, and it depends on
    the input size, so it is worked out on each call (a fixed number once exported)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, padding=0, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in reversed(list(zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation))):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]  # F.pad takes (left, right, top, bottom)
        return super().forward(F.pad(x, pads) if any(pads) else x)


class ConvBNAct(nn.Sequential):
    """Conv2d -> BatchNorm2d -> activation; ``act=None`` leaves the activation out,
    ``bn=False`` leaves the norm out (and then the conv carries a bias unless told otherwise).
    ``padding="same"`` pads as TensorFlow does (:class:`Conv2dSame`) where that differs from the
    symmetric default, i.e. at stride > 1."""

    def __init__(self, in_chs: int, out_chs: int, kernel: int | tuple[int, int] = 1, stride: int = 1, *,
                 groups: int = 1, dilation: int = 1, padding: int | tuple[int, int] | str | None = None,
                 act: str | None = "relu", bn: bool = True, bias: bool | None = None,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        bias = (not bn) if bias is None else bias
        if padding == "same" and stride > 1:
            conv: nn.Conv2d = Conv2dSame(in_chs, out_chs, (kh, kw), stride, dilation=dilation, groups=groups,
                                         bias=bias)
        else:
            if padding is None or padding == "same":
                padding = ((kh - 1) // 2 * dilation, (kw - 1) // 2 * dilation)
            conv = nn.Conv2d(in_chs, out_chs, (kh, kw), stride, padding, dilation=dilation, groups=groups,
                             bias=bias)
        layers: list[nn.Module] = [conv]
        if bn:
            layers.append(nn.BatchNorm2d(out_chs, eps=bn_eps, momentum=bn_momentum))
        layers.append(make_act(act, out_chs))
        super().__init__(*layers)
        self.out_channels = out_chs


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: GAP -> 1x1 reduce (bias) -> act -> 1x1 expand (bias) -> gate -> scale."""

    def __init__(self, channels: int, reduced: int, *, act: str = "relu", gate: str = "sigmoid"):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = make_act(act, reduced)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = make_act(gate, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)  # (B, C, H, W) -> (B, C, 1, 1)
        s = self.conv_expand(self.act(self.conv_reduce(s)))
        return x * self.gate(s)


class ChannelShuffle(nn.Module):
    """ShuffleNet channel shuffle: (B, g*c, H, W) -> interleave the g groups."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x.reshape(b, self.groups, c // self.groups, h, w).transpose(1, 2)
        return x.reshape(b, c, h, w)


class DropPath(nn.Module):
    """Stochastic depth on the residual branch (EfficientNet's drop-connect); identity in eval."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop path rate {rate} must be in [0, 1)")
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0], 1, 1, 1)).bernoulli_(keep)
        return x * mask / keep

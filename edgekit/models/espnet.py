"""ESPNet (v1: segmentation ESPNet and its encoder ESPNet-C) and ESPNetv2 (ImageNet classification).

Reference definitions after sacmehta/ESPNet ``train/Model.py`` and sacmehta/ESPNetv2
``imagenet/Model.py`` (= EdgeNets ``nn_layers/eesp.py``); shared/reference model_specs §1-§2.
Parameter counts equal the official code's exactly, including its quirks (see the class docstrings).

>>> from edgekit.models import create_model
>>> m = create_model("espnet_v1", num_classes=10, in_chans=1, resolution=64)
>>> m(torch.zeros(1, 1, 64, 64)).shape
torch.Size([1, 10, 64, 64])
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvBNAct
from .registry import ModelCfg, register_model

__all__ = [
    "EESP",
    "EESPDownsampler",
    "ESPModule",
    "ESPNet",
    "ESPNetC",
    "ESPNetV2",
    "StridedESP",
    "eesp_dilations",
    "esp_split",
    "espnetv2_channels",
]

V1_BN_EPS = 1e-3  # ESPNet v1 uses eps 1e-3 everywhere; ESPNetv2 keeps PyTorch's 1e-5
V2_BN_EPS = 1e-5


def _bn_prelu(channels: int, eps: float) -> nn.Sequential:
    """The official "BR": BatchNorm + per-channel PReLU, no conv."""
    return nn.Sequential(nn.BatchNorm2d(channels, eps=eps), nn.PReLU(channels))


def _avg_half(x: torch.Tensor) -> torch.Tensor:
    """AvgPool 3x3 s2 p1: (B, C, H, W) -> (B, C, ceil(H/2), ceil(W/2)), the image pyramid step of both versions."""
    return F.avg_pool2d(x, 3, 2, 1)


# --------------------------------------------------------------------------------------------
# ESPNet v1
# --------------------------------------------------------------------------------------------

ESP_DILATIONS = (1, 2, 4, 8, 16)


def esp_split(channels: int) -> tuple[int, int]:
    """Branch widths (n, n1) of an ESP module with ``channels`` outputs: four branches of
    n = int(N/5) and the d=1 branch takes the remainder n1 = N - 4n, so the concat is exactly N.

    >>> esp_split(64), esp_split(128), esp_split(20)
    ((12, 16), (25, 28), (4, 4))
    """
    n = channels // 5
    return n, channels - 4 * n


class ESPModule(nn.Module):
    """ESP: reduce (plain conv, no BN/act) -> five 3x3 dilated branches (d = 1, 2, 4, 8, 16) ->
    hierarchical feature fusion over the d>=2 branches only -> concat (+ input) -> BN + PReLU.

    ``reduce_kernel``/``stride`` exist for :class:`StridedESP`; the official N->N module is the default.
    """

    def __init__(self, in_chs: int, out_chs: int, *, residual: bool = True, reduce_kernel: int = 1,
                 stride: int = 1):
        n, n1 = esp_split(out_chs)
        if n < 1:
            raise ValueError(f"an ESP module needs >= 5 output channels to split over its 5 branches, got {out_chs}")
        if residual and (in_chs != out_chs or stride != 1):
            raise ValueError(f"a residual ESP module must keep its shape, got {in_chs}->{out_chs} at stride {stride}")
        super().__init__()
        self.residual = residual
        self.reduce = nn.Conv2d(in_chs, n, reduce_kernel, stride, reduce_kernel // 2, bias=False)
        self.branches = nn.ModuleList(
            nn.Conv2d(n, n1 if d == 1 else n, 3, padding=d, dilation=d, bias=False) for d in ESP_DILATIONS)
        self.br = _bn_prelu(out_chs, V1_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.reduce(x)  # (B, N_in, H, W) -> (B, n, H/s, W/s)
        d = [branch(r) for branch in self.branches]  # n1, n, n, n, n channels
        fused = [d[1]]
        for t in d[2:]:  # HFF: d2, d2+d4, d2+d4+d8, ...; the d=1 branch stays out of the sum
            fused.append(fused[-1] + t)
        out = torch.cat([d[0], *fused], 1)  # (B, N, H/s, W/s)
        if self.residual:
            out = out + x
        return self.br(out)


class StridedESP(ESPModule):
    """The strided ESP (official ``DownSamplerB``): the reduce is a 3x3 stride-2 conv, no residual.
    (B, in, H, W) -> (B, out, ceil(H/2), ceil(W/2))."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__(in_chs, out_chs, residual=False, reduce_kernel=3, stride=2)


class ESPNetC(nn.Module):
    """ESPNet-C, the encoder: (B, in_chans, H, W) -> class logits (B, C, H/8, W/8).

    The RGB image is avg-pooled and concatenated (not added) at H/2 and H/4; ``p``/``q`` are the
    number of ESP modules at H/4 and H/8 (the paper's final model: p=2, q=8).
    """

    def __init__(self, num_classes: int = 20, *, p: int = 2, q: int = 8, in_chans: int = 3):
        super().__init__()
        c1, c2 = 16 + in_chans, 128 + in_chans  # widths after concatenating the pooled image
        self.level1 = ConvBNAct(in_chans, 16, 3, 2, act="prelu", bn_eps=V1_BN_EPS)
        self.b1 = _bn_prelu(c1, V1_BN_EPS)
        self.level2_0 = StridedESP(c1, 64)
        self.level2 = nn.Sequential(*(ESPModule(64, 64) for _ in range(p)))
        self.b2 = _bn_prelu(c2, V1_BN_EPS)
        self.level3_0 = StridedESP(c2, 128)
        self.level3 = nn.Sequential(*(ESPModule(128, 128) for _ in range(q)))
        self.b3 = _bn_prelu(256, V1_BN_EPS)
        self.classifier = nn.Conv2d(256, num_classes, 1, bias=False)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three concatenated feature maps the decoder also reads: at H/2, H/4 and H/8."""
        img2 = _avg_half(x)  # (B, in, H/2, W/2)
        img4 = _avg_half(img2)  # (B, in, H/4, W/4)
        f1 = self.b1(torch.cat([self.level1(x), img2], 1))  # (B, 16+in, H/2, W/2)
        l2_0 = self.level2_0(f1)  # (B, 64, H/4, W/4)
        f2 = self.b2(torch.cat([self.level2(l2_0), l2_0, img4], 1))  # (B, 128+in, H/4, W/4)
        l3_0 = self.level3_0(f2)  # (B, 128, H/8, W/8)
        f3 = self.b3(torch.cat([l3_0, self.level3(l3_0)], 1))  # (B, 256, H/8, W/8)
        return f1, f2, f3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x)[-1])  # (B, C, H/8, W/8)


class ESPNet(nn.Module):
    """ESPNet: ESPNet-C plus the light decoder, logits at full resolution (B, C, H, W).

    Decoder (official names in brackets): BN on the encoder logits [br] -> deconv 2x2 s2 [up_l3];
    1x1 conv of the H/4 features to C [level3_C]; concat -> BR + ESP(2C->C, no residual)
    [combine_l2_l3] -> deconv + BR [up_l2]; concat with the H/2 features -> CBR 3x3 [conv] ->
    deconv [classifier]. All deconvolutions are bias-free. Sides must be multiples of 8, and C >= 5
    (the decoder's ESP splits C channels over 5 branches).
    """

    def __init__(self, num_classes: int = 20, *, p: int = 2, q: int = 8, in_chans: int = 3):
        if num_classes < 5:
            raise ValueError(f"ESPNet needs num_classes >= 5, got {num_classes}: its decoder's ESP module "
                             f"splits the C class channels over 5 branches (use espnet_v1_c for fewer classes)")
        super().__init__()
        c = num_classes
        self.encoder = ESPNetC(c, p=p, q=q, in_chans=in_chans)
        self.proj_l2 = nn.Conv2d(128 + in_chans, c, 1, bias=False)
        self.bn_l3 = nn.BatchNorm2d(c, eps=V1_BN_EPS)
        self.fuse_l1 = ConvBNAct(16 + in_chans + c, c, 3, act="prelu", bn_eps=V1_BN_EPS)
        self.up_l3 = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)
        self.fuse_l2 = nn.Sequential(_bn_prelu(2 * c, V1_BN_EPS), ESPModule(2 * c, c, residual=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(c, c, 2, stride=2, bias=False), _bn_prelu(c, V1_BN_EPS))
        self.classifier = nn.ConvTranspose2d(c, c, 2, stride=2, bias=False)

    def stage_names(self) -> list[str]:
        """Units for ``edgekit info``, in execution order."""
        enc = [f"encoder.{n}" for n, _ in self.encoder.named_children()]
        return enc + ["bn_l3", "up_l3", "proj_l2", "fuse_l2", "up_l2", "fuse_l1", "classifier"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1, f2, f3 = self.encoder.forward_features(x)
        y = self.up_l3(self.bn_l3(self.encoder.classifier(f3)))  # (B, C, H/8, W/8) -> (B, C, H/4, W/4)
        y = self.up_l2(self.fuse_l2(torch.cat([self.proj_l2(f2), y], 1)))  # (B, 2C, H/4, W/4) -> (B, C, H/2, W/2)
        y = self.fuse_l1(torch.cat([y, f1], 1))  # (B, C+16+in, H/2, W/2) -> (B, C, H/2, W/2)
        return self.classifier(y)  # (B, C, H, W)


# --------------------------------------------------------------------------------------------
# ESPNetv2
# --------------------------------------------------------------------------------------------

EESP_BRANCHES = 4  # K: branches of every EESP, and the groups of its two 1x1 convs
V2_R_LIM = (13, 11, 9, 7, 5)  # receptive-field limit per spatial level
V2_REPEATS = (0, 3, 7, 3)  # EESPs after the downsamplers of levels 2..5
V2_MAX_SCALE = 2.0  # the head-width rule covers s <= 1.5 (1024) and s <= 2.0 (1280) only


def eesp_dilations(branches: int, r_lim: int) -> tuple[int, ...]:
    """Dilations of an EESP's depthwise branches: kernel sizes 3, 5, 7, ... (one per branch), any
    above ``r_lim`` falls back to 3, sorted ascending, then mapped to the dilation of a 3x3 with
    that receptive field ((k-1)/2: 3->1, 5->2, 7->3, 9->4).

    >>> eesp_dilations(4, 13), eesp_dilations(4, 7), eesp_dilations(4, 5)
    ((1, 2, 3, 4), (1, 1, 2, 3), (1, 1, 1, 2))
    """
    ksizes = sorted(k if k <= r_lim else 3 for k in (3 + 2 * i for i in range(branches)))
    return tuple((k - 1) // 2 for k in ksizes)


class EESP(nn.Module):
    """EESP: grouped 1x1 (groups=K) CBR -> K depthwise 3x3 dilated branches -> HFF (cumulative,
    branch 0 included) -> concat -> BN + PReLU -> grouped 1x1 (groups=K) + BN.

    Stride 1: + input when the shapes match, then PReLU. Stride 2: returned without activation
    (the :class:`EESPDownsampler` adds its other paths first); the official code still builds the
    output PReLU there, so its parameters exist (and count) without being used.
    """

    def __init__(self, in_chs: int, out_chs: int, *, stride: int = 1, branches: int = EESP_BRANCHES,
                 r_lim: int = 7):
        n = out_chs // branches
        if n < 1 or n * branches != out_chs:
            raise ValueError(f"EESP output channels {out_chs} must be a positive multiple of its {branches} branches")
        if stride not in (1, 2):
            raise ValueError(f"EESP stride {stride} must be 1 or 2")
        super().__init__()
        self.stride = stride
        self.residual = stride == 1 and in_chs == out_chs
        self.dilations = eesp_dilations(branches, r_lim)
        self.proj = ConvBNAct(in_chs, n, 1, groups=branches, act="prelu", bn_eps=V2_BN_EPS)
        self.branches = nn.ModuleList(
            nn.Conv2d(n, n, 3, stride, padding=d, dilation=d, groups=n, bias=False) for d in self.dilations)
        self.expand = ConvBNAct(out_chs, out_chs, 1, groups=branches, act=None, bn_eps=V2_BN_EPS)
        self.br = _bn_prelu(out_chs, V2_BN_EPS)
        self.act = nn.PReLU(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.proj(x)  # (B, N_in, H, W) -> (B, n, H, W)
        outs = [self.branches[0](r)]  # (B, n, H/s, W/s)
        for branch in self.branches[1:]:  # HFF: each branch adds the fused output of the one before
            outs.append(branch(r) + outs[-1])
        y = self.expand(self.br(torch.cat(outs, 1)))  # (B, N, H/s, W/s)
        if self.stride == 2:
            return y
        if self.residual:
            y = y + x
        return self.act(y)


class EESPDownsampler(nn.Module):
    """The strided unit: concat[AvgPool 3x3 s2 (in ch), EESP s2 (out - in ch)], + input-image
    reinforcement (image avg-pooled to the output size -> CBR 3x3 -> CB 1x1 to ``out``, ADDED),
    then PReLU. (B, in, H, W) -> (B, out, ceil(H/2), ceil(W/2)).

    ``reinforce=True`` builds the reinforcement path; it runs only when ``forward`` gets an image.
    """

    def __init__(self, in_chs: int, out_chs: int, *, r_lim: int = 9, branches: int = EESP_BRANCHES,
                 reinforce: bool = True, img_chs: int = 3):
        if out_chs <= in_chs:
            raise ValueError(f"a downsampler concatenates its input, so out ({out_chs}) must exceed in ({in_chs})")
        super().__init__()
        self.eesp = EESP(in_chs, out_chs - in_chs, stride=2, branches=branches, r_lim=r_lim)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1)
        self.inp_reinf = nn.Sequential(
            ConvBNAct(img_chs, img_chs, 3, act="prelu", bn_eps=V2_BN_EPS),
            ConvBNAct(img_chs, out_chs, 1, act=None, bn_eps=V2_BN_EPS),
        ) if reinforce else None
        self.act = nn.PReLU(out_chs)

    def forward(self, x: torch.Tensor, img: torch.Tensor | None = None) -> torch.Tensor:
        y = torch.cat([self.avg(x), self.eesp(x)], 1)  # (B, out, H/2, W/2)
        if img is not None:
            if self.inp_reinf is None:
                raise ValueError("this downsampler was built with reinforce=False; pass no image")
            # pool the image down to the output size (static shapes: a fixed number of steps under export)
            while img.shape[-2] > y.shape[-2] or img.shape[-1] > y.shape[-1]:
                img = _avg_half(img)
            y = y + self.inp_reinf(img)
        return self.act(y)


def _valid_scales() -> list[float]:
    """The s = base/32 the channel rule admits (base a multiple of 4, up to s = 2)."""
    return [b / 32 for b in range(4, int(32 * V2_MAX_SCALE) + 1, 4) if _channel_problem(b / 32) is None]


def _channels(s: float) -> tuple[int, ...]:
    base = math.ceil(int(32 * s) / EESP_BRANCHES) * EESP_BRANCHES
    head = 1024 if s <= 1.5 else 1280
    return (min(32, base), *(base * 2 ** i for i in range(1, 5)), head)


def _channel_problem(s: float) -> str | None:
    """Why the channels of scale ``s`` cannot be built, or None. Every EESP's grouped 1x1 (groups=4)
    maps to out/4 channels, which must itself be a positive multiple of 4."""
    ch = _channels(s)
    eesp_outs = [ch[i + 1] - ch[i] for i in range(4)] + list(ch[2:5])  # downsamplers' EESPs, then the levels'
    for out in eesp_outs:
        if out <= 0 or out % (EESP_BRANCHES * EESP_BRANCHES):
            return (f"it gives channels {list(ch)}, and an EESP with {out} outputs cannot have a grouped 1x1 "
                    f"(groups={EESP_BRANCHES}) to {out / EESP_BRANCHES:g} channels")
    return None


def espnetv2_channels(s: float) -> tuple[int, ...]:
    """Channels (level1, level2, level3, level4, level5, head) of ESPNetv2 at scale ``s``:
    base = ceil(int(32 s)/4)*4; level1 = min(32, base); level i = base * 2^i; head 1024 (s <= 1.5)
    or 1280 (s <= 2.0).

    >>> espnetv2_channels(1.25)
    (32, 80, 160, 320, 640, 1024)
    """
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s <= V2_MAX_SCALE:
        raise ValueError(f"ESPNetv2 scale s={s!r} is not supported: the head-width rule covers 0 < s <= "
                         f"{V2_MAX_SCALE} only (head 1024 up to s=1.5, 1280 up to s=2.0); "
                         f"valid: {', '.join(f'{v:g}' for v in _valid_scales())}")
    problem = _channel_problem(s)
    if problem is not None:
        closest = min(_valid_scales(), key=lambda v: abs(v - s))
        raise ValueError(f"ESPNetv2 scale s={s!r} is not supported: {problem}; valid: "
                         f"{', '.join(f'{v:g}' for v in _valid_scales())} (closest: {closest:g})")
    return _channels(s)


class ESPNetV2(nn.Module):
    """ESPNetv2 for ImageNet: CBR 3x3 s2 -> downsamplers + EESPs at H/4 .. H/32 -> depthwise CBR 3x3
    -> grouped (K=4) CBR 1x1 to the head width -> GAP -> dropout -> Linear.

    Input reinforcement feeds levels 2-4 only. Code quirks kept for exact parameter counts: level5_0
    is built with the reinforcement path but never given the image; each level's EESPs take
    ``r_lim[level]`` while its downsampler takes the previous level's.
    """

    def __init__(self, num_classes: int = 1000, *, s: float = 1.0, in_chans: int = 3, drop_rate: float = 0.2):
        ch = espnetv2_channels(s)  # validates s before anything is built
        super().__init__()
        r = V2_R_LIM
        self.level1 = ConvBNAct(in_chans, ch[0], 3, 2, act="prelu", bn_eps=V2_BN_EPS)
        self.level2_0 = EESPDownsampler(ch[0], ch[1], r_lim=r[0], img_chs=in_chans)
        self.level3_0 = EESPDownsampler(ch[1], ch[2], r_lim=r[1], img_chs=in_chans)
        self.level3 = nn.Sequential(*(EESP(ch[2], ch[2], r_lim=r[2]) for _ in range(V2_REPEATS[1])))
        self.level4_0 = EESPDownsampler(ch[2], ch[3], r_lim=r[2], img_chs=in_chans)
        self.level4 = nn.Sequential(*(EESP(ch[3], ch[3], r_lim=r[3]) for _ in range(V2_REPEATS[2])))
        self.level5_0 = EESPDownsampler(ch[3], ch[4], r_lim=r[3], img_chs=in_chans)  # reinforcement unused
        self.level5 = nn.Sequential(*(EESP(ch[4], ch[4], r_lim=r[4]) for _ in range(V2_REPEATS[3])))
        self.head = nn.Sequential(
            ConvBNAct(ch[4], ch[4], 3, groups=ch[4], act="prelu", bn_eps=V2_BN_EPS),
            ConvBNAct(ch[4], ch[5], 1, groups=EESP_BRANCHES, act="prelu", bn_eps=V2_BN_EPS),
        )
        self.drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(ch[5], num_classes)
        self.channels = ch
        self._init_weights()

    def stage_names(self) -> list[str]:
        """Units for ``edgekit info``: every child but the (parameter-free) dropout."""
        return [n for n, _ in self.named_children() if n != "drop"]

    def _init_weights(self) -> None:
        """As the official code: Kaiming-normal (fan_out) convs, BN 1/0, Linear N(0, 0.001)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.001)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the image pyramid is pooled once per level here rather than from the full image at each
        # level as the official loop does: the same ops, so the same values
        img4 = _avg_half(_avg_half(x))  # (B, in, H/4, W/4)
        img8 = _avg_half(img4)
        y = self.level1(x)  # (B, c0, H/2, W/2)
        y = self.level2_0(y, img4)  # (B, c1, H/4, W/4)
        y = self.level3(self.level3_0(y, img8))  # (B, c2, H/8, W/8)
        y = self.level4(self.level4_0(y, _avg_half(img8)))  # (B, c3, H/16, W/16)
        y = self.level5(self.level5_0(y))  # (B, c4, H/32, W/32): level5_0 gets no image (official)
        y = self.head(y).mean((2, 3))  # (B, head, H/32, W/32) -> (B, head)
        return self.classifier(self.drop(y))  # (B, classes)


# --------------------------------------------------------------------------------------------
# Registered variants
# --------------------------------------------------------------------------------------------

_V1_PAPER = ("Mehta et al., ESPNet: Efficient Spatial Pyramid of Dilated Convolutions for Semantic "
             "Segmentation, ECCV 2018")
_V2_PAPER = ("Mehta et al., ESPNetv2: A Light-weight, Power Efficient, and General Purpose "
             "Convolutional Neural Network, CVPR 2019")
# The official Cityscapes statistics (test/VisualizeResults.py), given there for BGR 0-255 input
# (cv2): reordered to RGB and scaled to [0, 1] here.
_CITYSCAPES_MEAN = (0.286896, 0.325133, 0.283891)
_CITYSCAPES_STD = (0.176137, 0.180992, 0.177722)


def _v1_cfg(name: str, *, decoder: bool) -> ModelCfg:
    what = ("full-resolution logits from the encoder + light decoder; sides must be multiples of 8 "
            "(the decoder concatenates deconvolved maps with the encoder's); num_classes >= 5" if decoder else
            "encoder only: logits at ceil(H/8) x ceil(W/8) from the 1x1 classifier; any size >= 8")
    return ModelCfg(
        name=name, family="espnet", paper=_V1_PAPER, resolution=(512, 1024), num_classes=20,
        mean=_CITYSCAPES_MEAN, std=_CITYSCAPES_STD, task="segmentation", width=None, min_resolution=8,
        resolution_divisor=8 if decoder else 1,
        notes=(f"p=2, q=8 (the paper's final model; override with p=, q=); {what}. 20 classes = "
               "Cityscapes' 19 + void. mean/std: the official Cityscapes statistics (BGR in the "
               "original code), reordered to RGB."))


def _v2_cfg(name: str, s: float) -> ModelCfg:
    return ModelCfg(
        name=name, family="espnetv2", paper=_V2_PAPER, resolution=(224, 224), width=s, min_resolution=32,
        notes=("width = the scale s (valid: 0.5, 1, 1.25, 1.5, 1.75, 2). Published FLOPs count convs "
               "only; the Linear adds head x classes MACs. Any side >= 32, no divisor: every stride rounds up "
               "(the input-reinforcement pyramid matches the official code from 9 px up)."))


def _espnet(*, num_classes: int, in_chans: int, decoder: bool, p: int = 2, q: int = 8) -> nn.Module:
    cls = ESPNet if decoder else ESPNetC
    return cls(num_classes, p=p, q=q, in_chans=in_chans)


def _espnetv2(*, num_classes: int, in_chans: int, s: float, **kw) -> nn.Module:
    return ESPNetV2(num_classes, s=s, in_chans=in_chans, **kw)


@register_model(_v1_cfg("espnet_v1", decoder=True))
def espnet_v1(*, num_classes, in_chans, resolution, width, **kw):
    """ESPNet (p=2, q=8) for Cityscapes-like segmentation at 512x1024."""
    return _espnet(num_classes=num_classes, in_chans=in_chans, decoder=True, **kw)


@register_model(_v1_cfg("espnet_v1_c", decoder=False))
def espnet_v1_c(*, num_classes, in_chans, resolution, width, **kw):
    """ESPNet-C (p=2, q=8): the encoder alone, logits at H/8."""
    return _espnet(num_classes=num_classes, in_chans=in_chans, decoder=False, **kw)


@register_model(_v2_cfg("espnetv2_0_5", 0.5))
def espnetv2_0_5(*, num_classes, in_chans, resolution, width, **kw):
    """ESPNetv2 s=0.5 (ImageNet, 224)."""
    return _espnetv2(num_classes=num_classes, in_chans=in_chans, s=width, **kw)


@register_model(_v2_cfg("espnetv2_1_0", 1.0))
def espnetv2_1_0(*, num_classes, in_chans, resolution, width, **kw):
    """ESPNetv2 s=1.0 (ImageNet, 224)."""
    return _espnetv2(num_classes=num_classes, in_chans=in_chans, s=width, **kw)


@register_model(_v2_cfg("espnetv2_1_25", 1.25))
def espnetv2_1_25(*, num_classes, in_chans, resolution, width, **kw):
    """ESPNetv2 s=1.25 (ImageNet, 224)."""
    return _espnetv2(num_classes=num_classes, in_chans=in_chans, s=width, **kw)


@register_model(_v2_cfg("espnetv2_1_5", 1.5))
def espnetv2_1_5(*, num_classes, in_chans, resolution, width, **kw):
    """ESPNetv2 s=1.5 (ImageNet, 224)."""
    return _espnetv2(num_classes=num_classes, in_chans=in_chans, s=width, **kw)


@register_model(_v2_cfg("espnetv2_2_0", 2.0))
def espnetv2_2_0(*, num_classes, in_chans, resolution, width, **kw):
    """ESPNetv2 s=2.0 (ImageNet, 224)."""
    return _espnetv2(num_classes=num_classes, in_chans=in_chans, s=width, **kw)

"""Small utilities shared by the test modules."""
import torch
from torch import nn


def randomise_bn(module: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine terms, so eval-mode outputs are not just conv outputs."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.2)
    return module


class Tiny(nn.Module):
    """Three convs and a head: exports in ~2 s, and shallow enough that int8 noise is not amplified.
    For the properties of export that do not depend on the network (retries, workers, errors)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)
        self.default_cfg = {"input_size": [1, 32, 32], "mean": [0.286], "std": [0.353], "num_classes": 10}

    def forward(self, x):
        return self.fc(self.pw(self.dw(self.stem(x))).mean((2, 3)))  # (B, 32, H/2, W/2) -> (B, 32) -> (B, 10)


class MiniGhost(nn.Module):
    """A stem, one Ghost-style block (a 1x1 conv and a depthwise "cheap" conv on its output,
    concatenated, as GhostNet's Ghost module does), a residual add and a pooled linear head: the op kinds
    of the TFLite exporter's int8 checks (conv, depthwise, concat, add, fully connected) in 18 ops,
    which convert in a second or two instead of ghostnet_0_5's twenty."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.primary = nn.Sequential(nn.Conv2d(16, 8, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.pw = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
        self.default_cfg = {"input_size": [1, 32, 32], "mean": [0.286], "std": [0.353], "num_classes": 10}

    def forward(self, x):
        x = self.stem(x)
        y = self.primary(x)
        x = x + torch.cat([y, self.cheap(y)], dim=1)
        return self.head(self.pw(x))

"""Small utilities shared by the family tests."""
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

"""Networks that are not in the zoo, built by factories as a user's own file would hold them."""
import torch
from torch import nn


class Residual(nn.Module):
    """A small residual CNN: stem, one residual block, global pooling, a linear classifier."""

    def __init__(self, classes: int = 7):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        y = self.stem(x)
        y = torch.relu(y + self.block(y))
        return self.head(y.mean((2, 3)))


def residual():
    torch.manual_seed(0)
    net = Residual()
    for m in net.modules():  # BN statistics of a trained network, not the identity of a fresh one
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return net


class TwoOutputs(Residual):
    """Logits and the stem's feature map: a classifier that also hands its features on."""

    def forward(self, x):
        y = self.stem(x)
        return self.head(y.mean((2, 3))), y


def two_outputs():
    torch.manual_seed(0)
    return TwoOutputs()


class Spectral(Residual):
    """An FFT in the middle: an op the TFLite converter cannot lower."""

    def forward(self, x):
        y = torch.fft.rfft2(self.stem(x)).abs()
        return self.head(y.mean((2, 3)))


def spectral():
    return Spectral()


def needs_width(width):
    return Residual()


def not_a_module():
    return "a string"


class DictOut(Residual):
    def forward(self, x):
        return {"logits": super().forward(x)}


def dict_out():
    return DictOut()


class Only64(Residual):
    def forward(self, x):
        if x.shape[-1] != 64:
            raise ValueError(f"Only64 takes 64x64 images, got {tuple(x.shape)}")
        return super().forward(x)


def only_64():
    return Only64()

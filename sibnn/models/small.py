"""Small-data models (METHOD.md §3 [choice]): BinaryNet's MNIST MLP and CIFAR-10 VGG-small, and a model of the same
family for scikit-learn's embedded 8×8 digits. The first and last layers stay full precision, as in the big nets.
"""
from __future__ import annotations

from torch import nn

from sibnn.catalog import RHO_DEFAULT
from sibnn.layers import BinaryConv2d, BinaryLinear
from sibnn.models.common import fp_conv, init_fp_layers_
from sibnn.models.registry import register_model


class MLP(nn.Module):
    """BinaryNet MNIST MLP: 3 hidden layers with BN; hidden 1 is reached by an FP layer from the pixels,
    hidden 2–3 by binary layers, the classifier is FP."""

    def __init__(self, binarizer="sibnn", rho=RHO_DEFAULT, num_classes=10, in_features=784, hidden=2048):
        super().__init__()
        b = dict(binarizer=binarizer, rho=rho)
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden, bias=False), nn.BatchNorm1d(hidden),   # FP input layer
            BinaryLinear(hidden, hidden, **b), nn.BatchNorm1d(hidden),
            BinaryLinear(hidden, hidden, **b), nn.BatchNorm1d(hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),                                       # FP classifier
        )
        init_fp_layers_(self)

    def forward(self, x):
        return self.net(x)


class VGGSmall(nn.Module):
    """BinaryNet CIFAR-10 net: 2×128C3–MP2–2×256C3–MP2–2×512C3–MP2–2×1024FC–10, BN after every layer."""

    def __init__(self, binarizer="sibnn", rho=RHO_DEFAULT, num_classes=10, in_channels=3, width=128):
        super().__init__()
        b = dict(binarizer=binarizer, rho=rho)
        w1, w2, w3 = width, 2 * width, 4 * width
        self.features = nn.Sequential(
            fp_conv(in_channels, w1, 3, 1, 1), nn.BatchNorm2d(w1),                                    # FP
            BinaryConv2d(w1, w1, 3, padding=1, **b), nn.MaxPool2d(2), nn.BatchNorm2d(w1),
            BinaryConv2d(w1, w2, 3, padding=1, **b), nn.BatchNorm2d(w2),
            BinaryConv2d(w2, w2, 3, padding=1, **b), nn.MaxPool2d(2), nn.BatchNorm2d(w2),
            BinaryConv2d(w2, w3, 3, padding=1, **b), nn.BatchNorm2d(w3),
            BinaryConv2d(w3, w3, 3, padding=1, **b), nn.MaxPool2d(2), nn.BatchNorm2d(w3),
        )
        self.pool = nn.AdaptiveAvgPool2d(4)  # identity at 32 px
        self.classifier = nn.Sequential(
            nn.Flatten(),
            BinaryLinear(w3 * 16, 1024, **b), nn.BatchNorm1d(1024),
            BinaryLinear(1024, 1024, **b), nn.BatchNorm1d(1024), nn.ReLU(),
            nn.Linear(1024, num_classes),                                                             # FP
        )
        init_fp_layers_(self)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


class DigitsCNN(nn.Module):
    """For the embedded 8×8 digits: FP conv → 2 binary convs → 1 binary FC → FP classifier."""

    def __init__(self, binarizer="sibnn", rho=RHO_DEFAULT, num_classes=10, in_channels=1, width=32):
        super().__init__()
        b = dict(binarizer=binarizer, rho=rho)
        self.features = nn.Sequential(
            fp_conv(in_channels, width, 3, 1, 1), nn.BatchNorm2d(width),                       # FP, 8×8
            BinaryConv2d(width, 2 * width, 3, padding=1, **b), nn.BatchNorm2d(2 * width), nn.MaxPool2d(2),  # 4×4
            BinaryConv2d(2 * width, 4 * width, 3, padding=1, **b), nn.BatchNorm2d(4 * width), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(2)  # identity at 8 px
        self.classifier = nn.Sequential(
            nn.Flatten(),
            BinaryLinear(4 * width * 4, 256, **b), nn.BatchNorm1d(256), nn.ReLU(),
            nn.Linear(256, num_classes),                                                       # FP
        )
        init_fp_layers_(self)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


@register_model("mlp")
def mlp(binarizer="sibnn", rho=RHO_DEFAULT, num_classes=10, in_channels=1, input_size=28, hidden=2048):
    return MLP(binarizer, rho, num_classes, in_channels * input_size * input_size, hidden)


@register_model("vgg_small")
def vgg_small(binarizer="sibnn", rho=RHO_DEFAULT, num_classes=10, in_channels=3, width=128):
    return VGGSmall(binarizer, rho, num_classes, in_channels, width)


@register_model("digits_cnn")
def digits_cnn(binarizer="sibnn", rho=RHO_DEFAULT, num_classes=10, in_channels=1, width=32):
    return DigitsCNN(binarizer, rho, num_classes, in_channels, width)


@register_model("mlp_small")
def mlp_small(binarizer="sibnn", rho=RHO_DEFAULT, num_classes=10, in_channels=1, input_size=28, hidden=512):
    return MLP(binarizer, rho, num_classes, in_channels * input_size * input_size, hidden)

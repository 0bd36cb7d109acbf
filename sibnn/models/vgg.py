"""VGG-Variant (METHOD.md §3 [choice: HWGQ ``examples/imagenet/vgg-hwgq-3ne-clip-poly-640k/deploy.prototxt``]):
9 binary 3×3 convs and 2 binary FCs, input 224, no biases except the last FC's.

Full precision: conv1 (96@7×7/2) and the last FC. In each stage the third conv has no BatchNorm of its own: it is
followed by the 2×2 max-pool and then the BatchNorm (HWGQ's ``conv2_3 → pool2 → bn2_3``).
"""
from __future__ import annotations

from torch import nn

from sibnn.catalog import RHO_DEFAULT
from sibnn.layers import BinaryConv2d, BinaryLinear
from sibnn.models.common import fp_conv, init_fp_layers_
from sibnn.models.registry import register_model


class VGGVariant(nn.Module):
    def __init__(self, binarizer="sibnn", rho=RHO_DEFAULT, num_classes=1000, in_channels=3):
        super().__init__()
        b = dict(binarizer=binarizer, rho=rho)
        layers: list[nn.Module] = [fp_conv(in_channels, 96, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(2, 2),
                                   nn.BatchNorm2d(96)]
        channels = 96
        for width in (256, 512, 512):
            for _ in range(2):
                layers += [BinaryConv2d(channels, width, 3, padding=1, **b), nn.BatchNorm2d(width)]
                channels = width
            layers += [BinaryConv2d(width, width, 3, padding=1, **b), nn.MaxPool2d(2, 2), nn.BatchNorm2d(width)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(7)  # identity at 224 px (7×7×512)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            BinaryLinear(512 * 7 * 7, 4096, **b), nn.BatchNorm1d(4096),
            BinaryLinear(4096, 4096, **b), nn.BatchNorm1d(4096), nn.ReLU(),
            nn.Linear(4096, num_classes),  # FP
        )
        init_fp_layers_(self)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


@register_model("vgg_variant")
def vgg_variant(binarizer="sibnn", rho=RHO_DEFAULT, num_classes=1000, in_channels=3):
    return VGGVariant(binarizer, rho, num_classes, in_channels)

"""AlexNet as HWGQ's published 1-bit AlexNet lays it out (METHOD.md §3 [choice: HWGQ
``examples/imagenet/alex-hwgq-3ne-clip-poly-320k/deploy.prototxt``, the model the paper compares with]):
no groups, no conv biases, input 227, and every max-pool comes *before* its BatchNorm.

Full precision: conv1 (no ReLU after it) and fc8. Binary (weights and input activations): conv2–conv5, fc6, fc7.
"""
from __future__ import annotations

from torch import nn

from sibnn.catalog import RHO_DEFAULT
from sibnn.layers import BinaryConv2d, BinaryLinear
from sibnn.models.common import fp_conv, init_fp_layers_
from sibnn.models.registry import register_model


class AlexNet(nn.Module):
    def __init__(self, binarizer="sibnn", rho=RHO_DEFAULT, num_classes=1000, in_channels=3):
        super().__init__()
        b = dict(binarizer=binarizer, rho=rho)
        self.features = nn.Sequential(
            fp_conv(in_channels, 96, 11, 4), nn.MaxPool2d(3, 2), nn.BatchNorm2d(96),      # conv1 (FP) pool1 bn2
            BinaryConv2d(96, 256, 5, padding=2, **b), nn.MaxPool2d(3, 2), nn.BatchNorm2d(256),  # conv2 pool2 bn3
            BinaryConv2d(256, 384, 3, padding=1, **b), nn.BatchNorm2d(384),                # conv3 bn4
            BinaryConv2d(384, 384, 3, padding=1, **b), nn.BatchNorm2d(384),                # conv4 bn5
            BinaryConv2d(384, 256, 3, padding=1, **b), nn.MaxPool2d(3, 2), nn.BatchNorm2d(256),  # conv5 pool5 bn6
        )
        # 6×6 at 227 px, where this is the identity; it only lets small test inputs reach fc6's shape.
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            BinaryLinear(256 * 6 * 6, 4096, **b), nn.BatchNorm1d(4096),                   # fc6
            BinaryLinear(4096, 4096, **b), nn.BatchNorm1d(4096), nn.ReLU(),                # fc7
            nn.Linear(4096, num_classes),                                                 # fc8 (FP)
        )
        init_fp_layers_(self)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


@register_model("alexnet")
def alexnet(binarizer="sibnn", rho=RHO_DEFAULT, num_classes=1000, in_channels=3):
    return AlexNet(binarizer, rho, num_classes, in_channels)

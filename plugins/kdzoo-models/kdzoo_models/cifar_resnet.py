"""CIFAR-style ResNet (He et al., 2016, section 4.2): 3 stages of basic blocks, depth 6n+2."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdzoo.api import CIFAR_MEAN, CIFAR_STD, CamHead, Network
from kdzoo_models import CifarResNetParams
from kdzoo_models.weights import load_weights


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut, or a 1x1 projection (option B) when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        # The residual sum before the block's ReLU, as a module so a forward hook can tap
        # it (AB and OFD distil pre-activations); no parameters, so state dicts are unchanged.
        self.pre_activation = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        # Out-of-place ReLUs: tapped outputs must not be overwritten by later layers.
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(self.pre_activation(out + self.shortcut(x)))


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem, stages of width w, 2w, 4w (strides 1, 2, 2), GAP, linear head."""

    def __init__(self, depth: int = 20, width: int = 16, num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._stage(width, width, blocks_per_stage, stride=1)
        self.layer2 = self._stage(width, 2 * width, blocks_per_stage, stride=2)
        self.layer3 = self._stage(2 * width, 4 * width, blocks_per_stage, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)
        self._init_weights()

    @staticmethod
    def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride)]
        layers += [BasicBlock(out_channels, out_channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        # He et al. (2015) initialisation, as in the paper; BN starts as the identity.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def build_cifar_resnet(params: CifarResNetParams, *, num_classes: int, image_size: int) -> Network:
    """CIFAR ResNet-(6n+2) -- He et al., "Deep Residual Learning for Image Recognition", CVPR 2016."""
    body = CifarResNet(params.depth, params.width, num_classes)
    last = (params.depth - 2) // 6 - 1  # the last block of each stage
    source = load_weights(body, params.weights) if params.weights else None
    return Network(
        body,
        num_classes=num_classes,
        input_size=None,  # fully convolutional: runs at the dataset's resolution
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        stages=["layer1", "layer2", "layer3"],
        pre_activation_stages=[f"{stage}.{last}.pre_activation" for stage in ("layer1", "layer2", "layer3")],
        pre_activation_norms=[f"{stage}.{last}.bn2" for stage in ("layer1", "layer2", "layer3")],
        embedding="avgpool",
        cam=CamHead(features="layer3", classifier="fc"),
        family="cnn",
        weights_source=source,
    )

"""ResNet-32 for CIFAR (SPEC §2), returning the 64-d feature alongside the logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a parameter-free option-A shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = stride != 1 or in_planes != planes
        self.pad = planes // 4

    def shortcut(self, x: Tensor) -> Tensor:
        if not self.downsample:
            return x
        # Option A: subsample spatially and zero-pad channels, so the shortcut adds no parameters.
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CosineClassifier(nn.Module):
    """Logits = normalize(z) @ normalize(W): the LDAM-DRW head (SPEC §3.1), no bias."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        weight = torch.empty(in_features, num_classes).uniform_(-1, 1)
        self.weight = nn.Parameter(weight / weight.norm(dim=0, keepdim=True))

    def forward(self, z: Tensor) -> Tensor:
        # the last dimension: a pack of one (drolt/packed.py) passes [1, B, 64]
        return F.normalize(z, dim=-1) @ F.normalize(self.weight, dim=0)


class ResNetCifar(nn.Module):
    """CIFAR ResNet (3 stages of BasicBlocks, widths 16/32/64); forward returns (features [B,64], logits [B,C])."""

    def __init__(self, blocks_per_stage: int, num_classes: int, cosine_head: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.fc = CosineClassifier(64, num_classes) if cosine_head else nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def features(self, x: Tensor) -> Tensor:
        """The post-ReLU global-average-pooled 64-d feature z used by the robust loss and NCM."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self.features(x)
        return z, self.fc(z)


def resnet32(num_classes: int, cosine_head: bool = False) -> ResNetCifar:
    """Returns a ResNet-32 (5 blocks per stage); cosine_head=True gives the LDAM-DRW classifier."""
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    return ResNetCifar(5, num_classes, cosine_head)

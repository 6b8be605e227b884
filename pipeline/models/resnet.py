"""ResNet-50 (bottleneck blocks 3-4-6-3) in plain torch, no torchvision; parameter names match
torchvision's and DECA's (conv1, bn1, layerN.i.convK/bnK/downsample.{0,1}) so their state dicts load."""

from __future__ import annotations

from typing import Any

LAYERS_50 = (3, 4, 6, 3)
EXPANSION = 4


def build_resnet(width: int = 64, layers: tuple[int, ...] = LAYERS_50) -> Any:
    """A ResNet with bottleneck blocks whose stem has `width` channels (64 for ResNet-50).
    forward: float[N,3,H,W] -> float[N, width*8*4] globally average-pooled features."""
    import torch  # heavy: loaded on use
    from torch import nn  # heavy: loaded on use

    class Bottleneck(nn.Module):
        def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
            super().__init__()
            self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = downsample

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return self.relu(out + identity)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            inplanes = width
            for i, blocks in enumerate(layers):
                planes, stride = width * 2**i, (1 if i == 0 else 2)
                down = None
                if stride != 1 or inplanes != planes * EXPANSION:
                    down = nn.Sequential(
                        nn.Conv2d(inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
                        nn.BatchNorm2d(planes * EXPANSION))
                seq = [Bottleneck(inplanes, planes, stride, down)]
                inplanes = planes * EXPANSION
                seq += [Bottleneck(inplanes, planes, 1, None) for _ in range(blocks - 1)]
                setattr(self, f"layer{i + 1}", nn.Sequential(*seq))
            self.num_features = inplanes

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            for i in range(len(layers)):
                x = getattr(self, f"layer{i + 1}")(x)
            return torch.flatten(x.mean(dim=(2, 3)), 1)

    return ResNet()


def infer_resnet_config(state: dict, prefix: str = "") -> tuple[int, tuple[int, ...]]:
    """(stem width, blocks per layer) from a ResNet state dict's keys and shapes."""
    width = int(state[f"{prefix}conv1.weight"].shape[0])
    layers = []
    for i in range(1, 5):
        blocks = {k[len(prefix):].split(".")[1] for k in state if k.startswith(f"{prefix}layer{i}.")}
        if not blocks:
            break
        layers.append(len(blocks))
    if not layers:
        raise ValueError(f"no ResNet layers under prefix {prefix!r} in the state dict")
    return width, tuple(layers)

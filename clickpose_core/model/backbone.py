"""ResNet trunk with frozen batch norm, returning the last three stages (C3, C4, C5).

Module and parameter names follow torchvision's ResNet so that official checkpoints load as-is.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .position import SinePositionEncoding


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine terms, all stored as buffers."""

    def __init__(self, n: int):
        super().__init__()
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)  # present in torchvision checkpoints
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        shift = self.bias - self.running_mean * scale
        return torch.addcmul(shift[None, :, None, None], x, scale[None, :, None, None])


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int):
        super().__init__()
        out_ch = width * self.expansion
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = FrozenBatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = FrozenBatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = FrozenBatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                                            FrozenBatchNorm2d(out_ch))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        return F.relu(self.bn3(self.conv3(out)) + identity, inplace=True)


class ResNetBody(nn.Module):
    """Stem + four stages; `forward` returns the outputs of stages 2, 3 and 4."""

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...]):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = FrozenBatchNorm2d(widths[0])
        in_ch = widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(Bottleneck(in_ch, width, stride if j == 0 else 1))
                in_ch = width * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.out_channels = tuple(w * Bottleneck.expansion for w in widths[1:])

    def forward(self, x: Tensor) -> list[Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x)), inplace=True), 3, stride=2, padding=1)
        x = self.layer1(x)
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


class ResNetBackbone(nn.Module):
    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...]):
        super().__init__()
        self.body = ResNetBody(widths, blocks)


class Backbone(nn.Sequential):
    """Index 0 is the ResNet, index 1 the position encoding: the official `backbone.0.body.*` keys."""

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], pos: SinePositionEncoding):
        super().__init__(ResNetBackbone(widths, blocks), pos)

    @property
    def out_channels(self) -> tuple[int, ...]:
        return self[0].body.out_channels

    def forward(self, images: Tensor, masks: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """images [B,3,H,W], masks [B,H,W] (True = padding) -> C3..C5 features and their masks."""
        feats = self[0].body(images)
        return feats, [downsample_mask(masks, f.shape[-2:]) for f in feats]


def downsample_mask(mask: Tensor, size: torch.Size) -> Tensor:
    """Nearest-neighbour resize of a [B,H,W] padding mask, as the official code does it."""
    return F.interpolate(mask[None].float(), size=size).to(torch.bool)[0]

# Follows clovaai/deep-text-recognition-benchmark (Copyright (c) 2019-present NAVER Corp., Apache-2.0); see NOTICE.
"""Feature extraction stage: VGG (CRNN), RCNN (GRCNN) or ResNet (FAN), mapping [B, C, H, W] to [B, oc, H', W'].

Inner widths are fractions of ``output_channel`` exactly as in DTRB; module names (``ConvNet``, ``conv0_1``,
``GRCL``, ``wgf_u``, ...) are DTRB's so that its checkpoints load without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_stage


class _FeatureExtractor(nn.Module):
    """Shared wrapper: the DTRB extractors all hold their layers in ``ConvNet``."""

    ConvNet: nn.Module

    def __init__(self, output_channel: int) -> None:
        super().__init__()
        self.out_features = output_channel

    @classmethod
    def from_config(cls, config, in_features: int) -> _FeatureExtractor:
        return cls(in_features, config.output_channel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ConvNet(x)


@register_stage("feature_extraction", "VGG")
class VGG_FeatureExtractor(_FeatureExtractor):
    """CRNN's VGG (Shi et al. 2016): 32x100 -> oc x 1 x 24."""

    def __init__(self, input_channel: int, output_channel: int = 512) -> None:
        super().__init__(output_channel)
        oc = [output_channel // 8, output_channel // 4, output_channel // 2, output_channel]
        self.ConvNet = nn.Sequential(
            nn.Conv2d(input_channel, oc[0], 3, 1, 1), nn.ReLU(True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(oc[0], oc[1], 3, 1, 1), nn.ReLU(True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(oc[1], oc[2], 3, 1, 1), nn.ReLU(True),
            nn.Conv2d(oc[2], oc[2], 3, 1, 1), nn.ReLU(True),
            nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(oc[2], oc[3], 3, 1, 1, bias=False), nn.BatchNorm2d(oc[3]), nn.ReLU(True),
            nn.Conv2d(oc[3], oc[3], 3, 1, 1, bias=False), nn.BatchNorm2d(oc[3]), nn.ReLU(True),
            nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(oc[3], oc[3], 2, 1, 0), nn.ReLU(True),
        )  # fmt: skip


class GRCL_unit(nn.Module):
    """One iteration of a gated recurrent convolution layer: its own batch norms, shared convolutions."""

    def __init__(self, output_channel: int) -> None:
        super().__init__()
        self.BN_gfu = nn.BatchNorm2d(output_channel)
        self.BN_grx = nn.BatchNorm2d(output_channel)
        self.BN_fu = nn.BatchNorm2d(output_channel)
        self.BN_rx = nn.BatchNorm2d(output_channel)
        self.BN_Gx = nn.BatchNorm2d(output_channel)

    def forward(
        self, wgf_u: torch.Tensor, wgr_x: torch.Tensor, wf_u: torch.Tensor, wr_x: torch.Tensor
    ) -> torch.Tensor:
        G = torch.sigmoid(self.BN_gfu(wgf_u) + self.BN_grx(wgr_x))
        return torch.relu(self.BN_fu(wf_u) + self.BN_Gx(self.BN_rx(wr_x) * G))


class GRCL(nn.Module):
    """Gated recurrent convolution layer (Wang & Hu 2017) with ``num_iteration`` unrolled steps."""

    def __init__(self, input_channel: int, output_channel: int, num_iteration: int = 5, kernel_size: int = 3,
                 pad: int = 1) -> None:  # fmt: skip
        super().__init__()
        self.wgf_u = nn.Conv2d(input_channel, output_channel, 1, 1, 0, bias=False)
        self.wgr_x = nn.Conv2d(output_channel, output_channel, 1, 1, 0, bias=False)
        self.wf_u = nn.Conv2d(input_channel, output_channel, kernel_size, 1, pad, bias=False)
        self.wr_x = nn.Conv2d(output_channel, output_channel, kernel_size, 1, pad, bias=False)
        self.BN_x_init = nn.BatchNorm2d(output_channel)
        self.num_iteration = num_iteration
        self.GRCL = nn.Sequential(*[GRCL_unit(output_channel) for _ in range(num_iteration)])

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        # The feed-forward terms depend only on the input: computed once, reused by every iteration.
        wgf_u = self.wgf_u(u)
        wf_u = self.wf_u(u)
        x = torch.relu(self.BN_x_init(wf_u))
        for unit in self.GRCL:
            x = unit(wgf_u, self.wgr_x(x), wf_u, self.wr_x(x))
        return x


@register_stage("feature_extraction", "RCNN")
class RCNN_FeatureExtractor(_FeatureExtractor):
    """GRCNN's recurrent CNN: 32x100 -> oc x 1 x 26."""

    def __init__(self, input_channel: int, output_channel: int = 512) -> None:
        super().__init__(output_channel)
        oc = [output_channel // 8, output_channel // 4, output_channel // 2, output_channel]
        self.ConvNet = nn.Sequential(
            nn.Conv2d(input_channel, oc[0], 3, 1, 1), nn.ReLU(True),
            nn.MaxPool2d(2, 2),
            GRCL(oc[0], oc[0], num_iteration=5, kernel_size=3, pad=1),
            nn.MaxPool2d(2, 2),
            GRCL(oc[0], oc[1], num_iteration=5, kernel_size=3, pad=1),
            nn.MaxPool2d(2, (2, 1), (0, 1)),
            GRCL(oc[1], oc[2], num_iteration=5, kernel_size=3, pad=1),
            nn.MaxPool2d(2, (2, 1), (0, 1)),
            nn.Conv2d(oc[2], oc[3], 2, 1, 0, bias=False), nn.BatchNorm2d(oc[3]), nn.ReLU(True),
        )  # fmt: skip


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions), stride 1 everywhere as in FAN's 29-layer ResNet."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class ResNet(nn.Module):
    """FAN's ResNet with layers [1, 2, 5, 3] and block widths [oc/4, oc/2, oc, oc]."""

    def __init__(self, input_channel: int, output_channel: int, layers: tuple[int, ...] = (1, 2, 5, 3)) -> None:
        super().__init__()
        widths = [output_channel // 4, output_channel // 2, output_channel, output_channel]
        self.inplanes = output_channel // 8
        self.conv0_1 = nn.Conv2d(input_channel, output_channel // 16, 3, 1, 1, bias=False)
        self.bn0_1 = nn.BatchNorm2d(output_channel // 16)
        self.conv0_2 = nn.Conv2d(output_channel // 16, self.inplanes, 3, 1, 1, bias=False)
        self.bn0_2 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)

        self.maxpool1 = nn.MaxPool2d(2, 2, 0)
        self.layer1 = self._make_layer(widths[0], layers[0])
        self.conv1 = nn.Conv2d(widths[0], widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])

        self.maxpool2 = nn.MaxPool2d(2, 2, 0)
        self.layer2 = self._make_layer(widths[1], layers[1])
        self.conv2 = nn.Conv2d(widths[1], widths[1], 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[1])

        self.maxpool3 = nn.MaxPool2d(2, (2, 1), (0, 1))
        self.layer3 = self._make_layer(widths[2], layers[2])
        self.conv3 = nn.Conv2d(widths[2], widths[2], 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(widths[2])

        self.layer4 = self._make_layer(widths[3], layers[3])
        self.conv4_1 = nn.Conv2d(widths[3], widths[3], 2, (2, 1), (0, 1), bias=False)
        self.bn4_1 = nn.BatchNorm2d(widths[3])
        self.conv4_2 = nn.Conv2d(widths[3], widths[3], 2, 1, 0, bias=False)
        self.bn4_2 = nn.BatchNorm2d(widths[3])

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = None
        if self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, 1, 1, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, downsample)]
        self.inplanes = planes * BasicBlock.expansion
        layers += [BasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn0_1(self.conv0_1(x)))
        x = self.relu(self.bn0_2(self.conv0_2(x)))
        x = self.layer1(self.maxpool1(x))
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.maxpool2(x))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer3(self.maxpool3(x))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.layer4(x)
        x = self.relu(self.bn4_1(self.conv4_1(x)))
        return self.relu(self.bn4_2(self.conv4_2(x)))


@register_stage("feature_extraction", "ResNet")
class ResNet_FeatureExtractor(_FeatureExtractor):
    """FAN's 29-layer ResNet (Cheng et al. 2017): 32x100 -> oc x 1 x 26."""

    def __init__(self, input_channel: int, output_channel: int = 512) -> None:
        super().__init__(output_channel)
        self.ConvNet = ResNet(input_channel, output_channel)

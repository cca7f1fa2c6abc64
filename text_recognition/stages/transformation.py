# Follows clovaai/deep-text-recognition-benchmark (Copyright (c) 2019-present NAVER Corp., Apache-2.0); see NOTICE.
"""Transformation stage: none, or a thin-plate-spline spatial transformer (RARE, Shi et al. 2016).

Attribute names (``LocalizationNetwork``, ``GridGenerator``, ``localization_fc1``, ...) follow DTRB so that its
checkpoints load without renaming; they are not PEP 8 on purpose.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_stage
from .identity import IdentityStage


# "None": the image (or the CNN columns) goes on unchanged.
register_stage("transformation", "None")(IdentityStage)


def fiducial_bias(num_fiducial: int) -> np.ndarray:
    """Initial ``localization_fc2`` bias: RARE's Fig. 6(a) pattern, top points then bottom points, (x, y) pairs."""
    half = num_fiducial // 2
    x = np.linspace(-1.0, 1.0, half)
    top = np.stack([x, np.linspace(0.0, -1.0, half)], axis=1)
    bottom = np.stack([x, np.linspace(1.0, 0.0, half)], axis=1)
    return np.concatenate([top, bottom], axis=0).reshape(-1)


class LocalizationNetwork(nn.Module):
    """Predicts the F fiducial points C' [B, F, 2] in the input image from the image itself."""

    def __init__(self, num_fiducial: int, input_channel: int) -> None:
        super().__init__()
        self.F = num_fiducial
        self.conv = nn.Sequential(
            nn.Conv2d(input_channel, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(64, 128, 3, 1, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(128, 256, 3, 1, 1, bias=False), nn.BatchNorm2d(256), nn.ReLU(True),
            nn.MaxPool2d(2, 2),
            nn.Conv2d(256, 512, 3, 1, 1, bias=False), nn.BatchNorm2d(512), nn.ReLU(True),
            nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.localization_fc1 = nn.Sequential(nn.Linear(512, 256), nn.ReLU(True))
        self.localization_fc2 = nn.Linear(256, 2 * num_fiducial)
        # Start from RARE's fiducial pattern: weight 0, so C' equals the bias for any input.
        self.localization_fc2.weight.data.fill_(0)
        self.localization_fc2.bias.data = torch.from_numpy(fiducial_bias(num_fiducial)).float()

    def forward(self, batch_I: torch.Tensor) -> torch.Tensor:
        features = self.conv(batch_I).flatten(1)
        return self.localization_fc2(self.localization_fc1(features)).view(-1, self.F, 2)


class GridGenerator(nn.Module):
    """Turns fiducial points C' into a sampling grid P' through the TPS transform of the fixed points C.

    ``inv_delta_C`` and ``P_hat`` are constants of (F, img_h, img_w), built in float64 and stored as float32
    buffers, as DTRB does, so that its state dicts (which contain them) load unchanged.
    """

    def __init__(self, num_fiducial: int, img_size: tuple[int, int], eps: float = 1e-6) -> None:
        super().__init__()
        self.F = num_fiducial
        self.eps = eps
        self.img_h, self.img_w = img_size
        C = self._build_C(num_fiducial)
        P = self._build_P(self.img_w, self.img_h)
        self.register_buffer("inv_delta_C", torch.tensor(self._build_inv_delta_C(C)).float())
        self.register_buffer("P_hat", torch.tensor(self._build_P_hat(C, P, eps)).float())

    @staticmethod
    def _build_C(num_fiducial: int) -> np.ndarray:
        half = num_fiducial // 2
        x = np.linspace(-1.0, 1.0, half)
        top = np.stack([x, -np.ones(half)], axis=1)
        bottom = np.stack([x, np.ones(half)], axis=1)
        return np.concatenate([top, bottom], axis=0)  # [F, 2]

    @staticmethod
    def _build_inv_delta_C(C: np.ndarray) -> np.ndarray:
        n = C.shape[0]
        r = np.linalg.norm(C[:, None, :] - C[None, :, :], axis=2)
        np.fill_diagonal(r, 1)
        R = (r**2) * np.log(r)
        delta_C = np.concatenate(
            [
                np.concatenate([np.ones((n, 1)), C, R], axis=1),
                np.concatenate([np.zeros((2, 3)), C.T], axis=1),
                np.concatenate([np.zeros((1, 3)), np.ones((1, n))], axis=1),
            ],
            axis=0,
        )
        return np.linalg.inv(delta_C)  # [F+3, F+3]

    @staticmethod
    def _build_P(img_w: int, img_h: int) -> np.ndarray:
        grid_x = (np.arange(-img_w, img_w, 2) + 1.0) / img_w  # pixel centres
        grid_y = (np.arange(-img_h, img_h, 2) + 1.0) / img_h
        P = np.stack(np.meshgrid(grid_x, grid_y), axis=2)  # [H, W, 2]
        return P.reshape(-1, 2)  # [H*W, 2]

    @staticmethod
    def _build_P_hat(C: np.ndarray, P: np.ndarray, eps: float) -> np.ndarray:
        d = np.linalg.norm(P[:, None, :] - C[None, :, :], axis=2)  # [n, F]
        rbf = (d**2) * np.log(d + eps)
        return np.concatenate([np.ones((P.shape[0], 1)), P, rbf], axis=1)  # [n, F+3]

    def build_P_prime(self, batch_C_prime: torch.Tensor) -> torch.Tensor:
        """C' [B, F, 2] -> sampling grid [B, img_h * img_w, 2]."""
        zeros = batch_C_prime.new_zeros(batch_C_prime.size(0), 3, 2)
        batch_T = torch.matmul(self.inv_delta_C, torch.cat([batch_C_prime, zeros], dim=1))  # [B, F+3, 2]
        return torch.matmul(self.P_hat, batch_T)


@register_stage("transformation", "TPS")
class TPS_SpatialTransformerNetwork(nn.Module):
    """Rectifies the input image with a TPS transform whose fiducial points a small CNN predicts."""

    def __init__(self, num_fiducial: int, img_size: tuple[int, int], input_channel: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.out_features = input_channel
        self.LocalizationNetwork = LocalizationNetwork(num_fiducial, input_channel)
        self.GridGenerator = GridGenerator(num_fiducial, img_size)

    @classmethod
    def from_config(cls, config, in_features: int) -> TPS_SpatialTransformerNetwork:
        return cls(config.num_fiducial, (config.img_h, config.img_w), in_features)

    def forward(self, batch_I: torch.Tensor) -> torch.Tensor:
        batch_C_prime = self.LocalizationNetwork(batch_I)
        # The grid is computed in fp32 even under autocast: bf16 cannot resolve a 100-pixel-wide grid.
        with torch.autocast(device_type=batch_I.device.type, enabled=False):
            grid = self.GridGenerator.build_P_prime(batch_C_prime.float()).reshape(-1, *self.img_size, 2)
        # align_corners=True reproduces the pre-1.3 PyTorch default that DTRB's released models were trained with.
        return F.grid_sample(batch_I, grid.to(batch_I.dtype), padding_mode="border", align_corners=True)

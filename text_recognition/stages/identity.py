"""The "None" choice of the optional stages: passes its input through and has no parameters, so the state dict
has no keys for it, as in DTRB (which had no module at all there)."""

from __future__ import annotations

import torch
from torch import nn


class IdentityStage(nn.Module):
    """Identity that keeps the feature size: ``out_features == in_features``."""

    def __init__(self, in_features: int) -> None:
        super().__init__()
        self.out_features = in_features

    @classmethod
    def from_config(cls, config, in_features: int) -> IdentityStage:
        return cls(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

# Follows clovaai/deep-text-recognition-benchmark (Copyright (c) 2019-present NAVER Corp., Apache-2.0); see NOTICE.
"""Sequence modeling stage: none, or two stacked bidirectional LSTMs over the feature columns."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_stage
from .identity import IdentityStage


# "None": the image (or the CNN columns) goes on unchanged.
register_stage("sequence_modeling", "None")(IdentityStage)


class BidirectionalLSTM(nn.Module):
    """A bidirectional LSTM layer and a linear projection of its two directions: [B, T, in] -> [B, T, out]."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(hidden_size * 2, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cuda:
            self.rnn.flatten_parameters()  # weights may be non-contiguous after DDP/DataParallel replication
        recurrent, _ = self.rnn(x)
        return self.linear(recurrent)


@register_stage("sequence_modeling", "BiLSTM")
class BiLSTM(nn.Sequential):
    """DTRB's two BidirectionalLSTM blocks (keys ``SequenceModeling.0.*``, ``SequenceModeling.1.*``)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(
            BidirectionalLSTM(input_size, hidden_size, hidden_size),
            BidirectionalLSTM(hidden_size, hidden_size, hidden_size),
        )
        self.out_features = hidden_size

    @classmethod
    def from_config(cls, config, in_features: int) -> BiLSTM:
        return cls(in_features, config.hidden_size)

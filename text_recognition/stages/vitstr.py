# Follows baudm/parseq (strhub; Copyright 2022 Darwin Bautista, Apache-2.0); see NOTICE.
"""Prediction stage ``ViTSTR`` as strhub implements it (Atienza, ICDAR 2021): one linear classifier over the first
tokens of a ViT with a class token.

Output slot j is the class of ViT token j + 1 (the class token's own output is dropped), for j = 0 ..
``batch_max_length``: slot j is patch j in row-major order. There is no decoding loop: every slot is read at once.
Ids are strhub's (``[E]`` = 0, symbols 1..N). strhub's ViTSTR is not weight-compatible with the original ViTSTR
(roatienza/deep-text-recognition-benchmark), which reads 224x224 images with other ids.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_stage
from ..tokenizer import STRHUB_EOS_ID
from .prediction import resize_rows


@register_stage("prediction", "ViTSTR")
class ViTSTR(nn.Module):
    """``head`` over tokens [B, 1 + N, d] (class token first): logits [B, batch_max_length + 1, num_classes]."""

    teacher_forced = False

    def __init__(self, in_features: int, num_classes: int, batch_max_length: int = 25) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.batch_max_length = batch_max_length
        self.eos_id, self.pad_id = STRHUB_EOS_ID, num_classes + 1
        self.head = nn.Linear(in_features, num_classes)
        self.init_weights()

    @classmethod
    def from_config(cls, config, in_features: int) -> ViTSTR:
        return cls(in_features, config.num_class, config.batch_max_length)

    @torch.no_grad()
    def init_weights(self) -> None:
        """strhub's: trunc-normal(0.02) weights, zero bias."""
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: torch.Tensor, text: torch.Tensor | None = None, stop_at_eos: bool = False
                ) -> torch.Tensor:  # fmt: skip
        """Tokens [B, 1 + N, d] -> logits [B, batch_max_length + 1, C]. ``text`` and ``stop_at_eos`` are accepted
        for the common head interface and ignored (all slots are read at once)."""
        num_slots = self.batch_max_length + 1
        if features.size(1) < num_slots + 1:
            raise ValueError(f"ViTSTR reads {num_slots} tokens after the class token, but the encoder gives "
                             f"{features.size(1) - 1}: use a larger image or a smaller patch, or lower "
                             f"--batch_max_length.")  # fmt: skip
        return self.head(features[:, 1 : num_slots + 1])

    @torch.no_grad()
    def resize_classes(self, sources: list[int | None], margin: float) -> None:
        """New classes ``[E]`` + symbols, row i from old class ``sources[i]``; a new symbol (``None``) starts as
        ``[E]``'s row with its bias lowered by ``margin`` (never the argmax)."""
        resize_rows(self.head, sources, STRHUB_EOS_ID, margin)
        self.num_classes, self.pad_id = len(sources), len(sources) + 1

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor | None = None
             ) -> torch.Tensor:  # fmt: skip
        """Cross-entropy of logits [B, L + 1, C] against the encoded targets [B, L + 2] without their ``[B]``;
        ``[E]`` is a target, ``[P]`` is ignored (strhub's loss)."""
        return strhub_cross_entropy(logits, targets, self.pad_id)


def strhub_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Cross-entropy of read logits [B, L + 1, C] (ViTSTR's, or PARSeq's decoded ones) against strhub-encoded
    targets [B, >= L + 2] without their ``[B]``; ``[E]`` is a target, ``pad_id`` (``[P]``) is ignored."""
    targets = targets.to(logits.device)[:, 1 : logits.size(1) + 1]
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=pad_id)

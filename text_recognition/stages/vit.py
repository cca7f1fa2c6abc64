# Follows baudm/parseq (strhub; Copyright 2022 Darwin Bautista, Apache-2.0) and timm's VisionTransformer; see NOTICE.
"""Feature extraction stage ``ViT``: a plain vision transformer over image patches (Dosovitskiy et al. 2021), as
strhub's PARSeq and ViTSTR encoders build it from timm.

Patch embedding (a convolution whose kernel and stride are the patch), learned positions, ``depth`` pre-norm blocks
(multi-head self-attention, then a GELU MLP) and a final LayerNorm (eps 1e-6, timm's). The output is the sequence of
patch tokens in row-major order, [B, N, embed_dim] (N = (img_h / patch_h) * (img_w / patch_w)), with the class token
first ([B, 1 + N, embed_dim]) when the prediction is ``ViTSTR``, whose strhub variant keeps timm's class token.

Parameter names are timm's (``patch_embed.proj``, ``pos_embed``, ``blocks.i.attn.qkv``, ``norm``, ...), so strhub
checkpoints load after replacing the ``encoder.`` (PARSeq) or ``model.`` (ViTSTR) prefix by ``FeatureExtraction.``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_stage

#: Named sizes: (embed_dim, depth, num_heads), strhub's parseq-tiny and parseq (PARSeq-S, also ViTSTR-S).
VIT_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6)}
LAYER_NORM_EPS = 1e-6  # timm's; the PARSeq decoder uses torch's 1e-5


class PatchEmbed(nn.Module):
    """Non-overlapping patches projected to ``embed_dim``: [B, C, H, W] -> [B, (H/ph) * (W/pw), embed_dim]."""

    def __init__(self, in_channels: int, embed_dim: int, patch: tuple[int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, D, H', W'] -> [B, H' * W', D], row-major


class SelfAttention(nn.Module):
    """Multi-head self-attention with one packed ``qkv`` projection (rows [W_q; W_k; W_v]), as timm's."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, N, D / heads]
        x = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(D / heads)) v
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    """``fc2(GELU(fc1(x)))`` with the exact (erf) GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(LN(x))``, then ``x + mlp(LN(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@register_stage("feature_extraction", "ViT")
class ViT_FeatureExtractor(nn.Module):
    """Vision transformer encoder: [B, C, img_h, img_w] -> tokens [B, N (+1 class token), embed_dim].

    Args:
        in_channels: image channels (3 for strhub's RGB models).
        img_size: (img_h, img_w), multiples of the patch.
        patch: (patch_h, patch_w).
        embed_dim, depth, num_heads, mlp_ratio: the transformer's width, blocks, heads and MLP expansion.
        class_token: prepend timm's learned class token (strhub's ViTSTR); its output is the first token.
    """

    #: the output is a token sequence [B, T, F] already: the model does not pool it over the height as a CNN map
    outputs_sequence = True

    def __init__(self, in_channels: int, img_size: tuple[int, int], patch: tuple[int, int], embed_dim: int,
                 depth: int, num_heads: int, mlp_ratio: float = 4.0, class_token: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.out_features = embed_dim
        self.grid = (img_size[0] // patch[0], img_size[1] // patch[1])
        num_tokens = self.grid[0] * self.grid[1] + (1 if class_token else 0)
        self.patch_embed = PatchEmbed(in_channels, embed_dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=LAYER_NORM_EPS)
        self.init_weights()

    @classmethod
    def from_config(cls, config, in_features: int) -> ViT_FeatureExtractor:
        return cls(in_features, (config.img_h, config.img_w), (config.patch_h, config.patch_w), config.embed_dim,
                   config.encoder_depth, config.encoder_heads, config.encoder_mlp_ratio,
                   class_token=config.prediction == "ViTSTR")  # fmt: skip

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's ViT initialisation: positions trunc-normal(0.02), class token normal(1e-6), linear layers
        trunc-normal(0.02) with zero biases, LayerNorms 1 and 0; the patch convolution keeps torch's default."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        self.patch_embed.proj.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.grid[0] * self.patch_embed.proj.kernel_size[0],
                            self.grid[1] * self.patch_embed.proj.kernel_size[1]):  # fmt: skip
            raise ValueError(f"ViT expects images of {self.grid[0] * self.patch_embed.proj.kernel_size[0]}x"
                             f"{self.grid[1] * self.patch_embed.proj.kernel_size[1]} (its learned positions are "
                             f"per patch), got {tuple(x.shape[-2:])}: resize with the model's preprocess.")
        x = self.patch_embed(x)  # [B, N, D]
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1)  # [B, 1 + N, D]
        return self.norm(self.blocks(x + self.pos_embed))

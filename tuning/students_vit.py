"""Vision-transformer students: ViT-tiny and PReDD's ViT.

- ``ViT``: a plain pre-norm ViT with a class token and learned position embeddings; the
  ``vit_tiny`` student (ViT-Ti: dim 192, 12 blocks, 3 heads), about 8 x 8 patches whatever the size.
- ``PReDDViT``: the ViT PReDD's evaluation uses for ImageNet subsets (``utils_szy.get_network("ViT")``,
  a vit-pytorch ViT): patch 16, dim 512, depth 10, heads 8 x 64, MLP 512, dropout 0.1, embedding
  dropout 0.1, qkv without bias, N(0, 1) class token and position embeddings. PReDD comments
  out every LayerNorm (pre-norms and the head's); ``layer_norm=False`` (default) reproduces that,
  ``layer_norm=True`` gives vit-pytorch's original pre-norm layout.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class ViT(nn.Module):
    """A plain pre-norm ViT with a class token and learned position embeddings."""

    def __init__(self, channels: int, num_classes: int, im_size: int, patch: int | None = None,
                 dim: int = 192, depth: int = 12, heads: int = 3, mlp_ratio: float = 4.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        patch = patch or max(2, min(16, im_size // 8))
        if im_size % patch:
            raise ValueError(f"im_size {im_size} is not a multiple of the patch size {patch}")
        self.patch = patch
        n_tokens = (im_size // patch) ** 2
        self.to_tokens = nn.Conv2d(channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n_tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.feature_dim = dim
        self.head = nn.Linear(dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        t = self.to_tokens(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        return self.norm(self.blocks(t))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class _Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_qkv = nn.Linear(dim, inner * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = (t.view(b, n, self.heads, -1).transpose(1, 2) for t in self.to_qkv(x).chunk(3, dim=-1))
        # softmax(q k^T / sqrt(dim_head)) v, no attention dropout
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class PReDDViT(nn.Module):
    """PReDD's ViT (patch 16, dim 512, depth 10, 8 heads, MLP 512, dropout 0.1), no LayerNorm by default."""

    def __init__(self, channels: int, num_classes: int, im_size: int, patch: int = 16, dim: int = 512,
                 depth: int = 10, heads: int = 8, dim_head: int = 64, mlp_dim: int = 512,
                 dropout: float = 0.1, emb_dropout: float = 0.1, layer_norm: bool = False) -> None:
        super().__init__()
        if im_size % patch:
            raise ValueError(f"im_size {im_size} is not a multiple of the patch size {patch} (vit_predd: "
                             f"patch=...)")
        self.patch = patch
        n_tokens = (im_size // patch) ** 2
        # = vit-pytorch's Linear over flattened patches
        self.to_tokens = nn.Conv2d(channels, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, n_tokens + 1, dim))
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.drop = nn.Dropout(emb_dropout)

        def ln() -> nn.Module:
            return nn.LayerNorm(dim) if layer_norm else nn.Identity()

        self.blocks = nn.ModuleList()
        for _ in range(depth):
            ff = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                               nn.Linear(mlp_dim, dim), nn.Dropout(dropout))
            self.blocks.append(nn.ModuleList([ln(), _Attention(dim, heads, dim_head, dropout), ln(), ff]))
        self.norm = ln()
        self.feature_dim = dim
        self.head = nn.Linear(dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        t = self.to_tokens(x).flatten(2).transpose(1, 2)
        t = self.drop(torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos)
        for n1, attn, n2, ff in self.blocks:
            t = attn(n1(t)) + t
            t = ff(n2(t)) + t
        return self.norm(t[:, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

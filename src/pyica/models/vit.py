"""A plain Vision Transformer (ViT, Dosovitskiy et al. 2021), written here so CLICv2 owns its encoder.

Why our own instead of timm/torchvision: neither is available offline here, and CLICv2 needs three
things off-the-shelf ViTs make awkward:

* **token dropping** (MAE-style masking): ``forward_tokens(x, keep)`` adds the positional
  embeddings to *all* patch tokens and then keeps only the indices in ``keep``, so the encoder
  never sees the masked patches and attention costs scale with the visible ones;
* **pre-cut patches**: shifted patchify changes every patch's content independently (a shifted
  patch is *not* a crop of the image), so ``forward_tokens_from_patches`` embeds a
  ``(B, N, 3, p, p)`` tensor. A stride-p, kernel-p convolution on non-overlapping patches is the
  same linear map per patch as reassembling them into an image grid and running the conv, so we
  apply the conv weights as a linear layer on the flattened patches (identical result, and the
  masked patches need not be embedded at all);
* **feature maps for probing**: ICNet-style heads want a 2-D map, so ``feature_map`` reshapes the
  patch tokens to ``(B, dim, H/p, W/p)``; positional embeddings are bicubically interpolated when
  the input size differs from ``image_size`` (e.g. probing at 512 a model pretrained at 224).

Architecture as in ViT/MAE: conv patch embedding, a cls token, learnable positional embeddings
(initialised with the fixed 2-D sin-cos table of MAE/MoCo v3, or trunc-normal 0.02), pre-norm
blocks (LayerNorm eps 1e-6, multi-head attention through ``scaled_dot_product_attention``, GELU
MLP), a final LayerNorm. Initialisation as MAE: xavier-uniform linears (the patch embedding as a
flattened linear), zero biases, LayerNorm ones/zeros, cls token normal 0.02.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VIT_PRESETS", "ViTConfig", "vit_config", "ViT", "Block", "Attention", "init_vit_weights", "sincos_pos_embed_2d",
           "resize_pos_embed"]

#: name -> (dim, depth, heads), the DeiT/ViT sizes (mlp_ratio 4).
VIT_PRESETS: dict[str, tuple[int, int, int]] = {
    "vit_tiny": (192, 12, 3),
    "vit_small": (384, 12, 6),
    "vit_base": (768, 12, 12),
}
POS_INITS = ("sincos", "trunc_normal")


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a ViT. ``patch_size`` is 16 or 32 for the presets; any divisor of ``image_size``
    is accepted (tests use 8 px patches on 32 px images). ``pos_init``: "sincos" (MAE/MoCo v3; needs
    ``dim`` divisible by 4, otherwise trunc-normal is used) or "trunc_normal" (std 0.02)."""

    image_size: int = 224
    patch_size: int = 16
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    in_chans: int = 3
    qkv_bias: bool = True
    pos_init: str = "sincos"

    def __post_init__(self) -> None:
        if self.patch_size < 1 or self.image_size < 1 or self.image_size % self.patch_size:
            raise ValueError(f"image_size ({self.image_size}) must be a positive multiple of patch_size "
                             f"({self.patch_size})")
        if min(self.dim, self.depth, self.heads, self.in_chans) < 1:
            raise ValueError("dim, depth, heads and in_chans must be at least 1")
        if self.dim % self.heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.mlp_ratio <= 0:
            raise ValueError("mlp_ratio must be positive")
        if self.pos_init not in POS_INITS:
            raise ValueError(f"pos_init must be one of {POS_INITS}, not {self.pos_init!r}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size ** 2

    def to_dict(self) -> dict:
        return asdict(self)


def vit_config(name: str, patch_size: int = 16, image_size: int = 224, **overrides) -> ViTConfig:
    """A preset (``VIT_PRESETS``) with the given patch/image size; ``overrides`` replace any field
    (e.g. ``dim=32, depth=2, heads=2`` for tests)."""
    if name not in VIT_PRESETS:
        raise ValueError(f"ViT preset must be one of {sorted(VIT_PRESETS)}, not {name!r}")
    dim, depth, heads = VIT_PRESETS[name]
    fields = dict(image_size=image_size, patch_size=patch_size, dim=dim, depth=depth, heads=heads)
    fields.update(overrides)
    return ViTConfig(**fields)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """The fixed 2-D sin-cos table of MAE: ``(grid_h * grid_w, dim)``, row-major; the first half of the
    channels encodes the row, the second half the column, each as sin/cos at ``dim/4`` frequencies."""
    if dim % 4:
        raise ValueError(f"sin-cos positional embeddings need dim divisible by 4, not {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                                torch.arange(grid_w, dtype=torch.float64), indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def resize_pos_embed(pos: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic interpolation of grid positional embeddings ``(1, Ho*Wo, D)`` -> ``(1, Hn*Wn, D)``."""
    if tuple(old_grid) == tuple(new_grid):
        return pos
    dim = pos.shape[-1]
    grid = pos.reshape(1, old_grid[0], old_grid[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], dim)


class Attention(nn.Module):
    """Multi-head self-attention; the kernel is PyTorch's fused ``scaled_dot_product_attention``."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, d/heads)
        return self.proj(out.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True):
        super().__init__()
        hidden = int(round(dim * mlp_ratio))
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def init_vit_weights(module: nn.Module) -> None:
    """MAE initialisation for one module (use with ``Module.apply``)."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class ViT(nn.Module):
    """Vision Transformer encoder. Input: ``(B, in_chans, H, W)`` already normalised, H and W multiples
    of the patch size. Token order: cls first, then patches row-major (``g = row * W/p + col``)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        c = config
        self.patch_size = c.patch_size
        self.num_features = c.dim
        self.patch_embed = nn.Conv2d(c.in_chans, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + c.num_patches, c.dim))  # cls slot first
        self.blocks = nn.ModuleList([Block(c.dim, c.heads, c.mlp_ratio, c.qkv_bias) for _ in range(c.depth)])
        self.norm = nn.LayerNorm(c.dim, eps=1e-6)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        c = self.config
        with torch.no_grad():
            if c.pos_init == "sincos" and c.dim % 4 == 0:
                self.pos_embed.zero_()  # the cls slot stays 0, as in MAE
                self.pos_embed[0, 1:] = sincos_pos_embed_2d(c.dim, c.grid_size, c.grid_size)
            else:
                nn.init.trunc_normal_(self.pos_embed, std=0.02)
            # the patch embedding is a linear map per patch: xavier on the flattened kernel (MAE)
            nn.init.xavier_uniform_(self.patch_embed.weight.view(c.dim, -1))
            nn.init.zeros_(self.patch_embed.bias)
            nn.init.normal_(self.cls_token, std=0.02)
        self.blocks.apply(init_vit_weights)
        self.norm.apply(init_vit_weights)

    # --- positions -------------------------------------------------------------------------------

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid of ``image_size`` inputs (the grid the positional embeddings were made for)."""
        return self.config.grid_size, self.config.grid_size

    def patch_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """Positional embeddings of the patch tokens for a ``grid`` (rows, cols), ``(1, rows*cols, dim)``;
        bicubically interpolated from the training grid when it differs."""
        return resize_pos_embed(self.pos_embed[:, 1:], self.grid, grid)

    def _grid_of(self, x: torch.Tensor) -> tuple[int, int]:
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input size {h}x{w} is not a multiple of the patch size {p}")
        return h // p, w // p

    # --- encoding --------------------------------------------------------------------------------

    def _encode(self, tokens: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Add positions to the ``(B, N, dim)`` patch tokens, keep ``keep``, prepend cls, run the blocks."""
        tokens = tokens + pos
        if keep is not None:
            tokens = torch.gather(tokens, 1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        x = torch.cat([cls, tokens], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward_tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, 1 + N_kept, dim)``: cls + the patch tokens listed in ``keep`` (``(B, N_kept)`` indices
        into the row-major patch grid; ``None`` keeps all). Masked patches are dropped after their
        positional embeddings are added, so kept tokens keep their true positions (MAE)."""
        grid = self._grid_of(x)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        return self._encode(tokens, self.patch_pos_embed(grid), keep)

    def forward_tokens_from_patches(self, patch_pixels: torch.Tensor, keep: torch.Tensor | None = None,
                                    grid: tuple[int, int] | None = None) -> torch.Tensor:
        """Like ``forward_tokens`` for pre-cut patches ``(B, N, C, p, p)`` in row-major grid order.

        Equivalent to reassembling the patches into an image and calling ``forward_tokens``: the
        patch embedding conv (kernel = stride = p) is applied as the equivalent linear map to each
        flattened patch, and only the kept patches are embedded. ``grid`` (rows, cols) defaults to the
        training grid when N matches it, else to a square grid.
        """
        b, n, c, ph, pw = patch_pixels.shape
        if ph != self.patch_size or pw != self.patch_size or c != self.config.in_chans:
            raise ValueError(f"patches must be (B, N, {self.config.in_chans}, {self.patch_size}, "
                             f"{self.patch_size}), got {tuple(patch_pixels.shape)}")
        if grid is None:
            side = math.isqrt(n)
            grid = self.grid if n == self.grid[0] * self.grid[1] else (side, side)
        if grid[0] * grid[1] != n:
            raise ValueError(f"grid {grid} does not hold {n} patches")
        pos = self.patch_pos_embed(grid).expand(b, -1, -1)
        flat = patch_pixels.flatten(2)  # (B, N, C*p*p), the same order as the conv kernel's
        if keep is not None:  # embed only what the encoder will see; positions follow their patch
            flat = torch.gather(flat, 1, keep.unsqueeze(-1).expand(-1, -1, flat.shape[-1]))
            pos = torch.gather(pos, 1, keep.unsqueeze(-1).expand(-1, -1, pos.shape[-1]))
        tokens = F.linear(flat, self.patch_embed.weight.flatten(1), self.patch_embed.bias)
        return self._encode(tokens, pos, None)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens as a map ``(B, dim, H/p, W/p)`` (for ICNet-style probing heads)."""
        rows, cols = self._grid_of(x)
        tokens = self.forward_tokens(x)[:, 1:]
        return tokens.transpose(1, 2).reshape(x.shape[0], self.num_features, rows, cols)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The cls token, ``(B, dim)``."""
        return self.forward_tokens(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooled(x)

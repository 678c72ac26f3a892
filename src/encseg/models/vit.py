"""The ViT encoder of SETR, in plain PyTorch, with timm's parameter names.

Parameter names follow timm's `vision_transformer.py` (`patch_embed.proj`, `cls_token`, `pos_embed`,
`blocks.N.norm1`, `blocks.N.attn.qkv`, `blocks.N.attn.proj`, `blocks.N.mlp.fc1/fc2`) so that
pretrained weights load by name. There is no final `norm`: as in mmsegmentation's SETR, every
decoder head starts with its own LayerNorm (a pretrained `norm.*` is reported as unused on import).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTSize:
    """Width, heads and depth of one ViT preset."""

    dim: int
    heads: int
    depth: int
    mlp_ratio: float = 4.0


VIT_PRESETS: dict[str, ViTSize] = {
    "vit-tiny": ViTSize(192, 3, 12),
    "vit-tiny-6": ViTSize(192, 3, 6),  # shallower CPU variant for the CPU training budget
    "vit-small": ViTSize(384, 6, 12),
    "vit-base": ViTSize(768, 12, 12),
    "vit-large": ViTSize(1024, 16, 24),  # the paper's ViT-L/16
}


def resize_pos_embed(
    pos_embed: torch.Tensor,
    src_grid: tuple[int, int],
    dst_grid: tuple[int, int],
    num_prefix: int = 0,
    mode: str = "bilinear",
) -> torch.Tensor:
    """Resize a [1, prefix + gh*gw, D] position embedding to another grid, keeping the prefix entries.

    The class-token entry (the first `num_prefix` rows) is position-free and is kept as it is; the
    grid part is interpolated (align_corners=False, like mmsegmentation's SETR).
    """
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    if tuple(src_grid) == tuple(dst_grid) and not _exporting():
        return pos_embed
    d = grid.shape[-1]
    grid = grid.reshape(1, src_grid[0], src_grid[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=dst_grid, mode=mode, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, d)
    return torch.cat([prefix, grid], dim=1)


def _exporting() -> bool:
    """True while torch.export / the ONNX exporter trace the model (shapes are then symbolic)."""
    return torch.compiler.is_exporting() or torch.jit.is_tracing()


class PatchEmbed(nn.Module):
    """Linear patch embedding: a p x p convolution with stride p (one token per p x p block)."""

    def __init__(self, patch_size: int, dim: int, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)  # [B, D, H/p, W/p]


class SetPatchEmbed(nn.Module):
    """Permutation-invariant patch embedding (DeepSets): a shared per-pixel MLP pooled over each block.

    Each pixel's value x (3 channels) becomes f = [x, mlp(x)]; the block's token is a linear map of
    the mean and the max of f over the block's p*p pixels. Mean and max forget where a pixel sits
    inside its block, so the token is unchanged by any pixel shuffle within the block. The mean of
    the raw x is exactly the part of a linear p x p embedding that is invariant to pixel order (the
    per-channel block mean); the MLP features and the max add what a linear embedding cannot keep
    without positions (spread, extremes, colour mixtures).
    """

    def __init__(self, patch_size: int, dim: int, in_chans: int = 3, hidden: int = 64):
        super().__init__()
        self.patch_size = patch_size
        self.pixel_mlp = nn.Sequential(
            nn.Conv2d(in_chans, hidden, 1), nn.GELU(), nn.Conv2d(hidden, hidden, 1), nn.GELU()
        )
        self.proj = nn.Conv2d(2 * (in_chans + hidden), dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.cat([x, self.pixel_mlp(x)], dim=1)  # [B, 3 + hidden, H, W], per pixel
        p = self.patch_size
        pooled = torch.cat([F.avg_pool2d(f, p), F.max_pool2d(f, p)], dim=1)  # order-free per block
        return self.proj(pooled)  # [B, D, H/p, W/p]


def pixel_sort_order(x: torch.Tensor, patch_size: int, group: int, luma: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per q x q sub-block of each p x p block: the pixels' order sorted by value, and the sorted keys.

    x: normalised images [B, 3, H, W]. A pixel's key is its 0..255 value packed as r * 65536 + g * 256
    + b (a total order on pixels; only identical pixels tie); `luma=True` puts the pixel's luma
    299r + 587g + 114b in front of it (darkest first, the packed value breaking ties, so again only
    identical pixels tie). Returns (order, keys), both
    [B, N, S, q*q] with N blocks (row-major) and S = (p/q)^2 sub-blocks (row-major) per block; `order`
    indexes the q*q positions of a sub-block (row-major).
    """
    from encseg.models.inference import pixel_values

    v = pixel_values(x)
    key = (v[:, 0] * 65536 + v[:, 1] * 256 + v[:, 2]).long()  # [B, H, W]
    if luma:
        key = key + (v[:, 0] * 299 + v[:, 1] * 587 + v[:, 2] * 114).long() * (1 << 24)
    sub = subblocks(key.unsqueeze(1), patch_size, group)[:, 0]  # [B, N, S, q*q]
    n = group * group
    # position as the last tie-break makes every key unique, so a plain sort is deterministic (and exportable)
    unique = sub * n + torch.arange(n, device=sub.device)
    order = unique.sort(dim=-1).indices
    return order, sub.gather(-1, order)


def subblocks(x: torch.Tensor, patch_size: int, group: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, N, S, q*q]: blocks row-major, their q x q sub-blocks row-major, pixels row-major."""
    B, C, H, W = x.shape
    p, q = patch_size, group
    r = p // q
    x = x.reshape(B, C, H // p, r, q, W // p, r, q).permute(0, 1, 2, 5, 3, 6, 4, 7)
    return x.reshape(B, C, (H // p) * (W // p), r * r, q * q)


class SortedPatchEmbed(nn.Module):
    """Patch embedding invariant to pixel order inside every q x q sub-block (pixel shuffling), by sorting.

    Inside each q x q sub-block the pixels are sorted by value (`pixel_sort_order`); the token is a
    linear map of the block's sorted sub-blocks (sub-blocks keep their layout). Sorting forgets where
    a pixel sat and keeps everything else about the sub-block's pixels (the whole multiset, with
    each pixel's three channels together), so any pixel shuffle inside sub-blocks -- one permutation
    per image (v1 `ps<q>`) or one per block (v2 `psb<q>`) -- leaves the token unchanged. q = p: the
    whole block is order-free (`ps`, `psb`). As cheap as the linear embedding.
    """

    def __init__(self, patch_size: int, dim: int, group: int, in_chans: int = 3, luma: bool = False):
        super().__init__()
        if group < 1 or patch_size % group:
            raise ValueError(f"group {group} must divide the patch size {patch_size}")
        self.patch_size, self.group, self.luma = patch_size, group, luma
        self.proj = nn.Linear(in_chans * patch_size * patch_size, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        order, _ = pixel_sort_order(x, self.patch_size, self.group, self.luma)
        sub = subblocks(x, self.patch_size, self.group)  # [B, C, N, S, q*q]
        ordered = sub.gather(-1, order.unsqueeze(1).expand_as(sub))
        tokens = self.proj(ordered.permute(0, 2, 1, 3, 4).reshape(B, order.shape[1], -1))  # [B, N, D]
        return tokens.transpose(1, 2).reshape(B, -1, H // self.patch_size, W // self.patch_size)


class BlockColourHistogram(nn.Module):
    """Order-free colour statistics of every p x p block, as a token embedding added to the patch's.

    Each pixel's 0..255 value votes into a soft joint histogram of `bins` cells per channel
    (triangular membership, so a value between two bin centres splits its vote; bins^3 cells), and
    each block's histogram is the mean over its pixels, mapped linearly to the token width. A mean
    over the block's pixels, so any pixel shuffle inside the block leaves it unchanged; it gives the
    encoder the joint colour distribution that a linear map of the sorted pixels reaches only poorly
    (the packed-key sort orders by the first channel, the others follow in no useful order). That was
    the hypothesis; at equal wall time it did not help (probe H, docs/training.md), while sorting by
    luma first (`luma_sort`) did.
    """

    def __init__(self, patch_size: int, dim: int, bins: int):
        super().__init__()
        if bins < 2:
            raise ValueError(f"a colour histogram needs at least 2 bins per channel, got {bins}")
        self.patch_size, self.bins = patch_size, bins
        self.proj = nn.Linear(bins**3, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from encseg.models.inference import pixel_values

        B, _, H, W = x.shape
        b = self.bins
        v = pixel_values(x) * ((b - 1) / 255.0)  # [B, 3, H, W] in [0, b-1]
        centres = torch.arange(b, device=x.device, dtype=v.dtype).view(1, 1, b, 1, 1)
        m = (1 - (v.unsqueeze(2) - centres).abs()).clamp(min=0)  # [B, 3, b, H, W], each channel's votes sum to 1
        joint = torch.einsum("bihw,bjhw,bkhw->bijkhw", m[:, 0], m[:, 1], m[:, 2]).reshape(B, b**3, H, W)
        hist = F.avg_pool2d(joint, self.patch_size)  # [B, b^3, H/p, W/p]
        return self.proj(hist.flatten(2).transpose(1, 2))  # [B, N, D], tokens row-major


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection and `F.scaled_dot_product_attention`."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, heads, N, D/heads]
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    """The transformer's feed-forward block: Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch for a random subset of samples while training."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)); LayerNorm eps 1e-6."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """Vision Transformer encoder returning the token maps [B, D, H/p, W/p] of the chosen layers.

    `img_size` fixes the stored position-embedding grid; inputs of any other size (a multiple of p)
    get the embedding resized on the fly (`pos_interp`, bilinear as in SETR's configs). With
    `position_embedding=False` and no position-dependent op, the token stack is equivariant to any
    permutation of the tokens (the class token, if any, carries no position).
    """

    def __init__(
        self,
        size: ViTSize,
        taps: list[int],
        patch_size: int = 16,
        img_size: tuple[int, int] = (768, 768),
        class_token: bool = True,
        position_embedding: bool = True,
        invariant_embedding: bool = False,
        drop_path: float = 0.0,
        pos_interp: str = "bilinear",
        pixel_group: int = 0,
        block_position: int = 0,
        colour_embed: int = 0,
        luma_sort: bool = False,
    ):
        super().__init__()
        if not taps or sorted(set(taps)) != list(taps) or taps[-1] != size.depth - 1 or taps[0] < 0:
            raise ValueError(f"taps must be increasing layer indices ending at {size.depth - 1}, got {taps}")
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        self.dim, self.patch_size, self.taps = size.dim, patch_size, list(taps)
        self.grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.num_prefix = 1 if class_token else 0
        self.pos_interp = pos_interp

        if invariant_embedding:
            self.patch_embed: nn.Module = SetPatchEmbed(patch_size, size.dim)
        elif pixel_group:
            self.patch_embed = SortedPatchEmbed(patch_size, size.dim, pixel_group, luma=luma_sort)
        else:
            self.patch_embed = PatchEmbed(patch_size, size.dim)
        # colour_embed = b > 0: each token also gets its block's soft joint colour histogram (b^3 cells)
        self.colour_embed = BlockColourHistogram(patch_size, size.dim, colour_embed) if colour_embed else None
        self.cls_token = nn.Parameter(torch.zeros(1, 1, size.dim)) if class_token else None
        if position_embedding:
            n = self.num_prefix + self.grid[0] * self.grid[1]
            self.pos_embed = nn.Parameter(torch.zeros(1, n, size.dim))
        else:
            self.pos_embed = None
        # position inside a cipher block of r x r tokens (r = block_position): survives block scrambling
        self.block_position = block_position
        self.block_pos_embed = nn.Parameter(torch.zeros(1, block_position**2, size.dim)) if block_position > 1 else None
        rates = [drop_path * i / max(size.depth - 1, 1) for i in range(size.depth)]  # stochastic depth grows with depth
        self.blocks = nn.ModuleList(Block(size.dim, size.heads, size.mlp_ratio, r) for r in rates)
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's ViT init: truncated normal 0.02 for linear layers and position embedding
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.block_pos_embed is not None:
            nn.init.trunc_normal_(self.block_pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        image = x
        x = self.patch_embed(x)
        B, D, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)  # [B, N, D], tokens in row-major block order
        if self.colour_embed is not None:
            x = x + self.colour_embed(image)
        if self.block_pos_embed is not None:
            r = self.block_position
            pe = self.block_pos_embed.reshape(1, r, r, D).repeat(1, gh // r, gw // r, 1).reshape(1, gh * gw, D)
            x = x + pe
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(B, -1, -1), x], dim=1)
        if self.pos_embed is not None:
            x = x + resize_pos_embed(self.pos_embed, self.grid, (gh, gw), self.num_prefix, self.pos_interp)
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.taps:
                outs.append(x[:, self.num_prefix :].transpose(1, 2).reshape(B, D, gh, gw))
        return outs

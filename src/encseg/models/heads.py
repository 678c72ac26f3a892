"""SETR's decoders (Naive, PUP, MLA), their auxiliary heads, and the key-invariant token/pixel decoders.

Every head maps encoder token maps [B, D, h, w] to logits at the input's size [B, C, H, W]; it is
called as `head(features, image)` where `image` is the (normalised) network input, used for its
size and, by the per-pixel decoder only, for its pixel values.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from encseg.models.vit import _exporting


def make_norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm ("bn"), SyncBatchNorm ("syncbn", for distributed training) or GroupNorm ("gn", batch 1)."""
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "syncbn":
        return nn.SyncBatchNorm(channels)
    if kind == "gn":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"unknown norm {kind!r}; expected 'bn', 'syncbn' or 'gn'")


class ConvNormAct(nn.Module):
    """Convolution (no bias) + norm + ReLU, mmsegmentation's ConvModule."""

    def __init__(self, cin: int, cout: int, kernel_size: int, norm: str):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=False)
        self.norm = make_norm(norm, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


def token_layer_norm(norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    """Apply a LayerNorm over the channel dimension of a [B, D, h, w] token map."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def resize_to(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of logits to `size` (a no-op when already there)."""
    if tuple(x.shape[-2:]) == tuple(size) and not _exporting():
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class UpHead(nn.Module):
    """mmsegmentation's SETRUPHead: LayerNorm, `num_convs` x [conv + norm + ReLU + bilinear x up], 1x1 classifier.

    Naive = 1 stage, 1x1 conv, no upsampling (the logits are upsampled bilinearly to the input size);
    PUP = 4 stages of 3x3 conv and x2 upsampling (x16 overall); the Naive/PUP auxiliary heads are
    2 stages with x4 upsampling (kernel 1 for Naive, 3 for PUP).
    """

    def __init__(
        self, dim: int, channels: int, num_classes: int, num_convs: int, kernel_size: int, up_scale: int, norm: str
    ):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.stages = nn.ModuleList(
            ConvNormAct(dim if i == 0 else channels, channels, kernel_size, norm) for i in range(num_convs)
        )
        self.up_scale = up_scale
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = token_layer_norm(self.norm, x)
        for stage in self.stages:
            x = stage(x)
            if self.up_scale > 1:
                x = F.interpolate(x, scale_factor=self.up_scale, mode="bilinear", align_corners=False)
        return resize_to(self.cls(x), image.shape[-2:])


def naive_head(dim: int, num_classes: int, norm: str, channels: int = 256) -> UpHead:
    """SETR-Naive: LayerNorm, 1x1 conv to 256 + norm + ReLU, 1x1 classifier, bilinear up to the input."""
    return UpHead(dim, channels, num_classes, num_convs=1, kernel_size=1, up_scale=1, norm=norm)


def pup_head(dim: int, num_classes: int, norm: str, channels: int = 256) -> UpHead:
    """SETR-PUP: LayerNorm, 4 x [3x3 conv 256 + norm + ReLU + bilinear x2], 1x1 classifier."""
    return UpHead(dim, channels, num_classes, num_convs=4, kernel_size=3, up_scale=2, norm=norm)


def up_aux_head(dim: int, num_classes: int, norm: str, kernel_size: int, channels: int = 256) -> UpHead:
    """Naive (kernel 1) / PUP (kernel 3) auxiliary head: 2 x [conv + norm + ReLU + bilinear x4], classifier."""
    return UpHead(dim, channels, num_classes, num_convs=2, kernel_size=kernel_size, up_scale=4, norm=norm)


class MLANeck(nn.Module):
    """SETR's multi-level aggregation neck: per level LayerNorm + 1x1 reduction, top-down sum, 3x3 conv.

    Level i's output is conv_i(r_i + r_{i+1} + ... + r_last), r = reduced token maps, deepest last.
    """

    def __init__(self, dim: int, channels: int, levels: int, norm: str):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=1e-6) for _ in range(levels))
        self.reduce = nn.ModuleList(ConvNormAct(dim, channels, 1, norm) for _ in range(levels))
        self.smooth = nn.ModuleList(ConvNormAct(channels, channels, 3, norm) for _ in range(levels))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        reduced = [red(token_layer_norm(ln, f)) for ln, red, f in zip(self.norms, self.reduce, feats)]
        summed = [reduced[-1]]
        for r in reversed(reduced[:-1]):  # top-down: add each shallower level to the running sum
            summed.insert(0, summed[0] + r)
        return [conv(s) for conv, s in zip(self.smooth, summed)]


class MLAHead(nn.Module):
    """SETR-MLA head: per level two 3x3 convs (256 -> 128 -> 128) + bilinear x4, concat, 1x1 classifier."""

    def __init__(self, channels: int, num_classes: int, levels: int, norm: str, mla_channels: int = 128):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(
                ConvNormAct(channels, mla_channels, 3, norm), ConvNormAct(mla_channels, mla_channels, 3, norm)
            )
            for _ in range(levels)
        )
        self.cls = nn.Conv2d(levels * mla_channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        ups = [
            F.interpolate(branch(f), scale_factor=4, mode="bilinear", align_corners=False)
            for branch, f in zip(self.branches, feats)
        ]
        return resize_to(self.cls(torch.cat(ups, dim=1)), image.shape[-2:])


class ClassifierHead(nn.Module):
    """MLA auxiliary head: a 1x1 classifier on one 256-channel neck output, bilinear up to the input."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.cls = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return resize_to(self.cls(x), image.shape[-2:])


class TokenHead(nn.Module):
    """Token-wise decoder: each token predicts its own p x p patch of logits, nothing crosses tokens.

    LayerNorm, 1x1 conv + norm + ReLU, 1x1 conv to p*p*classes, then depth-to-space. Because no
    operation mixes neighbouring tokens, permuting the tokens (block scrambling) permutes the output
    patches the same way.
    """

    def __init__(self, dim: int, num_classes: int, patch_size: int, norm: str, channels: int = 256):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = ConvNormAct(dim, channels, 1, norm)
        self.cls = nn.Conv2d(channels, num_classes * patch_size * patch_size, 1)
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.cls(self.proj(token_layer_norm(self.norm, x)))
        return F.pixel_shuffle(x, self.patch_size)  # [B, C*p*p, h, w] -> [B, C, h*p, w*p]


class SortedTokenHead(nn.Module):
    """Token-wise decoder for pixel-shuffled blocks: each token predicts logits per sorted pixel slot.

    Like `TokenHead`, each token gives p*p logit vectors, but slot k of sub-block s belongs to the
    pixel of rank k in that sub-block's value order (`pixel_sort_order`), not to a fixed position.
    Identical pixels (tied ranks) get the mean of their slots, so every pixel's logits depend only
    on its block's token and its own value: pixel shuffling inside q x q sub-blocks moves the logits
    with the pixels, exactly, and block scrambling moves them with the tokens.
    """

    def __init__(self, dim: int, num_classes: int, patch_size: int, group: int, norm: str, channels: int = 256,
                 colour: int = 0, luma: bool = False):  # fmt: skip
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = ConvNormAct(dim, channels, 1, norm)
        self.cls = nn.Conv2d(channels, num_classes * patch_size * patch_size, 1)
        self.patch_size, self.group, self.num_classes, self.luma = patch_size, group, num_classes, luma
        # colour > 0: each token also predicts a small per-block classifier of pixel colour (K = colour
        # hidden units: K x 3 weights + K biases in, classes x K out), applied to every pixel's own
        # value: logits += W2 relu(W1 rgb + b1). Per pixel and per block, so as equivariant as the slots.
        self.colour = colour
        self.colour_gen = nn.Conv2d(channels, colour * (4 + num_classes), 1) if colour else None

    def _colour_logits(self, feat: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        B, _, h, w = feat.shape
        K, C, p = self.colour, self.num_classes, self.patch_size
        g = self.colour_gen(feat).reshape(B, K, 4 + C, h, w)
        pix = image.reshape(B, 3, h, p, w, p)  # every block's pixels, without copying a generator per pixel
        hidden = F.relu(torch.einsum("bkjhw,bjhpwq->bkhpwq", g[:, :, :3], pix) + g[:, :, 3, :, None, :, None])
        logits = torch.einsum("bkchw,bkhpwq->bchpwq", g[:, :, 4:] / K, hidden)  # the mean over units, scaled per block
        return logits.reshape(B, C, h * p, w * p)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        from encseg.models.vit import pixel_sort_order

        B, _, h, w = x.shape
        p, q, C = self.patch_size, self.group, self.num_classes
        r = p // q
        feat = self.proj(token_layer_norm(self.norm, x))
        # the 1x1 classifier as a matmul over tokens (the same weights; a 1x1 convolution with this many
        # outputs costs an im2col copy each way), straight into the slot layout [B, C, N, S, q*q]
        weight = self.cls.weight.reshape(self.cls.out_channels, -1)
        logits = F.linear(feat.flatten(2).transpose(1, 2), weight, self.cls.bias)  # [B, N, C*p*p]
        logits = logits.reshape(B, h * w, C, r * r, q * q).transpose(1, 2)
        order, keys = pixel_sort_order(image, p, q, self.luma)  # [B, N, S, q*q]
        logits = _slots_to_positions(logits, order, keys)  # [B, C, N, S, q*q] by position
        logits = logits.reshape(B, C, h, w, r, r, q, q).permute(0, 1, 2, 4, 6, 3, 5, 7)
        logits = logits.reshape(B, C, h * p, w * p)
        return logits + self._colour_logits(feat, image) if self.colour else logits


def _run_bounds(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For keys [..., P] sorted ascending: each slot's run of equal keys, as its first and last slot."""
    P = keys.shape[-1]
    pos = torch.arange(P, device=keys.device).expand_as(keys)
    first = torch.ones_like(keys, dtype=torch.bool)
    first[..., 1:] = keys[..., 1:] != keys[..., :-1]
    last = torch.ones_like(keys, dtype=torch.bool)
    last[..., :-1] = keys[..., 1:] != keys[..., :-1]
    run = first.long().cumsum(-1) - 1  # run index of every slot
    # each run's first and last slot; slots that are not a run's first (last) write to a spare cell P
    # (no scatter-add anywhere: its ONNX lowering mishandles repeated indices)
    spare = torch.full_like(pos, P)
    start = torch.zeros(*keys.shape[:-1], P + 1, dtype=torch.long, device=keys.device)
    start = start.scatter(-1, torch.where(first, run, spare), pos)[..., :P].gather(-1, run)
    end = torch.zeros(*keys.shape[:-1], P + 1, dtype=torch.long, device=keys.device)
    end = end.scatter(-1, torch.where(last, run, spare), pos)[..., :P].gather(-1, run)
    return start, end


def _slots_to_positions(values: torch.Tensor, order: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """Slot values [B, C, ..., P] (slot k: the pixel of rank k) -> values by position, ties averaged.

    `order` [B, ..., P] is the sort order (slot k holds position order[k]) and `keys` the sorted keys.
    Position i gets the mean of the slots in the run of equal keys that its rank falls in: a
    difference of the cumulative sum (a leading zero prepended) at the run's two ends, divided by its
    length. The run bounds are found and moved to positions in index space, so the C-channel tensor
    sees one cumulative sum and two gathers, whatever C is.
    """
    start, end = _run_bounds(keys)
    P = keys.shape[-1]
    pos = torch.arange(P, device=keys.device).expand_as(order)
    rank = torch.zeros_like(order).scatter(-1, order, pos)  # position -> its slot (a permutation: no repeats)
    lo, hi = start.gather(-1, rank), end.gather(-1, rank) + 1  # the run of each position, half-open [lo, hi)
    csum = F.pad(values.cumsum(-1), (1, 0))  # [B, C, ..., P + 1], csum[..., j] = sum of slots < j
    total = csum.gather(-1, hi.unsqueeze(1).expand_as(values)) - csum.gather(-1, lo.unsqueeze(1).expand_as(values))
    return total * (1.0 / (hi - lo).to(values.dtype)).unsqueeze(1)  # a reciprocal per position, not per channel


class PixelHead(nn.Module):
    """Per-pixel decoder: every pixel's logits from its block's token feature and its own value.

    The token feature is reduced at token resolution and copied to the p*p pixels of its block; a
    per-pixel MLP embeds the pixel's own value; the sum goes through a per-pixel MLP to the classes
    (an MLP on the concatenation [token feature, pixel feature]). Nothing depends on where a pixel
    sits inside its block, so shuffling pixels within blocks shuffles the logits the same way.
    """

    def __init__(
        self, dim: int, num_classes: int, norm: str, channels: int = 256, hidden: int = 64, in_chans: int = 3
    ):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.token_mlp = nn.Sequential(ConvNormAct(dim, channels, 1, norm), nn.Conv2d(channels, hidden, 1))
        self.pixel_mlp = nn.Sequential(nn.Conv2d(in_chans, hidden, 1), nn.GELU(), nn.Conv2d(hidden, hidden, 1))
        self.mix = ConvNormAct(hidden, hidden, 1, norm)
        self.cls = nn.Conv2d(hidden, num_classes, 1)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        token = self.token_mlp(token_layer_norm(self.norm, x))
        token = F.interpolate(token, size=image.shape[-2:], mode="nearest")  # block's token on each pixel
        return self.cls(self.mix(F.relu(token + self.pixel_mlp(image))))


class MaskHead(nn.Module):
    """Segmenter-style mask transformer, key-invariant: learned class queries attend to the tokens.

    The tokens (no positions) and one learned query per class go through `layers` transformer blocks
    together; each token is then expanded to its own p x p sub-patch features, and a pixel's logit for
    class c is the scaled cosine between its sub-patch feature and class c's output embedding.
    Attention over a set and token-wise expansion commute with any permutation of the tokens, so the
    head keeps the block-scrambling equivariance of a position-free encoder.
    """

    def __init__(self, dim: int, num_classes: int, patch_size: int, heads: int, layers: int = 2, mask_dim: int = 32):
        super().__init__()
        from encseg.models.vit import Block  # heads.py is imported by vit-free code paths too

        self.patch_size, self.mask_dim = patch_size, mask_dim
        self.queries = nn.Parameter(torch.randn(1, num_classes, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pixel_proj = nn.Linear(dim, patch_size * patch_size * mask_dim)
        self.class_proj = nn.Linear(dim, mask_dim)
        self.scale = nn.Parameter(torch.tensor(10.0))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        B, D, h, w = x.shape
        C, p = self.queries.shape[1], self.patch_size
        t = torch.cat([x.flatten(2).transpose(1, 2), self.queries.expand(B, -1, -1)], 1)
        for block in self.blocks:
            t = block(t)
        t = self.norm(t)
        tokens, classes = t[:, : h * w], t[:, h * w :]
        pix = F.normalize(self.pixel_proj(tokens).reshape(B, h * w, p * p, self.mask_dim), dim=-1)
        cls = F.normalize(self.class_proj(classes), dim=-1)  # [B, C, d]
        logits = torch.einsum("bnpd,bcd->bcnp", pix, cls) * self.scale + self.bias.view(1, C, 1, 1)
        logits = logits.reshape(B, C, h, w, p, p).permute(0, 1, 2, 4, 3, 5).reshape(B, C, h * p, w * p)
        return logits

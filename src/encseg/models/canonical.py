"""Block canonicalisation: the server's key-free undoing of negative-positive (NP) and channel shuffling (CS).

Per cipher block, NP (x -> 255 - x, one key bit) and CS (one of the 6 orders of R, G, B) form a group
of 12 elements. With a fresh key per image that group element is uniform noise, independent of the
content, so a model gains nothing from seeing it. `BlockCanonical` maps each block to one
representative of its orbit, computed from the ciphertext alone, so that all 12 variants of a block
become the same block: a model with this layer first is exactly invariant to per-block NP and CS.

The representative is the orbit element with the smallest descriptor in lexicographic order:
  1. the block's total (so NP is undone when the block's mean over pixels and channels is above
     127.5, x -> 255 - x);
  2. the channel sums in order (so the channels come sorted by ascending mean);
  3. the pixels themselves, packed as r * 65536 + g * 256 + b, in row-major order -- or, for a model
     that is invariant to pixel order inside `group` x `group` sub-blocks (pixel shuffling), each
     sub-block's packed pixels sorted, sub-blocks in row-major order.
Step 3 only runs for the rare blocks that steps 1-2 leave tied (flat blocks, grey blocks with equal
channel means). With positions kept (group None) the descriptor determines the block, so the
representative is unique. With an order-free group, several variants can share the smallest
descriptor while differing in where their pixels sit (a block whose multiset of pixels a non-trivial
NP/CS element maps to itself, e.g. a grey block of half 127s and half 128s under NP); the
representative is then the mean of those survivors, the same for every variant of the block and
moved by any pixel shuffle like the block itself. So the invariance holds for every block, ties
included, in both cases.
"""

from __future__ import annotations

import torch
from torch import nn

from encseg.models.inference import IMAGENET_MEAN, IMAGENET_STD, pixel_values
from encseg.models.vit import _exporting

# The six channel orders in lexicographic order, as the cipher's CS step lists them (DESIGN.md).
CHANNEL_ORDERS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


class BlockCanonical(nn.Module):
    """Map every `block_size` block of an (ImageNet-normalised) image to its NP/CS orbit representative.

    Input and output are normalised float images [B, 3, H, W] (H, W multiples of the block size);
    the layer has no parameters and works on the 0..255 values the normalisation came from.
    """

    def __init__(self, block_size: int, group: int | None = None):
        super().__init__()
        if group is not None and (group < 1 or block_size % group):
            raise ValueError(f"group {group} must divide the block size {block_size}")
        self.block_size, self.group = block_size, group
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("orders", torch.tensor(CHANNEL_ORDERS), persistent=False)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, group={self.group}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = pixel_values(x)
        B, _, H, W = v.shape
        p = self.block_size
        nh, nw = H // p, W // p
        blocks = v.reshape(B, 3, nh, p, nw, p).permute(0, 2, 4, 1, 3, 5).reshape(B * nh * nw, 3, p * p)
        canon = self.canonicalise(blocks)
        out = canon.reshape(B, nh, nw, 3, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, 3, H, W)
        return ((out - self.mean) / self.std).to(x.dtype)

    def canonicalise(self, blocks: torch.Tensor) -> torch.Tensor:
        """The representative of every block [N, 3, P] (0..255 values): the mean of the survivors."""
        alive = self.survivors(blocks)
        canon = self.apply_choice(blocks, alive.to(torch.uint8).argmax(-1))
        tied = alive.sum(-1) > 1
        if _exporting():
            idx = torch.arange(blocks.shape[0], device=blocks.device)
        elif bool(tied.any()):
            idx = tied.nonzero().squeeze(1)
        else:
            return canon
        w = alive[idx].to(blocks.dtype)
        mean = (self.apply_all(blocks[idx]) * w[:, :, None, None]).sum(1) / w.sum(1).view(-1, 1, 1)
        return canon.index_copy(0, idx, mean)

    # -- the choice of the orbit element ----------------------------------------------------------
    def survivors(self, blocks: torch.Tensor) -> torch.Tensor:
        """[N, 12] mask of the variants (NP bit * 6 + channel order) whose descriptor is the smallest.

        With positions kept the survivors are all the same block; order-free, they can differ in
        their pixels' arrangement (a multiset that a non-trivial NP/CS element maps to itself), and the
        representative is then their mean, which is the same for every variant of the block and
        moves with any pixel shuffle.
        """
        n_pix = blocks.shape[-1]
        sums = blocks.sum(-1)  # [N, 3], exact integers in float32 (<= 255 * 3 * 256^2 < 2^24 for p <= 256)
        cand = torch.stack([sums, 255.0 * n_pix - sums], 1)[:, :, self.orders]  # [N, 2, 6, 3]
        cand = cand.reshape(-1, 12, 3)
        keys = [cand.sum(-1), cand[..., 0], cand[..., 1]]  # total, then channel sums in order
        alive = torch.ones(cand.shape[:2], dtype=torch.bool, device=blocks.device)
        alive = _eliminate(alive, keys)
        tied = alive.sum(-1) > 1
        if _exporting():  # no data-dependent shapes in an exported graph: settle every block's ties
            alive = _eliminate(alive, self._pixel_keys(blocks))
        elif bool(tied.any()):
            idx = tied.nonzero().squeeze(1)
            alive = alive.clone()
            alive[idx] = _eliminate(alive[idx], self._pixel_keys(blocks[idx]))
        return alive

    def _pixel_keys(self, blocks: torch.Tensor) -> list[torch.Tensor]:
        """Step 3's descriptor columns for all 12 variants: list of [N, 12] tensors."""
        variants = self.apply_all(blocks)  # [N, 12, 3, P]
        packed = variants[:, :, 0] * 65536 + variants[:, :, 1] * 256 + variants[:, :, 2]  # [N, 12, P], < 2^24
        if self.group is not None:
            p, q = self.block_size, self.group
            n, k = packed.shape[:2]
            sub = packed.reshape(n, k, p // q, q, p // q, q).permute(0, 1, 2, 4, 3, 5).reshape(n, k, -1, q * q)
            packed = sub.sort(-1).values.reshape(n, k, -1)
        return list(packed.unbind(-1))

    # -- applying it ---------------------------------------------------------------------------------
    def apply_all(self, blocks: torch.Tensor) -> torch.Tensor:
        """All 12 NP/CS variants of every block: [N, 3, P] -> [N, 12, 3, P] in choice-index order."""
        both = torch.stack([blocks, 255.0 - blocks], 1)  # [N, 2, 3, P]
        return both[:, :, self.orders].reshape(blocks.shape[0], 12, 3, -1)

    def apply_choice(self, blocks: torch.Tensor, choice: torch.Tensor) -> torch.Tensor:
        neg = (choice // 6).to(blocks.dtype).view(-1, 1, 1)
        flipped = blocks + neg * (255.0 - 2.0 * blocks)
        order = self.orders[choice % 6]  # [N, 3]
        return torch.gather(flipped, 1, order.unsqueeze(-1).expand_as(flipped))


def _eliminate(alive: torch.Tensor, keys: list[torch.Tensor]) -> torch.Tensor:
    """Keep, column by column, the candidates whose key equals the smallest key among those still alive."""
    big = torch.finfo(torch.float32).max
    for k in keys:
        k = k.masked_fill(~alive, big)
        alive = alive & (k == k.min(-1, keepdim=True).values)
    return alive

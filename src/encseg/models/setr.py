"""SETR (Zheng et al., CVPR 2021): a ViT encoder and a Naive, PUP or MLA decoder, plus our key-invariant variant.

`build_setr(SETRConfig(...))` is the one public constructor. In training mode the model returns
{"out": logits, "aux": [logits, ...]} (auxiliary heads, loss weight `config.aux_weight` each); in
eval mode it returns the logits [B, C, H, W] alone. Inputs are ImageNet-normalised floats
(`encseg.models.normalize`) of any size that is a multiple of the patch size.

The key-invariant variants are built for images encrypted with a fresh key per image, where every
key-dependent choice of the cipher is noise; `SETRConfig.invariances` names the scheme steps a
model commutes with by construction (tests/test_invariance.py proves each claim on random keys):
- `canonical=True`: `BlockCanonical` maps every NP/CS variant of a cipher block to one block
  (key-free, exact): invariance to `np` and `cs`, with or without positions;
- `decoder="token"` (or `"mask"`) with `position_embedding=False`: no absolute position, each token
  decodes its own p x p patch, so `model(BS(x)) == BS(model(x))` (`bs`); `cipher_block=32` with
  `block_position=True` keeps the position of a token inside its 32-px cipher block;
- `pixel_group=q`: sorted patch embedding and sorted-slot decoder, order-free inside q x q
  sub-blocks: `ps<q>`/`psb<q>` (q = p: `ps`, `psb`); `invariant_embedding=True` is the older,
  slower DeepSets variant of the same idea.
What a position-free model gives up, for every image scrambled or not: the absolute position prior
(sky at the top, road at the bottom), and any smoothing across neighbouring patches; order-free
embeddings also give up the layout of pixels inside a (sub-)block. docs/training.md says what each
costs in mIoU.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from encseg.errors import UserError
from encseg.models.canonical import BlockCanonical
from encseg.models.heads import (
    ClassifierHead,
    MaskHead,
    MLAHead,
    MLANeck,
    PixelHead,
    SortedTokenHead,
    TokenHead,
    naive_head,
    pup_head,
    up_aux_head,
)
from encseg.models.vit import VIT_PRESETS, ViT

DECODERS = ("naive", "pup", "mla", "token", "mask")
KEY_INVARIANT_DECODERS = ("token", "mask")  # nothing mixes neighbouring tokens: block scrambling commutes
NORMS = ("bn", "syncbn", "gn")

# Layer taps of the reference (ViT-L, 24 layers, 0-indexed); scaled for other depths by `scale_taps`.
REFERENCE_TAPS = {"naive": (9, 14, 19, 23), "pup": (9, 14, 19, 23), "token": (9, 14, 19, 23),
                  "mask": (9, 14, 19, 23), "mla": (5, 11, 17, 23)}


@dataclass
class SETRConfig:
    """Everything needed to rebuild a SETR model; stored as JSON beside every checkpoint."""

    encoder: str = "vit-large"  # one of VIT_PRESETS
    decoder: str = "pup"  # "naive" | "pup" | "mla" | "token" / "mask" (key-invariant)
    num_classes: int = 19
    img_size: tuple[int, int] = (768, 768)  # (H, W) of the stored position-embedding grid
    patch_size: int = 16
    position_embedding: bool = True  # False for the key-invariant variant (with decoder="token")
    invariant_embedding: bool = False  # DeepSets patch embedding + per-pixel decoder (decoder="token")
    norm: str = "bn"  # "bn" | "syncbn" | "gn"
    aux: bool = True
    drop_path: float = 0.0
    aux_weight: float = 0.4  # loss weight of each auxiliary head (for the engine)
    pos_interp: str = "bilinear"  # position-embedding resize mode: "bilinear" (SETR) or "bicubic"
    channels: int = 256  # decoder width
    canonical: bool = False  # canonicalise NP/CS per cipher block at the input (encseg.models.canonical)
    cipher_block: int = 0  # the cipher's block size the model is built for (0: the patch size)
    pixel_group: int = 0  # q > 0: sorted patch embedding + slot decoder, order-free inside q x q sub-blocks
    block_position: bool = False  # key-invariant models with cipher_block > patch: position inside the block
    colour_head: int = 0  # K > 0 (with pixel_group): the slot decoder adds a per-block classifier of each pixel's colour
    colour_embed: int = 0  # b > 0: each token adds its block's soft joint colour histogram (b bins per channel)
    luma_sort: bool = False  # with pixel_group: sort each sub-block's pixels by luma first (else by packed r, g, b)

    def __post_init__(self) -> None:
        self.img_size = (int(self.img_size[0]), int(self.img_size[1]))
        if self.encoder not in VIT_PRESETS:
            raise UserError(f"unknown encoder {self.encoder!r}; choose from {', '.join(VIT_PRESETS)}")
        if self.decoder not in DECODERS:
            raise UserError(f"unknown decoder {self.decoder!r}; choose from {', '.join(DECODERS)}")
        if self.norm not in NORMS:
            raise UserError(f"unknown norm {self.norm!r}; choose from {', '.join(NORMS)}")
        if self.patch_size < 1 or self.img_size[0] % self.patch_size or self.img_size[1] % self.patch_size:
            raise UserError(f"img_size {self.img_size} must be a positive multiple of patch_size {self.patch_size}")
        if self.invariant_embedding and self.decoder != "token":
            raise UserError("invariant_embedding=True needs decoder='token' (its per-pixel decoder)")
        if self.pixel_group and (self.decoder != "token" or self.invariant_embedding or self.patch_size % self.pixel_group):
            raise UserError("pixel_group=q needs decoder='token', no invariant_embedding, and q dividing the patch size")
        if self.colour_head and not self.pixel_group:
            raise UserError("colour_head needs pixel_group (it adds to the sorted-slot decoder)")
        if self.colour_head < 0:
            raise UserError("colour_head is the number of hidden colour units, 0 (off) or more")
        if self.luma_sort and not self.pixel_group:
            raise UserError("luma_sort needs pixel_group (it orders the sorted embedding's pixels)")
        if self.colour_embed < 0 or self.colour_embed == 1 or self.colour_embed > 8:
            raise UserError("colour_embed is the histogram's bins per channel: 0 (off) or 2..8")
        block = self.block
        if block % self.patch_size or self.img_size[0] % block or self.img_size[1] % block:
            raise UserError(f"cipher_block {block} must be a multiple of the patch size and divide img_size {self.img_size}")
        if self.block_position and (block == self.patch_size or self.position_embedding):
            raise UserError("block_position needs cipher_block > patch_size and position_embedding=False")
        if self.num_classes < 1:
            raise UserError("num_classes must be at least 1")

    @property
    def block(self) -> int:
        """The cipher block size the model is built for."""
        return self.cipher_block or self.patch_size

    @property
    def invariances(self) -> tuple[str, ...]:
        """Scheme step codes the model commutes with by construction (exactly, for any key).

        bs: block scrambling (no absolute position, token-wise decoding); np, cs: per-block
        canonicalisation; ps / psb: pixel shuffling (order-free patch embedding, per-pixel decoding);
        ps<q> / psb<q>: restricted pixel shuffling inside q x q sub-blocks.
        """
        out = []
        if self.decoder in KEY_INVARIANT_DECODERS and not self.position_embedding:
            out.append("bs")
        if self.canonical:
            out += ["np", "cs"]
        q = self.patch_size if self.invariant_embedding else self.pixel_group  # order-free inside q x q
        if q:
            out += ["ps", "psb"] if q == self.patch_size else []
            out += [f"ps{d}" for d in range(1, q + 1) if q % d == 0] + [f"psb{d}" for d in range(1, q + 1) if q % d == 0]
        return tuple(out)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["img_size"] = list(self.img_size)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SETRConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown SETR config fields {unknown} (written by a newer encseg?)")
        return cls(**d)


def scale_taps(reference: tuple[int, ...], depth: int, reference_depth: int = 24) -> list[int]:
    """Map the reference's 0-indexed layer taps of a 24-layer ViT to a `depth`-layer one.

    Tap t (layer t+1 of 24) becomes layer round((t+1) * depth / 24) (half up), 0-indexed. For 12
    layers this gives MLA (2, 5, 8, 11) and Naive/PUP (4, 7, 9, 11); for 6 layers (1, 2, 4, 5) and
    (2, 3, 4, 5). The last tap is always the last layer.
    """
    taps = [int((t + 1) * depth / reference_depth + 0.5) - 1 for t in reference]
    taps = [min(max(t, 0), depth - 1) for t in taps]
    if len(set(taps)) != len(taps):
        raise UserError(f"a {depth}-layer encoder is too shallow for taps {reference}")
    return taps


class SETR(nn.Module):
    """Encoder + (neck) + decode head + auxiliary heads, composed from a SETRConfig."""

    def __init__(self, config: SETRConfig):
        super().__init__()
        cfg = self.config = config
        size = VIT_PRESETS[cfg.encoder]
        taps = scale_taps(REFERENCE_TAPS[cfg.decoder], size.depth)
        self.encoder = ViT(
            size,
            taps,
            patch_size=cfg.patch_size,
            img_size=cfg.img_size,
            class_token=cfg.decoder != "mla",  # SETR-MLA uses no class token
            position_embedding=cfg.position_embedding,
            invariant_embedding=cfg.invariant_embedding,
            drop_path=cfg.drop_path,
            pos_interp=cfg.pos_interp,
            pixel_group=cfg.pixel_group,
            block_position=cfg.block // cfg.patch_size if cfg.block_position else 0,
            colour_embed=cfg.colour_embed,
            luma_sort=cfg.luma_sort,
        )
        self.canonical = BlockCanonical(cfg.block, cfg.patch_size if cfg.invariant_embedding else (cfg.pixel_group or None)) \
            if cfg.canonical else None
        D, C, ch, norm = size.dim, cfg.num_classes, cfg.channels, cfg.norm
        self.neck: MLANeck | None = None
        levels = len(taps)
        n_aux = (levels if cfg.decoder == "mla" else levels - 1) if cfg.aux else 0
        if cfg.decoder == "naive":
            self.decode_head: nn.Module = naive_head(D, C, norm, ch)
            aux = [up_aux_head(D, C, norm, 1, ch) for _ in range(n_aux)]
        elif cfg.decoder == "pup":
            self.decode_head = pup_head(D, C, norm, ch)
            aux = [up_aux_head(D, C, norm, 3, ch) for _ in range(n_aux)]
        elif cfg.decoder == "mla":
            self.neck = MLANeck(D, ch, levels, norm)
            self.decode_head = MLAHead(ch, C, levels, norm)
            aux = [ClassifierHead(ch, C) for _ in range(n_aux)]  # one per neck output
        elif cfg.decoder == "mask":
            self.decode_head = MaskHead(D, C, cfg.patch_size, size.heads)
            aux = [TokenHead(D, C, cfg.patch_size, norm, ch) for _ in range(n_aux)]
        elif cfg.pixel_group:  # key-invariant under pixel shuffle inside q x q sub-blocks: sorted slots
            g, luma = cfg.pixel_group, cfg.luma_sort
            self.decode_head = SortedTokenHead(D, C, cfg.patch_size, g, norm, ch, cfg.colour_head, luma)
            aux = [SortedTokenHead(D, C, cfg.patch_size, g, norm, ch, luma=luma) for _ in range(n_aux)]
        elif cfg.invariant_embedding:  # key-invariant under pixel shuffle too: per-pixel decoding
            self.decode_head = PixelHead(D, C, norm, ch)
            aux = [PixelHead(D, C, norm, ch) for _ in range(n_aux)]
        else:  # key-invariant under block scrambling: token-wise decoding
            self.decode_head = TokenHead(D, C, cfg.patch_size, norm, ch)
            aux = [TokenHead(D, C, cfg.patch_size, norm, ch) for _ in range(n_aux)]
        self.aux_heads = nn.ModuleList(aux)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor | list[torch.Tensor]]:
        if self.canonical is not None:
            x = self.canonical(x)  # a function of the ciphertext alone: every NP/CS variant of a block -> one block
        feats = self.encoder(x)  # one [B, D, H/p, W/p] map per tap, deepest last
        if self.neck is not None:
            feats = self.neck(feats)
            out = self.decode_head(feats, x)
        else:
            out = self.decode_head(feats[-1], x)
        if not self.training:
            return out
        return {"out": out, "aux": [head(f, x) for head, f in zip(self.aux_heads, feats)]}

    def parameter_groups(self, lr: float, head_lr_mult: float = 10.0) -> list[dict]:
        """Optimizer groups as in SETR: encoder and MLA neck at `lr`, decode and auxiliary heads at lr x 10."""
        heads = list(self.decode_head.parameters()) + list(self.aux_heads.parameters())
        head_ids = {id(p) for p in heads}
        rest = [p for p in self.parameters() if id(p) not in head_ids]
        return [{"params": rest, "lr": lr}, {"params": heads, "lr": lr * head_lr_mult}]


def build_setr(config: SETRConfig) -> SETR:
    """Build a freshly initialised SETR model from its config."""
    return SETR(config)

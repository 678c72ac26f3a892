"""SETR in plain PyTorch: ViT encoder, Naive/PUP/MLA and key-invariant decoders, weights, checkpoints, inference."""

from encseg.models.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from encseg.models.inference import IMAGENET_MEAN, IMAGENET_STD, normalize, predict
from encseg.models.setr import DECODERS, SETR, SETRConfig, build_setr, scale_taps
from encseg.models.vit import VIT_PRESETS, ViT, resize_pos_embed
from encseg.models.weights import ImportReport, load_vit_weights, map_vit_state_dict, read_state_dict

__all__ = [
    "DECODERS", "IMAGENET_MEAN", "IMAGENET_STD", "ImportReport", "SETR", "SETRConfig", "VIT_PRESETS", "ViT",
    "build_setr", "load_checkpoint", "load_vit_weights", "map_vit_state_dict", "normalize", "predict",
    "read_checkpoint_meta", "read_state_dict", "resize_pos_embed", "save_checkpoint", "scale_taps",
]

"""The block-wise perceptual cipher (formats v1 and v2): per-image keys, schemes, encryption, label-map geometry."""

from encseg.cipher.keys import Key, load_key, save_key
from encseg.cipher.keystream import CHANNEL_ORDERS, Plan, make_plan, step_stream
from encseg.cipher.scheme import DEFAULT_SCHEME, PRESETS, Scheme, Step
from encseg.cipher.transform import (
    CipherTransform,
    EncryptedImage,
    apply_geometry,
    decrypt,
    decrypt_mask,
    encrypt,
    encrypt_mask,
    pad_to_blocks,
)

__all__ = [
    "CHANNEL_ORDERS", "DEFAULT_SCHEME", "PRESETS", "CipherTransform", "EncryptedImage", "Key", "Plan",
    "Scheme", "Step", "apply_geometry", "decrypt", "decrypt_mask", "encrypt", "encrypt_mask",
    "load_key", "make_plan", "pad_to_blocks", "save_key", "step_stream",
]

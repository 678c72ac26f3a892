"""encseg: privacy-preserving semantic segmentation without key management.

A client encrypts each image with a block-wise perceptual cipher under a key made for that one
image; a SETR model trained on images encrypted with fresh keys segments it; the client undoes the
geometry of the label map with its key and throws the key away.
"""

__version__ = "0.1.0"

"""Training and evaluation: the resumable (optionally distributed) training loop, Cityscapes-protocol
mIoU on plain or per-image-encrypted test images, and the experiment that fills docs/results.md."""

"""Training-step time of the sorted-slot decoder (`SortedTokenHead`) against its previous implementation.

The baseline, kept here verbatim in behaviour, is the head as it was before the rewrite: the 1x1
classifier as a `Conv2d` (an im2col copy each way at C*p*p outputs), the tie-averaging done on the
C-channel logits in slot order (a cumulative sum and three gathers), then a fourth gather to move
the slots to positions, and the colour head's mean over its units divided at full resolution.
The head now finds run bounds in index space and does one cumulative sum
and two gathers on the logits (a reciprocal multiplied, not divided, per channel), the classifier is a
matmul over tokens, and the colour head scales its small per-block weights instead. Both carry the same
weights and compute the same function (checked here: logits and gradients), so the ratio is the
speed-up of the same model. Timed: one forward + backward of the whole SETR (the default scheme's
model, canonical blocks, batch 4, 128x256), alternating baseline and ours, the median of N.

    .venv/bin/python benchmarks/bench_sorted_head.py [--repeats 20 --threads 1 --batch 4]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from encseg.models import SETRConfig, build_setr
from encseg.models.heads import SortedTokenHead, _run_bounds, token_layer_norm
from encseg.models.vit import pixel_sort_order


def _mean_over_runs_baseline(values: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    start, end = _run_bounds(keys)  # the run bounds themselves did not change
    start, end = start.unsqueeze(1).expand_as(values), end.unsqueeze(1).expand_as(values)
    csum = values.cumsum(-1)
    total = csum.gather(-1, end) - csum.gather(-1, start) + values.gather(-1, start)
    return total / (end - start + 1).to(values.dtype)


def _colour_logits_baseline(head: SortedTokenHead, feat: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    B, _, h, w = feat.shape
    K, C, p = head.colour, head.num_classes, head.patch_size
    g = head.colour_gen(feat).reshape(B, K, 4 + C, h, w)
    pix = image.reshape(B, 3, h, p, w, p)
    hidden = F.relu(torch.einsum("bkjhw,bjhpwq->bkhpwq", g[:, :, :3], pix) + g[:, :, 3, :, None, :, None])
    logits = torch.einsum("bkchw,bkhpwq->bchpwq", g[:, :, 4:], hidden) / K  # divided at full resolution
    return logits.reshape(B, C, h * p, w * p)


def baseline_forward(head: SortedTokenHead, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    B, _, h, w = x.shape
    p, q, C = head.patch_size, head.group, head.num_classes
    r = p // q
    feat = head.proj(token_layer_norm(head.norm, x))
    logits = head.cls(feat)
    logits = logits.reshape(B, C, r * r, q * q, h * w).permute(0, 1, 4, 2, 3)
    order, keys = pixel_sort_order(image, p, q, head.luma)
    logits = _mean_over_runs_baseline(logits, keys)
    inverse = order.argsort(-1).unsqueeze(1).expand_as(logits)
    logits = logits.gather(-1, inverse)
    logits = logits.reshape(B, C, h, w, r, r, q, q).permute(0, 1, 2, 4, 6, 3, 5, 7).reshape(B, C, h * p, w * p)
    return logits + _colour_logits_baseline(head, feat, image) if head.colour else logits


def step(model, x, y, baseline: bool) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    head = model.decode_head
    if baseline:
        head.forward = lambda f, img: baseline_forward(head, f, img)  # instance attribute: shadows the method
    else:
        head.__dict__.pop("forward", None)
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    out = model(x)["out"]
    F.cross_entropy(out, y).backward()
    dt = time.perf_counter() - t
    return dt, out.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = SETRConfig(encoder="vit-tiny-6", decoder="token", img_size=(128, 256), position_embedding=False, canonical=True,
                     pixel_group=16, colour_head=8, channels=128, luma_sort=True, aux=False)  # fmt: skip
    model = build_setr(cfg).train()
    g = torch.Generator().manual_seed(1)
    # flat colours with a little noise: ties inside blocks, as in street scenes
    x = (torch.randint(0, 6, (a.batch, 3, 128, 256), generator=g) * 40).float()
    x = (x - 127.5) / 64.0
    y = torch.randint(0, cfg.num_classes, (a.batch, 128, 256), generator=g)
    for b in (True, False):  # warm-up
        step(model, x, y, b)
    _, out_b, grads_b = step(model, x, y, True)
    _, out_o, grads_o = step(model, x, y, False)
    d_out = (out_b - out_o).abs().max().item()
    # relative to the largest gradient entry (some entries are analytically zero, e.g. a norm's bias
    # before a batch norm, and only rounding noise is left there)
    scale = max(gb.abs().max().item() for gb in grads_b)
    d_grad = max((gb - go).abs().max().item() for gb, go in zip(grads_b, grads_o)) / scale
    times = {True: [], False: []}
    for _ in range(a.repeats):
        for b in (True, False):
            times[b].append(step(model, x, y, b)[0])
    tb, to = statistics.median(times[True]), statistics.median(times[False])
    print(f"machine: {platform.machine()}, torch {torch.__version__}, {a.threads} thread(s), batch {a.batch}, 128x256")
    print(f"same function: max |logit diff| {d_out:.2e}, max gradient diff / max gradient {d_grad:.2e}")
    print(f"forward+backward median of {a.repeats}: baseline {tb * 1000:.1f} ms, ours {to * 1000:.1f} ms, "
          f"ratio ours/baseline {to / tb:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()

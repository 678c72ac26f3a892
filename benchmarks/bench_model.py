"""Forward latency, images/s and peak memory of SETR on CPU, against nn.TransformerEncoder in the same run.

For each encoder preset and batch size: our ViT encoder vs a same-size encoder built from
`torch.nn.TransformerEncoder` (norm_first=True, GELU, eps 1e-6, same width/depth/heads, same patch
embedding, carrying the same weights so it computes the same function): ratio = ours / baseline
(goal <= 1.0; both end in the same aten kernels, so about 1.0 is expected). Then every decoder's
full model (encoder + head). Eval mode, inference_mode, float32.

Measurements alternate (ours and baseline; the decoders among themselves) so drift in the load of
a shared machine hits all alike. Latencies are the best of N runs (other processes only ever add
time); the encoder ratio is the ratio of medians (steadier than the ratio of bests). Peak memory
is the largest rise of the resident set during a model's first forward in a fresh process
(sampled every millisecond, glibc told to hand freed memory back at once), so memory cached by
earlier runs neither hides nor inflates it.

    python benchmarks/bench_model.py                                          # the issue's setting: 512x1024
    python benchmarks/bench_model.py --size 256x512 --repeats 3 --threads 1   # ~6 min on 2 shared cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time

import torch
from torch import nn

from encseg.models import VIT_PRESETS, SETRConfig, ViT, build_setr

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def peak_rss(fn) -> int:
    """Run fn() once; return the largest resident-set size seen meanwhile (bytes)."""
    peak, done = [rss_bytes()], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes())
            time.sleep(0.001)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        done.set()
        t.join()
    return max(peak[0], rss_bytes())


class BaselineEncoder(nn.Module):
    """Patch embedding + class token + position embedding + nn.TransformerEncoder (pre-norm)."""

    def __init__(self, ours: ViT, heads: int):
        super().__init__()
        D = ours.dim
        self.patch_embed, self.cls_token, self.pos_embed = ours.patch_embed, ours.cls_token, ours.pos_embed
        layer = nn.TransformerEncoderLayer(D, heads, dim_feedforward=4 * D, dropout=0.0, activation="gelu",
                                           layer_norm_eps=1e-6, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=len(ours.blocks), enable_nested_tensor=False)
        with torch.no_grad():  # same weights: the two encoders compute the same function
            for mine, theirs in zip(ours.blocks, self.encoder.layers):
                theirs.self_attn.in_proj_weight.copy_(mine.attn.qkv.weight)
                theirs.self_attn.in_proj_bias.copy_(mine.attn.qkv.bias)
                theirs.self_attn.out_proj.weight.copy_(mine.attn.proj.weight)
                theirs.self_attn.out_proj.bias.copy_(mine.attn.proj.bias)
                for a, b in ((mine.norm1, theirs.norm1), (mine.norm2, theirs.norm2), (mine.mlp.fc1, theirs.linear1), (mine.mlp.fc2, theirs.linear2)):
                    b.weight.copy_(a.weight)
                    b.bias.copy_(a.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.encoder(x)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def compare(fns: dict[str, callable], repeats: int) -> dict[str, list[float]]:
    """Seconds of each fn over `repeats` calls, measured in alternation after one warm-up call each."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return times


def build(name: str, kind: str, H: int, W: int) -> nn.Module:
    """kind: "encoders" (ours, baseline) or a decoder name (the full SETR model)."""
    size = VIT_PRESETS[name]
    if kind == "encoders":
        ours = ViT(size, taps=[size.depth - 1], img_size=(H, W)).eval()
        return ours, BaselineEncoder(ours, size.heads).eval()
    return build_setr(SETRConfig(encoder=name, decoder=kind, img_size=(H, W), position_embedding=kind != "token")).eval()


def memory_child(name: str, kind: str, H: int, W: int, batches: list[int]) -> None:
    """In a fresh process: peak resident-memory rise of the first forward at each batch size (MiB, JSON).

    For "ours"/"baseline" both encoders are built (and kept) in either case, so the allocator starts
    from the same state and only the forward differs.
    """
    if kind in ("ours", "baseline"):
        ours, base = build(name, "encoders", H, W)
        model = ours if kind == "ours" else base
    else:
        model = build(name, kind, H, W)
    inputs = {b: torch.randn(b, 3, H, W) for b in batches}
    before = rss_bytes()
    peaks = {}
    with torch.inference_mode():
        for b in sorted(batches):  # rises are measured from the same start, so larger batches come last
            peaks[b] = (peak_rss(lambda: model(inputs[b])) - before) / 2**20
    print(json.dumps(peaks))


def peak_memory(name: str, kind: str, H: int, W: int, batches: list[int], threads: int) -> dict[int, float]:
    cmd = [sys.executable, __file__, "--memory-child", name, kind, "--size", f"{H}x{W}",
           "--batches", ",".join(map(str, batches)), "--threads", str(threads)]
    # freed tensors go back to the OS at once, so the resident set tracks live memory
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        raise RuntimeError(f"memory measurement {name}/{kind} failed:\n{run.stderr[-2000:]}")
    out = run.stdout
    return {int(k): v for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="512x1024", help="HEIGHTxWIDTH of the input")
    ap.add_argument("--encoders", default="vit-tiny,vit-base")
    ap.add_argument("--decoders", default="naive,pup,mla,token", help='comma-separated, or "none" (encoders only)')
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--markdown", default="", help="also write the tables to this file")
    ap.add_argument("--memory-child", nargs=2, metavar=("ENCODER", "KIND"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    H, W = (int(v) for v in args.size.lower().split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    torch.manual_seed(0)
    if args.memory_child:
        return memory_child(*args.memory_child, H, W, batches)
    threads = torch.get_num_threads()

    head = (f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{threads} threads; input {H}x{W}; best of {args.repeats} alternating runs; "
            "peak = resident-memory rise of a first forward in a fresh process")
    enc_rows = ["| encoder | batch | ours ms | nn.TransformerEncoder ms | ratio (median) | ratio (best) | ours img/s | ours peak MiB | baseline peak MiB | max abs diff |",
                "|---|---|---|---|---|---|---|---|---|---|"]
    dec_rows = ["| model | batch | latency ms | img/s | peak MiB |", "|---|---|---|---|---|"]
    print(head)
    for name in args.encoders.split(","):
        ours, base = build(name, "encoders", H, W)
        mem = {kind: peak_memory(name, kind, H, W, batches, threads) for kind in ("ours", "baseline")}
        for b in batches:
            x = torch.randn(b, 3, H, W)
            with torch.inference_mode():
                diff = (ours(x)[-1].flatten(2).transpose(1, 2) - base(x)[:, 1:]).abs().max().item()
                t = compare({"ours": lambda: ours(x), "base": lambda: base(x)}, args.repeats)
            best, med = {k: min(v) for k, v in t.items()}, {k: statistics.median(v) for k, v in t.items()}
            enc_rows.append(f"| {name} | {b} | {best['ours'] * 1e3:.0f} | {best['base'] * 1e3:.0f} | **{med['ours'] / med['base']:.2f}** | "
                            f"{best['ours'] / best['base']:.2f} | {b / best['ours']:.2f} | {mem['ours'][b]:.0f} | {mem['baseline'][b]:.0f} | {diff:.1e} |")
            print(enc_rows[-1], flush=True)
        del ours, base
        decoders = [d for d in args.decoders.split(",") if d and d != "none"]
        if not decoders:
            continue
        models = {dec: build(name, dec, H, W) for dec in decoders}
        mem = {dec: peak_memory(name, dec, H, W, batches, threads) for dec in decoders}
        for b in batches:
            x = torch.randn(b, 3, H, W)
            with torch.inference_mode():
                t = compare({dec: (lambda m=m: m(x)) for dec, m in models.items()}, args.repeats)
            for dec in decoders:
                best = min(t[dec])
                dec_rows.append(f"| {name} + {dec} | {b} | {best * 1e3:.0f} | {b / best:.2f} | {mem[dec][b]:.0f} |")
                print(dec_rows[-1], flush=True)
        del models
    text = "\n".join([head, "", *enc_rows, "", *(dec_rows if len(dec_rows) > 2 else []), ""])
    print("\n" + text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()

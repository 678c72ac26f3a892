"""Service load benchmark: 1, 4 and 8 concurrent clients against `encseg serve` on 127.0.0.1, with
micro-batching off (--max-batch 1) and on, measured side by side in one run.

Prints throughput, p50/p99 latency, errors and mean batch size per level, and the on/off throughput
ratio per level (goal: >= 1.5x at 8 clients with 0 errors). Each level is bounded in time
(--seconds) and in count (--max-requests). Both servers run at once (the idle one costs nothing),
and each level runs off then on back to back, so drift of a shared machine hits both alike.

    .venv/bin/python benchmarks/bench_service.py --seconds 10
    .venv/bin/python benchmarks/bench_service.py --checkpoint runs/demo/model.safetensors --size 256x512

Without --checkpoint it serves a randomly initialised SETR (vit-tiny encoder, naive decoder): the
timing does not depend on the weights. Images come from the procedural street benchmark, each
encrypted with its own fresh key before the clock starts (keys discarded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HOST = "127.0.0.1"  # loopback only


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def make_checkpoint(folder: Path, size: tuple[int, int], encoder: str, decoder: str) -> Path:
    import torch

    from encseg.models import SETRConfig, build_setr, save_checkpoint

    torch.manual_seed(0)
    cfg = SETRConfig(encoder=encoder, decoder=decoder, num_classes=19, img_size=size, aux=False)
    return save_checkpoint(folder / "bench.safetensors", build_setr(cfg).eval(), cfg, {"scheme": "bs-np-cs"})


def make_payloads(n: int, size: tuple[int, int], scheme_name: str) -> list[bytes]:
    from encseg.cipher import Key, Scheme, encrypt
    from encseg.cipher.io import encode_png, metadata_text
    from encseg.data.streets import render_scene

    scheme = Scheme.parse(scheme_name)
    out = []
    for i in range(n):
        enc = encrypt(render_scene(1000 + i, size)[0], Key.generate(), scheme)
        out.append(encode_png(enc.data, metadata_text(scheme, enc.original_size)))
    return out


class Server:
    """`encseg serve` in a subprocess on a loopback port."""

    def __init__(self, checkpoint: Path, max_batch: int, max_wait_ms: float, threads: int, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        exe = Path(sys.executable).parent / "encseg"
        cmd = [str(exe), "serve", "--checkpoint", str(checkpoint), "--host", HOST, "--port", str(self.port),
               "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--log-level", "warning"]
        if threads:
            cmd += ["--threads", str(threads)]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("server did not become ready")

    def stats(self) -> dict:
        return httpx.get(self.url + "/v1/info", timeout=10).json()["batching"]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def load(url: str, payloads: list[bytes], clients: int, seconds: float, max_requests: int) -> dict:
    """`clients` closed-loop clients posting for `seconds` (or until `max_requests` in all)."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    stop = time.perf_counter() + seconds

    async def client(i: int, c: httpx.AsyncClient) -> None:
        nonlocal sent
        j = i
        while time.perf_counter() < stop and sent < max_requests:
            sent += 1
            data = payloads[j % len(payloads)]
            j += clients
            t0 = time.perf_counter()
            try:
                r = await c.post("/v1/segment", files={"image": ("e.png", data, "image/png")})
                ok = r.status_code == 200
                why = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                ok, why = False, type(exc).__name__
            if ok:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[why] = errors.get(why, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, c) for i in range(clients)))
        elapsed = time.perf_counter() - t0
    lat = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {"clients": clients, "ok": len(latencies), "errors": sum(errors.values()), "error_kinds": errors,
            "seconds": round(elapsed, 2), "rps": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, help="serve this checkpoint (default: a random vit-tiny SETR)")
    ap.add_argument("--size", default="64x128", help="encrypted image size HxW (multiples of 16)")
    ap.add_argument("--encoder", default="vit-tiny")
    ap.add_argument("--decoder", default="naive")
    ap.add_argument("--scheme", default="bs-np-cs")
    ap.add_argument("--levels", default="1,4,8", help="concurrent clients per level")
    ap.add_argument("--seconds", type=float, default=30.0, help="measured seconds per level and mode")
    ap.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each level")
    ap.add_argument("--max-requests", type=int, default=20000, help="cap on requests per level and mode")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each server (0: all cores)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    h, w = (int(v) for v in args.size.lower().split("x"))
    levels = [int(v) for v in args.levels.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="encseg-bench-"))
    ckpt = args.checkpoint or make_checkpoint(tmp, (h, w), args.encoder, args.decoder)
    payloads = make_payloads(16, (h, w), args.scheme)
    modes = {"off": (1, 0.0), "on": (args.max_batch, args.max_wait_ms)}
    servers = {m: Server(ckpt, mb, wait, args.threads, tmp / f"server-{m}.log") for m, (mb, wait) in modes.items()}
    rows = []
    try:
        for s in servers.values():
            s.wait_ready()
        model = ckpt.name if args.checkpoint else f"random SETR {args.encoder}/{args.decoder}"
        print(f"service benchmark: {model}, {h}x{w} encrypted PNGs ({args.scheme}), {args.seconds:g} s per level, "
              f"batching on = max_batch {args.max_batch} / {args.max_wait_ms:g} ms, server and clients on {HOST}, "
              f"{os.cpu_count()} CPUs")
        print(f"{'clients':>7} {'batching':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'mean batch':>10}")
        for n in levels:
            for mode, srv in servers.items():
                asyncio.run(load(srv.url, payloads, n, args.warmup, args.max_requests))
                before = srv.stats()
                r = asyncio.run(load(srv.url, payloads, n, args.seconds, args.max_requests))
                after = srv.stats()
                batches = after["batches"] - before["batches"]
                r.update(mode=mode, mean_batch=(after["items"] - before["items"]) / batches if batches else 0.0)
                rows.append(r)
                print(f"{n:>7} {mode:>8} {r['rps']:>8.2f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} {r['errors']:>6} "
                      f"{r['mean_batch']:>10.2f}", flush=True)
    finally:
        for s in servers.values():
            s.close()
    by = {(r["clients"], r["mode"]): r for r in rows}
    ratios = {n: by[(n, "on")]["rps"] / by[(n, "off")]["rps"] if by[(n, "off")]["rps"] else float("nan") for n in levels}
    print("throughput ratio, batching on / off: " + ", ".join(f"{n} clients {ratios[n]:.2f}x" for n in levels))
    errors = sum(r["errors"] for r in rows)
    top = max(levels)
    verdict = "met" if ratios[top] >= 1.5 and errors == 0 else "NOT met"
    print(f"goal (>= 1.5x at {top} clients, 0 errors): {verdict} ({ratios[top]:.2f}x, {errors} errors)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                         "ratios": ratios, "errors": errors}, indent=2) + "\n")


if __name__ == "__main__":
    main()

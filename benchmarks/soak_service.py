"""Soak test: 8 honest clients against `encseg serve` on 127.0.0.1, first alone, then while hostile
and slow clients run, for the same time each. Bounded in time (--seconds per phase) and in count
(--max-requests per client); only loopback addresses are used.

    .venv/bin/python benchmarks/soak_service.py --seconds 60

Prints, per phase: honest requests, honest errors (goal 0), p50/p99 latency; the p99 ratio attack /
baseline (goal <= 2x); what the attackers sent and got (never a 5xx other than 503 when full); how
many slow connections the server cut off; and the server's RSS at start, peak and end.

Attackers run in a process of their own (their client-side work must not delay the honest clients'
event loop), each a closed loop, as fast as the server answers:
- hostile: a corpus of bad requests -- decompression bombs (a second IHDR, image data larger than
  its header), 5000-digit numbers and deep JSON in the encseg chunk, key material (fields,
  headers, query, text chunks), garbage bodies, bodies over the limit, lying Content-Lengths;
- slow: slowloris connections that trickle their headers a byte at a time, and bodies that stall.

Serves the shipped demo model (src/encseg/assets/demo.safetensors) on 128x256 encrypted images
from the procedural street benchmark unless --checkpoint/--size say otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

HOST = "127.0.0.1"  # loopback only
ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/PID/stat), 0.0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def honest_payloads(n: int, size: tuple[int, int], scheme_name: str) -> list[bytes]:
    from encseg.cipher import Key, Scheme, encrypt
    from encseg.cipher.io import encode_png, metadata_text
    from encseg.data.streets import render_scene

    scheme = Scheme.parse(scheme_name)
    out = []
    for i in range(n):
        enc = encrypt(render_scene(2000 + i, size)[0], Key.generate(), scheme)  # key dropped right here
        out.append(encode_png(enc.data, metadata_text(scheme, enc.original_size)))
    return out


def _chunk(t: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + t + body + struct.pack(">I", zlib.crc32(t + body))


def _ihdr(w: int, h: int) -> bytes:
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))


def _zeros(w: int, h: int) -> bytes:
    c = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * w)
    return b"".join(c.compress(row) for _ in range(h)) + c.flush()


def hostile_corpus(valid: bytes) -> list[dict]:
    """Request kwargs for httpx: every one must be refused (4xx) quickly."""
    sig, iend = b"\x89PNG\r\n\x1a\n", _chunk(b"IEND", b"")
    secret = os.urandom(32).hex()
    text = lambda k, v: _chunk(b"tEXt", k + b"\x00" + v)  # noqa: E731
    raw = lambda body, **q: {"content": body, "headers": {"content-type": "image/png"}, "params": q or {"scheme": "bs-np-cs"}}  # noqa: E731
    ihdr_ok = valid[8:33]
    idat = _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return [
        raw(sig + _ihdr(256, 128) + _ihdr(9000, 9000) + _chunk(b"IDAT", _zeros(9000, 40)) + iend),  # second IHDR
        raw(sig + ihdr_ok + _chunk(b"IDAT", _zeros(4096, 2048)) + iend),  # data larger than its header
        raw(sig + _ihdr(9000, 9000) + idat + iend),
        raw(sig + ihdr_ok + text(b"encseg", b'{"version":1,"scheme":{"block_size":' + b"9" * 5000 + b"}}") + idat + iend),
        raw(sig + ihdr_ok + text(b"encseg", b"[" * 60000) + idat + iend),
        raw(sig + ihdr_ok + text(b"key", secret.encode()) + idat + iend),
        raw(sig + ihdr_ok + _chunk(b"zTXt", b"c\x00\x00" + zlib.compress(b"a" * 10**7, 9)) + idat + iend),
        raw(sig + ihdr_ok + _chunk(b"prVt", b"") * 5000 + idat + iend),
        raw(valid + b"trailing garbage"),
        raw(valid, secret=secret),
        {**raw(valid), "headers": {"content-type": "image/png", "authorization": f"Bearer {secret}"}},
        {**raw(valid), "headers": {"content-type": "image/png", "x-key": secret}},
        {"files": {"image": ("x.png", valid, "image/png")}, "data": {"key": secret}},
        {"files": {"image": ("x.png", valid, "image/png")}, "data": {"scheme": secret}},
        {"files": {"image": ("x.png", valid, "image/png")}, "data": {"block_size": "-16"}},
        {"files": {"image": ("x.png", valid, "image/png")}, "data": {"topk": "9" * 400}},
        {"content": json.dumps({"image": base64.b64encode(valid).decode(), "topk": 1}).replace("1}", "1" + "0" * 5000 + "}"),
         "headers": {"content-type": "application/json"}},
        {"content": b"[" * 200000, "headers": {"content-type": "application/json"}},
        {"content": json.dumps({"image": "x", "scheme": {f"f{i}": 1 for i in range(20000)}}), "headers": {"content-type": "application/json"}},
        raw(os.urandom(20000)),
        {"content": b"GIF89a" + b"\x00" * 100, "headers": {"content-type": "image/gif"}},
    ]


async def honest_client(url: str, payloads: list[bytes], stop: float, max_requests: int, lat: list, errors: Counter) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=1)) as c:
        for i in range(max_requests):
            if time.monotonic() >= stop:
                return
            body = payloads[i % len(payloads)]
            t0 = time.perf_counter()
            try:
                r = await c.post("/v1/segment", content=body, headers={"content-type": "image/png"})
                if r.status_code != 200 or not r.content.startswith(b"\x89PNG"):
                    errors[f"HTTP {r.status_code}"] += 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] += 1
            lat.append(time.perf_counter() - t0)


async def hostile_client(url: str, corpus: list[dict], stop: float, max_requests: int, seen: Counter, rng: random.Random) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        for _ in range(max_requests):
            if time.monotonic() >= stop:
                return
            kw = rng.choice(corpus)
            try:
                r = await c.post("/v1/segment", **kw)
                seen[r.status_code] += 1
            except httpx.HTTPError as exc:
                seen[type(exc).__name__] += 1


async def slow_client(port: int, stop: float, seen: Counter, rng: random.Random) -> None:
    """Slowloris (headers one byte at a time) or a stalled body; reconnects when cut off."""
    while time.monotonic() < stop:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            seen["connect-refused"] += 1
            await asyncio.sleep(0.5)
            continue
        seen["opened"] += 1
        stall_body = rng.random() < 0.3
        length = 100000 if rng.random() < 0.5 else 33 * 2**20  # a stalled body, or one over the limit
        data = (b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n\x89PNG" % length
                if stall_body else b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 10000)
        try:
            if stall_body:
                writer.write(data)
                await writer.drain()
                reply = await asyncio.wait_for(reader.read(4096), timeout=max(stop - time.monotonic(), 0.1))
            else:
                reply = b""
                for b in data:
                    if time.monotonic() >= stop:
                        break
                    writer.write(bytes([b]))
                    await writer.drain()
                    try:
                        reply = await asyncio.wait_for(reader.read(4096), timeout=0.5)
                    except asyncio.TimeoutError:
                        continue
                    break
            if reply.startswith(b"HTTP/1.1 413"):
                seen["refused (413, over the limit)"] += 1
            elif reply.startswith(b"HTTP/1.1 408") or reply == b"":
                seen["cut off (408/closed)"] += 1
            elif reply.startswith(b"HTTP/1.1 503"):
                seen["refused (503, connection cap)"] += 1
            else:
                seen[reply[:12].decode("latin-1")] += 1
        except (asyncio.TimeoutError, OSError):
            seen["still held at the end"] += 1
        finally:
            writer.close()


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


def attackers(url: str, port: int, seconds: float, valid: bytes, hostile: int, slow: int, max_requests: int, out,
              niceness: int = 0) -> None:
    """The hostile and slow clients, in their own process (so their work never delays the honest
    clients' event loop, only the server): puts (hostile statuses, slow outcomes) on `out`.
    `niceness`: the process's nice increment (a real attacker's client work runs on its own machine;
    on a 2-core box it would otherwise take CPU from the server it attacks)."""
    if niceness:
        os.nice(niceness)
    corpus = hostile_corpus(valid)
    seen_hostile: Counter = Counter()
    seen_slow: Counter = Counter()

    async def run():
        stop = time.monotonic() + seconds
        await asyncio.gather(*[hostile_client(url, corpus, stop, max_requests, seen_hostile, random.Random(i)) for i in range(hostile)],
                             *[slow_client(port, stop + 0.5, seen_slow, random.Random(100 + i)) for i in range(slow)])

    asyncio.run(run())
    out.put((dict(seen_hostile), dict(seen_slow)))


async def phase(url: str, pid: int, seconds: float, payloads: list[bytes], honest: int, max_requests: int) -> dict:
    stop = time.monotonic() + seconds
    lat: list[float] = []
    errors: Counter = Counter()
    rss = [rss_kib(pid)]
    cpu0, t0 = cpu_seconds(pid), time.monotonic()

    async def sample():
        while time.monotonic() < stop:
            rss.append(rss_kib(pid))
            await asyncio.sleep(0.5)

    await asyncio.gather(sample(), *[honest_client(url, payloads, stop, max_requests, lat, errors) for _ in range(honest)])
    await asyncio.sleep(1.0)
    rss.append(rss_kib(pid))
    return {"requests": len(lat), "errors": dict(errors), "p50": percentile(lat, 50), "p99": percentile(lat, 99),
            "rss_start": rss[0], "rss_peak": max(rss), "rss_end": rss[-1],
            "server_cpu": (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60, help="length of each phase")
    ap.add_argument("--checkpoint", type=Path, default=ROOT / "src/encseg/assets/demo.safetensors")
    ap.add_argument("--size", default="128x256", help="HxW of the honest clients' images")
    ap.add_argument("--scheme", default="bs-np-cs")
    ap.add_argument("--honest", type=int, default=8)
    ap.add_argument("--hostile", type=int, default=4)
    ap.add_argument("--slow", type=int, default=60)
    ap.add_argument("--max-requests", type=int, default=5000, help="per client and phase")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of the server (0: its default)")
    ap.add_argument("--attacker-nice", type=int, default=0,
                    help="nice increment of the attackers' process (their client work off the server's CPU share)")
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    payloads = honest_payloads(8, (h, w), args.scheme)
    port = free_port()
    url = f"http://{HOST}:{port}"
    cmd = [str(Path(sys.executable).parent / "encseg"), "serve", "--checkpoint", str(args.checkpoint), "--host", HOST,
           "--port", str(port), "--log-level", "warning"] + (["--threads", str(args.threads)] if args.threads else [])
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                print(open(log.name).read()[-2000:])
                raise SystemExit("the server did not start")
            time.sleep(0.2)
        httpx.post(url + "/v1/segment", content=payloads[0], headers={"content-type": "image/png"}, timeout=60)  # warm-up
        base = asyncio.run(phase(url, proc.pid, args.seconds, payloads, args.honest, args.max_requests))
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        attack_proc = ctx.Process(target=attackers, args=(url, port, args.seconds, payloads[0], args.hostile, args.slow,
                                                          args.max_requests, queue, args.attacker_nice))
        attack_proc.start()
        time.sleep(2.0)  # the attackers are running before the honest clients start
        attack = asyncio.run(phase(url, proc.pid, args.seconds - 2.0, payloads, args.honest, args.max_requests))
        attack["attacker_cpu"] = cpu_seconds(attack_proc.pid) / args.seconds  # still running its last half second
        attack["hostile"], attack["slow"] = queue.get(timeout=args.seconds + 120)
        attack_proc.join(timeout=30)
        alive = httpx.get(url + "/healthz", timeout=10).status_code
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    server_log = open(log.name).read()
    os.unlink(log.name)
    tracebacks = server_log.count("Traceback")
    five = sum(v for k, v in attack["hostile"].items() if isinstance(k, int) and k >= 500 and k != 503)
    print(f"soak: {args.honest} honest clients, {args.seconds:g} s per phase, {h}x{w} images, {args.checkpoint.name}")
    for name, r in (("baseline", base), ("under attack", attack)):
        print(f"  {name:13s} honest requests {r['requests']:5d}  errors {sum(r['errors'].values())} {r['errors'] or ''}  "
              f"p50 {r['p50'] * 1000:7.1f} ms  p99 {r['p99'] * 1000:7.1f} ms  "
              f"RSS start/peak/end {r['rss_start'] // 1024}/{r['rss_peak'] // 1024}/{r['rss_end'] // 1024} MiB  "
              f"server CPU {r['server_cpu']:.2f} cores")
    print(f"  hostile ({args.hostile} clients): {sum(attack['hostile'].values())} requests, statuses {dict(sorted(attack['hostile'].items(), key=str))}")
    print(f"  slow ({args.slow} clients): {dict(attack['slow'])}")
    print(f"  attackers' process: {attack['attacker_cpu']:.2f} cores (nice +{args.attacker_nice})")
    print(f"  5xx other than 503 to attackers: {five}; tracebacks in the server log: {tracebacks}; /healthz after: {alive}")
    ratio = attack["p99"] / base["p99"] if base["p99"] else float("nan")
    print(f"  p99 ratio attack/baseline: {ratio:.2f}x (goal <= 2x); honest errors: "
          f"{sum(base['errors'].values()) + sum(attack['errors'].values())} (goal 0)")
    return 0 if (five == 0 and alive == 200 and not attack["errors"] and not base["errors"]) else 1


if __name__ == "__main__":
    sys.exit(main())

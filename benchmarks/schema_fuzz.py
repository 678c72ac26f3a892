"""Schema-driven fuzzing of the live service: schemathesis (`st run --checks all`) against
`encseg serve`'s OpenAPI document, on 127.0.0.1 only, bounded in examples and time.

    .venv/bin/python benchmarks/schema_fuzz.py --max-examples 50

Serves a 1x1-convolution stand-in model in this process (the contract does not depend on the
weights), runs schemathesis in a subprocess, and sorts its failures into
- accepted: the one constraint JSON Schema cannot state -- a generated body that matches the schema
  but is not a PNG the service can read (binary/base64 image), reported by `positive_data_acceptance`
  on POST /v1/segment and answered 400/413/415/422 as the document says;
- everything else, which must be zero.
Prints both counts and exits non-zero if any failure is not accepted. tests/test_service_schema.py
runs it with a small budget.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCEPTED = {("POST /v1/segment", "positive_data_acceptance")}  # binary-body constraint (documented)


def serve_stand_in():
    """uvicorn with the service around a stand-in model on 127.0.0.1:<free port>; returns (server, thread, url)."""
    import torch
    import uvicorn

    from encseg.cipher import Scheme
    from encseg.service.app import create_app
    from encseg.service.segmenter import ModelInfo, Segmenter
    from encseg.service.server import guarded_protocol, uvicorn_options
    from encseg.service.settings import Limits, ServiceConfig

    torch.manual_seed(0)
    torch.set_num_threads(1)
    seg = Segmenter(torch.nn.Conv2d(3, 19, 1), ModelInfo("stand-in-1x1", 19, 16, schemes=[Scheme.parse("bs-np-cs")]))
    cfg = ServiceConfig(limits=Limits(max_body_bytes=1 << 20, max_pixels=256 * 256))
    opts = uvicorn_options(cfg)
    config = uvicorn.Config(create_app(seg, cfg), host="127.0.0.1", port=0, log_level="error", lifespan="on",
                            http=guarded_protocol(cfg), **opts)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, thread, f"http://127.0.0.1:{port}"


def run_schemathesis(url: str, max_examples: int, max_time: float, seed: int = 13) -> dict:
    """Run `st run --checks all` and return {"failures": [(operation, check, message)], "stdout": ...}."""
    exe = Path(sys.executable).parent / "st"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "events.ndjson"
        cmd = [str(exe), "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", str(max_examples),
               "--seed", str(seed), "--workers", "1", "--no-color",
               "--max-time", str(max_time), "--request-timeout", "20", "--report", "ndjson",
               "--report-ndjson-path", str(report), "--suppress-health-check", "all", "--generation-deterministic"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max_time + 300, env=env)
        failures = []
        if report.exists():
            for line in report.read_text().splitlines():
                failures += _failures_in(json.loads(line))
    return {"failures": sorted(set(failures)), "stdout": proc.stdout, "stderr": proc.stderr, "rc": proc.returncode}


def _failures_in(event: object, operation: str | None = None) -> list[tuple[str, str, str]]:
    """(operation label, check name, message) of every failed check found anywhere in an event."""
    out: list[tuple[str, str, str]] = []
    if isinstance(event, dict):
        label = event.get("label") if isinstance(event.get("label"), str) else operation
        if event.get("status") == "failure" and isinstance(event.get("name"), str):
            out.append((operation or "?", event["name"], str(event.get("failure_info") or event.get("message") or "")[:200]))
        for v in event.values():
            out += _failures_in(v, label)
    elif isinstance(event, list):
        for v in event:
            out += _failures_in(v, operation)
    return out


def split(failures: list[tuple[str, str, str]]) -> tuple[list, list]:
    accepted = [f for f in failures if (f[0], f[1]) in ACCEPTED]
    other = [f for f in failures if (f[0], f[1]) not in ACCEPTED]
    return accepted, other


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--max-examples", type=int, default=50)
    ap.add_argument("--max-time", type=float, default=300)
    args = ap.parse_args()
    server, thread, url = serve_stand_in()
    try:
        t0 = time.perf_counter()
        res = run_schemathesis(url, args.max_examples, args.max_time)
        seconds = time.perf_counter() - t0
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    accepted, other = split(res["failures"])
    tail = "\n".join(res["stdout"].splitlines()[-25:])
    print(tail)
    print(f"\nschemathesis --checks all, {args.max_examples} examples per operation, {seconds:.0f} s: "
          f"{len(other)} failure(s), {len(accepted)} accepted (binary-body constraint: {sorted({a[:2] for a in accepted})})")
    for f in other:
        print("FAILURE:", *f)
    return 1 if other else 0


if __name__ == "__main__":
    sys.exit(main())

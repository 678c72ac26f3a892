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


def run_schemathesis(url: str, max_examples: int, max_time: float) -> dict:
    """Run `st run --checks all`; returns {"failures": [(operation, code, title, status, detail)], ...}
    from its JUnit report (one <failure> per operation, numbered cases inside)."""
    exe = Path(sys.executable).parent / "st"
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        cmd = [str(exe), "run", f"{url}/openapi.json", "--checks", "all", "--max-examples", str(max_examples),
               "--workers", "1", "--no-color", "--max-time", str(int(max_time)), "--request-timeout", "20",
               "--report", "junit", "--report-junit-path", str(report), "--suppress-health-check", "all",
               "--generation-deterministic"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max_time + 300, env=env)
        failures = _junit_failures(report.read_text()) if report.exists() else []
    return {"failures": failures, "stdout": proc.stdout, "stderr": proc.stderr, "rc": proc.returncode}


def _junit_failures(xml: str) -> list[tuple[str, str, str, str, str]]:
    import re
    import xml.etree.ElementTree as ET

    out = []
    for case in ET.fromstring(xml).iter("testcase"):
        for failure in list(case.iter("failure")) + list(case.iter("error")):
            text = failure.text or failure.get("message") or ""
            for block in re.split(r"\n(?=\d+\. Test Case ID)", text):
                checks = re.findall(r"^- (ST\d+|[A-Za-z_]+) ?(.*)$", block, re.M)
                status = re.search(r"^\[(\d{3})\]", block, re.M)
                detail = re.search(r'"detail":\s*"([^"]*)"', block)
                for code, title in checks or [("error", block.strip().splitlines()[0][:100] if block.strip() else "")]:
                    out.append((case.get("name", "?"), code, title.strip(), status.group(1) if status else "",
                                detail.group(1) if detail else ""))
    return sorted(set(out))


# The binary-body constraint: what JSON Schema cannot say about the image bytes. A schema-valid
# request refused for the image itself (not a PNG the service reads, its mode, size or geometry,
# or a scheme it does not carry in its encseg chunk) is documented (400/413/415/422), not a failure.
_IMAGE_WORDS = ("PNG", "JPEG", "image", "pixels", "no scheme", "base64", "multiple of", "does not fit")


def split(failures: list[tuple[str, ...]]) -> tuple[list, list]:
    accepted, other = [], []
    for f in failures:
        op, code, _, status, detail = f
        binary = (op == "POST /v1/segment" and code == "ST202" and status in ("400", "413", "415", "422")
                  and any(w in detail for w in _IMAGE_WORDS))
        (accepted if binary else other).append(f)
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
    if res["rc"] not in (0, 1):  # 0: no failure, 1: failures (sorted below); anything else: it did not run
        print(res["stdout"][-3000:], res["stderr"][-3000:])
        other.append(("st run", "exit", str(res["rc"]), "", ""))
    tail = "\n".join(res["stdout"].splitlines()[-25:])
    print(tail)
    print(f"\nschemathesis --checks all, {args.max_examples} examples per operation, {seconds:.0f} s: "
          f"{len(other)} failure(s), {len(accepted)} accepted as the binary-body constraint")
    for f in accepted:
        print("accepted:", *f)
    for f in other:
        print("FAILURE:", *f)
    return 1 if other else 0


if __name__ == "__main__":
    sys.exit(main())

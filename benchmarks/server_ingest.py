"""Bulk-create throughput of the local server, in annotations per second.

Starts ``python -m atomscale_accessors serve`` in a separate process on a free port with a
temporary SQLite file, creates a sample, pre-encodes every request body (so the client
does as little as possible and the figure is the server's), then posts the bodies to the
bulk route from a few threads and prints the rate. Each answer is checked to be a 200
holding as many objects as were sent.

Run it (needs the ``server`` extra) with::

    python benchmarks/server_ingest.py                 # 40 requests of 5,000 annotations
    python benchmarks/server_ingest.py --requests 100 --batch 5000 --concurrency 2

Target on a 2-core machine: at least 50,000 annotations per second.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

TARGET = 50_000


def _start_server(db_path: Path) -> tuple[subprocess.Popen[str], str, str]:
    """Start the server process; return it, its endpoint and its (generated) key."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "atomscale_accessors",
            "serve",
            "--port",
            "0",
            "--db",
            str(db_path),
            "--no-access-log",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    endpoint = key = None
    deadline = time.monotonic() + 30
    while (endpoint is None or key is None) and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if found := re.search(r"(http://\S+/)", line):
            endpoint = found.group(1)
        if found := re.search(r"API key \(generated, shown once\): (\S+)", line):
            key = found.group(1)
    if endpoint is None or key is None:
        process.kill()
        raise RuntimeError("the server did not start")
    # the socket is bound before the lines are printed, but wait until it answers
    while time.monotonic() < deadline:
        try:
            requests.get(f"{endpoint}physical_samples/", headers={"X-API-KEY": key}, timeout=2)
            break
        except requests.ConnectionError:
            time.sleep(0.05)
    return process, endpoint, key


def _bodies(count: int, batch: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        annotations = [
            {
                "property_name": "thickness",
                "property_value": rng.uniform(50, 150),
                "property_unit": "nm",
                "char_source_type": "ellipsometry",
                "coord_ref_frame": "sample_relative",
                "coord_units": "mm",
                "coord_x": rng.uniform(-75, 75),
                "coord_y": rng.uniform(-75, 75),
            }
            for _ in range(batch)
        ]
        bodies.append(json.dumps({"annotations": annotations}).encode())
    return bodies


def run(requests_count: int, batch: int, concurrency: int) -> float:
    """Run the benchmark; return annotations per second."""
    with tempfile.TemporaryDirectory() as tmp:
        process, endpoint, key = _start_server(Path(tmp) / "bench.sqlite")
        try:
            headers = {"X-API-KEY": key, "Content-Type": "application/json"}
            answer = requests.post(
                f"{endpoint}physical_samples/", json={"name": "bench"}, headers=headers, timeout=30
            )
            answer.raise_for_status()
            url = f"{endpoint}physical_samples/{answer.json()['id']}/annotations/bulk"
            warmup = _bodies(2, batch, seed=1)
            bodies = _bodies(requests_count, batch)
            print(
                f"{requests_count} requests x {batch} annotations,"
                f" {len(bodies[0]) / 2**20:.2f} MiB each, {concurrency} client threads"
            )
            local = threading.local()

            def post(body: bytes) -> None:
                session = getattr(local, "session", None)
                if session is None:
                    session = local.session = requests.Session()
                response = session.post(url, data=body, headers=headers, timeout=120)
                if response.status_code != 200:
                    raise RuntimeError(f"status {response.status_code}: {response.text[:200]}")
                if response.content.count(b'"physical_sample_id"') != batch:
                    raise RuntimeError("the answer does not hold one object per annotation")

            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(post, warmup))
                start = time.perf_counter()
                list(pool.map(post, bodies))
                elapsed = time.perf_counter() - start
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    rate = requests_count * batch / elapsed
    print(f"{requests_count * batch} annotations in {elapsed:.2f} s")
    print(f"{rate:,.0f} annotations/second (target {TARGET:,})")
    return rate


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; exit status 1 when under the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=40, help="timed requests")
    parser.add_argument("--batch", type=int, default=5000, help="annotations per request")
    parser.add_argument("--concurrency", type=int, default=2, help="client threads")
    args = parser.parse_args(argv)
    rate = run(args.requests, args.batch, args.concurrency)
    return 0 if rate >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())

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
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from _common import server_process

TARGET = 50_000


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
    with server_process() as server:
        endpoint, key = server.endpoint, server.api_key
        headers = {"X-API-KEY": key, "Content-Type": "application/json"}
        url = f"{endpoint}physical_samples/{server.create_sample('bench')}/annotations/bulk"
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

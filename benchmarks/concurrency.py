"""Wall time of an upload against a slow server: one request in flight against eight.

The local server runs in another process (this script started again with ``--serve``,
holding a :class:`~atomscale_accessors.server.LocalServer` with 50 ms of latency on every
request), so that its work does not compete with the client's threads for this process's
interpreter. A table of 100,000 thickness points is uploaded in 200 chunks of 500, once
with ``max_workers=1`` and once with ``max_workers=8``, each to a fresh sample; the wall
time of ``df.atomscale.upload`` is measured (best of ``--repeat`` runs) and every
upload's result checked to hold one annotation per row.

Run it (needs the ``server`` extra)::

    python benchmarks/concurrency.py
    python benchmarks/concurrency.py --latency 0.1 --chunks 100 --repeat 3

Target: ``max_workers=8`` is at least 4 times faster than ``max_workers=1``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np
import pandas as pd
from _common import RunningServer

import atomscale_accessors

TARGET = 4.0
MAPPING = {
    "x": "x_mm",
    "y": "y_mm",
    "value": "thk",
    "property_name": "thickness",
    "property_unit": "nm",
    "coord_units": "mm",
}


def serve(latency: float) -> None:
    """Run a local server with latency until standard input closes."""
    from atomscale_accessors.server import LocalServer

    with LocalServer(latency=latency, max_bulk_annotations=None) as server:
        print(server.endpoint, server.api_key, flush=True)
        sys.stdin.read()


def thickness_table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    return pd.DataFrame(
        {
            "x_mm": (np.arange(n) % side) * 0.5 - 150.0,
            "y_mm": (np.arange(n) // side) * 0.5 - 150.0,
            "thk": 100.0 + rng.normal(0.0, 2.0, n),
        }
    )


def timed_upload(df: pd.DataFrame, server: RunningServer, chunk: int, workers: int) -> float:
    client = atomscale_accessors.Client(api_key=server.api_key, endpoint=server.endpoint)
    sample_id = server.create_sample(f"workers-{workers}-{time.monotonic_ns()}")
    started = time.perf_counter()
    created = df.atomscale.upload(
        sample_id,
        client=client,
        chunksize=chunk,
        max_workers=workers,
        progress_bar=False,
        **MAPPING,
    )
    wall = time.perf_counter() - started
    if len(created) != len(df) or not created["annotation_id"].is_unique:
        raise RuntimeError(f"max_workers={workers}: {len(created)} annotations for {len(df)}")
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument("--chunks", type=int, default=200, help="requests of the upload")
    parser.add_argument("--chunk-size", type=int, default=500, help="annotations per request")
    parser.add_argument("--workers", type=int, default=8, help="the concurrent run's max_workers")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best counts")
    parser.add_argument("--serve", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        serve(args.serve)
        return 0

    df = thickness_table(args.chunks * args.chunk_size)
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(args.latency)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        endpoint, key = process.stdout.readline().split()
        server = RunningServer(endpoint, key)
        times = {
            workers: min(
                timed_upload(df, server, args.chunk_size, workers) for _ in range(args.repeat)
            )
            for workers in (1, args.workers)
        }
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(30)
    speedup = times[1] / times[args.workers]
    print(
        f"{len(df):,} annotations in {args.chunks} chunks of {args.chunk_size}, "
        f"{args.latency * 1000:.0f} ms of server latency per request"
    )
    for workers, wall in times.items():
        print(f"max_workers={workers}: {wall:6.2f} s wall")
    print(f"speed-up: {speedup:.1f}x (target >= {TARGET:.0f}x)")
    return 0 if speedup >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Client cost of uploading a 1000 x 1000 thickness map: the library against the naive way.

The naive way is what the API documentation suggests writing by hand: a Python loop that
builds one dict per point, ``requests.post(..., json=...)`` per chunk, and
``pd.DataFrame(response.json())``. Both upload the same million annotations, in chunks of
the same size, to the same local server running in another process, so the server does the
same work and the CPU seconds measured here (``time.process_time``, all threads of this
process) are the client's alone. The library's result is checked bit for bit against the
map. The two alternate, three times each by default, and the medians are compared: the
client shares two cores with the server, and a single run can be off by a tenth.

Run it (needs the ``server`` extra)::

    python benchmarks/client_cost.py              # 1000 x 1000, chunks of 5000, 4 workers
    python benchmarks/client_cost.py --side 500 --workers 2 --repeat 1
    python benchmarks/client_cost.py --chunk-size 50000   # 20 requests instead of 200

Targets: the library uses at most 0.15 of the naive client's CPU time, and at most
3 s of client CPU for the whole map (flatten, validate, encode, decode into the frame).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import pandas as pd
import xarray as xr
from _common import RunningServer, naive_upload, server_process

import atomscale_accessors

CHUNK = 5_000
TARGET_RATIO = 0.15


def thickness_map(side: int, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    coords = np.linspace(-150.0, 150.0, side)
    values = 100.0 + rng.normal(0.0, 2.0, (side, side))
    return xr.Dataset(
        {"thickness": (("y", "x"), values, {"units": "nm"})},
        coords={"y": ("y", coords, {"units": "mm"}), "x": ("x", coords, {"units": "mm"})},
    )


def library(
    ds: xr.Dataset, server: RunningServer, workers: int, run: int = 1, chunk: int = CHUNK
) -> tuple[float, float, pd.DataFrame]:
    client = atomscale_accessors.Client(api_key=server.api_key, endpoint=server.endpoint)
    sample_id = server.create_sample(f"library {run}")
    cpu, wall = time.process_time(), time.perf_counter()
    created = ds.atomscale.upload(
        sample_id, client=client, chunksize=chunk, max_workers=workers, progress_bar=False
    )
    return time.process_time() - cpu, time.perf_counter() - wall, created


def naive(
    ds: xr.Dataset, server: RunningServer, run: int = 1, chunk: int = CHUNK
) -> tuple[float, float, pd.DataFrame]:
    sample_id = server.create_sample(f"naive {run}")
    cpu, wall = time.process_time(), time.perf_counter()
    result = naive_upload(ds, server.endpoint, server.api_key, sample_id, chunk)
    return time.process_time() - cpu, time.perf_counter() - wall, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=1000, help="grid side (points per axis)")
    parser.add_argument("--workers", type=int, default=4, help="library's max_workers")
    parser.add_argument(
        "--chunk-size", type=int, default=CHUNK, help="annotations per request, both ways"
    )
    parser.add_argument("--skip-naive", action="store_true", help="measure the library only")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (medians compared)")
    args = parser.parse_args(argv)
    ds = thickness_map(args.side)
    expected = ds["thickness"].to_numpy().ravel()
    print(f"{args.side**2:,} annotations, chunks of {args.chunk_size:,}, {args.workers} workers")
    lib: list[tuple[float, float]] = []
    base: list[tuple[float, float]] = []
    exact = True
    with server_process() as server:
        # A small map first, untimed: the modules an upload loads on first use (pandera's
        # models among them) are loaded before the clock runs. Import time has a
        # benchmark of its own (import_time.py).
        library(thickness_map(10), server, args.workers, 0)
        for run in range(1, args.repeat + 1):
            cpu, wall, created = library(ds, server, args.workers, run, args.chunk_size)
            same = np.array_equal(created["property_value"].to_numpy(), expected)
            exact &= same
            lib.append((cpu, wall))
            print(f"run {run} library: {cpu:6.2f} s CPU {wall:6.2f} s wall  (bit-exact: {same})")
            del created
            if not args.skip_naive:
                cpu, wall, result = naive(ds, server, run, args.chunk_size)
                base.append((cpu, wall))
                print(f"run {run} naive:   {cpu:6.2f} s CPU {wall:6.2f} s wall")
                del result
    lib_cpu, lib_wall = _medians(lib)
    print(f"median library: {lib_cpu:6.2f} s CPU {lib_wall:6.2f} s wall")
    if args.skip_naive:
        return 0 if exact and lib_cpu <= 3.0 else 1
    naive_cpu, naive_wall = _medians(base)
    print(f"median naive:   {naive_cpu:6.2f} s CPU {naive_wall:6.2f} s wall")
    ratio = lib_cpu / naive_cpu
    print(
        f"CPU ratio library/naive: {ratio:.3f} (target <= {TARGET_RATIO}); library CPU target <= 3 s"
    )
    return 0 if exact and ratio <= TARGET_RATIO and lib_cpu <= 3.0 else 1


def _medians(runs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(c for c, _ in runs), statistics.median(w for _, w in runs)


if __name__ == "__main__":
    raise SystemExit(main())

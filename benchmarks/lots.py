"""A lot of many samples against a slow server: threads, a cluster, and client CPU.

The local server runs in another process with 50 ms of latency on every request (started
as ``concurrency.py --serve``). A table of ``--samples`` wafers of ``--points`` thickness
points each (1,000 x 500 by default) goes up with ``sample_column="wafer"``:

* pandas, ``max_workers=1`` against ``max_workers=8`` (wall time);
* the same table as a dask DataFrame on a ``LocalCluster`` of 2 worker processes (one
  thread each, ``max_workers=8`` requests in flight per task), against the pandas run;
* client CPU per annotation of the pandas lot (``max_workers=8``) against the
  single-sample path: the same wafers uploaded one call per wafer, 8 calls at once
  (and, for scale, against all the points uploaded to one sample: a lot pays each
  upload's fixed cost, two requests and their bookkeeping, once per sample).

Every run goes to fresh samples, created beforehand (not timed); every result is checked
to account for one annotation per row, and the server's count for every sample of the
dask run is checked too.

Run it (needs the ``server`` and ``dask`` extras)::

    python benchmarks/lots.py
    python benchmarks/lots.py --samples 200 --points 500

Targets: ``max_workers=8`` at least 6 times faster than ``max_workers=1``; the lot's client
CPU per annotation within 10% of the sample-by-sample uploads'.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _common import RunningServer
from concurrency import MAPPING

import atomscale_accessors

SPEED_TARGET = 6.0
CPU_TARGET = 1.10


def lot_table(samples: int, points: int, tag: str, seed: int = 0) -> pd.DataFrame:
    """``points`` thickness points on a grid for each of ``samples`` wafers named by tag."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(points)))
    site = np.tile(np.arange(points), samples)
    return pd.DataFrame(
        {
            "wafer": np.repeat([f"{tag}-{i:06d}" for i in range(samples)], points),
            "x_mm": (site % side) * 2.0 - 100.0,
            "y_mm": (site // side) * 2.0 - 100.0,
            "thk": 100.0 + rng.normal(0.0, 2.0, samples * points),
        }
    )


def create_samples(server: RunningServer, names: list[str]) -> None:
    """Create the samples of a run, many requests at once (the latency is not measured)."""
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(server.create_sample, names))


def measured(run: Callable[[], Any]) -> tuple[float, float, Any]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = run()
    return time.process_time() - cpu, time.perf_counter() - wall, result


def pandas_lot(server: RunningServer, df: pd.DataFrame, workers: int) -> tuple[float, float]:
    client = atomscale_accessors.Client(api_key=server.api_key, endpoint=server.endpoint)
    create_samples(server, df["wafer"].unique().tolist())
    cpu, wall, created = measured(
        lambda: df.atomscale.upload(
            sample_column="wafer", client=client, max_workers=workers, progress_bar=False, **MAPPING
        )
    )
    if len(created) != len(df) or not created["annotation_id"].is_unique:
        raise RuntimeError(f"max_workers={workers}: {len(created)} annotations for {len(df)}")
    return cpu, wall


def sample_by_sample(server: RunningServer, df: pd.DataFrame, workers: int) -> tuple[float, float]:
    """The single-sample path: each wafer's rows uploaded by its own call (``workers``
    calls at once, one request in flight each), to samples given by id."""
    client = atomscale_accessors.Client(api_key=server.api_key, endpoint=server.endpoint)
    names = df["wafer"].unique().tolist()
    create_samples(server, names)
    ids = {s["name"]: s["id"] for s in client.list_samples()}
    parts = [(ids[name], part.drop(columns="wafer")) for name, part in df.groupby("wafer")]

    def one(item: tuple[str, pd.DataFrame]) -> int:
        sample_id, part = item
        return len(
            part.atomscale.upload(
                sample_id, client=client, max_workers=1, progress_bar=False, **MAPPING
            )
        )

    def run() -> int:
        with ThreadPoolExecutor(workers) as pool:
            return sum(pool.map(one, parts))

    cpu, wall, created = measured(run)
    if created != len(df):
        raise RuntimeError(f"sample by sample: {created} annotations for {len(df)}")
    return cpu, wall


def one_sample(server: RunningServer, df: pd.DataFrame, workers: int) -> tuple[float, float]:
    """All the points to one sample (positions spread so that none repeats), for scale."""
    client = atomscale_accessors.Client(api_key=server.api_key, endpoint=server.endpoint)
    sample_id = server.create_sample(f"one-sample-{time.monotonic_ns()}")
    wafer = pd.factorize(df["wafer"])[0]
    table = df.drop(columns="wafer").assign(x_mm=df["x_mm"] + 1_000.0 * wafer)
    cpu, wall, created = measured(
        lambda: table.atomscale.upload(
            sample_id, client=client, max_workers=workers, progress_bar=False, **MAPPING
        )
    )
    if len(created) != len(df):
        raise RuntimeError(f"one sample: {len(created)} annotations for {len(df)}")
    return cpu, wall


def dask_lot(
    server: RunningServer, df: pd.DataFrame, workers: int, partitions: int
) -> tuple[float, float, float]:
    """Wall time, driver CPU and workers' CPU of the lot on a cluster of two processes."""
    import dask
    import dask.dataframe as dd
    import distributed

    client = atomscale_accessors.Client(api_key=server.api_key, endpoint=server.endpoint)
    create_samples(server, df["wafer"].unique().tolist())
    ddf = dd.from_pandas(df, npartitions=partitions, sort=False)
    warnings.filterwarnings("ignore", "Sending large graph")  # sent once, to persist it
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as dask_client,
        dask.config.set(scheduler=dask_client),
    ):
        ddf = ddf.persist()  # the table on the workers, as data read by dask would be
        distributed.wait(ddf)
        before = sum(dask_client.run(time.process_time).values())
        cpu, wall, summary = measured(
            lambda: ddf.atomscale.upload(
                sample_column="wafer", client=client, max_workers=workers, **MAPPING
            )
        )
        on_workers = sum(dask_client.run(time.process_time).values()) - before
    if int(summary["created"].sum()) != len(df) or len(summary) != df["wafer"].nunique():
        raise RuntimeError(f"dask: {int(summary['created'].sum())} annotations for {len(df)}")
    return cpu, wall, on_workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000, help="wafers in the lot")
    parser.add_argument("--points", type=int, default=500, help="points per wafer")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per request")
    parser.add_argument("--workers", type=int, default=8, help="max_workers of the fast runs")
    parser.add_argument("--partitions", type=int, default=8, help="of the dask frame")
    parser.add_argument("--skip-dask", action="store_true", help="threads only")
    args = parser.parse_args(argv)
    latency = str(args.latency)
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("concurrency.py")), "--serve", latency],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        endpoint, key = process.stdout.readline().split()
        server = RunningServer(endpoint, key)
        table = lambda tag: lot_table(args.samples, args.points, tag)  # noqa: E731
        n = args.samples * args.points
        print(
            f"{args.samples:,} samples x {args.points:,} points = {n:,} annotations, "
            f"{args.latency * 1000:.0f} ms of server latency per request"
        )
        serial_cpu, serial = pandas_lot(server, table("serial"), 1)
        print(f"pandas lot, max_workers=1:  {serial:7.2f} s wall {serial_cpu:6.2f} s CPU")
        lot_cpu, threaded = pandas_lot(server, table("threads"), args.workers)
        print(
            f"pandas lot, max_workers={args.workers}:  {threaded:7.2f} s wall {lot_cpu:6.2f} s CPU"
        )
        each_cpu, each_wall = sample_by_sample(server, table("each"), args.workers)
        print(
            f"sample by sample, {args.workers} at once: {each_wall:7.2f} s wall "
            f"{each_cpu:6.2f} s CPU"
        )
        one_cpu, one_wall = one_sample(server, table("one"), args.workers)
        print(
            f"all points to one sample, max_workers={args.workers}: {one_wall:7.2f} s wall "
            f"{one_cpu:6.2f} s CPU"
        )
        if not args.skip_dask:
            driver, wall, workers_cpu = dask_lot(
                server, table("dask"), args.workers, args.partitions
            )
            print(
                f"dask lot, 2 processes x 1 thread, max_workers={args.workers} per task, "
                f"{args.partitions} partitions: {wall:7.2f} s wall, driver {driver:5.2f} s "
                f"CPU, workers {workers_cpu:6.2f} s CPU ({serial / wall:.1f}x the serial "
                f"run, {threaded / wall:.2f}x the threaded one)"
            )
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait(30)
    speedup = serial / threaded
    ratio = lot_cpu / each_cpu
    print(
        f"speed-up max_workers={args.workers} vs 1: {speedup:.1f}x (target >= {SPEED_TARGET:.0f}x)"
    )
    print(
        f"client CPU per annotation: lot {lot_cpu / n * 1e6:.1f} us, sample by sample "
        f"{each_cpu / n * 1e6:.1f} us: {ratio:.2f} (target <= {CPU_TARGET:.2f}); all points "
        f"to one sample {one_cpu / n * 1e6:.1f} us"
    )
    return 0 if speedup >= SPEED_TARGET and ratio <= CPU_TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Peak memory of uploading a dask-backed map: the library against the naive way.

A ``side x side`` thickness map (``xr.Dataset`` with ``thickness(y, x)`` in nm on mm
coordinates, a dask array in ``--chunk x --chunk`` blocks, drawn block by block from a
seeded generator) is uploaded to the local server running in another process. Each
variant runs in a fresh Python process of its own, so that its peak resident memory
(``VmHWM`` of ``/proc/self/status``) is its alone:

* ``library``: ``ds.atomscale.upload(sample_id, client=..., progress_bar=False)``; the
  returned annotation frame is part of the peak, and its size is reported too
  (``frame.memory_usage(deep=True).sum()``). It runs for a 1000 x 1000 and for the
  ``--side`` map, to show what memory grows with.
* ``naive``: what the API documentation suggests writing by hand: ``ds.to_dataframe()``
  of the whole map, then a loop building one dict per point, ``requests.post(json=...)``
  per chunk of 5,000 and ``pd.DataFrame(response.json())`` per answer, concatenated.

Run it (needs the ``server`` and ``dask`` extras; Linux, for ``/proc``)::

    python benchmarks/memory.py                     # 2000 x 2000 map, naive way too
    python benchmarks/memory.py --naive-side 1000   # the naive way on a smaller map
    python benchmarks/memory.py --skip-naive

Targets: the library's peak for the 2000 x 2000 map (4 million points) is at most 0.7 GB
(7 x 10^8 bytes), returned frame included; and apart from the returned frame (peak minus
frame), memory grows with the chunk, not with the map: at most 1.5 times as much for the
map with 4 times the points.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import xarray as xr

TARGET_PEAK = 7 * 10**8
TARGET_GROWTH = 1.5
NAIVE_CHUNK = 5_000
SMALL_SIDE = 1000
MIB = 2**20


def _status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmHWM``: peak resident set; ``VmRSS``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def thickness_map(side: int, chunk: int, seed: int = 0) -> xr.Dataset:
    # Imports inside the runs: the driver process stays small, and each run's start-up
    # memory is measured in the run's own process.
    import dask.array as da
    import numpy as np
    import xarray as xr

    coords = np.linspace(-150.0, 150.0, side)
    values = da.random.RandomState(seed).normal(100.0, 2.0, (side, side), chunks=(chunk, chunk))
    return xr.Dataset(
        {"thickness": (("y", "x"), values, {"units": "nm"})},
        coords={"y": ("y", coords, {"units": "mm"}), "x": ("x", coords, {"units": "mm"})},
    )


# -- one variant, in its own process -------------------------------------------------------
def run_library(side: int, chunk: int, endpoint: str, key: str, sample_id: str) -> dict:
    import atomscale_accessors

    ds = thickness_map(side, chunk)
    client = atomscale_accessors.Client(api_key=key, endpoint=endpoint)
    baseline = _status_kib("VmRSS")
    started = time.perf_counter()
    created = ds.atomscale.upload(sample_id, client=client, progress_bar=False)
    wall = time.perf_counter() - started
    return {
        "rows": len(created),
        "frame": int(created.memory_usage(deep=True).sum()),
        "baseline": baseline * 1024,
        "peak": _status_kib("VmHWM") * 1024,
        "wall": wall,
    }


def run_naive(side: int, chunk: int, endpoint: str, key: str, sample_id: str) -> dict:
    from _common import naive_upload

    ds = thickness_map(side, chunk)
    baseline = _status_kib("VmRSS")
    started = time.perf_counter()
    result = naive_upload(ds, endpoint, key, sample_id, NAIVE_CHUNK)
    wall = time.perf_counter() - started
    return {
        "rows": len(result),
        "frame": int(result.memory_usage(deep=True).sum()),
        "baseline": baseline * 1024,
        "peak": _status_kib("VmHWM") * 1024,
        "wall": wall,
    }


def _child(argv: list[str]) -> int:
    variant, side, chunk, endpoint, key, sample_id = argv
    run = run_library if variant == "library" else run_naive
    print(json.dumps(run(int(side), int(chunk), endpoint, key, sample_id)))
    return 0


# -- the driver ----------------------------------------------------------------------------
def measure(variant: str, side: int, chunk: int) -> dict:
    """Run one variant against a fresh server, in a fresh process."""
    from _common import server_process

    with server_process() as server:
        sample_id = server.create_sample(f"{variant}-{side}")
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                variant,
                str(side),
                str(chunk),
                server.endpoint,
                server.api_key,
                sample_id,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"the {variant} run failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(variant=variant, side=side)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return _child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=2000, help="grid side of the big map")
    parser.add_argument("--chunk", type=int, default=500, help="dask block side")
    parser.add_argument(
        "--naive-side",
        type=int,
        default=None,
        help="grid side of the naive run (default: --side); smaller is quicker",
    )
    parser.add_argument("--skip-naive", action="store_true", help="measure the library only")
    args = parser.parse_args(argv)

    runs = [measure("library", side, args.chunk) for side in sorted({SMALL_SIDE, args.side})]
    if not args.skip_naive:
        runs.append(measure("naive", args.naive_side or args.side, args.chunk))

    print(f"dask blocks of {args.chunk} x {args.chunk}; peak = VmHWM of the uploading process")
    print(
        f"{'variant':<8} {'map':>11} {'points':>11} {'peak':>10} {'frame':>10} "
        f"{'peak-frame':>11} {'at start':>9} {'wall':>8}"
    )
    for run in runs:
        print(
            f"{run['variant']:<8} {run['side']:>5} x {run['side']:<5} {run['rows']:>11,} "
            f"{run['peak'] / MIB:>6.0f} MiB {run['frame'] / MIB:>6.0f} MiB "
            f"{(run['peak'] - run['frame']) / MIB:>7.0f} MiB {run['baseline'] / MIB:>5.0f} MiB "
            f"{run['wall']:>6.1f} s"
        )
    ok = all(run["rows"] == run["side"] ** 2 for run in runs)
    library = {run["side"]: run for run in runs if run["variant"] == "library"}
    big = library[args.side]
    print(
        f"library peak for {args.side} x {args.side}: {big['peak'] / 1e9:.2f} GB "
        f"(target <= {TARGET_PEAK / 1e9:.1f} GB)"
    )
    ok &= big["peak"] <= TARGET_PEAK
    if args.side != SMALL_SIDE:
        small = library[SMALL_SIDE]
        growth = (big["peak"] - big["frame"]) / (small["peak"] - small["frame"])
        points = args.side**2 / SMALL_SIDE**2
        print(
            f"peak - frame grows {growth:.2f}x for {points:.0f}x the points "
            f"(target <= {TARGET_GROWTH}x)"
        )
        ok &= growth <= TARGET_GROWTH
    naive = [run for run in runs if run["variant"] == "naive"]
    if naive and naive[0]["side"] != args.side:
        print(f"note: the naive way ran on a {naive[0]['side']} x {naive[0]['side']} map")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""What ``import atomscale_accessors`` adds to ``import pandas, xarray``.

Each import runs in a fresh interpreter (nothing cached in the process), the two kinds
alternating so that a busy spell of the machine falls on both; the figure is the
difference of the medians. Run in an environment with every extra installed: the package
must not import pandera, dask or pint before they are used, whatever is installed.

Run it::

    python benchmarks/import_time.py            # 7 runs of each
    python benchmarks/import_time.py --runs 15

Exits 1 when the package adds more than 0.5 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

TARGET_S = 0.5
BASELINE = "import pandas, xarray"
PACKAGE = "import pandas, xarray, atomscale_accessors"
# Timed inside the child, so that starting the interpreter is not part of the figure.
TIMED = """
import time
start = time.perf_counter()
{statement}
print(time.perf_counter() - start)
"""


def import_seconds(statement: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", TIMED.format(statement=statement)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each import (7)")
    runs = parser.parse_args().runs
    import_seconds(PACKAGE)  # a first run fills the file system cache for both
    times: dict[str, list[float]] = {BASELINE: [], PACKAGE: []}
    for _ in range(runs):
        for statement, seconds in times.items():
            seconds.append(import_seconds(statement))
    medians = {statement: statistics.median(seconds) for statement, seconds in times.items()}
    for statement, seconds in times.items():
        shown = ", ".join(f"{s:.2f}" for s in seconds)
        print(f"{statement:<45} median {medians[statement]:.3f} s  ({shown})")
    added = medians[PACKAGE] - medians[BASELINE]
    met = added <= TARGET_S
    print(f"{'atomscale_accessors adds':<45} {added:.3f} s  (target <= {TARGET_S} s: {met})")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

"""Load: eight concurrent uploaders of 50,000 rows each against one local server.

Some uploaders share a sample (at distinct positions), half upload DataFrames and half
Datasets. Afterwards every sample holds exactly what was sent to it: exact counts, no
errors, no duplicates, every value bit for bit. The elapsed time is printed, not bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import module_server

from atomscale_accessors import Client

if TYPE_CHECKING:
    from atomscale_accessors.server import LocalServer

ROWS = 50_000
UPLOADERS = 8
NX, NY = 250, 200  # 50,000 cells per uploader
# Uploaders 0-3 share two samples pairwise; 4-7 each have their own.
SAMPLE_OF = {0: "A", 1: "A", 2: "B", 3: "B", 4: "C", 5: "D", 6: "E", 7: "F"}


@dataclass
class Job:
    number: int
    sample: str
    kind: str  # "dataframe" or "dataset"
    x: np.ndarray
    y: np.ndarray
    values: np.ndarray


def make_job(number: int, sample: str) -> Job:
    rng = np.random.default_rng(number)
    # Distinct positions per uploader: each has its own band of y.
    xs = np.arange(NX) * 0.5
    ys = number * 1000.0 + np.arange(NY) * 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    values = rng.normal(100.0, 5.0, (NY, NX))
    kind = "dataframe" if number % 2 == 0 else "dataset"
    return Job(number, sample, kind, xx.ravel(), yy.ravel(), values.ravel())


def run(job: Job, client: Client) -> pd.DataFrame:
    if job.kind == "dataframe":
        df = pd.DataFrame({"x_mm": job.x, "y_mm": job.y, "thk": job.values})
        return df.atomscale.upload(
            job.sample,
            client=client,
            x="x_mm",
            y="y_mm",
            value="thk",
            property_name="thickness",
            property_unit="nm",
            coord_units="mm",
            progress_bar=False,
        )
    ds = xr.Dataset(
        {"thickness": (("y", "x"), job.values.reshape(NY, NX), {"units": "nm"})},
        coords={
            "x": ("x", job.x[:NX], {"units": "mm"}),
            "y": ("y", job.y[::NX], {"units": "mm"}),
        },
    )
    return ds.atomscale.upload(job.sample, client=client, progress_bar=False)


@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    yield from module_server()


def test_eight_concurrent_uploaders(server, capsys):
    samples = {
        name: server.create_sample(f"load-{name}") for name in sorted(set(SAMPLE_OF.values()))
    }
    jobs = [make_job(i, samples[SAMPLE_OF[i]]) for i in range(UPLOADERS)]
    assert all(len(job.values) == ROWS for job in jobs)
    results: dict[int, pd.DataFrame] = {}
    errors: dict[int, BaseException] = {}
    start = threading.Barrier(UPLOADERS)

    def work(job: Job) -> None:
        client = Client(api_key=server.api_key, endpoint=server.endpoint)
        start.wait()
        try:
            results[job.number] = run(job, client)
        except BaseException as exc:  # collected and reported below
            errors[job.number] = exc

    threads = [
        threading.Thread(target=work, args=(job,), name=f"uploader-{job.number}") for job in jobs
    ]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    elapsed = time.perf_counter() - began
    assert not any(thread.is_alive() for thread in threads), "an uploader never finished"
    assert not errors, {n: repr(e) for n, e in errors.items()}

    # Each uploader got back exactly its rows, each with its own annotation id.
    all_ids: set[str] = set()
    for job in jobs:
        created = results[job.number]
        assert len(created) == ROWS
        assert created["annotation_id"].is_unique
        np.testing.assert_array_equal(created["property_value"].to_numpy(), job.values)
        all_ids.update(created["annotation_id"])
    assert len(all_ids) == UPLOADERS * ROWS

    # Each sample holds exactly what its uploaders sent: counts, positions and values.
    for name, sample_id in samples.items():
        mine = [job for job in jobs if job.sample == sample_id]
        stored = pd.DataFrame(server.stored_annotations(sample_id))
        assert server.annotation_count(sample_id) == len(mine) * ROWS == len(stored), name
        assert not stored.duplicated(subset=["coord_x", "coord_y"]).any(), f"duplicates on {name}"
        expected = pd.DataFrame(
            {
                "coord_x": np.concatenate([j.x for j in mine]),
                "coord_y": np.concatenate([j.y for j in mine]),
                "value": np.concatenate([j.values for j in mine]),
            }
        )
        merged = expected.merge(stored, on=["coord_x", "coord_y"], how="left", validate="1:1")
        np.testing.assert_array_equal(
            merged["property_value"].to_numpy(), merged["value"].to_numpy()
        )
        assert set(stored["id"]) <= all_ids
    assert server.annotation_count() >= UPLOADERS * ROWS

    with capsys.disabled():
        rate = UPLOADERS * ROWS / elapsed
        print(
            f"\nload: {UPLOADERS} uploaders x {ROWS:,} rows to {len(samples)} samples in "
            f"{elapsed:.1f} s ({rate:,.0f} annotations/s; "
            f"{server.request_count('bulk_create')} bulk requests)"
        )


def test_server_answers_kept_alive_connections_without_nagle_delay(server):
    # The server's sockets must set TCP_NODELAY (asyncio does it only for sockets made
    # with IPPROTO_TCP): without it every answer on a reused connection waits for the
    # client's delayed ACK, ~40 ms per request, which dominates small bulk requests.
    import socket

    sample_id = server.create_sample("nodelay")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        request = (
            f"GET /physical_samples/{sample_id}/annotations/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"X-API-KEY: {server.api_key}\r\n\r\n"
        ).encode()
        sock.sendall(request)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        uvicorn_server = server._server  # the running uvicorn server of this LocalServer
        transports = [c.transport for c in uvicorn_server.server_state.connections]
        assert transports, "no open connection found on the server"
        for transport in transports:
            accepted = transport.get_extra_info("socket")
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), (
                "TCP_NODELAY is off on the server's connection"
            )

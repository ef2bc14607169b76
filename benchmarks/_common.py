"""What the benchmarks share: the local server in a separate process, and the naive upload.

The server runs in its own process so that the client process's CPU time and memory are
the client's alone.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests


@dataclass(frozen=True)
class RunningServer:
    endpoint: str
    api_key: str

    def create_sample(self, name: str) -> str:
        answer = requests.post(
            f"{self.endpoint}physical_samples/",
            json={"name": name},
            headers={"X-API-KEY": self.api_key},
            timeout=30,
        )
        answer.raise_for_status()
        return answer.json()["id"]


@contextlib.contextmanager
def server_process(*extra_args: str) -> Iterator[RunningServer]:
    """A ``python -m atomscale_accessors serve`` process on a free port and a temp database."""
    with tempfile.TemporaryDirectory() as tmp:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "atomscale_accessors",
                "serve",
                "--port",
                "0",
                "--db",
                str(Path(tmp) / "bench.sqlite"),
                "--no-access-log",
                *extra_args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            yield _wait_ready(process)
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(process: subprocess.Popen[str]) -> RunningServer:
    assert process.stdout is not None
    endpoint = key = None
    deadline = time.monotonic() + 30
    while (endpoint is None or key is None) and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if found := re.search(r"(http://\S+/)", line):
            endpoint = found.group(1)
        if found := re.search(r"API key \([^)]*\): (\S+)", line):
            key = found.group(1)
    if endpoint is None or key is None:
        raise RuntimeError("the server did not start")
    while time.monotonic() < deadline:  # bound before announced; wait until it answers
        try:
            requests.get(f"{endpoint}physical_samples/", headers={"X-API-KEY": key}, timeout=2)
            return RunningServer(endpoint, key)
        except requests.ConnectionError:
            time.sleep(0.05)
    raise RuntimeError("the server does not answer")


def naive_upload(ds: Any, endpoint: str, api_key: str, sample_id: str, chunk: int) -> Any:
    """Upload a ``thickness(y, x)`` map as the API documentation suggests writing by hand:
    ``to_dataframe()`` of the whole map, one dict per point, ``requests.post(json=...)``
    per chunk and ``pd.DataFrame(response.json())`` per answer."""
    import pandas as pd

    url = f"{endpoint}physical_samples/{sample_id}/annotations/bulk"
    headers = {"X-API-KEY": api_key}
    df = ds.to_dataframe().reset_index().dropna()
    frames = []
    session = requests.Session()
    for start in range(0, len(df), chunk):
        annotations = []
        for row in df.iloc[start : start + chunk].itertuples():
            annotations.append(
                {
                    "property_name": "thickness",
                    "property_value": row.thickness,
                    "property_unit": "nm",
                    "coord_x": row.x,
                    "coord_y": row.y,
                    "coord_units": "mm",
                    "coord_ref_frame": "sample_relative",
                }
            )
        response = session.post(
            url, json={"annotations": annotations}, headers=headers, timeout=300
        )
        response.raise_for_status()
        frames.append(pd.DataFrame(response.json()))
    return pd.concat(frames, ignore_index=True)

"""A local server that speaks the Atomscale annotation API, for tests, demos and benchmarks.

It serves every route the client uses, keeps its data in SQLite and can be told to
misbehave (latency, commits that land after the client gave up, rate limits, errors
before or after the commit, dropped connections) so that the client's handling of
failures can be tested against real HTTP.

Needs the ``server`` extra: ``pip install "atomscale-accessors[server]"``.

Examples
--------
>>> from atomscale_accessors.server import LocalServer
>>> with LocalServer() as srv:
...     sample_id = srv.create_sample("wafer-1")
...     srv.endpoint.startswith("http://127.0.0.1:")
True
"""

from __future__ import annotations

from .app import create_app
from .faults import FAULT_KINDS, ROUTE_NAMES, Faults, Limits
from .local import LocalServer, serve
from .store import Store

__all__ = [
    "FAULT_KINDS",
    "ROUTE_NAMES",
    "Faults",
    "Limits",
    "LocalServer",
    "Store",
    "create_app",
    "serve",
]

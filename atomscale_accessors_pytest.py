"""The pytest plugin of ``atomscale-accessors``: fixtures serving a local Atomscale server.

Installing the package registers this module with pytest (the ``pytest11`` entry point),
so pytest loads it at the start of every session in that environment, also in projects
that never use it. It therefore imports only pytest when loaded: the package (pandas,
xarray, pandera) and the server (fastapi, uvicorn) are imported when a fixture is first
used. It lives beside the package, not in it, because importing any module of the package
first runs the package's ``__init__``, which registers the accessors.

Code that wants the fixtures by name imports them from
:mod:`atomscale_accessors.testing`, which re-exports them.

Fixtures
--------
atomscale_server
    A started :class:`~atomscale_accessors.server.LocalServer` on an empty in-memory
    database, one per test.
atomscale_session_server
    One started server for the whole test session, shared by every test that asks for
    it: quicker where many tests each need a server, but they see each other's data, so
    each should create its own sample.

Both need the ``server`` extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from atomscale_accessors.server import LocalServer

__all__ = ["atomscale_server", "atomscale_session_server"]

_SERVER_EXTRA = 'pip install "atomscale-accessors[server]"'


def _running_server() -> Iterator[LocalServer]:
    """Start a server on a fresh in-memory database; stop it and discard its data after."""
    try:
        from atomscale_accessors.server import LocalServer
    except ImportError as exc:
        raise ImportError(
            f"the atomscale_server fixtures need the server extra: {_SERVER_EXTRA}"
        ) from exc
    server = LocalServer()
    try:
        with server:
            yield server
    finally:
        server.close()


@pytest.fixture
def atomscale_server() -> Iterator[LocalServer]:
    """A running local Atomscale server with an empty in-memory database, one per test.

    Yields
    ------
    LocalServer
        Started; ``endpoint`` and ``api_key`` say how to reach it. Stopped and its
        database discarded after the test.

    Examples
    --------
    A test using it::

        import requests


        def test_bulk(atomscale_server):
            sample_id = atomscale_server.create_sample("wafer-1")
            answer = requests.post(
                f"{atomscale_server.endpoint}physical_samples/{sample_id}/annotations/bulk",
                json={"annotations": [{"property_name": "thickness", "property_value": 1.0}]},
                headers={"X-API-KEY": atomscale_server.api_key},
                timeout=10,
            )
            assert answer.status_code == 200
            assert atomscale_server.annotation_count(sample_id) == 1
    """
    yield from _running_server()


@pytest.fixture(scope="session")
def atomscale_session_server() -> Iterator[LocalServer]:
    """One running local Atomscale server for the whole test session.

    Every test that asks for it gets the same server and the same database, so tests see
    what the others stored: give each test a sample of its own
    (``atomscale_session_server.create_sample(...)``) and count only there. Faults and
    limits set on it stay set for later tests; use ``atomscale_server`` for a test that
    changes them.

    Yields
    ------
    LocalServer
        Started once, at the first test that uses it; stopped at the end of the session.
    """
    yield from _running_server()

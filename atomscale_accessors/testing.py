"""pytest plugin of ``atomscale_accessors`` (registered through the ``pytest11`` entry point).

Fixtures
--------
atomscale_server
    A running :class:`~atomscale_accessors.server.LocalServer` on a fresh in-memory
    database, one per test. Needs the ``server`` extra.

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

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from atomscale_accessors.server import LocalServer

__all__ = ["atomscale_server"]


@pytest.fixture
def atomscale_server() -> Iterator[LocalServer]:
    """A running local Atomscale server with an empty in-memory database.

    Yields
    ------
    LocalServer
        Started; ``endpoint`` and ``api_key`` say how to reach it. Stopped and its
        database discarded after the test.
    """
    # Imported here, not at the top: pytest loads this plugin in every session, also
    # where the server extra (fastapi, uvicorn) is not installed.
    try:
        from atomscale_accessors.server import LocalServer
    except ImportError as exc:
        raise ImportError(
            "the atomscale_server fixture needs the server extra: "
            'pip install "atomscale-accessors[server]"'
        ) from exc
    server = LocalServer()
    try:
        with server:
            yield server
    finally:
        server.close()

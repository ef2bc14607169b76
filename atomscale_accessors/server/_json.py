"""JSON encoding for the local server, with msgspec (a core dependency of the package).

msgspec writes floats with the shortest representation that reads back to the same double,
so values survive a round trip bit for bit.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

__all__ = ["dumps", "loads", "raw_object"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` as compact UTF-8 JSON.

    Parameters
    ----------
    obj : Any
        Plain JSON data (dicts, lists, str, int, float, bool, None), possibly holding
        values from :func:`raw_object`.

    Returns
    -------
    bytes
        The encoded document.
    """
    try:
        return _encoder.encode(obj)
    except (TypeError, OverflowError):
        # integers beyond 64 bits: the standard library takes them
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def loads(data: bytes | str) -> Any:
    """Decode a JSON document."""
    return _decoder.decode(data)


def raw_object(text: str | None) -> Any:
    """Wrap stored JSON text so that :func:`dumps` embeds it without decoding it first.

    Parameters
    ----------
    text : str or None
        JSON text as stored in the database.

    Returns
    -------
    Any
        ``None`` for ``None``, else a ``msgspec.Raw`` embedded verbatim.
    """
    if text is None:
        return None
    return msgspec.Raw(text.encode())

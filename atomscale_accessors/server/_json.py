"""JSON encoding for the local server: orjson when installed, the standard library otherwise.

Both encoders write floats with the shortest representation that reads back to the same
double, so values survive a round trip bit for bit whichever one is used.
"""

from __future__ import annotations

import json
from typing import Any

try:  # orjson is optional: several times faster on the bulk answers
    import orjson
except ImportError:  # pragma: no cover - exercised only without orjson
    orjson = None  # type: ignore[assignment]

__all__ = ["HAVE_ORJSON", "dumps", "loads", "raw_object"]

HAVE_ORJSON = orjson is not None


def _dumps_stdlib(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` as compact UTF-8 JSON.

    Parameters
    ----------
    obj : Any
        Plain JSON data (dicts, lists, str, int, float, bool, None).

    Returns
    -------
    bytes
        The encoded document.

    Raises
    ------
    ValueError
        ``obj`` holds a non-finite float (only the standard library checks this; the
        server rejects non-finite numbers before they get here).
    """
    if orjson is not None:
        try:
            return orjson.dumps(obj)
        except TypeError:
            # orjson refuses integers beyond 64 bits; the standard library takes them
            pass
    return _dumps_stdlib(obj)


def loads(data: bytes | str) -> Any:
    """Decode a JSON document."""
    if orjson is not None:
        return orjson.loads(data)
    return json.loads(data)


def raw_object(text: str | None) -> Any:
    """Wrap stored JSON text so that :func:`dumps` embeds it without decoding it first.

    Parameters
    ----------
    text : str or None
        JSON text as stored in the database.

    Returns
    -------
    Any
        ``None`` for ``None``; an ``orjson.Fragment`` when orjson is available (embedded
        verbatim, no parse); the decoded value otherwise.
    """
    if text is None:
        return None
    if orjson is not None:
        return orjson.Fragment(text)
    return json.loads(text)

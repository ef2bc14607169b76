"""What an annotation may hold, in one place for the client and the local server.

The client validates against these limits before it sends anything, and the local server
refuses what breaks them, so valid input is never refused in the middle of an upload. The
module imports nothing, so the server can use it without pandas.
"""

from __future__ import annotations

from typing import Final

__all__ = ["COORD_REF_FRAMES", "MAX_METADATA_BYTES", "MAX_METADATA_DEPTH"]

COORD_REF_FRAMES: Final[tuple[str, ...]] = ("sample_relative", "stage_absolute")
"""The reference frames an annotation's coordinates can be given in."""

MAX_METADATA_DEPTH: Final = 32
"""Deepest nesting of one annotation's metadata. The metadata object itself is level 1;
every object or array inside it adds a level (``{"a": {"b": [1]}}`` is 3 levels deep)."""

MAX_METADATA_BYTES: Final = 64 * 1024
"""Largest metadata of one annotation, in bytes of compact JSON with every character
beyond ASCII escaped: the length of ``json.dumps(metadata, separators=(",", ":"))``.
Measured on the metadata as decoded, so however a client spells it (spaces, escapes or
raw UTF-8) the same metadata has the same size."""

"""How an upload runs: one definition of its options, their types and defaults.

Every way of uploading (the pandas, xarray and dask accessors, :func:`upload_records`,
:func:`send_records`, :func:`upload_map` and the command line) takes the same options and turns them into one
:class:`UploadOptions`, checked once, before anything is read or sent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_CHUNK_BYTES",
    "DEFAULT_MAX_WORKERS",
    "IF_EXISTS",
    "MIN_CHUNK_BYTES",
    "IfExists",
    "UploadOptions",
]

IfExists = Literal["fail", "skip", "append", "update"]
IF_EXISTS: tuple[str, ...] = ("fail", "skip", "append", "update")
DEFAULT_CHUNK_SIZE = 5_000
DEFAULT_MAX_CHUNK_BYTES = 8 * 2**20
DEFAULT_MAX_WORKERS = 4
#: The smallest request body allowed: room for the largest record the validation lets
#: through (``schemas.MAX_RECORD_BYTES``), so every record fits a chunk of its own.
MIN_CHUNK_BYTES = 128 * 1024


@dataclass(frozen=True)
class UploadOptions:
    """The options of an upload, checked when made (every problem in one ``ValueError``).

    Parameters
    ----------
    client : Client or SDK client, optional
        Default: a client configured from ``AS_API_KEY`` and ``AS_API_ENDPOINT``.
    if_exists : {"fail", "skip", "append", "update"}, default "fail"
        What to do with records whose property is stored at the same position already:
        raise :class:`~atomscale_accessors.errors.AnnotationExistsError` and send nothing;
        send only the new ones; send everything; or PATCH the stored ones with the new
        values and create the rest.
    chunk_size : int, default 5000
        Records per request at most.
    max_chunk_bytes : int, default 8 MiB
        Request body size at most (at least 128 KiB).
    max_workers : int, default 4
        Requests in flight at once.
    progress : bool or callable, optional
        ``None``: a progress bar on a terminal or in a notebook, none otherwise;
        ``False``: never; ``True``: always; a callable is called as
        ``progress(done, total)``.
    dry_run : bool, default False
        Send nothing; return the records that would be sent, with a ``chunk`` column.
    verify : bool, default False
        After the upload, list what the sample holds where it wrote, and raise
        :class:`~atomscale_accessors.errors.UploadError` when an annotation reported
        created is not stored, or a position holds annotations the upload does not
        account for (another machine uploading the same data at the same time).

    ``None`` for ``chunk_size``, ``max_chunk_bytes`` or ``max_workers`` means the default.

    Examples
    --------
    >>> from atomscale_accessors.options import UploadOptions
    >>> UploadOptions(if_exists="skip", chunk_size=None).chunk_size
    5000
    >>> UploadOptions(if_exists="merge", max_workers=0)
    Traceback (most recent call last):
    ...
    ValueError: bad upload options: if_exists must be one of 'fail', 'skip', 'append', 'update', got 'merge'; max_workers must be a positive integer, got 0
    """

    client: Any = None
    if_exists: IfExists = "fail"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES
    max_workers: int = DEFAULT_MAX_WORKERS
    progress: bool | Callable[[int, int | None], None] | None = None
    dry_run: bool = False
    verify: bool = False

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.if_exists not in IF_EXISTS:
            allowed = ", ".join(map(repr, IF_EXISTS))
            problems.append(f"if_exists must be one of {allowed}, got {_shown(self.if_exists)}")
        defaults = {
            "chunk_size": DEFAULT_CHUNK_SIZE,
            "max_chunk_bytes": DEFAULT_MAX_CHUNK_BYTES,
            "max_workers": DEFAULT_MAX_WORKERS,
        }
        for name, default in defaults.items():
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, default)
            elif isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                problems.append(f"{name} must be a positive integer, got {_shown(value)}")
            else:
                object.__setattr__(self, name, int(value))
        if isinstance(self.max_chunk_bytes, int) and 0 < self.max_chunk_bytes < MIN_CHUNK_BYTES:
            problems.append(f"max_chunk_bytes must be at least {MIN_CHUNK_BYTES}")
        if not (
            self.progress is None or isinstance(self.progress, bool) or callable(self.progress)
        ):
            problems.append(f"progress must be a bool or a callable, got {_shown(self.progress)}")
        for name in ("dry_run", "verify"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                problems.append(f"{name} must be True or False, got {_shown(getattr(self, name))}")
        if problems:
            raise ValueError("bad upload options: " + "; ".join(problems))

    @classmethod
    def take(
        cls, given: Mapping[str, Any], options: UploadOptions | None = None
    ) -> tuple[UploadOptions, dict[str, Any]]:
        """Split keyword arguments into the upload's options and the rest.

        ``options``, when given, provides the options not named in ``given``.
        """
        names = {f.name for f in fields(cls)}
        mine = {k: v for k, v in given.items() if k in names}
        rest = {k: v for k, v in given.items() if k not in names}
        if options is not None:
            mine = {**{f.name: getattr(options, f.name) for f in fields(cls)}, **mine}
        return cls(**mine), rest


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."

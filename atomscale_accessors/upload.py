"""Chunking, encoding, sending, retrying and reconciling an upload of canonical records.

The rules that keep an upload exactly-once, since bulk create is not idempotent:

* retry blindly only what provably did not take effect: a refused connection, 429, 503,
  and 413 (split the chunk, then send the halves);
* after an ambiguous failure (the request reached the server but no success came back: a
  read timeout, a reset, 500, 502, 504) list what the sample holds and resend only the
  records that are not there;
* match what the server created to the input rows by content (the position key and the
  value), never by position in the answer alone.

Every outcome is accounted for: the return value is the frame of created annotations,
indexed like the input; on failure :class:`~atomscale_accessors.errors.UploadError` says
what was created, what was not, and what could not be established.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any, Literal

import numpy as np
import orjson
import pandas as pd

from .client import Client, check_uuid, resolve_client
from .errors import (
    AnnotationExistsError,
    AnnotationValidationError,
    ApiError,
    TransportError,
    UploadError,
)
from .frames import annotation_frame, created_frame, empty_annotation_frame
from .schemas import COORD_COLUMNS, POSITION_KEY, RECORD_COLUMNS
from .validation import validate_records

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_CHUNK_BYTES",
    "DEFAULT_MAX_WORKERS",
    "IF_EXISTS",
    "Chunk",
    "encode_rows",
    "iter_chunks",
    "upload_records",
]

log = logging.getLogger("atomscale_accessors")

IfExists = Literal["fail", "skip", "append", "update"]
IF_EXISTS: tuple[str, ...] = ("fail", "skip", "append", "update")
DEFAULT_CHUNK_SIZE = 5_000
DEFAULT_MAX_CHUNK_BYTES = 8 * 2**20
DEFAULT_MAX_WORKERS = 4
_MIN_CHUNK_BYTES = 128 * 1024
# Statuses after which the request provably did not take effect: safe to send again.
_RETRY_STATUSES = frozenset({429, 503})
# Statuses after which the request may have taken effect: ask the server before resending.
_AMBIGUOUS_STATUSES = frozenset({500, 502, 504})
# Fields sent for each record, in the order of the API's annotation body.
_BODY_FIELDS: tuple[tuple[str, str], ...] = (
    ("property_name", "property_name"),
    ("property_value", "property_value"),
    ("property_unit", "property_unit"),
    ("char_source_type", "char_source_type"),
    ("coord_ref_frame", "coord_ref_frame"),
    ("coord_units", "coord_units"),
    ("coord_x", "coord_x"),
    ("coord_y", "coord_y"),
    ("coord_z", "coord_z"),
    ("data_id", "data_id"),
    ("metadata", "metadata"),
)
_FLOATS = frozenset({"property_value", *COORD_COLUMNS})
_NULL_TEXT = "\x00"  # stands for "unset" in match keys, where NaN and None must agree
_MATCH_KEY = (*POSITION_KEY, "property_value")


# -- encoding ------------------------------------------------------------------------------
def encode_rows(records: pd.DataFrame) -> list[str]:
    """Each record as the JSON text of one annotation body, built column by column.

    Floats are written with Python's shortest round-trip ``repr``, so every value survives
    the trip bit for bit; a column that is unset on every row is left out, and unset cells
    are ``null`` (NaN never reaches the JSON). A column with one value on every row is
    encoded once and written into the row template.

    Examples
    --------
    >>> import pandas as pd
    >>> from atomscale_accessors.upload import encode_rows
    >>> rec = pd.DataFrame(
    ...     {
    ...         "property_name": ["thickness"] * 2,
    ...         "property_value": [0.1, 2.0],
    ...         "property_unit": ["nm"] * 2,
    ...         "char_source_type": [None] * 2,
    ...         "coord_ref_frame": ["sample_relative"] * 2,
    ...         "coord_units": ["mm"] * 2,
    ...         "coord_x": [1.5, 3.0],
    ...         "coord_y": [2.0, 2.0],
    ...         "coord_z": [float("nan")] * 2,
    ...         "data_id": [None] * 2,
    ...         "metadata": [None, {"site": 7}],
    ...     }
    ... )
    >>> encode_rows(rec)[1]
    '{"property_name":"thickness","property_value":2.0,"property_unit":"nm","coord_ref_frame":"sample_relative","coord_units":"mm","coord_x":3.0,"coord_y":2.0,"metadata":{"site":7}}'
    """
    n = len(records)
    if n == 0:
        return []
    template: list[str] = []
    varying: list[list[str]] = []
    for column, key in _BODY_FIELDS:
        tokens = _column_tokens(records[column], column)
        if tokens is None:
            continue
        prefix = f'"{key}":'.replace("{", "{{").replace("}", "}}")
        if isinstance(tokens, str):
            template.append(prefix + tokens.replace("{", "{{").replace("}", "}}"))
        else:
            template.append(prefix + "{}")
            varying.append(tokens)
    fmt = "{{" + ",".join(template) + "}}"
    if not varying:
        return [fmt.format()] * n
    return list(map(fmt.format, *varying))


def _column_tokens(series: pd.Series, column: str) -> str | list[str] | None:
    """JSON tokens of a column: None when unset everywhere, one token when constant."""
    if column in _FLOATS:
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        if np.isnan(values).all():
            return None
        # orjson writes each float as its shortest round-trip text (exact, like repr, five
        # times faster) and NaN as null.
        return orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].decode().split(",")
    missing = series.isna().to_numpy()
    if missing.all():
        return None
    if column == "metadata":
        return [
            "null" if gone else orjson.dumps(value).decode()
            for value, gone in zip(series.tolist(), missing.tolist(), strict=True)
        ]
    if not missing.any() and series.nunique() == 1:
        return encode_basestring_ascii(series.iloc[0])
    values = series.astype(object).to_numpy()
    tokens = np.array(
        list(map(encode_basestring_ascii, np.where(missing, "", values).tolist())), dtype=object
    )
    tokens[missing] = "null"
    return tokens.tolist()


def _body(rows: list[str]) -> bytes:
    return ('{"annotations":[' + ",".join(rows) + "]}").encode("ascii")


# -- chunking ------------------------------------------------------------------------------
@dataclass
class Chunk:
    """A slice of records sent in one request (or in several, after a 413 split)."""

    number: int
    records: pd.DataFrame
    positions: np.ndarray  # position of each record in the whole input, for ordering
    rows: list[str] = field(repr=False)

    def __len__(self) -> int:
        return len(self.records)

    def take(self, mask: np.ndarray) -> Chunk:
        rows = [row for row, keep in zip(self.rows, mask.tolist(), strict=True) if keep]
        return Chunk(self.number, self.records[mask], self.positions[mask], rows)

    def split(self) -> tuple[Chunk, Chunk]:
        half = len(self) // 2
        first = np.zeros(len(self), dtype=bool)
        first[:half] = True
        return self.take(first), self.take(~first)


def iter_chunks(
    blocks: Iterable[tuple[pd.DataFrame, np.ndarray]],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES,
) -> Iterator[Chunk]:
    """Cut record blocks into chunks of at most ``chunk_size`` rows and ``max_chunk_bytes``.

    Rows are encoded one slice at a time, so memory holds one chunk's text, not the map's.
    """
    number = 0
    overhead = len(_body([]))
    for records, positions in blocks:
        for start in range(0, len(records), chunk_size):
            piece = records.iloc[start : start + chunk_size]
            rows = encode_rows(piece)
            sizes = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows)) + 1
            ends = np.cumsum(sizes)
            begin = 0
            while begin < len(rows):
                base = ends[begin - 1] if begin else 0
                stop = int(np.searchsorted(ends, base + max_chunk_bytes - overhead, side="right"))
                stop = max(stop, begin + 1)  # a single record always fits (metadata is capped)
                sl = slice(begin, stop)
                yield Chunk(
                    number,
                    piece.iloc[sl],
                    positions[start + begin : start + stop],
                    rows[sl],
                )
                number += 1
                begin = stop


# -- matching ------------------------------------------------------------------------------
def _match_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Key columns normalised so that NaN and None agree, plus an occurrence counter."""
    out = {}
    for column in _MATCH_KEY:
        series = frame[column]
        if column in _FLOATS:
            out[column] = series.to_numpy(dtype="float64", na_value=np.nan)
        else:
            out[column] = series.astype(object).where(series.notna(), _NULL_TEXT).to_numpy()
    keyed = pd.DataFrame(out)
    keyed["_n"] = keyed.groupby(list(_MATCH_KEY), dropna=False, sort=False).cumcount().to_numpy()
    return keyed


def _match(records: pd.DataFrame, answer: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Pair records with answer rows of the same content.

    Returns, for each record, the position of its answer row (or -1), and for each answer
    row whether it was paired.
    """
    if len(records) == 0 or len(answer) == 0:
        return np.full(len(records), -1, dtype=np.int64), np.zeros(len(answer), dtype=bool)
    if len(records) == len(answer) and _same_content(records, answer):
        # The usual answer: the same records in the same order. Every key field was
        # compared, so this is still a match by content; any difference takes the join.
        return np.arange(len(records), dtype=np.int64), np.ones(len(answer), dtype=bool)
    left = _match_frame(records)
    left["_left"] = np.arange(len(records))
    right = _match_frame(answer)
    right["_right"] = np.arange(len(answer))
    merged = left.merge(right, on=[*_MATCH_KEY, "_n"], how="inner")
    paired = np.full(len(records), -1, dtype=np.int64)
    paired[merged["_left"].to_numpy()] = merged["_right"].to_numpy()
    used = np.zeros(len(answer), dtype=bool)
    used[merged["_right"].to_numpy()] = True
    return paired, used


def _same_content(records: pd.DataFrame, answer: pd.DataFrame) -> bool:
    """Whether row i of ``answer`` has the key and value of row i of ``records``, for all i."""
    for column in _MATCH_KEY:
        mine, theirs = records[column], answer[column]
        if column in _FLOATS:
            a = mine.to_numpy(dtype="float64", na_value=np.nan)
            b = theirs.to_numpy(dtype="float64", na_value=np.nan)
            if not np.array_equal(a, b, equal_nan=True):
                return False
        else:
            a = mine.astype(object).where(mine.notna(), _NULL_TEXT).to_numpy()
            b = theirs.astype(object).where(theirs.notna(), _NULL_TEXT).to_numpy()
            if not (a == b).all():
                return False
    return True


def _answer_frame(objects: list[dict[str, Any]]) -> pd.DataFrame:
    """The fields of created objects needed to match them and to build the result."""
    columns: dict[str, Any] = {
        column: [obj.get(column) for obj in objects]
        for column in (*_MATCH_KEY, "id", "last_updated", "version")
    }
    for column in _FLOATS:
        columns[column] = np.array(
            [np.nan if v is None else v for v in columns[column]], dtype="float64"
        )
    return pd.DataFrame(columns)


# -- the upload ----------------------------------------------------------------------------
@dataclass
class _Outcome:
    created: list[pd.DataFrame] = field(default_factory=list)
    created_positions: list[np.ndarray] = field(default_factory=list)
    not_created: list[Chunk] = field(default_factory=list)
    unknown: list[Chunk] = field(default_factory=list)
    error: BaseException | None = None

    def add_created(self, frame: pd.DataFrame, positions: np.ndarray) -> None:
        self.created.append(frame)
        self.created_positions.append(positions)

    def merge(self, other: _Outcome) -> None:
        self.created += other.created
        self.created_positions += other.created_positions
        self.not_created += other.not_created
        self.unknown += other.unknown
        if self.error is None:
            self.error = other.error


class _Uploader:
    """One upload: the sample, the client, what existed before, and what this run claimed."""

    def __init__(self, client: Client, sample_id: str) -> None:
        self.client = client
        self.sample_id = sample_id
        self.policy = client.retry
        self.bulk_path = f"physical_samples/{sample_id}/annotations/bulk"
        self.before_ids: set[str] = set()
        self.claimed: set[str] = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.timed_out = False

    # -- listing -------------------------------------------------------------------------
    def list_existing(self, **filters: Any) -> list[dict[str, Any]]:
        """List annotations, retrying any failure: a GET changes nothing."""
        attempt = 1
        while True:
            try:
                return orjson.loads(self.client.list_annotations_raw(self.sample_id, **filters))
            except (TransportError, ApiError) as exc:
                if not _transient(exc) or attempt >= self.policy.max_attempts:
                    raise
                self.sleep(attempt, exc)
                attempt += 1

    def sleep(self, attempt: int, exc: BaseException) -> None:
        retry_after = getattr(exc, "retry_after", None)
        delay = self.policy.wait(attempt, retry_after)
        log.info("retrying in %.2f s after %s", delay, _describe(exc))
        time.sleep(delay)

    # -- one chunk -----------------------------------------------------------------------
    def send(self, chunk: Chunk) -> _Outcome:
        outcome = _Outcome()
        self._send(chunk, outcome, attempt=1)
        return outcome

    def _send(self, chunk: Chunk, outcome: _Outcome, attempt: int) -> None:
        while len(chunk):
            if self.stop.is_set():
                outcome.not_created.append(chunk)
                return
            started = time.perf_counter()
            try:
                response = self.client.request("POST", self.bulk_path, data=_body(chunk.rows))
            except ApiError as exc:
                if exc.status_code == 413 and len(chunk) > 1:
                    log.info(
                        "chunk %d: %d annotations too large for the server; splitting",
                        chunk.number,
                        len(chunk),
                    )
                    for half in chunk.split():
                        self._send(half, outcome, attempt)
                    return
                if exc.status_code in _RETRY_STATUSES and attempt < self.policy.max_attempts:
                    self.sleep(attempt, exc)
                    attempt += 1
                    continue
                if exc.status_code in _AMBIGUOUS_STATUSES:
                    chunk = self._reconcile(chunk, outcome, exc)
                    if chunk is None:
                        return
                    if len(chunk) and attempt >= self.policy.max_attempts:
                        outcome.not_created.append(chunk)
                        outcome.error = exc
                        return
                    attempt += 1
                    continue
                outcome.not_created.append(chunk)
                outcome.error = exc
                return
            except TransportError as exc:
                if not exc.sent and attempt < self.policy.max_attempts:
                    self.sleep(attempt, exc)
                    attempt += 1
                    continue
                if not exc.sent:
                    outcome.not_created.append(chunk)
                    outcome.error = exc
                    return
                chunk = self._reconcile(chunk, outcome, exc)
                if chunk is None:
                    return
                if len(chunk) and attempt >= self.policy.max_attempts:
                    outcome.not_created.append(chunk)
                    outcome.error = exc
                    return
                attempt += 1
                continue
            # A 2xx: pair what the server created with the records sent.
            try:
                objects = orjson.loads(response.content)
            except ValueError:
                objects = None
            if not isinstance(objects, list):
                exc = ApiError(
                    response.status_code,
                    "the bulk answer is not a JSON array",
                    method="POST",
                    path="/" + self.bulk_path,
                )
                chunk = self._reconcile(chunk, outcome, exc)
                if chunk is None:
                    return
                attempt += 1
                continue
            rest = self._accept(chunk, _answer_frame(objects), outcome)
            log.info(
                "chunk %d: %d annotations created in %.2f s (attempt %d)",
                chunk.number,
                len(chunk) - len(rest),
                time.perf_counter() - started,
                attempt,
            )
            if len(rest):
                # The server said yes but did not return some records: find out for sure.
                exc = ApiError(
                    response.status_code, f"{len(rest)} records missing from the bulk answer"
                )
                chunk = self._reconcile(rest, outcome, exc)
                if chunk is None:
                    return
                attempt += 1
                continue
            return

    def _accept(self, chunk: Chunk, answer: pd.DataFrame, outcome: _Outcome) -> Chunk:
        """Record the answer rows that match ``chunk``; return the records left unmatched."""
        paired, _ = _match(chunk.records, answer)
        found = paired >= 0
        if found.any():
            rows = answer.iloc[paired[found]]
            with self.lock:
                self.claimed.update(rows["id"].tolist())
            outcome.add_created(
                created_frame(
                    chunk.records[found],
                    ids=rows["id"].tolist(),
                    last_updated=rows["last_updated"].tolist(),
                    versions=rows["version"].tolist(),
                    sample_id=self.sample_id,
                ),
                chunk.positions[found],
            )
        return chunk.take(~found)

    def _reconcile(self, chunk: Chunk, outcome: _Outcome, cause: BaseException) -> Chunk | None:
        """After an ambiguous failure: keep what landed, return what must be sent again.

        Returns None when the server cannot be asked (the records' fate is unknown).
        """
        log.warning(
            "chunk %d: %s; checking which of its %d annotations were stored",
            chunk.number,
            _describe(cause),
            len(chunk),
        )
        if _may_be_running(cause):
            # The server may still be committing the request: give it time to finish, or
            # the listing misses what is about to land and the resend doubles it.
            settle = self.policy.settle
            if settle is None:
                settle = min(2 * self.client.timeout[1], self.policy.max_wait)
            with self.lock:
                self.timed_out = True
            time.sleep(settle)
        filters: dict[str, Any] = {}
        names = chunk.records["property_name"].unique()
        if len(names) == 1:
            filters["property_name"] = names[0]
        xs, ys = chunk.records["coord_x"], chunk.records["coord_y"]
        if xs.notna().all() and ys.notna().all():
            filters["x_range"] = (float(xs.min()), float(xs.max()))
            filters["y_range"] = (float(ys.min()), float(ys.max()))
        try:
            listed = self.list_existing(**filters)
        except (TransportError, ApiError) as exc:
            log.error(
                "chunk %d: could not list the sample to check (%s)", chunk.number, _describe(exc)
            )
            outcome.unknown.append(chunk)
            outcome.error = cause
            return None
        with self.lock:
            excluded = self.before_ids | self.claimed
        candidates = [obj for obj in listed if obj.get("id") not in excluded]
        rest = self._accept(chunk, _answer_frame(candidates), outcome)
        log.info(
            "chunk %d: %d of %d annotations were stored; sending the other %d again",
            chunk.number,
            len(chunk) - len(rest),
            len(chunk),
            len(rest),
        )
        return rest


def _may_be_running(exc: BaseException) -> bool:
    if isinstance(exc, TransportError):
        return exc.timed_out
    return isinstance(exc, ApiError) and exc.status_code == 504


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, TransportError):
        return True
    return isinstance(exc, ApiError) and exc.status_code in (_RETRY_STATUSES | _AMBIGUOUS_STATUSES)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        return f"HTTP {exc.status_code}"
    return str(exc) or type(exc).__name__


# -- entry point ---------------------------------------------------------------------------
def upload_records(
    records: pd.DataFrame | Iterable[pd.DataFrame],
    sample_id: str,
    *,
    client: Any = None,
    if_exists: IfExists = "fail",
    chunk_size: int | None = None,
    max_chunk_bytes: int | None = None,
    max_workers: int | None = None,
    progress: bool | Callable[[int, int | None], None] | None = None,
    dry_run: bool = False,
    dropna: bool = False,
    allow_duplicates: bool = False,
    validated: bool = False,
) -> pd.DataFrame:
    """Upload canonical records to a sample, exactly once; return what was created.

    Parameters
    ----------
    records : pandas.DataFrame or iterable of DataFrames
        Canonical records, or blocks of them (with ``validated=True``: blocks the caller
        has validated already, e.g. a map streamed from dask).
    sample_id : str
        UUID of the physical sample; checked before any request.
    client : Client or SDK client, optional
        Default: configured from the environment.
    if_exists : {"fail", "skip", "append", "update"}, default "fail"
        What to do with records whose property is already stored at the same position:
        raise :class:`AnnotationExistsError` and send nothing; send only the new ones;
        send everything; or PATCH the stored ones with the new values and create the rest.
    chunk_size : int, default 5000
        Records per request at most.
    max_chunk_bytes : int, default 8 MiB
        Request body size at most.
    max_workers : int, default 4
        Requests in flight at once.
    progress : bool or callable, optional
        ``None``: a progress bar on a terminal or notebook, none otherwise; ``False``:
        never; ``True``: always; a callable is called as ``progress(done, total)``.
    dry_run : bool, default False
        Send nothing; return the records that would be sent with a ``chunk`` column.
    dropna, allow_duplicates : bool, default False
        Passed to :func:`~atomscale_accessors.validation.validate_records`.

    Returns
    -------
    pandas.DataFrame
        The annotation frame of the created annotations, indexed by the labels of the
        input records, in input order. With ``if_exists="update"``: created and updated.

    Raises
    ------
    AnnotationValidationError
        Invalid input; nothing was sent.
    AnnotationExistsError
        ``if_exists="fail"`` and some records are stored already; nothing was sent.
    UploadError
        The upload stopped part way; ``.created``, ``.not_created`` and ``.unknown`` say
        where it stands, and a re-run with ``if_exists="skip"`` completes it.
    """
    sid = check_uuid(sample_id)
    if if_exists not in IF_EXISTS:
        raise ValueError(f"if_exists must be one of {IF_EXISTS}, got {if_exists!r}")
    chunk_size = _positive_int(chunk_size, DEFAULT_CHUNK_SIZE, "chunk_size")
    max_workers = _positive_int(max_workers, DEFAULT_MAX_WORKERS, "max_workers")
    max_chunk_bytes = _positive_int(max_chunk_bytes, DEFAULT_MAX_CHUNK_BYTES, "max_chunk_bytes")
    if max_chunk_bytes < _MIN_CHUNK_BYTES:
        raise ValueError(f"max_chunk_bytes must be at least {_MIN_CHUNK_BYTES}")

    total: int | None
    if isinstance(records, pd.DataFrame):
        if not validated:
            records = validate_records(records, dropna=dropna, allow_duplicates=allow_duplicates)
        if len(records) == 0:
            raise AnnotationValidationError("nothing to upload: the input has no records")
        blocks: Iterable[pd.DataFrame] = [records]
        total = len(records)
    else:
        if not validated:
            raise ValueError("blocks of records must be validated first (validated=True)")
        blocks = records
        total = None

    if dry_run:
        return _dry_run(blocks, chunk_size, max_chunk_bytes)

    uploader = _Uploader(resolve_client(client), sid)
    if isinstance(records, pd.DataFrame):
        names = records["property_name"].unique().tolist()
        existing = _snapshot(uploader, names if len(names) <= 4 else None)
    else:
        existing = _snapshot(uploader, None)
    uploader.before_ids = set(existing["id"].tolist()) if len(existing) else set()

    bar = _Progress(progress, total)
    outcome = _Outcome()
    updates: list[tuple[pd.DataFrame, np.ndarray, pd.DataFrame]] = []
    try:
        to_send = _select(blocks, existing, if_exists, updates)
        chunks = iter_chunks(to_send, chunk_size=chunk_size, max_chunk_bytes=max_chunk_bytes)
        _run(uploader, chunks, max_workers, outcome, bar)
        # _select fills ``updates`` as the blocks stream past, so PATCH after the creates.
        if updates:
            _apply_updates(uploader, updates, max_workers, outcome, bar)
        if uploader.timed_out:
            _check_late_commits(uploader, outcome)
    finally:
        bar.close()
    return _finish(outcome, sid)


def _positive_int(value: int | None, default: int, name: str) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _dry_run(blocks: Iterable[pd.DataFrame], chunk_size: int, max_chunk_bytes: int) -> pd.DataFrame:
    parts, numbers = [], []
    for chunk in iter_chunks(
        _with_positions(blocks), chunk_size=chunk_size, max_chunk_bytes=max_chunk_bytes
    ):
        parts.append(chunk.records)
        numbers.append(np.full(len(chunk), chunk.number, dtype=np.int64))
    if not parts:
        return pd.DataFrame(columns=[*RECORD_COLUMNS, "chunk"])
    return pd.concat(parts).assign(chunk=np.concatenate(numbers))


def _with_positions(blocks: Iterable[pd.DataFrame]) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    offset = 0
    for block in blocks:
        yield block, np.arange(offset, offset + len(block), dtype=np.int64)
        offset += len(block)


def _snapshot(uploader: _Uploader, names: list[str] | None) -> pd.DataFrame:
    """What the sample holds before the upload (for if_exists and for reconciliation)."""
    objects: list[dict[str, Any]] = []
    if names is None:
        objects = uploader.list_existing()
    else:
        for name in names:
            objects.extend(uploader.list_existing(property_name=name))
    if not objects:
        return _answer_frame([])
    return _answer_frame(objects).assign(_object=objects)


def _select(
    blocks: Iterable[pd.DataFrame],
    existing: pd.DataFrame,
    if_exists: str,
    updates: list[tuple[pd.DataFrame, np.ndarray, pd.DataFrame]],
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """Apply ``if_exists``: yield the records to create, with their input positions."""
    positioned = _with_positions(blocks)
    if if_exists == "append" or len(existing) == 0:
        yield from positioned
        return
    if if_exists == "fail":
        # Decide before anything is sent, so every block is looked at first.
        held = list(positioned)
        clashes = [(b, p, hit) for b, p in held if (hit := _hits(b, existing)[0]).any()]
        if clashes:
            raise _exists_error(clashes, existing)
        yield from held
        return
    for block, positions in positioned:
        hit, stored = _hits(block, existing)
        if hit.any():
            log.info("%d records are stored already (if_exists=%r)", hit.sum(), if_exists)
            if if_exists == "update":
                updates.append((block[hit], positions[hit], existing.iloc[stored[hit]]))
        yield block[~hit], positions[~hit]


def _hits(block: pd.DataFrame, existing: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Which records have their property stored at their position, and the stored row."""
    left = _position_keys(block)
    right = _position_keys(existing)
    right["_right"] = np.arange(len(existing))
    right = right.drop_duplicates(subset=list(POSITION_KEY), keep="first")
    merged = left.merge(right, on=list(POSITION_KEY), how="left")
    stored = merged["_right"].fillna(-1).to_numpy(dtype=np.int64)
    return stored >= 0, stored


def _position_keys(frame: pd.DataFrame) -> pd.DataFrame:
    out = {}
    for column in POSITION_KEY:
        series = frame[column]
        if column in _FLOATS:
            out[column] = series.to_numpy(dtype="float64", na_value=np.nan)
        else:
            out[column] = series.astype(object).where(series.notna(), _NULL_TEXT).to_numpy()
    return pd.DataFrame(out)


def _exists_error(clashes: list, existing: pd.DataFrame) -> AnnotationExistsError:
    frames = []
    for block, _, hit in clashes:
        _, stored = _hits(block[hit], existing)
        frame = annotation_frame(existing["_object"].iloc[stored].tolist(), index=block.index[hit])
        frames.append(frame)
    table = pd.concat(frames)
    shown = ", ".join(
        f"{row.property_name} at ({row.coord_x:g}, {row.coord_y:g})"
        for row in table.head(5).itertuples()
    )
    more = f" and {len(table) - 5} more" if len(table) > 5 else ""
    return AnnotationExistsError(
        f"{len(table)} records are already stored on the sample ({shown}{more}); nothing was "
        "sent. Pass if_exists='skip' to send only new records, 'update' to overwrite the "
        "stored values, or 'append' to store them again. The clashes are in .existing.",
        table,
    )


def _apply_updates(
    uploader: _Uploader,
    updates: list[tuple[pd.DataFrame, np.ndarray, pd.DataFrame]],
    max_workers: int,
    outcome: _Outcome,
    bar: _Progress,
) -> None:
    """PATCH stored annotations whose value, unit or metadata differ from the input."""
    for records, positions, stored in updates:
        if uploader.stop.is_set():
            outcome.not_created.append(Chunk(-1, records, positions, []))
            continue
        stored_objects = stored["_object"].tolist()
        jobs = [
            (_changes(record, obj), obj)
            for (_, record), obj in zip(records.iterrows(), stored_objects, strict=True)
        ]
        with ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="atomscale-patch"
        ) as pool:
            futures = [
                pool.submit(_patch, uploader, obj["id"], changes) if changes else None
                for changes, obj in jobs
            ]
        answers: list[dict[str, Any]] = []
        done = np.ones(len(jobs), dtype=bool)
        for i, (future, (_, obj)) in enumerate(zip(futures, jobs, strict=True)):
            if future is None:
                answers.append(obj)
                continue
            try:
                answers.append(future.result())
            except (TransportError, ApiError) as exc:
                done[i] = False
                outcome.error = outcome.error or exc
                uploader.stop.set()
        if (~done).any():
            outcome.not_created.append(Chunk(-1, records[~done], positions[~done], []))
        if done.any():
            outcome.add_created(
                annotation_frame(answers, index=records.index[done]), positions[done]
            )
            bar.advance(int(done.sum()))


def _changes(record: pd.Series, stored: dict[str, Any]) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    value = float(record["property_value"])
    if stored.get("property_value") is None or float(stored["property_value"]) != value:
        changes["property_value"] = value
    unit = record["property_unit"]
    unit = None if pd.isna(unit) else unit
    if unit != stored.get("property_unit"):
        changes["property_unit"] = unit
    meta = record["metadata"]
    meta = None if not isinstance(meta, dict) else meta
    if meta is not None and meta != stored.get("annotation_metadata"):
        changes["metadata"] = meta
    for fixed in ("char_source_type", "data_id"):
        mine = None if pd.isna(record[fixed]) else record[fixed]
        if mine is not None and mine != stored.get(fixed):
            log.warning(
                "annotation %s: %s differs (%r stored, %r given) but the API cannot change it",
                stored.get("id"),
                fixed,
                stored.get(fixed),
                mine,
            )
    return changes


def _patch(uploader: _Uploader, annotation_id: str, changes: dict[str, Any]) -> dict[str, Any]:
    attempt = 1
    while True:
        try:
            return uploader.client.update_annotation(uploader.sample_id, annotation_id, changes)
        except (TransportError, ApiError) as exc:
            # PATCH sets values, so repeating it is harmless: retry any transient failure.
            if not _transient(exc) or attempt >= uploader.policy.max_attempts:
                raise
            uploader.sleep(attempt, exc)
            attempt += 1


def _run(
    uploader: _Uploader,
    chunks: Iterator[Chunk],
    max_workers: int,
    outcome: _Outcome,
    bar: _Progress,
) -> None:
    """Send chunks on a pool, keeping a bounded number in flight (memory stays bounded)."""
    in_flight: set[Future[_Outcome]] = set()
    limit = max_workers * 2

    def collect(done: Iterable[Future[_Outcome]]) -> None:
        for future in done:
            result = future.result()
            outcome.merge(result)
            bar.advance(sum(len(f) for f in result.created))
            if result.error is not None:
                uploader.stop.set()

    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="atomscale-upload") as pool:
        for chunk in chunks:
            if uploader.stop.is_set():
                outcome.not_created.append(chunk)
                continue
            in_flight.add(pool.submit(uploader.send, chunk))
            if len(in_flight) >= limit:
                done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                collect(done)
        done, _ = wait(in_flight)
        collect(done)


def _check_late_commits(uploader: _Uploader, outcome: _Outcome) -> None:
    """Warn when a timed-out request committed after it was judged lost and resent.

    Bulk create cannot be undone through the API, so this can only be reported.
    """
    if not outcome.created:
        return
    created = pd.concat(outcome.created)
    try:
        listed = uploader.list_existing()
    except (TransportError, ApiError) as exc:
        log.warning("could not check for late commits after a timeout (%s)", _describe(exc))
        return
    with uploader.lock:
        excluded = uploader.before_ids | uploader.claimed
    extra = [obj for obj in listed if obj.get("id") not in excluded]
    _, late = _match(created, _answer_frame(extra))
    if late.any():
        ids = [obj["id"] for obj, hit in zip(extra, late.tolist(), strict=True) if hit]
        log.warning(
            "%d annotations are stored twice: a request that timed out was committed by the "
            "server after the upload had resent its records (extra ids: %s)",
            len(ids),
            ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else ""),
        )


def _finish(outcome: _Outcome, sample_id: str) -> pd.DataFrame:
    created = _ordered(outcome.created, outcome.created_positions)
    if outcome.error is None and not outcome.not_created and not outcome.unknown:
        return created
    not_created = _ordered_records(outcome.not_created)
    unknown = _ordered_records(outcome.unknown)
    cause = outcome.error
    parts = [f"the upload to sample {sample_id} stopped: {cause}"]
    parts.append(
        f"{len(created)} annotations were created, {len(not_created)} were not"
        + (f", and {len(unknown)} may or may not have been stored" if len(unknown) else "")
        + ". Re-run the same upload with if_exists='skip' to complete it without duplicates;"
        " .created, .not_created and .unknown hold the records."
    )
    error = UploadError(
        "\n".join(parts), created=created, not_created=not_created, unknown=unknown, cause=cause
    )
    raise error from cause


def _ordered(frames: list[pd.DataFrame], positions: list[np.ndarray]) -> pd.DataFrame:
    if not frames:
        return empty_annotation_frame()
    frame = frames[0] if len(frames) == 1 else pd.concat(frames)
    order = np.argsort(np.concatenate(positions), kind="stable")
    return frame.iloc[order]


def _ordered_records(chunks: list[Chunk]) -> pd.DataFrame:
    if not chunks:
        return pd.DataFrame(
            {c: pd.Series(dtype="float64" if c in _FLOATS else object) for c in RECORD_COLUMNS}
        )
    frame = pd.concat([c.records for c in chunks])
    order = np.argsort(np.concatenate([c.positions for c in chunks]), kind="stable")
    return frame.iloc[order]


# -- progress ------------------------------------------------------------------------------
class _Progress:
    """A progress bar when asked for, or by default when a person is watching."""

    def __init__(
        self, progress: bool | Callable[[int, int | None], None] | None, total: int | None
    ) -> None:
        self.total = total
        self.done = 0
        self.callback: Callable[[int, int | None], None] | None = None
        self.bar: Any = None
        if callable(progress) and not isinstance(progress, bool):
            self.callback = progress
            return
        show = progress if progress is not None else _interactive()
        if not show:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.callback = _TextBar(total)
            return
        self.bar = tqdm(total=total, unit="annotation", desc="upload", leave=False)

    def advance(self, n: int) -> None:
        if n <= 0:
            return
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif isinstance(self.callback, _TextBar):
            self.callback.close()


class _TextBar:
    def __init__(self, total: int | None) -> None:
        self.total = total
        self.shown = False

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            width = 30
            filled = math.floor(width * done / total)
            text = f"\rupload [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        else:
            text = f"\rupload {done} annotations"
        sys.stderr.write(text)
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _interactive() -> bool:
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())

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
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from ..client import Client, check_uuid, resolve_client
from ..errors import AnnotationValidationError, ApiError, TransportError, UploadError
from ..failures import agree, plural
from ..frame_builder import FrameBuilder
from ..frames import AnnotationObject, annotation_frame
from ..keys import key_frame, record_keys
from ..locking import sample_lock
from ..options import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_CHUNK_BYTES,
    DEFAULT_MAX_WORKERS,
    IF_EXISTS,
    IfExists,
    UploadOptions,
)
from ..retry import describe
from ..schemas import FLOAT_COLUMNS, POSITION_KEY, RECORD_COLUMNS, compact_records, is_uuid
from ..validation import validate_records
from .answers import Answer, IdSet, id_hashes
from .chunks import (
    Chunk,
    dry_run_frame,
    iter_chunks,
)
from .columns import Columns
from .encode import EncodedRecords
from .existing import (
    Existing,
    Listing,
    apply_if_exists,
    apply_updates,
    describe_positions,
    refuse_clashes,
)
from .ledger import Ledger, Outcome
from .progress import Progress
from .send import Uploader, run_chunks

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_CHUNK_BYTES",
    "DEFAULT_MAX_WORKERS",
    "IF_EXISTS",
    "EncodedRecords",
    "IfExists",
    "Listing",
    "UploadOptions",
    "send_records",
    "upload_error",
    "upload_records",
]

log = logging.getLogger(__name__)


def upload_records(
    records: pd.DataFrame,
    sample_id: str,
    options: UploadOptions | None = None,
    *,
    dropna: bool = False,
    allow_duplicates: bool = False,
    **kwargs: Any,
) -> pd.DataFrame:
    """Validate canonical records, then upload them to a sample exactly once; return what
    was created.

    Parameters
    ----------
    records : pandas.DataFrame
        Canonical records (see :func:`~atomscale_accessors.records.to_records`).
    sample_id : str
        UUID of the physical sample; checked before any request.
    options : UploadOptions, optional
        How the upload runs (see :class:`~atomscale_accessors.options.UploadOptions`);
        options given as keywords take precedence.
    dropna, allow_duplicates : bool, default False
        Passed to :func:`~atomscale_accessors.validation.validate_records`.
    **kwargs
        Any field of :class:`~atomscale_accessors.options.UploadOptions`.

    Returns
    -------
    pandas.DataFrame
        As for :func:`send_records`.

    Raises
    ------
    AnnotationValidationError
        Invalid input; nothing was sent.
    AnnotationExistsError, UploadError
        As for :func:`send_records`.
    """
    opts = _options(kwargs, options)
    # Text columns as categoricals once: validation, encoding and the result then work on
    # each column's few distinct values.
    records = compact_records(records)
    records = validate_records(records, dropna=dropna, allow_duplicates=allow_duplicates)
    return send_records(records, sample_id, opts)


def send_records(
    records: pd.DataFrame | Iterable[pd.DataFrame] | Callable[[], Iterable[pd.DataFrame]],
    sample_id: str,
    options: UploadOptions | None = None,
    *,
    total: int | None = None,
    listing: Listing | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Upload records that were validated already to a sample, exactly once; return what
    was created.

    This is the upload every accessor ends in, after validating its input its own way.

    Parameters
    ----------
    records : pandas.DataFrame, iterable of DataFrames, or a function returning one
        Validated canonical records, or blocks of them (a map streamed from dask). A
        function is called again when every block must be looked at before anything is
        sent (``if_exists="fail"`` on a sample that holds annotations), so the blocks are
        never all held at once; a plain iterable is held in memory in that case.
    sample_id : str
        UUID of the physical sample; checked before any request.
    options : UploadOptions, optional
        How the upload runs (see :class:`~atomscale_accessors.options.UploadOptions`);
        options given as keywords take precedence.
    total : int, optional
        How many records the blocks hold, when known: the result's columns are then
        allocated once, at their final size.
    listing : Listing, optional
        What the blocks cover (their property names and bounding box), when the caller
        knows it: only that part of the sample is listed. By default a DataFrame's own
        extent; for blocks, the whole sample.
    **kwargs
        Any field of :class:`~atomscale_accessors.options.UploadOptions`: ``client``,
        ``if_exists``, ``chunksize``, ``max_chunk_bytes``, ``max_workers``, ``progress``,
        ``dry_run``, ``verify``. With ``verify``, uploads to one sample from one machine
        are serialised (see :mod:`atomscale_accessors.locking`), and what an upload from
        another machine at the same time doubled is found after the fact.

    Returns
    -------
    pandas.DataFrame
        The annotation frame of the created annotations, indexed by the labels of the
        input records, in input order. With ``if_exists="update"``: created and updated.

    Raises
    ------
    AnnotationValidationError
        No records at all; nothing was sent.
    AnnotationExistsError
        ``if_exists="fail"`` and some records are stored already; nothing was sent.
    UploadError
        The upload stopped part way; ``.created``, ``.not_created`` and ``.unknown`` say
        where it stands, and a re-run with ``if_exists="skip"`` completes it.
    """
    opts = _options(kwargs, options)
    source: Callable[[], Iterable[pd.DataFrame]] | None = None
    whole: pd.DataFrame | None = None
    if isinstance(records, pd.DataFrame):
        records = compact_records(records)
        if len(records) == 0:
            raise AnnotationValidationError("nothing to upload: the input has no records")
        whole = records
        total = len(records)
        source = lambda: [records]  # noqa: E731
        blocks: Iterable[pd.DataFrame] = [records]
    elif callable(records):
        source = records
        blocks = records()
    else:
        blocks = records

    if opts.dry_run:
        return dry_run_frame(blocks, opts.chunksize, opts.max_chunk_bytes)

    resolved = resolve_client(opts.client)
    sid = target_sample(sample_id, opts, resolved)
    result = FrameBuilder(sid, total, whole.index if whole is not None else None)
    with sample_lock(resolved.endpoint, sid):
        return _upload(
            Uploader(resolved, sid, Ledger(result, expect=total or 0)),
            blocks,
            source,
            whole,
            opts,
            listing if listing is not None else Listing.of(whole),
            Progress(opts.progress_bar, total),
        )


def target_sample(sample: str, options: UploadOptions, client: Client) -> str:
    """The id of the sample an upload goes to: a UUID as it is (an unknown one fails on the
    first request), a name looked up (and created, when ``create_sample`` allows)."""
    if is_uuid(sample):
        return check_uuid(sample)
    from ..samples import resolve_sample

    return resolve_sample(
        sample, create=options.create_sample, project=options.project, client=client
    )


def _options(kwargs: dict[str, Any], options: UploadOptions | None) -> UploadOptions:
    return UploadOptions.of(options, kwargs)


def _upload(
    uploader: Uploader,
    blocks: Iterable[pd.DataFrame],
    source: Callable[[], Iterable[pd.DataFrame]] | None,
    whole: pd.DataFrame | None,
    opts: UploadOptions,
    listing: Listing,
    bar: Progress,
) -> pd.DataFrame:
    """The upload proper, with the sample's lock held: list what is stored, apply
    ``if_exists``, send, update, check, and account."""
    existing = Existing.list(uploader, listing)
    # Reconciliation must not take stored annotations for new ones.
    uploader.ledger.claim_stored(existing.ids)
    if opts.if_exists == "fail" and len(existing):
        blocks = _refuse_stored(blocks, source, whole, existing)

    # Only an upload of a whole frame accounts record by record from the positions done.
    outcome = Outcome(keep_done=whole is not None)
    updates: list[tuple[pd.DataFrame, np.ndarray, list[AnnotationObject]]] = []
    interrupted = False
    try:
        to_send = apply_if_exists(blocks, existing, opts.if_exists, updates, outcome, bar)
        chunks = iter_chunks(
            to_send, chunksize=opts.chunksize, max_chunk_bytes=opts.max_chunk_bytes
        )
        run_chunks(uploader, chunks, opts.max_workers, outcome, bar)
        # apply_if_exists fills ``updates`` as the blocks stream past, so PATCH after the creates.
        if updates:
            apply_updates(uploader, updates, opts.max_workers, outcome, bar)
    except KeyboardInterrupt:
        interrupted = True
        outcome.error = KeyboardInterrupt("interrupted (Ctrl+C)")
    except Exception as exc:  # anything unforeseen still ends with an account of the upload
        if outcome.error is None:
            outcome.error = exc
        log.exception("the upload stopped on an unexpected error")
    finally:
        bar.close()
    check = (opts.verify or uploader.ledger.timed_out) and not interrupted
    if not check:
        uploader.ledger.forget_claims()
    created = uploader.ledger.result.frame()
    if interrupted:
        try:
            _finish(outcome, uploader.sample_id, created, whole)
        except UploadError as error:
            raise KeyboardInterrupt(
                "the upload was interrupted; its account is the UploadError in __cause__"
            ) from error
    if check and len(created):
        _check_unaccounted(uploader, created, listing, strict=opts.verify)
    return _finish(outcome, uploader.sample_id, created, whole)


def _refuse_stored(
    blocks: Iterable[pd.DataFrame],
    source: Callable[[], Iterable[pd.DataFrame]] | None,
    whole: pd.DataFrame | None,
    existing: Existing,
) -> Iterable[pd.DataFrame]:
    """``if_exists="fail"`` on a sample that holds annotations: look at every block before
    anything is sent, and raise if one is stored already. Returns the blocks to send."""
    if source is not None:
        refuse_clashes(source(), existing)
        return source() if whole is None else blocks
    log.warning("holding every block in memory to check for stored annotations first")
    held = list(blocks)
    refuse_clashes(held, existing)
    return held


def _check_unaccounted(
    uploader: Uploader, created: pd.DataFrame, listing: Listing, *, strict: bool
) -> None:
    """Compare what the upload created with what the sample holds where it wrote.

    Two things can be wrong: an annotation reported created is not stored (a 200 that
    lied), or a position holds annotations that neither the state before the upload nor
    the upload account for (a timed-out request committed after its records were resent,
    or another writer). With ``strict``, raise :class:`UploadError` naming them;
    otherwise warn of the second (bulk create cannot be undone through the API).
    """
    try:
        objects = listing.fetch(uploader)
    except (TransportError, ApiError) as exc:
        if strict:
            raise
        log.warning("could not check for annotations stored twice (%s)", describe(exc))
        return
    listed = Answer.from_objects(objects)
    listed_ids = IdSet()
    listed_ids.add(id_hashes(listed.ids))
    missing = ~listed_ids.contains(id_hashes(created["annotation_id"].tolist()))
    fresh = uploader.ledger.unclaimed(listed.ids)
    mine = key_frame(record_keys(Columns.of(created)), POSITION_KEY, count=False).drop_duplicates()
    theirs = key_frame({c: v[fresh] for c, v in listed.keys.items()}, POSITION_KEY, count=False)
    theirs["_at"] = np.flatnonzero(fresh)
    at = np.sort(theirs.merge(mine, on=list(POSITION_KEY), how="inner")["_at"].to_numpy())
    extra = annotation_frame([objects[i] for i in at.tolist()], route=uploader.route)
    problems = []
    if missing.any() and strict:
        problems.append(
            f"{plural(int(missing.sum()), 'annotation')} the server answered as created "
            f"{agree(int(missing.sum()), 'is', 'are')} not stored"
        )
    if len(extra):
        problems.append(
            f"{plural(len(extra), 'annotation')} at the positions of this upload's records "
            f"{agree(len(extra), 'was', 'were')} stored "
            f"by no one this upload knows of ({describe_positions(extra)}): a request that timed out "
            "and was committed after its records were sent again, or another upload to the "
            "same sample at the same time"
        )
    if not problems:
        return
    if not strict:
        log.warning("%s; their ids: %s", problems[0], ", ".join(extra["annotation_id"][:10]))
        return
    raise UploadError(
        f"the upload to sample {uploader.sample_id} was checked: "
        + "; ".join(problems)
        + ". .created holds the annotations that are stored, .unknown the records whose "
        "annotations are not, .extra the annotations no one accounts for.",
        created=created[~missing],
        not_created=_ordered_records([]),
        not_updated=_ordered_records([]),
        unknown=created.loc[missing, list(RECORD_COLUMNS)],
        cause=None,
        extra=extra,
    )


def _finish(
    outcome: Outcome, sample_id: str, created: pd.DataFrame, whole: pd.DataFrame | None
) -> pd.DataFrame:
    failed = bool(
        outcome.error is not None or outcome.not_created or outcome.not_updated or outcome.unknown
    )
    if not failed:
        return created
    if whole is not None:
        # Every input record is accounted for: what is in no other group was not created
        # (or, with if_exists="skip"/"update", was stored before).
        settled = np.concatenate(
            outcome.done
            + [c.positions for c in outcome.not_updated + outcome.unknown]
            + outcome.skipped
            + [np.empty(0, dtype=np.int64)]
        )
        rest = np.setdiff1d(np.arange(len(whole)), settled)
        outcome.not_created = [Chunk.of(whole.iloc[rest], rest)]
    raise upload_error(
        f"the upload to sample {sample_id} stopped: {outcome.error}",
        created=created,
        not_created=_ordered_records(outcome.not_created),
        not_updated=_ordered_records(outcome.not_updated),
        unknown=_ordered_records(outcome.unknown),
        cause=outcome.error,
        mismatched=_mismatched_frame(outcome.mismatched),
    ) from outcome.error


def _mismatched_frame(pairs: list[tuple[Chunk, Answer]]) -> pd.DataFrame | None:
    """What is stored for records stored with other content: id, position and value of
    each stored annotation, indexed by the record's label, in input order."""
    if not pairs:
        return None
    frame = pd.concat(
        [
            pd.DataFrame({"annotation_id": stored.ids, **stored.keys}, index=chunk.index)
            for chunk, stored in pairs
        ]
    )
    order = np.argsort(np.concatenate([chunk.positions for chunk, _ in pairs]), kind="stable")
    return frame.iloc[order]


def upload_error(
    headline: str,
    *,
    created: pd.DataFrame,
    not_created: pd.DataFrame,
    not_updated: pd.DataFrame,
    unknown: pd.DataFrame,
    cause: BaseException | None,
    mismatched: pd.DataFrame | None = None,
) -> UploadError:
    """The :class:`UploadError` of an upload that stopped: what happened, the counts of
    each group of records, and how to complete the upload."""
    lines = [
        headline,
        f"{plural(len(created), 'annotation')} {agree(len(created), 'was', 'were')} created or "
        f"updated, {len(not_created)} {agree(len(not_created), 'was', 'were')} not created"
        + (f", {len(not_updated)} stored ones were not updated" if len(not_updated) else "")
        + (f", and {len(unknown)} may or may not have been stored" if len(unknown) else "")
        + ".",
        "Re-run the same upload with if_exists='skip' to complete it without duplicates"
        + (" (with if_exists='update' to also apply the updates)" if len(not_updated) else "")
        + "; .created, .not_created, .not_updated and .unknown hold the records"
        + (
            f"; .mismatched shows what is stored for {plural(len(mismatched), 'record')} stored with "
            "other content than sent."
            if mismatched is not None and len(mismatched)
            else "."
        ),
    ]
    return UploadError(
        "\n".join(lines),
        created=created,
        not_created=not_created,
        not_updated=not_updated,
        unknown=unknown,
        cause=cause,
        mismatched=mismatched,
    )


def _ordered_records(chunks: list[Chunk]) -> pd.DataFrame:
    if not chunks:
        return pd.DataFrame(
            {
                c: pd.Series(dtype="float64" if c in FLOAT_COLUMNS else object)
                for c in RECORD_COLUMNS
            }
        )
    frame = pd.concat([c.records for c in chunks])
    order = np.argsort(np.concatenate([c.positions for c in chunks]), kind="stable")
    return frame.iloc[order]

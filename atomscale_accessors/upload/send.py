"""Sending chunks: the per-chunk loop (send, retry, reconcile) and the worker pool."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

import numpy as np

from ..client import Client
from ..errors import (
    ApiError,
    TransportError,
)
from ..failures import agree, plural
from ..frame_builder import parse_times, text_codes
from ..frames import metadata_copies
from ..keys import listing_filters, match
from ..retry import Action, Tries, classify, describe, may_be_running, stopping
from ..schemas import (
    RECORD_STRING_COLUMNS,
)
from .answers import Answer, expected_answer, id_hashes, repeated
from .chunks import Chunk
from .ledger import Ledger, Outcome
from .progress import Progress

__all__ = [
    "Pool",
    "Uploader",
    "run_chunks",
]

log = logging.getLogger(__name__)


class Uploader:
    """Sends the chunks of one upload to a sample, recording every outcome in the
    upload's :class:`~.ledger.Ledger`."""

    def __init__(self, client: Client, sample_id: str, ledger: Ledger) -> None:
        self.client = client
        self.sample_id = sample_id
        self.ledger = ledger
        self.stop = ledger.stop
        self.policy = client.retry
        self.bulk_path = f"physical_samples/{sample_id}/annotations/bulk"
        self.route = f"GET /physical_samples/{sample_id}/annotations/"
        self._sizes = threading.Lock()
        # Learned from 413 answers, so later chunks are cut before they are refused.
        self.max_rows: int | None = None
        # Whether answers have one time and version each (see expected_answer).
        self.guess_shared = True

    def list_existing(self, **filters: Any) -> bytes:
        """List annotations as raw JSON (the client's transport retries a GET), with any
        wait ended by the upload's stop."""
        with stopping(self.stop):
            return self.client.list_annotations_raw(self.sample_id, **filters)

    # -- one chunk -----------------------------------------------------------------------
    def send(self, chunk: Chunk) -> Outcome:
        """Send one chunk until every record is created, or its fate is recorded."""
        outcome = Outcome()
        started = time.perf_counter()
        try:
            requests_made = self._send(chunk, outcome)
        except Exception as exc:  # a bug or an unforeseen answer: account, stop, report
            self.stop.set()
            settled = np.concatenate(
                outcome.done
                + [c.positions for c in outcome.not_created + outcome.unknown]
                + [np.empty(0, dtype=np.int64)]
            )
            outcome.unknown.append(chunk.take(~np.isin(chunk.positions, settled)))
            outcome.error = outcome.error or exc
            log.exception("chunk %d: unexpected error", chunk.number)
            return outcome
        log.info(
            "chunk %d: %d of %d annotations created in %.2f s (%d %s)",
            chunk.number,
            outcome.n_done,
            len(chunk),
            time.perf_counter() - started,
            requests_made,
            "request" if requests_made == 1 else "requests",
        )
        return outcome

    def _send(self, chunk: Chunk, outcome: Outcome) -> int:
        """Send the chunk's pieces, each failure handled as :func:`~..retry.classify`
        says; returns how many requests were made."""
        pending = self._cut(chunk)
        tries = Tries(self.policy, self.stop)
        requests_made = 0
        while pending:
            piece = pending.pop(0)
            if self.stop.is_set() or tries.spent():
                outcome.not_created.append(piece)
                continue
            requests_made += 1
            try:
                response = self.client.request("POST", self.bulk_path, data=piece.body())
            except (ApiError, TransportError) as exc:
                self._failed(piece, exc, pending, outcome, tries)
                continue
            # A 2xx: the request took effect. Pair what the server created with the records.
            unmatched = self._accept_answer(piece, response, outcome)
            if unmatched is not None and len(unmatched):
                # The answer does not account for these records: ask what is stored.
                mismatch = ApiError(
                    response.status_code,
                    f"the bulk answer does not match what was sent for {len(unmatched)} "
                    "records (other content, a repeated id, or an id already taken)",
                    method="POST",
                    path="/" + self.bulk_path,
                )
                self._check(unmatched, mismatch, pending, outcome, tries)
        return requests_made

    def _failed(
        self,
        piece: Chunk,
        exc: ApiError | TransportError,
        pending: list[Chunk],
        outcome: Outcome,
        tries: Tries,
    ) -> None:
        """Do what a failed request of ``piece`` calls for."""
        action = classify(exc, rows=len(piece))
        if action is Action.SPLIT:
            # Refused whole, nothing stored: halve it, and cut every later chunk to that.
            half = len(piece) // 2
            with self._sizes:
                self.max_rows = min(self.max_rows or half, half)
            pending[:0] = list(piece.split())
        elif action is Action.RECONCILE:
            self._check(piece, exc, pending, outcome, tries)
        elif action is Action.RETRY and tries.again(exc):
            pending.insert(0, piece)
        else:
            outcome.not_created.append(piece)
            outcome.error = exc

    def _check(
        self,
        piece: Chunk,
        cause: BaseException,
        pending: list[Chunk],
        outcome: Outcome,
        tries: Tries,
    ) -> None:
        """Find out which of ``piece``'s records landed; queue the rest for another try
        while the policy allows one."""
        rest = self._reconcile(piece, outcome, cause)
        if rest is None or not len(rest):
            return
        if tries.again(cause):
            pending.insert(0, rest)
        else:
            outcome.not_created.append(rest)
            outcome.error = cause

    def _cut(self, chunk: Chunk) -> list[Chunk]:
        limit = self.max_rows
        if limit is None or len(chunk) <= limit:
            return [chunk]
        pieces = []
        for start in range(0, len(chunk), limit):
            mask = np.zeros(len(chunk), dtype=bool)
            mask[start : start + limit] = True
            pieces.append(chunk.take(mask))
        return pieces

    def _accept_answer(self, chunk: Chunk, response: Any, outcome: Outcome) -> Chunk | None:
        """Take a 2xx bulk answer: records paired by content with annotations whose ids are
        free are created. Returns the records the answer does not account for; None when
        nothing is left to do (every record accounted for, the answer unreadable so the
        chunk's fate is unknown, or the upload abandoned)."""
        answer, guessed = expected_answer(chunk, response.content, guess_shared=self.guess_shared)
        if guessed is False:  # answers with times or versions that differ: stop guessing
            self.guess_shared = False
        if answer is not None:  # the usual answer: every record paired, in order
            matched, found = answer, np.ones(len(chunk), dtype=bool)
        else:
            try:
                answer = Answer.decode(response.content, "POST /" + self.bulk_path)
            except ApiError as exc:
                # The request took effect, but what was created cannot be read: never resend.
                outcome.unknown.append(chunk)
                outcome.error = exc
                return None
            paired, _ = match(chunk.columns, answer)
            found = paired >= 0
            # An id given twice in the answer is suspect wherever it appears.
            twice = repeated(id_hashes(answer.ids))
            found[found] &= ~twice[paired[found]]
            matched = answer.take(paired[found])
        rows = np.flatnonzero(found)
        mine = chunk if len(rows) == len(chunk) else chunk.take(found)
        free = self.ledger.take(mine.positions, matched, self._rows(mine, matched))
        if free is None:  # abandoned (Ctrl+C): this chunk is accounted for already
            return None
        if free.all():
            outcome.done.append(mine.positions)
            return None if found.all() else chunk.take(~found)
        found[rows[~free]] = False
        self._created(chunk.take(found), matched.take(np.flatnonzero(free)), outcome)
        return None if found.all() else chunk.take(~found)

    def _created(self, chunk: Chunk, answer: Answer, outcome: Outcome) -> None:
        """Write the rows of created records (their ids claimed) into the result."""
        if len(chunk) and self.ledger.write(chunk.positions, self._rows(chunk, answer)):
            outcome.done.append(chunk.positions)

    def _rows(self, chunk: Chunk, answer: Answer) -> dict[str, Any]:
        """The result rows of created records: the records' own columns, and from the
        answer only what the server added (id, time, version)."""
        columns = chunk.columns
        route = "POST /" + self.bulk_path
        return {
            "floats": columns.floats,
            "texts": {
                **{c: (columns.codes[c], columns.values[c]) for c in RECORD_STRING_COLUMNS},
                "version": text_codes(answer.versions),
            },
            "ids": answer.ids,
            "times": parse_times(answer.last_updated, route),
            "metadata": metadata_copies(columns.metadata),
            "index": chunk.index,
        }

    def _reconcile(self, chunk: Chunk, outcome: Outcome, cause: BaseException) -> Chunk | None:
        """After an ambiguous failure or an answer that does not match: keep what landed,
        return what must be sent again.

        A record is created when a new annotation of its content is stored; unknown when
        its position holds a new annotation with other content (sending it again could
        store it twice); to be sent again when nothing new is stored at its position.
        Returns None when the server cannot be asked (the records' fate is then unknown).
        """
        log.warning(
            "chunk %d: %s; checking which of its %d annotations were stored",
            chunk.number,
            describe(cause),
            len(chunk),
        )
        if may_be_running(cause):
            # The server may still be committing the request: give it time to finish, or
            # the listing misses what is about to land and the resend doubles it.
            settle = self.policy.settle
            if settle is None:
                settle = min(2 * self.client.timeout[1], self.policy.max_wait)
            self.ledger.note_timeout()
            self.stop.wait(settle)
        try:
            listed = Answer.decode(self.list_existing(**listing_filters(chunk.columns)), self.route)
        except (TransportError, ApiError) as exc:
            log.error(
                "chunk %d: could not list the sample to check (%s)", chunk.number, describe(exc)
            )
            outcome.unknown.append(chunk)
            outcome.error = cause
            return None
        checked = self.ledger.reconcile(chunk.columns, listed)
        found, differs = checked.found, checked.differs
        self._created(chunk.take(found), checked.matched, outcome)
        if differs.any():
            mismatched = chunk.take(differs)
            log.error(
                "chunk %d: %d records are stored with content other than sent",
                chunk.number,
                len(mismatched),
            )
            outcome.unknown.append(mismatched)
            outcome.mismatched.append((mismatched, checked.stored))
            outcome.error = outcome.error or ApiError(
                getattr(cause, "status_code", 200),
                f"{plural(len(mismatched), 'record')} {agree(len(mismatched), 'is', 'are')} stored "
                "with other content than was sent "
                "(see .mismatched)",
                method="POST",
                path="/" + self.bulk_path,
            )
        rest = ~(found | differs)
        log.info(
            "chunk %d: %d of %d annotations were stored; %d to send again",
            chunk.number,
            int(found.sum()),
            len(chunk),
            int(rest.sum()),
        )
        return chunk.take(rest)


class Pool:
    """Worker threads for requests that an interrupt abandons rather than waits for.

    ``concurrent.futures.ThreadPoolExecutor`` joins its threads on shutdown and again at
    interpreter exit, so Ctrl+C during an upload would wait for every request in flight
    (up to the client's deadline each). These threads are daemons: an interrupted upload
    returns at once, and a request still running ends with its deadline or the process.
    """

    def __init__(self, workers: int, name: str) -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ]
        self._jobs = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, fn, args))
        return future

    def close(self) -> None:
        """Let the threads end once the jobs queued so far are done."""
        for _ in self._threads:
            self._jobs.put(None)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)


def run_chunks(
    uploader: Uploader,
    chunks: Iterator[Chunk],
    max_workers: int,
    outcome: Outcome,
    bar: Progress,
) -> None:
    """Send chunks on a pool, keeping a bounded number in flight (memory stays bounded);
    with one request at a time off the main thread, one after the other from the calling
    thread.

    On Ctrl+C, the chunks in flight are accounted as unknown (a request may have taken
    effect) and the interrupt goes on at once.
    """
    if max_workers == 1 and threading.current_thread() is not threading.main_thread():
        # One request at a time, off the main thread (a sample of a lot): no Ctrl+C is
        # delivered here, so the chunks go out from this thread, with no pool to start.
        _run_inline(uploader, chunks, outcome, bar)
        return
    in_flight: dict[Future[Outcome], Chunk] = {}
    limit = max_workers * 2
    pool = Pool(max_workers, "atomscale-upload")

    def collect(done: Iterable[Future[Outcome]]) -> None:
        for future in done:
            del in_flight[future]
            _account(uploader, future.result(), outcome, bar)

    try:
        for chunk in chunks:
            if uploader.stop.is_set():
                outcome.not_created.append(chunk)
                continue
            in_flight[pool.submit(uploader.send, chunk)] = chunk
            if len(in_flight) >= limit:
                collect(wait(in_flight, return_when=FIRST_COMPLETED).done)
        # Also when producing the next chunk failed: what is in flight gets accounted.
        collect(wait(in_flight).done)
    except KeyboardInterrupt:
        uploader.ledger.abandon()
        collect([future for future in list(in_flight) if future.done()])
        for future, chunk in in_flight.items():
            if future.cancel():  # queued, never sent
                outcome.not_created.append(chunk)
                continue
            # Rows written before the interrupt are created; nothing is written after.
            written = uploader.ledger.result.written(chunk.positions)
            outcome.done.append(chunk.positions[written])
            outcome.unknown.append(chunk.take(~written))
        raise
    except BaseException:
        uploader.stop.set()
        collect(wait(in_flight).done)
        raise
    finally:
        pool.close()


def _run_inline(
    uploader: Uploader, chunks: Iterator[Chunk], outcome: Outcome, bar: Progress
) -> None:
    try:
        for chunk in chunks:
            if uploader.stop.is_set():
                outcome.not_created.append(chunk)
                continue
            _account(uploader, uploader.send(chunk), outcome, bar)
    except BaseException:
        uploader.stop.set()
        raise


def _account(uploader: Uploader, result: Outcome, outcome: Outcome, bar: Progress) -> None:
    """Add a chunk's outcome to the upload's; an error stops the chunks not yet sent."""
    outcome.merge(result)
    bar.advance(result.n_done)
    if result.error is not None:
        uploader.stop.set()

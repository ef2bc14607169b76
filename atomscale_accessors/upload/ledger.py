"""What an upload has accounted for: each record's state and the annotation ids it claimed."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..frame_builder import FrameBuilder
from ..keys import match
from ..schemas import POSITION_KEY
from .answers import Answer, IdSet, id_hashes
from .chunks import Chunk
from .columns import Columns

__all__ = [
    "Ledger",
    "Outcome",
    "Reconciled",
]

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """Where the records of a chunk (or of the whole upload, once merged) stand."""

    # Input positions of the records created or updated (their rows are in the result).
    done: list[np.ndarray] = field(default_factory=list)
    not_created: list[Chunk] = field(default_factory=list)
    not_updated: list[Chunk] = field(default_factory=list)
    unknown: list[Chunk] = field(default_factory=list)
    skipped: list[np.ndarray] = field(default_factory=list)  # positions stored before
    # Records of ``unknown`` whose positions hold new annotations with other content, and
    # those annotations (in the records' order).
    mismatched: list[tuple[Chunk, Answer]] = field(default_factory=list)
    error: BaseException | None = None
    # Whether merging keeps the positions of what was done. An upload of blocks streamed
    # past does not: its account is the result (a position per record adds up to 8
    # bytes per record, for nothing).
    keep_done: bool = True

    @property
    def n_done(self) -> int:
        return sum(len(where) for where in self.done)

    def merge(self, other: Outcome) -> None:
        if self.keep_done:
            self.done += other.done
        self.not_created += other.not_created
        self.not_updated += other.not_updated
        self.unknown += other.unknown
        self.mismatched += other.mismatched
        if self.error is None:
            self.error = other.error


class Ledger:
    """The account of one upload, changed only under its lock: which annotation ids are
    claimed, and which records' rows are in the result.

    The exactly-once rule, in one place:

    - an annotation id is claimed once: by the state before the upload (what was stored,
      or ignored), or by one record of the upload;
    - a record is written into the result only with an id it claimed, in the same step,
      and nothing is written once the upload was abandoned (Ctrl+C), so the result and
      the account never disagree.

    Parameters
    ----------
    result : FrameBuilder
        The result frame to fill.
    expect : int, default 0
        How many ids the upload is expected to claim (its records), so that the claims
        are held in one allocation from the start.

    Attributes
    ----------
    result : FrameBuilder
        The result frame, filled as records are created.
    stop : threading.Event
        Set when the upload stops: no new chunk starts and waits end early.
    timed_out : bool
        Whether a request timed out (its commit may land late: the upload checks at its
        end for what it doubled).
    """

    def __init__(self, result: FrameBuilder, *, expect: int = 0) -> None:
        self.result = result
        self.stop = threading.Event()
        self.timed_out = False
        # Sized for the ids the upload expects to claim; it grows if more come.
        self._claimed = IdSet(expect=expect)
        self._abandoned = False
        self._lock = threading.Lock()

    def claim_stored(self, ids: list[str]) -> None:
        """Claim the ids of annotations the upload must never take for its own."""
        with self._lock:
            self._claimed.add(id_hashes(ids))

    def unclaimed(self, ids: list[str]) -> np.ndarray:
        """Which of ``ids`` no one claimed."""
        with self._lock:
            return ~self._claimed.contains(id_hashes(ids))

    def take(
        self, positions: np.ndarray, answer: Answer, rows: dict[str, Any]
    ) -> np.ndarray | None:
        """Claim the answer's ids for the records at ``positions`` (in order) and, when
        every one was free, write their rows. Returns which ids were free; None when the
        upload was abandoned (nothing is claimed or written then)."""
        with self._lock:
            if self._abandoned:
                return None
            free = self._claim(answer)
            if free.all():
                self.result.put(positions, **rows)
            return free

    def write(self, positions: np.ndarray, rows: dict[str, Any]) -> bool:
        """Write rows of records whose ids were claimed; False when abandoned."""
        with self._lock:
            if self._abandoned:
                return False
            self.result.put(positions, **rows)
            return True

    def reconcile(self, columns: Columns, listed: Answer) -> Reconciled:
        """Pair records with new annotations of a listing by content, and find those whose
        positions hold new annotations of other content; claim both, in one step."""
        with self._lock:
            candidates = listed.without(self._claimed)
            paired, used = match(columns, candidates)
            found = paired >= 0
            matched = candidates.take(paired[found])
            self._claim(matched)
            others = candidates.take(np.flatnonzero(~used))
            at, _ = match(columns, others, POSITION_KEY)
            differs = (at >= 0) & ~found
            stored = others.take(at[differs])
            self._claim(stored)
        return Reconciled(found, matched, differs, stored)

    def note_timeout(self) -> None:
        with self._lock:
            self.timed_out = True

    def abandon(self) -> None:
        """Stop the upload at once (Ctrl+C): requests still running write nothing more into
        the result, so what it shows stays what the account says."""
        with self._lock:
            self._abandoned = True
        self.stop.set()

    def forget_claims(self) -> None:
        """Free the claimed ids once no request can claim more: the result frame, built
        next, needs the memory. The upload does this only when no check for doubles
        follows, since that check asks :meth:`unclaimed`."""
        with self._lock:
            self._claimed = IdSet()

    def _claim(self, answer: Answer) -> np.ndarray:
        """Take the answer's ids; which were free to take. An id repeated within the
        answer, or taken already, is not free. (With the lock held.)"""
        return self._claimed.claim(id_hashes(answer.ids))


@dataclass(frozen=True)
class Reconciled:
    """What a listing says of records whose fate was open."""

    found: np.ndarray  # records stored with their content
    matched: Answer  # their annotations, in the records' order
    differs: np.ndarray  # records whose positions hold new annotations of other content
    stored: Answer  # those annotations, in the records' order

"""What an upload has accounted for: each record's state and the annotation ids it claimed."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .answers import Answer
from .chunks import Chunk

log = logging.getLogger("atomscale_accessors")


@dataclass
class Outcome:
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

    @property
    def n_done(self) -> int:
        return sum(len(where) for where in self.done)

    def merge(self, other: Outcome) -> None:
        self.done += other.done
        self.not_created += other.not_created
        self.not_updated += other.not_updated
        self.unknown += other.unknown
        self.mismatched += other.mismatched
        if self.error is None:
            self.error = other.error

"""What the sample holds already: listing it (with name and box hints), applying
``if_exists`` to it, and PATCHing stored annotations."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..client import check_uuid
from ..errors import (
    AnnotationExistsError,
    ApiError,
    TransportError,
)
from ..failures import agree, plural
from ..frames import (
    REPEATED_TEXT_COLUMNS,
    AnnotationObject,
    annotation_frame,
    decode_annotations,
)
from ..keys import Box, bounding_box, box_filters, key_frame, record_keys
from ..retry import stopping
from ..schemas import (
    FLOAT_COLUMNS,
    POSITION_KEY,
)
from .answers import Answer
from .chunks import Chunk, with_positions
from .columns import Columns
from .encode import ENCODER
from .ledger import Outcome
from .progress import Progress
from .send import Pool, Uploader

__all__ = [
    "MAX_NAMED_LISTINGS",
    "Existing",
    "Listing",
    "apply_if_exists",
    "apply_updates",
    "changes",
    "describe_positions",
    "exists_error",
    "patch",
    "refuse_clashes",
]

log = logging.getLogger(__name__)


# Up to this many properties, the existing annotations are listed one property at a time
# (the list route filters by name); beyond, the whole sample is listed once.
MAX_NAMED_LISTINGS = 4


@dataclass(frozen=True)
class Listing:
    """Which of a sample's annotations an upload must look at: those of its properties
    (listed one property at a time, up to a few) in its bounding box; for blocks whose
    extent is not known, the whole sample.

    Parameters
    ----------
    names : tuple of str, optional
        The properties; ``None``: every property.
    box : dict, optional
        ``x_range`` and ``y_range`` filters, each ``(low, high)``, inclusive.
    """

    names: tuple[str, ...] | None = None
    box: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, whole: pd.DataFrame | None) -> Listing:
        if whole is None:
            return cls()
        names = tuple(whole["property_name"].unique().tolist())
        xs, ys = (
            whole[c].to_numpy(dtype="float64", na_value=np.nan) for c in ("coord_x", "coord_y")
        )
        box = box_filters([bounding_box(xs, ys)])
        return cls(names if len(names) <= MAX_NAMED_LISTINGS else None, box)

    @classmethod
    def covering(cls, names: Iterable[str], boxes: Iterable[Box | None]) -> Listing:
        """The listing of blocks with these property names and boxes (``None`` for a block
        with records lacking x or y)."""
        distinct = tuple(sorted(set(names)))
        named = distinct if 0 < len(distinct) <= MAX_NAMED_LISTINGS else None
        return cls(named, box_filters(boxes))

    def fetch(self, uploader: Uploader) -> list[AnnotationObject]:
        objects: list[AnnotationObject] = []
        for name in self.names if self.names is not None else [None]:
            filters = dict(self.box, property_name=name) if name is not None else dict(self.box)
            objects.extend(decode_annotations(uploader.list_existing(**filters), uploader.route))
        return objects


class Existing:
    """What the sample held before the upload: for ``if_exists`` and for reconciliation.

    Each stored annotation pairs with at most one record, so with repeated positions
    (``allow_duplicates=True``) two stored readings account for two records, not for all.
    """

    def __init__(self, objects: list[AnnotationObject]) -> None:
        self.objects = objects
        self.ids = [o.id for o in objects]
        self.free = np.ones(len(objects), dtype=bool)

    @functools.cached_property
    def keys(self) -> pd.DataFrame:
        """The stored annotations' positions, ready to join on, with their numbers."""
        keys = key_frame(Answer.from_objects(self.objects).keys, POSITION_KEY, count=False)
        keys["_stored"] = np.arange(len(self.objects))
        return keys

    @functools.cached_property
    def unique(self) -> bool:
        """Whether no two stored annotations share a position."""
        return not self.keys.duplicated(subset=list(POSITION_KEY)).any()

    @classmethod
    def list(cls, uploader: Uploader, listing: Listing) -> Existing:
        """List the sample's annotations that could clash: of these properties, in this box."""
        return cls(listing.fetch(uploader))

    def __len__(self) -> int:
        return len(self.objects)

    def lookup(self, block: pd.DataFrame, *, consume: bool = True) -> np.ndarray:
        """For each record, the stored annotation at its position (its number), or -1."""
        if not self.objects:  # an empty sample, the usual first upload
            return np.full(len(block), -1, dtype=np.int64)
        left = key_frame(record_keys(Columns.of(block)), POSITION_KEY, count=False)
        if self.unique and not left.duplicated().any():
            merged = left.merge(self.keys, on=list(POSITION_KEY), how="left")
        else:
            # Repeated positions: the n-th record at a position pairs with the n-th stored
            # annotation there that no earlier record has taken.
            right = self.keys[self.free]
            right = right.assign(_n=right.groupby(list(POSITION_KEY), dropna=False).cumcount())
            left["_n"] = left.groupby(list(POSITION_KEY), dropna=False).cumcount()
            merged = left.merge(right, on=[*POSITION_KEY, "_n"], how="left")
        stored = merged["_stored"].fillna(-1).to_numpy(dtype=np.int64)
        if consume:
            self.free[stored[stored >= 0]] = False
        return stored

    def frame(self, stored: np.ndarray, index: pd.Index) -> pd.DataFrame:
        return annotation_frame([self.objects[i] for i in stored.tolist()], index=index)


def refuse_clashes(blocks: Iterable[pd.DataFrame], existing: Existing) -> None:
    """Raise ``AnnotationExistsError`` when any record is stored already (nothing sent)."""
    clashes = []
    for block in blocks:
        stored = existing.lookup(block, consume=False)
        hit = stored >= 0
        if hit.any():
            clashes.append(existing.frame(stored[hit], block.index[hit]))
    if clashes:
        raise exists_error(pd.concat(clashes))


def apply_if_exists(
    blocks: Iterable[pd.DataFrame],
    existing: Existing,
    if_exists: str,
    updates: list[tuple[pd.DataFrame, np.ndarray, list[AnnotationObject]]],
    outcome: Outcome,
    bar: Progress,
) -> Iterator[tuple[pd.DataFrame, np.ndarray]]:
    """Apply ``if_exists``: yield the records to create, with their input positions."""
    positioned = with_positions(blocks)
    if if_exists in ("append", "fail") or len(existing) == 0:
        yield from positioned  # "fail" has refused clashes already
        return
    for block, positions in positioned:
        stored = existing.lookup(block)
        hit = stored >= 0
        if hit.any():
            log.info("%d records are stored already (if_exists=%r)", hit.sum(), if_exists)
            if if_exists == "update":
                objects = [existing.objects[i] for i in stored[hit].tolist()]
                updates.append((block[hit], positions[hit], objects))
            else:
                outcome.skipped.append(positions[hit])
                bar.advance(int(hit.sum()))  # accounted for: the bar ends at the total
        yield block[~hit], positions[~hit]


def exists_error(table: pd.DataFrame) -> AnnotationExistsError:
    return AnnotationExistsError(
        f"{plural(len(table), 'record')} {agree(len(table), 'is', 'are')} already stored on the "
        f"sample ({describe_positions(table)}); "
        "nothing was "
        "sent. Pass if_exists='skip' to send only new records, 'update' to overwrite the "
        "stored values, or 'append' to store them again. The clashes are in .existing.",
        table,
    )


def apply_updates(
    uploader: Uploader,
    updates: list[tuple[pd.DataFrame, np.ndarray, list[AnnotationObject]]],
    max_workers: int,
    outcome: Outcome,
    bar: Progress,
) -> None:
    """PATCH stored annotations whose value, unit or metadata differ from the input."""
    pool = Pool(max_workers, "atomscale-patch")
    try:
        for number, (records, positions, stored_objects) in enumerate(updates):
            if uploader.stop.is_set():
                outcome.not_updated.append(Chunk.of(records, positions))
                continue
            try:
                _update_group(uploader, pool, records, positions, stored_objects, outcome, bar)
            except KeyboardInterrupt:
                # PATCH only sets values: what was not confirmed is "not updated".
                uploader.ledger.abandon()
                for records, positions, _ in updates[number:]:
                    outcome.not_updated.append(Chunk.of(records, positions))
                raise
    finally:
        pool.close()


def _update_group(
    uploader: Uploader,
    pool: Pool,
    records: pd.DataFrame,
    positions: np.ndarray,
    stored_objects: list[AnnotationObject],
    outcome: Outcome,
    bar: Progress,
) -> None:
    """PATCH one block's stored annotations, and write the updated rows into the result."""
    jobs = [
        (changes(record, obj), obj)
        for (_, record), obj in zip(records.iterrows(), stored_objects, strict=True)
    ]
    futures = [
        pool.submit(patch, uploader, obj.id, changes) if changes else None for changes, obj in jobs
    ]
    wait([future for future in futures if future is not None])
    answers: list[AnnotationObject] = []
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
        outcome.not_updated.append(Chunk.of(records[~done], positions[~done]))
    if done.any():
        updated = annotation_frame(answers, index=records.index[done])
        uploader.ledger.result.put(
            positions[done],
            floats={c: updated[c].to_numpy() for c in FLOAT_COLUMNS},
            texts={
                c: (updated[c].cat.codes.to_numpy(), updated[c].cat.categories)
                for c in REPEATED_TEXT_COLUMNS
                if c != "physical_sample_id"
            },
            ids=updated["annotation_id"].tolist(),
            times=updated["last_updated"].array.asi8,
            metadata=updated["metadata"].to_numpy(),
            index=updated.index,
        )
        outcome.done.append(positions[done])
        bar.advance(int(done.sum()))


def changes(record: pd.Series, stored: AnnotationObject) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    value = float(record["property_value"])
    if stored.property_value is None or stored.property_value != value:
        changes["property_value"] = value
    unit = record["property_unit"]
    unit = None if pd.isna(unit) else unit
    if unit != stored.property_unit:
        changes["property_unit"] = unit
    meta = record["metadata"]
    meta = None if not isinstance(meta, dict) else meta
    if meta is not None and meta != stored.annotation_metadata:
        changes["metadata"] = meta
    for fixed in ("char_source_type", "data_id"):
        mine = None if pd.isna(record[fixed]) else record[fixed]
        if mine is not None and mine != getattr(stored, fixed):
            log.warning(
                "annotation %s: %s differs (%r stored, %r given) but the API cannot change it",
                stored.id,
                fixed,
                getattr(stored, fixed),
                mine,
            )
    return changes


def patch(uploader: Uploader, annotation_id: str, changes: dict[str, Any]) -> AnnotationObject:
    path = f"physical_samples/{uploader.sample_id}/annotations/{check_uuid(annotation_id)}"
    body = ENCODER.encode(changes)

    # PATCH sets values, so the client's transport repeats it after a failure that may pass.
    with stopping(uploader.stop):
        raw = uploader.client.request("PATCH", path, data=body).content
    # One object: read as a list of one, with the checks of every other answer.
    return decode_annotations(b"[" + raw + b"]", "PATCH /" + path)[0]


def describe_positions(table: pd.DataFrame, shown: int = 5) -> str:
    """A few of a table's positions, for a message."""
    text = ", ".join(
        f"{row.property_name} at ({row.coord_x:g}, {row.coord_y:g})"
        for row in table.head(shown).itertuples()
    )
    return text + (f" and {len(table) - shown} more" if len(table) > shown else "")

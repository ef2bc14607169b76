"""What a map is once its structure is read: the plan that flattening follows.

:func:`~atomscale_accessors.maps.structure.plan_map` reads a map into a :class:`MapPlan`
(its axes, spatial dimensions and properties); the flattening code follows the plan and
never looks at the map's structure again. :class:`StructureProblems` gathers what is
wrong with a map, so that one error reports all of it; :func:`check_unique_positions` is
the last check of a plan, made on the coordinates alone.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import MapStructureError
from ..failures import MAX_EXAMPLES, failure_table, format_message, quote
from ..keys import Box

__all__ = ["MapAxis", "MapPlan", "MapProperty", "StructureProblems"]


class StructureProblems:
    """Structure problems, gathered so that one error reports all of them."""

    def __init__(self, subject: str = "the map cannot be turned into annotations") -> None:
        self.subject = subject
        self.messages: list[str] = []
        self.rows: list[tuple[Any, Any, str, Any]] = []

    def add(self, message: str, column: Any, check: str, case: Any = None) -> None:
        self.messages.append(message)
        self.rows.append((None, column, check, case))

    def raise_if_any(self) -> None:
        if not self.messages:
            return
        message = format_message(reasons=self.messages, heading=self.subject)
        raise MapStructureError(message, failure_table(self.rows))


@dataclass(frozen=True)
class MapAxis:
    """One coordinate of a plan, with the conversion of its values to the target unit."""

    role: str  # "x", "y" or "z"
    name: Hashable
    dims: tuple[Hashable, ...]
    convert: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass(frozen=True)
class MapProperty:
    """One variable of a plan, with the text fields its records carry."""

    variable: Hashable
    name: str
    unit: str | None  # None only in a plan with problems, which is never flattened
    char_source_type: Any
    data_id: Any
    extra_dims: tuple[Hashable, ...]


@dataclass
class MapPlan:
    """A map's structure, read and checked; flattening follows it."""

    ds: xr.Dataset
    axes: tuple[MapAxis, ...]
    spatial_dims: tuple[Hashable, ...]
    properties: tuple[MapProperty, ...]
    coord_units: str
    coord_ref_frame: Any
    metadata: dict[str, Any] | None
    labels: dict[Hashable, np.ndarray] = field(default_factory=dict)
    levels: dict[Hashable, tuple[pd.Index, np.ndarray] | None] = field(default_factory=dict)

    @property
    def chunked(self) -> bool:
        return any(is_dask(self.ds[p.variable].data) for p in self.properties)

    def dim_labels(self, dim: Hashable) -> np.ndarray:
        if dim not in self.labels:
            index = self.ds.indexes.get(dim)
            self.labels[dim] = (
                np.asarray(index) if index is not None else np.arange(self.ds.sizes[dim])
            )
        return self.labels[dim]

    def dim_level(self, dim: Hashable) -> tuple[pd.Index, np.ndarray] | None:
        """The labels of a dimension as a sorted MultiIndex level (as ``from_arrays``
        makes it), with the code of each position; None when labels repeat or miss."""
        if dim not in self.levels:
            labels = pd.Index(self.dim_labels(dim))
            self.levels[dim] = None
            if labels.is_unique and not labels.hasnans:
                try:
                    order = np.argsort(labels.to_numpy(), kind="stable")
                except TypeError:  # labels that do not sort: left to from_arrays
                    return None
                codes = np.empty(len(order), dtype=np.int64)
                codes[order] = np.arange(len(order))
                self.levels[dim] = (labels[order], codes)
        return self.levels[dim]

    def cell_label(self, positions: tuple[Any, ...]) -> Any:
        """The label of one cell, from its integer positions along the spatial dims."""
        labels = tuple(
            plain_scalar(self.dim_labels(d)[int(p)])
            for d, p in zip(self.spatial_dims, positions, strict=True)
        )
        return labels[0] if len(labels) == 1 else labels

    @property
    def separable(self) -> bool:
        """Whether the positions are a product of 1-D axes on distinct dimensions."""
        dims = [d for a in self.axes for d in a.dims]
        return all(len(a.dims) <= 1 for a in self.axes) and len(set(dims)) == len(dims)

    @property
    def positions_unique(self) -> bool:
        """Whether the checks of the plan prove one record per property and position, so
        that the records need no uniqueness check (no extra dimensions, no unit conversion
        that could round two positions into one, and coordinates checked in the plan)."""
        if any(p.extra_dims for p in self.properties) or any(a.convert for a in self.axes):
            return False
        return self.separable or not any(is_dask(self.ds[a.name].data) for a in self.axes)

    def box(self) -> Box | None:
        """The box holding the map's positions, in the plan's unit (computing a dask
        coordinate's minimum and maximum); ``None`` when there is no position."""
        ends: list[float] = []
        for role in ("x", "y"):
            axis = next(a for a in self.axes if a.role == role)
            values = self.ds[axis.name]
            pair = np.array([float(values.min(skipna=True)), float(values.max(skipna=True))])
            if np.isnan(pair).any():
                return None
            # A unit conversion is monotonic: the converted ends are the ends.
            ends.extend(np.sort(axis.convert(pair)) if axis.convert else pair)
        return ends[0], ends[1], ends[2], ends[3]

    def allow_duplicates(self, given: bool | None) -> bool:
        """``allow_duplicates`` as given, else whether the plan puts several records at
        one position."""
        if given is not None:
            return bool(given)
        # Slices along an extra dimension put one record per slice at each position.
        return any(p.extra_dims for p in self.properties)


# -- positions -------------------------------------------------------------------------------
def check_unique_positions(plan: MapPlan, problems: StructureProblems) -> None:
    """Add a problem for two cells at one position (read from the coordinates alone, so
    dask-backed values are not computed)."""
    if plan.separable:
        # A product of 1-D axes: positions are unique when each axis is.
        for axis in plan.axes:
            if axis.dims:
                _check_unique_axis(axis, plan.ds[axis.name], problems)
        return
    coords = [plan.ds[a.name] for a in plan.axes]
    if any(is_dask(c.data) for c in coords):
        return  # checked block by block by the records schema instead
    shape = tuple(plan.ds.sizes[d] for d in plan.spatial_dims)
    columns = {
        axis.role: _expand(
            np.asarray(c.values, dtype="float64"), axis.dims, plan.spatial_dims, shape
        )
        for axis, c in zip(plan.axes, coords, strict=True)
    }
    positions = pd.DataFrame(columns)
    finite = np.isfinite(positions.to_numpy()).all(axis=1)
    dup = positions.duplicated(keep=False).to_numpy() & finite
    if dup.any():
        where = np.flatnonzero(dup)
        first = positions.iloc[where[0]]
        same = where[(positions.iloc[where] == first).all(axis=1).to_numpy()]
        cells = [plan.cell_label(np.unravel_index(i, shape)) for i in same[:MAX_EXAMPLES]]
        shown = ", ".join(f"{k}={quote(plain_scalar(v))}" for k, v in first.items())
        problems.add(
            f"{dup.sum()} cells share a position with another cell, e.g. {shown} at "
            f"{plan.spatial_dims} = {cells}",
            tuple(a.name for a in plan.axes),
            "unique_position",
            tuple(plain_scalar(v) for v in first.tolist()),
        )


def _check_unique_axis(axis: MapAxis, coord: xr.DataArray, problems: StructureProblems) -> None:
    values = pd.Series(np.asarray(coord.values, dtype="float64"))
    values = values[np.isfinite(values.to_numpy())]
    dup = values[values.duplicated(keep=False)]
    if len(dup):
        repeated = plain_scalar(dup.iloc[0])
        positions = dup.index[dup == repeated].tolist()
        problems.add(
            f"{axis.role} coordinate {quote(axis.name)} repeats the value {quote(repeated)} "
            f"(at {quote(axis.dims[0])} positions {positions[:MAX_EXAMPLES]}): two cells "
            "at one position",
            axis.name,
            "unique_position",
            repeated,
        )


def _expand(
    values: np.ndarray,
    dims: tuple[Hashable, ...],
    spatial_dims: tuple[Hashable, ...],
    shape: tuple[int, ...],
) -> np.ndarray:
    """A coordinate broadcast over the spatial dimensions and raveled."""
    order = [d for d in spatial_dims if d in dims]
    values = np.transpose(values, [dims.index(d) for d in order]) if values.ndim > 1 else values
    view = values.reshape([shape[i] if d in dims else 1 for i, d in enumerate(spatial_dims)])
    return np.broadcast_to(view, shape).ravel()


# -- small helpers ---------------------------------------------------------------------------
def is_dask(data: Any) -> bool:
    """Whether an array is a dask array (False when dask is not installed)."""
    try:
        import dask.array
    except ImportError:
        return False
    return isinstance(data, dask.array.Array)


def computed(block: Any) -> np.ndarray:
    """A dask block's values, computed by the scheduler dask would choose.

    With no scheduler configured and distributed not imported (so no client can exist),
    that is the threaded scheduler, named here outright: asked to choose, dask imports
    distributed (when installed) only to find no client, 13 MiB for nothing.
    """
    import dask
    import dask.threaded

    scheduler = None
    if dask.config.get("scheduler", None) is None and "distributed" not in sys.modules:
        scheduler = dask.threaded.get
    return np.asarray(block.compute(scheduler=scheduler))


def plain_scalar(value: Any) -> Any:
    """A numpy scalar as the Python scalar it holds (for messages); anything else as is."""
    return value.item() if isinstance(value, np.generic) else value


def plain_label(label: Any) -> Any:
    """A cell label (a scalar, or a tuple of them) with Python scalars."""
    if isinstance(label, tuple):
        return tuple(plain_scalar(v) for v in label)
    return plain_scalar(label)

"""Maps to canonical records: whole (:func:`flatten_map`) or block by block
(:func:`iter_flatten_map`), and validated (:func:`validate_map`).

The structure is read first (:func:`~atomscale_accessors.maps.structure.plan_map`), so a bad
map fails before a value is read; the records then follow the plan. Flattening is
vectorised (``ravel`` and a boolean mask, never a Python loop over cells) and, for
dask-backed maps, done one dask block at a time, so memory stays bounded by the block.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Generator, Hashable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import AnnotationValidationError, MapStructureError
from ..failures import FailureCollector, failure_table, quote
from ..keys import repeated_positions
from ..options import MapOptions
from ..schemas import RECORD_COLUMNS
from ..validation import check_records, validate_records
from .plan import MapAxis, MapPlan, MapProperty, computed, is_dask, plain_label
from .structure import plan_map

__all__ = [
    "flatten_map",
    "flatten_plan",
    "iter_flatten_map",
    "iter_plan_blocks",
    "validate_map",
    "validate_plan_blocks",
]

log = logging.getLogger(__name__)

# Integers beyond 2**53 do not all have an exact float64; converting them would change data.
_MAX_EXACT_INT = 2**53


# -- public API ------------------------------------------------------------------------------
def flatten_map(ds: xr.Dataset, options: MapOptions | None = None, **kwargs: Any) -> pd.DataFrame:
    """Flatten a gridded or scattered map into canonical annotation records.

    Each data variable on the spatial dimensions becomes one property; each cell with a
    value becomes one record. NaN cells are skipped (and counted in an INFO log line).

    Parameters
    ----------
    ds : xarray.Dataset
        The map; never modified. numpy- or dask-backed (a dask-backed map is computed one
        variable at a time here; use :func:`iter_flatten_map` to stream it block by block).
    options : MapOptions, optional
        What the map is; see :class:`~atomscale_accessors.options.MapOptions`.
    **kwargs
        Options by name (``x``, ``y``, ``z``, ``variables``, ``property_name``,
        ``property_unit``, ``coord_units``, ``coord_ref_frame``, ``char_source_type``,
        ``data_id``, ``metadata``, ``extra_dims``), taking precedence over ``options``.

    Returns
    -------
    pandas.DataFrame
        Canonical records (columns :data:`~atomscale_accessors.schemas.RECORD_COLUMNS`),
        property by property, each in the order of its cells. The index holds the cell's
        labels along the spatial dimensions (values of the dimension coordinate, else
        integer positions): a :class:`pandas.MultiIndex` for a grid, a flat index named
        after the dimension for scattered points. Text columns, which repeat one value
        per variable, are categoricals.

    Raises
    ------
    MapStructureError
        For a map whose structure cannot be read: no coordinates, non-numeric data,
        missing or unconvertible units, extra dimensions, duplicate positions, non-finite
        coordinates where there is a value, a variable in which every cell is NaN.
    AnnotationValidationError
        For integers beyond 2**53 (not exactly representable as float64).

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from atomscale_accessors.maps import flatten_map
    >>> ds = xr.Dataset(
    ...     {"thickness": (("y", "x"), [[101.5, 99.0], [np.nan, 98.0]], {"units": "nm"})},
    ...     coords={
    ...         "x": ("x", [0.0, 5.0], {"units": "mm"}),
    ...         "y": ("y", [0.0, 5.0], {"units": "mm"}),
    ...     },
    ... )
    >>> rec = flatten_map(ds)
    >>> rec[["property_name", "property_value", "property_unit", "coord_x", "coord_y"]]
    ... # doctest: +NORMALIZE_WHITESPACE
            property_name  property_value property_unit  coord_x  coord_y
    y   x
    0.0 0.0     thickness           101.5            nm      0.0      0.0
        5.0     thickness            99.0            nm      5.0      0.0
    5.0 5.0     thickness            98.0            nm      5.0      5.0
    """
    plan = plan_map(ds, MapOptions.of(options, kwargs))
    return flatten_plan(plan)


def iter_flatten_map(
    ds: xr.Dataset, options: MapOptions | None = None, **kwargs: Any
) -> Iterator[pd.DataFrame]:
    """Flatten a map block by block, for maps larger than memory.

    The structure is checked when this function is called (so a bad map fails before the
    first block); the blocks are computed lazily as the iterator is consumed. A
    dask-backed variable is computed one dask block at a time, and each block is dropped
    once its records are yielded. A numpy-backed variable is flattened whole.

    Parameters
    ----------
    ds : xarray.Dataset
        The map; never modified.
    options : MapOptions, optional
        What the map is, and ``block_rows``: split the records of each block into frames
        of at most this many rows.
    **kwargs
        Options by name, as for :func:`flatten_map` (and ``block_rows``).

    Returns
    -------
    iterator of pandas.DataFrame
        Canonical records; together, the records of :func:`flatten_map` (for a dask map,
        in the order of the dask blocks rather than row-major over the whole map).

    Raises
    ------
    MapStructureError
        As for :func:`flatten_map`; errors found in the values (non-finite coordinates
        where there is a value, a variable with no value at all) surface while iterating.

    Examples
    --------
    >>> from atomscale_accessors.datasets import wafer_thickness_map
    >>> from atomscale_accessors.maps import iter_flatten_map
    >>> ds = wafer_thickness_map(n=11, chunks={"y": 4})
    >>> [len(block) for block in iter_flatten_map(ds)]
    [26, 38, 17]
    """
    opts = MapOptions.of(options, kwargs)
    return iter_plan_blocks(plan_map(ds, opts), opts.block_rows)


def validate_map(ds: xr.Dataset, options: MapOptions | None = None, **kwargs: Any) -> pd.DataFrame:
    """Flatten a map and validate the records (structure, then values).

    Parameters
    ----------
    ds : xarray.Dataset
        The map; never modified.
    options : MapOptions, optional
        What the map is, and how to validate it (``dropna``, ``allow_duplicates``).
    **kwargs
        Options by name, as for :func:`flatten_map` (and ``dropna``, ``allow_duplicates``).

    Returns
    -------
    pandas.DataFrame
        The validated canonical records. (A dask-backed map is computed and validated one
        dask block at a time, and its records come in the order of the blocks, as an
        upload sends them; validation stops early once ``MAX_FAILURE_CASES`` failures are
        found, so a map that is wrong throughout fails fast, in bounded memory.)

    Raises
    ------
    MapStructureError, AnnotationValidationError
        Listing every problem found.

    Examples
    --------
    >>> import numpy as np
    >>> from atomscale_accessors.datasets import sheet_resistance_map
    >>> from atomscale_accessors.maps import validate_map
    >>> ds = sheet_resistance_map()
    >>> len(validate_map(ds))
    49
    >>> ds["sheet_resistance"][3] = np.inf
    >>> validate_map(ds)
    Traceback (most recent call last):
    ...
    atomscale_accessors.errors.AnnotationValidationError: 1 of 49 records failed validation (1 failure):
    ...
    """
    opts = MapOptions.of(options, kwargs)
    plan = plan_map(ds, opts)
    allow = plan.allow_duplicates(opts.allow_duplicates)
    if not plan.chunked:
        return validate_records(flatten_plan(plan), dropna=opts.dropna, allow_duplicates=allow)
    blocks: list[pd.DataFrame] = []
    validate_plan_blocks(plan, None, dropna=opts.dropna, allow_duplicates=allow, keep=blocks)
    records = blocks[0] if len(blocks) == 1 else pd.concat(blocks)
    checked = allow or plan.positions_unique or len(blocks) == 1
    if not checked and repeated_positions(records).any():
        # One position in two blocks: the blocks' own checks cannot see it.
        return validate_records(records, allow_duplicates=False)
    return records


# -- flattening ------------------------------------------------------------------------------
def flatten_plan(plan: MapPlan) -> pd.DataFrame:
    frames = []
    for prop in plan.properties:
        values = _transposed(plan, prop)
        data = computed(values.data) if is_dask(values.data) else np.asarray(values.values)
        frame, n_cells = _block_records(plan, prop, data, None)
        _finish_variable(prop, n_cells, len(frame))
        frames.append(frame)
    return frames[0] if len(frames) == 1 else pd.concat(frames)


def iter_plan_blocks(plan: MapPlan, block_rows: int | None) -> Generator[pd.DataFrame, None, None]:
    for prop in plan.properties:
        values = _transposed(plan, prop)
        data = values.data
        n_cells = n_kept = 0
        if is_dask(data):
            starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in data.chunks]
            pieces: Iterator[tuple[np.ndarray, tuple[int, ...] | None]] = (
                (
                    computed(data.blocks[idx]),
                    tuple(int(s[i]) for s, i in zip(starts, idx, strict=True)),
                )
                for idx in np.ndindex(*data.numblocks)
            )
        else:
            pieces = iter([(np.asarray(values.values), None)])
        for block, start in pieces:
            frame, cells = _block_records(plan, prop, block, start)
            del block  # the block's memory goes as soon as its records exist
            n_cells += cells
            n_kept += len(frame)
            if block_rows is None or len(frame) <= block_rows:
                if len(frame):
                    yield frame
            else:
                for begin in range(0, len(frame), block_rows):
                    yield frame.iloc[begin : begin + block_rows]
        _finish_variable(prop, n_cells, n_kept)


def validate_plan_blocks(
    plan: MapPlan,
    block_rows: int | None,
    *,
    dropna: bool,
    allow_duplicates: bool,
    keep: list[pd.DataFrame] | None = None,
) -> int:
    """Validate every block (pass 1 of a streamed upload); return how many records the
    blocks hold, or raise one error with the failures of all of them.

    The failures are capped (counts exact, cases up to ``MAX_FAILURE_CASES``), and once the
    cap is reached no further block is read: a map that is wrong throughout fails in the
    time and memory of a few blocks. ``keep`` receives the valid records of each block
    while no block has failed.
    """
    failures = FailureCollector()
    allow_duplicates = allow_duplicates or plan.positions_unique
    n_rows = 0
    blocks = iter_plan_blocks(plan, block_rows)
    try:
        for block in blocks:
            if failures.full:
                failures.stopped_early = True  # the counts so far are lower bounds
                break
            n_rows += len(block)
            valid = check_records(block, failures, dropna=dropna, allow_duplicates=allow_duplicates)
            if keep is not None:
                if failures:
                    keep.clear()  # nothing is returned after a failure
                else:
                    keep.append(valid)
    finally:
        blocks.close()
    if failures:
        raise failures.error(n_rows)
    return n_rows


def _transposed(plan: MapPlan, prop: MapProperty) -> xr.DataArray:
    return plan.ds[prop.variable].transpose(*prop.extra_dims, *plan.spatial_dims)


def _finish_variable(prop: MapProperty, n_cells: int, n_kept: int) -> None:
    if n_kept == 0:
        raise MapStructureError(
            f"every cell of variable {quote(prop.variable)} is NaN: nothing to upload "
            "(leave it out with variables=[...])",
            failure_table([(None, prop.variable, "has_values", None)]),
        )
    if n_cells > n_kept:
        log.info(
            "variable %r: skipped %d NaN cells of %d", prop.variable, n_cells - n_kept, n_cells
        )


def _block_records(
    plan: MapPlan, prop: MapProperty, values: np.ndarray, start: tuple[int, ...] | None
) -> tuple[pd.DataFrame, int]:
    """Records of one block of a variable (dims: extra, then spatial); and its cell count."""
    n_extra = len(prop.extra_dims)
    if start is None:
        start = (0,) * values.ndim
    e_shape, s_shape = values.shape[:n_extra], values.shape[n_extra:]
    e_start, s_start = start[:n_extra], start[n_extra:]
    ns = math.prod(s_shape)
    flat = values.reshape(-1)
    flat = _to_float64(
        flat, prop.variable, lambda pos: _cell_labels(plan, pos % ns, s_shape, s_start)
    )
    keep = np.flatnonzero(~np.isnan(flat))
    n = len(keep)
    s_flat = keep % ns if ns else keep
    s_rel = np.unravel_index(s_flat, s_shape)
    s_abs = [rel + off for rel, off in zip(s_rel, s_start, strict=True)]
    index = _index(plan, s_abs)

    coord_values = _coordinates(plan, prop, (s_rel, s_start, s_shape), index)
    meta = _metadata_column(plan, prop, keep, ns, e_shape, e_start)
    nan = np.full(n, np.nan)
    columns = {
        "property_name": _repeated(prop.name, n),
        "property_value": flat[keep],
        "property_unit": _repeated(prop.unit, n),
        "char_source_type": _repeated(prop.char_source_type, n),
        "coord_ref_frame": _repeated(plan.coord_ref_frame, n),
        "coord_units": _repeated(plan.coord_units, n),
        "coord_x": coord_values.get("x", nan),
        "coord_y": coord_values.get("y", nan),
        "coord_z": coord_values.get("z", nan),
        "data_id": _repeated(prop.data_id, n),
        "metadata": meta,
    }
    # Metadata as objects outright: pandas would scan a million cells to infer a type.
    frame = pd.DataFrame(
        {
            name: pd.Series(columns[name], copy=False, dtype=object if name == "metadata" else None)
            for name in RECORD_COLUMNS
        },
        copy=False,
    )
    frame.index = index
    return frame, flat.size


def _coordinates(
    plan: MapPlan,
    prop: MapProperty,
    cells: tuple[tuple[np.ndarray, ...], tuple[int, ...], tuple[int, ...]],
    index: pd.Index,
) -> dict[str, np.ndarray]:
    """Each axis's coordinate at the kept cells of a block (positions within the block,
    start and shape of the block); a non-finite one where there is a value is an error."""
    s_rel, s_start, s_shape = cells
    n = len(index)
    coord_values: dict[str, np.ndarray] = {}
    failures = []
    for axis in plan.axes:
        vals = _axis_values(plan, axis, s_rel, s_start, s_shape, n)
        coord_values[axis.role] = vals
        bad = ~np.isfinite(vals)
        if bad.any():
            failures.append(
                pd.DataFrame(
                    {
                        "index": pd.Series(index[bad].tolist(), dtype=object),
                        "column": axis.name,
                        "check": "finite_coordinate",
                        "failure_case": vals[bad],
                    }
                )
            )
    if failures:
        table = pd.concat(failures, ignore_index=True)
        first = table.iloc[0]
        raise MapStructureError(
            f"variable {quote(prop.variable)}: {len(table)} cells with a value have a non-finite "
            f"coordinate, e.g. {quote(first['column'])} = {quote(first['failure_case'])} at "
            f"{plan.spatial_dims} = {quote(plain_label(first['index']))}; positions must be finite "
            "where there is a value",
            table,
        )
    return coord_values


def _metadata_column(
    plan: MapPlan,
    prop: MapProperty,
    keep: np.ndarray,
    ns: int,
    e_shape: tuple[int, ...],
    e_start: tuple[int, ...],
) -> np.ndarray:
    """The metadata of the kept cells: the plan's, with each extra dimension's label."""
    if not prop.extra_dims:
        return _constant(plan.metadata, len(keep))
    lookup = np.empty(math.prod(e_shape), dtype=object)
    for k, combo in enumerate(np.ndindex(*e_shape)):
        entry = dict(plan.metadata or {})
        for dim, rel, off in zip(prop.extra_dims, combo, e_start, strict=True):
            entry[str(dim)] = _json_scalar(plan.dim_labels(dim)[rel + off])
        lookup[k] = entry
    return lookup[keep // ns] if ns else np.empty(0, dtype=object)


def _axis_values(
    plan: MapPlan,
    axis: MapAxis,
    s_rel: tuple[np.ndarray, ...],
    s_start: tuple[int, ...],
    s_shape: tuple[int, ...],
    n: int,
) -> np.ndarray:
    """The axis coordinate at each kept cell of a block, float64, in the target unit."""
    coord = plan.ds[axis.name]
    window = {
        d: slice(off, off + size)
        for d, off, size in zip(plan.spatial_dims, s_start, s_shape, strict=True)
        if d in axis.dims
    }
    coord = coord.isel(window).transpose(*[d for d in plan.spatial_dims if d in axis.dims])
    raw = np.asarray(coord.values)
    values = _to_float64(raw.reshape(-1), axis.name, None).reshape(raw.shape)
    if axis.convert is not None:
        values = axis.convert(values)
    if not axis.dims:
        return np.full(n, float(values))
    picks = tuple(s_rel[plan.spatial_dims.index(d)] for d in coord.dims)
    return np.asarray(values[picks], dtype="float64")


def _to_float64(
    values: np.ndarray,
    name: Hashable,
    labels: Callable[[np.ndarray], list[Any]] | None,
) -> np.ndarray:
    """Lossless conversion to float64: floats widen, integers up to 2**53 convert."""
    kind = values.dtype.kind
    if kind == "f":
        return values.astype("float64", copy=False)
    if kind in "iu":
        too_big = values > _MAX_EXACT_INT
        if kind == "i":
            too_big |= values < -_MAX_EXACT_INT
        if too_big.any():
            where = np.flatnonzero(too_big)
            cells = labels(where) if labels is not None else where.tolist()
            table = pd.DataFrame(
                {
                    "index": pd.Series(cells, dtype=object),
                    "column": name,
                    "check": "exact_float",
                    "failure_case": values[where].tolist(),
                }
            )
            raise AnnotationValidationError(
                f"{quote(name)} holds {len(where)} integers beyond 2**53 that float64 cannot "
                f"represent exactly, e.g. {values[where[0]]} at {quote(plain_label(cells[0]))}",
                table,
            )
        return values.astype("float64")
    raise MapStructureError(  # pragma: no cover - the pandera schema rejects these first
        f"{quote(name)} holds {values.dtype} values, not real numbers",
        failure_table([(None, name, "real_number", str(values.dtype))]),
    )


def _cell_labels(
    plan: MapPlan, s_flat: np.ndarray, s_shape: tuple[int, ...], s_start: tuple[int, ...]
) -> list[Any]:
    rel = np.unravel_index(s_flat, s_shape)
    return [
        plan.cell_label(tuple(int(r[i]) + off for r, off in zip(rel, s_start, strict=True)))
        for i in range(len(s_flat))
    ]


def _index(plan: MapPlan, positions: list[np.ndarray]) -> pd.Index:
    names = [str(d) if not isinstance(d, str) else d for d in plan.spatial_dims]
    if len(positions) == 1:
        return pd.Index(plan.dim_labels(plan.spatial_dims[0])[positions[0]], name=names[0])
    levels = [plan.dim_level(d) for d in plan.spatial_dims]
    if all(level is not None for level in levels):
        # Each position maps to its label's code in the sorted labels: nothing to hash.
        # pandas-stubs take levels as sequences, which an Index is not to them (pandas takes it).
        return pd.MultiIndex(
            levels=[level[0] for level in levels if level is not None],  # type: ignore[misc]
            codes=[
                level[1][p] for level, p in zip(levels, positions, strict=True) if level is not None
            ],
            names=names,
            verify_integrity=False,
        )
    arrays = [plan.dim_labels(d)[p] for d, p in zip(plan.spatial_dims, positions, strict=True)]
    return pd.MultiIndex.from_arrays(arrays, names=names)


def _repeated(value: Any, n: int) -> pd.Categorical | np.ndarray:
    """A text column with one value on every row (None or NaN: unset), as a categorical;
    a value that cannot be a category (an array, say) fills an object column, for
    validation to report."""
    if np.ndim(value) != 0:
        return _constant(value, n)
    try:
        hash(value)
    except TypeError:
        return _constant(value, n)
    unset = value is None or bool(pd.isna(value))
    codes = np.full(n, -1 if unset else 0, dtype=np.int8)
    return pd.Categorical.from_codes(codes, pd.Index([] if unset else [value], dtype=object))


def _constant(value: Any, n: int) -> np.ndarray:
    # fill() shares one object across the column; np.full would convert it per cell.
    column = np.empty(n, dtype=object)
    if value is not None:
        column.fill(value)
    return column


def _json_scalar(value: Any) -> Any:
    """A coordinate value as a JSON-able Python scalar (datetimes as ISO 8601 text)."""
    if isinstance(value, np.datetime64):
        return None if np.isnat(value) else pd.Timestamp(value).isoformat()
    if isinstance(value, np.timedelta64):
        return None if np.isnat(value) else pd.Timedelta(value).isoformat()
    if isinstance(value, pd.Timestamp | pd.Timedelta):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)

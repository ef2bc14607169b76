"""Gridded or scattered xarray maps to canonical records, and annotation frames back to maps.

Both directions live here because they share the same idea of a map: values on spatial
dimensions, positions in ``x``, ``y`` (and optionally ``z``) coordinates carrying CF
``units`` attributes.

Maps understood
---------------
* a regular grid: 1-D ``x`` and ``y`` coordinates on two dimensions, in any order;
* a curvilinear grid: 2-D ``x`` and ``y`` coordinates on the same two dimensions;
* scattered points: ``x`` and ``y`` along one dimension (e.g. ``point``);
* any of these with a ``z`` coordinate (scalar, along the same dimensions, or on a
  dimension of its own for a volume).

Coordinates are found, in this order, by an explicit name (``x=``, ``y=``, ``z=``), by the
CF ``axis`` attribute (``axis="X"``), or by a common name (:data:`COORD_NAMES`: ``x``,
``X``, ``x_mm``, ``xc``, ...). Geographic names (``lon``, ``lat``) are deliberately not
recognised: an annotation position is on a sample, not on the Earth. A coordinate may also be
a data variable (scattered data often keeps ``x`` and ``y`` as columns); it is then used as a
coordinate and is not a property.

Flattening is vectorised (``ravel`` and a boolean mask, never a Python loop over cells) and,
for dask-backed maps, done one dask block at a time by :func:`iter_flatten_map`, so memory
stays bounded by the block.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import pandera.xarray as pax
import xarray as xr
from pandera.engines.xarray_engine import DataType as _XarrayDataType
from pandera.errors import SchemaError, SchemaErrors

from .errors import AnnotationValidationError, MapStructureError
from .failures import (
    MAX_EXAMPLES,
    FailureCollector,
    clip,
    failure_table,
    format_message,
    quote,
    quote_list,
)
from .records import DEFAULT_COORD_REF_FRAME
from .schemas import RECORD_COLUMNS, repeated_positions
from .validation import check_records, validate_records

__all__ = [
    "COORD_NAMES",
    "DEFAULT_COORD_REF_FRAME",
    "flatten_map",
    "frame_to_map",
    "iter_flatten_map",
    "map_structure_schema",
    "upload_map",
    "validate_map",
]

log = logging.getLogger("atomscale_accessors")

#: Names recognised as the x, y and z coordinate, in order of preference.
COORD_NAMES: dict[str, tuple[str, ...]] = {
    role: (
        role,
        role.upper(),
        f"{role}_mm",
        f"{role}_um",
        f"{role}_nm",
        f"{role}_m",
        f"{role}c",
        f"{role}_pos",
        f"{role}_position",
        f"pos_{role}",
        f"position_{role}",
        f"coord_{role}",
        f"{role}_coord",
        f"{role}_coordinate",
    )
    for role in ("x", "y", "z")
}
# Integers beyond 2**53 do not all have an exact float64; converting them would change data.
_MAX_EXACT_INT = 2**53
# frame_to_map puts points on a grid when they fill at least this share of its cells.
_GRID_MIN_FILL = 0.5
ExtraDims = Literal["error", "metadata"]


# -- public API ------------------------------------------------------------------------------
def flatten_map(
    ds: xr.Dataset,
    *,
    x: Hashable | None = None,
    y: Hashable | None = None,
    z: Hashable | None = None,
    variables: Hashable | Sequence[Hashable] | None = None,
    property_name: str | Mapping[Hashable, str] | None = None,
    property_unit: str | Mapping[Hashable, str] | None = None,
    coord_units: str | None = None,
    coord_ref_frame: str | None = None,
    char_source_type: str | None = None,
    data_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    extra_dims: ExtraDims = "error",
) -> pd.DataFrame:
    """Flatten a gridded or scattered map into canonical annotation records.

    Each data variable on the spatial dimensions becomes one property; each cell with a
    value becomes one record. NaN cells are skipped (and counted in an INFO log line).

    Parameters
    ----------
    ds : xarray.Dataset
        The map; never modified. numpy- or dask-backed (a dask-backed map is computed one
        variable at a time here; use :func:`iter_flatten_map` to stream it block by block).
    x, y, z : hashable, optional
        Names of the coordinates (or data variables) holding the positions. Default: the
        coordinate with the CF attribute ``axis="X"`` (``"Y"``, ``"Z"``), else one of
        :data:`COORD_NAMES`. ``x`` and ``y`` are required, ``z`` is optional.
    variables : hashable or list, optional
        The data variables to flatten. Default: every data variable that has all the
        spatial dimensions.
    property_name : str or dict, optional
        The property name: one string (one variable only) or ``{variable: name}``.
        Default: the variable's ``property_name`` attribute, else its name.
    property_unit : str or dict, optional
        The unit of the values: one string for every variable or ``{variable: unit}``.
        Default: the variable's ``units`` attribute. A missing unit is an error (use
        ``"1"`` for a dimensionless quantity).
    coord_units : str, optional
        The unit of the positions. Default: the ``units`` attribute of ``x``. Coordinates
        in other units are converted with pint when it is installed (and are an error
        otherwise); a coordinate without a ``units`` attribute is taken to be in
        ``coord_units``.
    coord_ref_frame, char_source_type, data_id : str, optional
        Default: the attribute of that name of the variable, else of the Dataset.
        ``coord_ref_frame`` defaults to ``"sample_relative"``.
    metadata : dict, optional
        Metadata for every record.
    extra_dims : {"error", "metadata"}, default "error"
        What to do with a variable that has a dimension besides the spatial ones (a
        wavelength, a time): raise, or flatten every slice and record the dimension's
        coordinate value in each record's metadata (``{"wavelength": 633.0}``).

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
    >>> from atomscale_accessors.flatten import flatten_map
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
    plan = _plan(
        ds,
        x=x,
        y=y,
        z=z,
        variables=variables,
        property_name=property_name,
        property_unit=property_unit,
        coord_units=coord_units,
        coord_ref_frame=coord_ref_frame,
        char_source_type=char_source_type,
        data_id=data_id,
        metadata=metadata,
        extra_dims=extra_dims,
    )
    return _flatten_whole(plan)


def iter_flatten_map(
    ds: xr.Dataset, *, block_rows: int | None = None, **options: Any
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
    block_rows : int, optional
        Split the records of each block into frames of at most this many rows.
    **options
        As for :func:`flatten_map`.

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
    >>> from atomscale_accessors.flatten import iter_flatten_map
    >>> ds = wafer_thickness_map(n=11, chunks={"y": 4})
    >>> [len(block) for block in iter_flatten_map(ds)]
    [26, 38, 17]
    """
    if block_rows is not None and (isinstance(block_rows, bool) or int(block_rows) < 1):
        raise ValueError(f"block_rows must be a positive integer, got {quote(block_rows)}")
    plan = _plan(ds, **options)
    return _iter_blocks(plan, block_rows)


def validate_map(
    ds: xr.Dataset,
    *,
    dropna: bool = False,
    allow_duplicates: bool | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Flatten a map and validate the records (structure, then values).

    Parameters
    ----------
    ds : xarray.Dataset
        The map; never modified.
    dropna, allow_duplicates : bool
        As for :func:`~atomscale_accessors.validation.validate_records`.
        ``allow_duplicates`` defaults to True when ``extra_dims="metadata"`` puts several
        records at one position, else False.
    **options
        As for :func:`flatten_map`.

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
    >>> from atomscale_accessors.flatten import validate_map
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
    plan = _plan(ds, **options)
    allow = _allow_duplicates(allow_duplicates, plan)
    if not plan.chunked:
        return validate_records(_flatten_whole(plan), dropna=dropna, allow_duplicates=allow)
    blocks: list[pd.DataFrame] = []
    _validate_blocks(plan, None, dropna=dropna, allow_duplicates=allow, keep=blocks)
    records = blocks[0] if len(blocks) == 1 else pd.concat(blocks)
    checked = allow or _positions_unique(plan) or len(blocks) == 1
    if not checked and repeated_positions(records).any():
        # One position in two blocks: the blocks' own checks cannot see it.
        return validate_records(records, allow_duplicates=False)
    return records


def upload_map(
    ds: xr.Dataset,
    sample_id: str,
    *,
    client: Any = None,
    if_exists: str = "fail",
    chunk_size: int | None = None,
    max_chunk_bytes: int | None = None,
    max_workers: int | None = None,
    progress: Any = None,
    dry_run: bool = False,
    verify: bool = False,
    dropna: bool = False,
    allow_duplicates: bool | None = None,
    block_rows: int | None = None,
    **options: Any,
) -> pd.DataFrame:
    """Validate a map completely, then upload it; return the created annotations.

    A numpy-backed map is flattened whole and handed to
    :func:`~atomscale_accessors.upload.upload_records`. A dask-backed map is read twice,
    one block at a time: the first pass validates every block (and keeps none), the
    second flattens the blocks again and streams them to the upload. So nothing is sent
    when any block is invalid, and memory stays bounded by a block, at the price of
    computing the map twice.

    Parameters
    ----------
    ds : xarray.Dataset
        The map; never modified.
    sample_id : str
        UUID of the physical sample.
    client, if_exists, chunk_size, max_chunk_bytes, max_workers, progress, dry_run, verify
        As for :func:`~atomscale_accessors.upload.upload_records`.
    dropna, allow_duplicates : bool
        As for :func:`validate_map`.
    block_rows : int, optional
        As for :func:`iter_flatten_map` (dask-backed maps).
    **options
        As for :func:`flatten_map`.

    Returns
    -------
    pandas.DataFrame
        The annotation frame of the created annotations, indexed like the records.
    """
    from .upload import upload_records

    plan = _plan(ds, **options)
    allow = _allow_duplicates(allow_duplicates, plan)
    send = {
        "client": client,
        "if_exists": if_exists,
        "chunk_size": chunk_size,
        "max_chunk_bytes": max_chunk_bytes,
        "max_workers": max_workers,
        "progress": progress,
        "dry_run": dry_run,
        "verify": verify,
    }
    if not plan.chunked:
        records = _flatten_whole(plan)
        return upload_records(records, sample_id, dropna=dropna, allow_duplicates=allow, **send)
    n_records = _validate_blocks(plan, block_rows, dropna=dropna, allow_duplicates=allow)
    # Flattening never yields a NaN value, so the blocks of pass 2 need no dropna.
    # A factory, not one generator: the upload may need a second look at every block.
    return upload_records(
        lambda: _iter_blocks(plan, block_rows),
        sample_id,
        validated=True,
        total=n_records,
        **send,
    )


def map_structure_schema(
    variables: Mapping[Hashable, bool],
    coords: Mapping[Hashable, bool],
    spatial_dims: Sequence[Hashable],
) -> tuple[pax.DatasetSchema, dict[Hashable, pax.DataArraySchema]]:
    """The ``pandera.xarray`` schemas of one map's structure.

    Parameters
    ----------
    variables : dict
        ``{variable: needs_units_attribute}`` of the variables to flatten.
    coords : dict
        ``{coordinate: needs_units_attribute}`` of the x, y (and z) coordinates.
    spatial_dims : sequence
        Dimensions every variable must have.

    Returns
    -------
    (pandera.xarray.DatasetSchema, dict)
        The Dataset schema (variables: real numbers on the spatial dimensions, with a
        ``units`` attribute where needed; coordinates: real numbers), and one
        ``DataArraySchema`` per coordinate that needs a ``units`` attribute (pandera's
        ``Coordinate`` does not check attributes).
    """
    data_vars = {
        name: pax.DataVar(
            dtype=_RealNumber(),
            dims=tuple(spatial_dims),
            ordered_dims=False,
            nullable=True,
            attrs={"units": _is_unit_text} if needs_units else None,
        )
        for name, needs_units in variables.items()
    }
    coord_specs = {name: pax.Coordinate(dtype=_RealNumber(), nullable=True) for name in coords}
    unit_schemas = {
        name: pax.DataArraySchema(name=name, attrs={"units": _is_unit_text}, nullable=True)
        for name, needs_units in coords.items()
        if needs_units
    }
    return pax.DatasetSchema(data_vars=data_vars, coords=coord_specs), unit_schemas


# -- the plan: what the map is, checked before any value is read --------------------------
@dataclass(frozen=True)
class _Axis:
    role: str  # "x", "y" or "z"
    name: Hashable
    dims: tuple[Hashable, ...]
    convert: Callable[[np.ndarray], np.ndarray] | None = None


@dataclass(frozen=True)
class _Property:
    variable: Hashable
    name: str
    unit: str
    char_source_type: Any
    data_id: Any
    extra_dims: tuple[Hashable, ...]


@dataclass
class _Plan:
    ds: xr.Dataset
    axes: tuple[_Axis, ...]
    spatial_dims: tuple[Hashable, ...]
    properties: tuple[_Property, ...]
    coord_units: str
    coord_ref_frame: Any
    metadata: dict[str, Any] | None
    labels: dict[Hashable, np.ndarray] = field(default_factory=dict)
    levels: dict[Hashable, tuple[pd.Index, np.ndarray] | None] = field(default_factory=dict)

    @property
    def chunked(self) -> bool:
        return any(_is_dask(self.ds[p.variable].data) for p in self.properties)

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


class _Problems:
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


def _plan(
    ds: xr.Dataset,
    *,
    x: Hashable | None = None,
    y: Hashable | None = None,
    z: Hashable | None = None,
    variables: Hashable | Sequence[Hashable] | None = None,
    property_name: str | Mapping[Hashable, str] | None = None,
    property_unit: str | Mapping[Hashable, str] | None = None,
    coord_units: str | None = None,
    coord_ref_frame: str | None = None,
    char_source_type: str | None = None,
    data_id: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    extra_dims: ExtraDims = "error",
) -> _Plan:
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"expected an xarray Dataset, got {type(ds).__name__}")
    if extra_dims not in ("error", "metadata"):
        raise ValueError(f"extra_dims must be 'error' or 'metadata', got {quote(extra_dims)}")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    problems = _Problems()

    # 1. Where the positions are.
    names = {
        role: _find_coordinate(ds, role, given, problems)
        for role, given in (("x", x), ("y", y), ("z", z))
    }
    problems.raise_if_any()
    found = [n for n in names.values() if n is not None]
    if len(set(found)) < len(found):
        problems.add(
            f"the same variable serves as two coordinates: {names}", "coords", "distinct_axes"
        )
        problems.raise_if_any()
    as_coords = [n for n in found if n in ds.data_vars]
    if as_coords:
        ds = ds.set_coords(as_coords)  # a new Dataset; the caller's is left alone
    axes_dims = {role: tuple(ds[n].dims) for role, n in names.items() if n is not None}
    spatial: list[Hashable] = []
    for dims in axes_dims.values():
        spatial.extend(d for d in dims if d not in spatial)
    if not spatial:
        problems.add(
            "the x and y coordinates are scalars: there is no spatial dimension to map",
            "coords",
            "spatial_dims",
        )
        problems.raise_if_any()

    # 2. Which variables are properties.
    selected = _select_variables(ds, variables, set(found), spatial, problems)
    problems.raise_if_any()
    first_dims = ds[selected[0]].dims
    spatial_dims = tuple(d for d in first_dims if d in spatial) + tuple(
        d for d in spatial if d not in first_dims
    )

    # 3. Structure, with pandera: real numbers, spatial dimensions, units attributes.
    unit_given = _per_variable(property_unit, selected, "property_unit", problems)
    coord_needs_units = {n: coord_units is None for n in found}
    schema, unit_schemas = map_structure_schema(
        {v: v not in unit_given for v in selected}, coord_needs_units, spatial_dims
    )
    _run_schema(schema, ds, problems, set(found))
    for name, unit_schema in unit_schemas.items():
        _run_schema(unit_schema, ds[name], problems, set(found))

    # 4. Dimensions besides the spatial ones.
    extras = {v: tuple(d for d in ds[v].dims if d not in spatial_dims) for v in selected}
    if extra_dims == "error":
        for v, dims in extras.items():
            for d in dims:
                problems.add(
                    _extra_dim_message(v, d, ds.sizes[d], spatial_dims), v, "extra_dims", d
                )
    problems.raise_if_any()

    # 5. Units of the positions.
    axes, target = _resolve_axes(ds, names, axes_dims, coord_units, problems)

    # 6. The properties and their text fields.
    names_given = _per_variable(property_name, selected, "property_name", problems)
    properties = []
    for v in selected:
        var = ds[v]
        prop_name = names_given.get(v, var.attrs.get("property_name", v))
        unit = unit_given.get(v, var.attrs.get("units"))
        properties.append(
            _Property(
                variable=v,
                name=prop_name if isinstance(prop_name, str) else str(prop_name),
                unit=unit,
                char_source_type=_option(char_source_type, "char_source_type", var, ds),
                data_id=_option(data_id, "data_id", var, ds),
                extra_dims=extras[v],
            )
        )
    seen: dict[str, Hashable] = {}
    for p in properties:
        if p.name in seen:
            problems.add(
                f"variables {quote(seen[p.name])} and {quote(p.variable)} both give the property "
                f"{quote(p.name)}: rename one with property_name={{variable: name}}",
                p.variable,
                "unique_property_name",
                p.name,
            )
        seen[p.name] = p.variable
    problems.raise_if_any()

    plan = _Plan(
        ds=ds,
        axes=axes,
        spatial_dims=spatial_dims,
        properties=tuple(properties),
        coord_units=target,
        coord_ref_frame=_option(coord_ref_frame, "coord_ref_frame", None, ds)
        or DEFAULT_COORD_REF_FRAME,
        metadata=dict(metadata) if metadata is not None else None,
    )
    # 7. Two cells at one position (checked on the coordinates alone, so also for dask maps).
    _check_unique_positions(plan, problems)
    problems.raise_if_any()
    return plan


def _find_coordinate(
    ds: xr.Dataset, role: str, given: Hashable | None, problems: _Problems
) -> Hashable | None:
    if given is not None:
        if given in ds.variables:
            return given
        hint = (
            f"; {quote(given)} is a dimension without coordinate values: assign them with "
            f"ds.assign_coords({clip(given)}=...)"
            if given in ds.dims
            else ""
        )
        problems.add(
            f"{role}={quote(given)}: no coordinate or variable of that name "
            f"(coordinates: {quote_list(ds.coords)}){hint}",
            role,
            "coordinate_present",
            given,
        )
        return None
    by_axis = [
        n for n, c in ds.coords.items() if str(c.attrs.get("axis", "")).upper() == role.upper()
    ]
    if len(by_axis) == 1:
        return by_axis[0]
    if len(by_axis) > 1:
        problems.add(
            f"several coordinates have axis={quote(role.upper())}: {quote_list(by_axis)}; name one with {role}=",
            role,
            "unique_axis",
            tuple(by_axis),
        )
        return None
    for pool in (ds.coords, ds.data_vars):
        hits = [n for n in COORD_NAMES[role] if n in pool]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            problems.add(
                f"several candidates for the {role} coordinate: {quote_list(hits)}; name one with {role}=",
                role,
                "unique_axis",
                tuple(hits),
            )
            return None
    if role == "z":
        return None
    dims = [d for d in ds.dims if str(d).lower() == role]
    hint = (
        f"; the dimension {quote(dims[0])} has no coordinate values: assign positions with "
        f"ds.assign_coords({clip(dims[0])}=...)"
        if dims
        else ""
    )
    problems.add(
        f"no {role} coordinate found (looked for axis={quote(role.upper())} and the names "
        f"{', '.join(COORD_NAMES[role][:6])}, ...; coordinates: {quote_list(ds.coords)}): "
        f"name it with {role}=...{hint}",
        role,
        "coordinate_present",
        None,
    )
    return None


def _select_variables(
    ds: xr.Dataset,
    variables: Hashable | Sequence[Hashable] | None,
    axes: set[Hashable],
    spatial: list[Hashable],
    problems: _Problems,
) -> list[Hashable]:
    if variables is not None:
        chosen = (
            [variables]
            if isinstance(variables, str) or not isinstance(variables, Iterable)
            else list(variables)
        )
        if not chosen:
            problems.add("variables= names no variable", "variables", "variables_given", None)
        for v in chosen:
            if v not in ds.data_vars or v in axes:
                problems.add(
                    f"no data variable {quote(v)} (data variables: "
                    f"{quote_list([n for n in ds.data_vars if n not in axes])})",
                    v,
                    "variable_present",
                    v,
                )
        return chosen
    candidates = [n for n in ds.data_vars if n not in axes]
    chosen = [n for n in candidates if set(spatial) <= set(ds[n].dims)]
    skipped = [n for n in candidates if n not in chosen]
    if skipped:
        log.info(
            "not flattening %s: not on all the spatial dimensions %s",
            quote_list(skipped),
            tuple(spatial),
        )
    if not chosen:
        problems.add(
            f"no data variable has the spatial dimensions {tuple(spatial)} "
            f"(data variables: {quote_list(candidates)})",
            "variables",
            "variable_on_spatial_dims",
            None,
        )
    return chosen


def _per_variable(
    option: Any, selected: list[Hashable], what: str, problems: _Problems
) -> dict[Hashable, Any]:
    """An option given once for all variables or as ``{variable: value}``."""
    if option is None:
        return {}
    if isinstance(option, Mapping):
        unknown = [k for k in option if k not in selected]
        if unknown:
            problems.add(
                f"{what}= names variables that are not flattened: {quote_list(unknown)} "
                f"(flattened: {quote_list(selected)})",
                what,
                "variable_present",
                tuple(unknown),
            )
        return {k: option[k] for k in selected if k in option}
    if what == "property_name" and len(selected) > 1:
        problems.add(
            f"property_name={quote(option)} would give {len(selected)} variables the same name: "
            "pass {variable: name} instead",
            what,
            "unique_property_name",
            option,
        )
        return {}
    if not isinstance(option, str) or not option.strip():
        problems.add(f"{what}={quote(option)} is not a text", what, "text", option)
        return {}
    return dict.fromkeys(selected, option)


def _option(given: Any, name: str, var: xr.DataArray | None, ds: xr.Dataset) -> Any:
    if given is not None:
        return given
    if var is not None and name in var.attrs:
        return var.attrs[name]
    return ds.attrs.get(name)


def _run_schema(schema: Any, obj: Any, problems: _Problems, coords: set[Hashable]) -> None:
    try:
        schema.validate(obj, lazy=True)
    except SchemaErrors as exc:
        for error in exc.schema_errors:
            _add_schema_error(error, problems, coords)
    except SchemaError as error:  # pragma: no cover - lazy=True collects
        _add_schema_error(error, problems, coords)


def _add_schema_error(error: SchemaError, problems: _Problems, coords: set[Hashable]) -> None:
    name = getattr(error.schema, "name", None)
    kind = "coordinate" if name in coords else "variable"
    case = error.failure_cases
    check = str(getattr(error, "check", "") or "")
    message = str(error)
    if check.startswith("dtype"):
        hint = "" if kind == "coordinate" else "; choose the numeric variables with variables=[...]"
        problems.add(
            f"{kind} {quote(name)} holds {case} values, not real numbers (int or float){hint}",
            name,
            "real_number",
            case,
        )
    elif check == "attrs":
        if case == "<missing>":
            fix = (
                "pass coord_units="
                if kind == "coordinate"
                else 'pass property_unit= (use "1" for a dimensionless quantity)'
            )
            problems.add(
                f"{kind} {quote(name)} has no units: set its attrs['units'] or {fix}",
                name,
                "units_given",
                None,
            )
        else:
            problems.add(
                f"{kind} {quote(name)} has units attribute {quote(case)}, which is not a unit",
                name,
                "units_text",
                case,
            )
    elif check == "dims":
        problems.add(f"variable {quote(name)}: {message}", name, "spatial_dims", case)
    else:
        problems.add(f"{kind} {quote(name)}: {message}", name, check or "structure", case)


def _extra_dim_message(
    variable: Hashable, dim: Hashable, size: int, spatial_dims: tuple[Hashable, ...]
) -> str:
    return (
        f"variable {quote(variable)} has the dimension {quote(dim)} (size {size}) besides the spatial "
        f"dimensions {spatial_dims}: select one slice with .sel({clip(dim)}=...) or "
        f".isel({clip(dim)}=0), or pass extra_dims='metadata' to keep every slice with its "
        f"{clip(dim)} in the metadata"
    )


def _resolve_axes(
    ds: xr.Dataset,
    names: dict[str, Hashable | None],
    axes_dims: dict[str, tuple[Hashable, ...]],
    coord_units: str | None,
    problems: _Problems,
) -> tuple[tuple[_Axis, ...], str]:
    """The axes with their unit conversions; the unit every position is given in."""
    if coord_units is not None and (not isinstance(coord_units, str) or not coord_units.strip()):
        problems.add(f"coord_units={quote(coord_units)} is not a unit", "coord_units", "units_text")
        problems.raise_if_any()
    units = {role: ds[n].attrs.get("units") for role, n in names.items() if n is not None}
    target = coord_units if coord_units is not None else units["x"]
    axes = []
    for role, name in names.items():
        if name is None:
            continue
        source = units[role] if units[role] is not None else target
        convert = None
        if source != target:
            convert = _converter(role, name, source, target, units, problems)
        axes.append(_Axis(role=role, name=name, dims=axes_dims[role], convert=convert))
    problems.raise_if_any()
    return tuple(axes), target


def _converter(
    role: str,
    name: Hashable,
    source: str,
    target: str,
    units: dict[str, Any],
    problems: _Problems,
) -> Callable[[np.ndarray], np.ndarray] | None:
    registry = _unit_registry()
    if registry is None:
        shown = ", ".join(f"{r} in {quote(u)}" for r, u in units.items())
        problems.add(
            f"the coordinates are in different units ({shown}) and pint is not installed to "
            f"convert {role} ({quote(name)}) to {quote(target)}: install pint, or convert the "
            "coordinates to one unit yourself",
            name,
            "same_units",
            source,
        )
        return None
    try:
        registry.Quantity(1.0, source).to(target)
    except Exception as exc:  # pint raises several unrelated types for bad units
        problems.add(
            f"cannot convert {role} ({quote(name)}) from {quote(source)} to {quote(target)}: {exc}",
            name,
            "convertible_units",
            source,
        )
        return None

    def convert(values: np.ndarray) -> np.ndarray:
        return np.asarray(registry.Quantity(values, source).to(target).magnitude, dtype="float64")

    return convert


@functools.cache
def _unit_registry() -> Any:
    """pint's application registry, or None without pint (tests replace this function)."""
    try:
        import pint
    except ImportError:
        return None
    return pint.get_application_registry()


def _check_unique_positions(plan: _Plan, problems: _Problems) -> None:
    ds = plan.ds
    coords = [ds[a.name] for a in plan.axes]
    if _separable(plan.axes):
        # A product of 1-D axes: positions are unique when each axis is.
        for axis, coord in zip(plan.axes, coords, strict=True):
            if not axis.dims:
                continue
            values = pd.Series(np.asarray(coord.values, dtype="float64"))
            values = values[np.isfinite(values.to_numpy())]
            dup = values[values.duplicated(keep=False)]
            if len(dup):
                repeated = _plain(dup.iloc[0])
                positions = dup.index[dup == repeated].tolist()
                problems.add(
                    f"{axis.role} coordinate {quote(axis.name)} repeats the value {quote(repeated)} "
                    f"(at {quote(axis.dims[0])} positions {positions[:MAX_EXAMPLES]}): two cells "
                    "at one position",
                    axis.name,
                    "unique_position",
                    repeated,
                )
        return
    if any(_is_dask(c.data) for c in coords):
        return  # checked block by block by the records schema instead
    shape = tuple(ds.sizes[d] for d in plan.spatial_dims)
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
        cells = [_label(plan, np.unravel_index(i, shape)) for i in same[:MAX_EXAMPLES]]
        shown = ", ".join(f"{k}={quote(_plain(v))}" for k, v in first.items())
        problems.add(
            f"{dup.sum()} cells share a position with another cell, e.g. {shown} at "
            f"{plan.spatial_dims} = {cells}",
            tuple(a.name for a in plan.axes),
            "unique_position",
            tuple(_plain(v) for v in first.tolist()),
        )


def _separable(axes: Sequence[_Axis]) -> bool:
    """Whether the positions are a product of 1-D axes on distinct dimensions."""
    dims = [d for a in axes for d in a.dims]
    return all(len(a.dims) <= 1 for a in axes) and len(set(dims)) == len(dims)


def _positions_unique(plan: _Plan) -> bool:
    """Whether the checks of the plan prove one record per property and position, so
    that the records need no uniqueness check (no extra dimensions, no unit conversion
    that could round two positions into one, and coordinates checked in the plan)."""
    if any(p.extra_dims for p in plan.properties) or any(a.convert for a in plan.axes):
        return False
    return _separable(plan.axes) or not any(_is_dask(plan.ds[a.name].data) for a in plan.axes)


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


def _label(plan: _Plan, positions: tuple[Any, ...]) -> Any:
    labels = tuple(
        _plain(plan.dim_labels(d)[int(p)])
        for d, p in zip(plan.spatial_dims, positions, strict=True)
    )
    return labels[0] if len(labels) == 1 else labels


def _allow_duplicates(allow_duplicates: bool | None, plan: _Plan) -> bool:
    if allow_duplicates is not None:
        return bool(allow_duplicates)
    # Slices along an extra dimension put one record per slice at each position.
    return any(p.extra_dims for p in plan.properties)


# -- flattening ------------------------------------------------------------------------------
def _flatten_whole(plan: _Plan) -> pd.DataFrame:
    frames = []
    for prop in plan.properties:
        values = _transposed(plan, prop)
        frame, n_cells = _block_records(plan, prop, np.asarray(values.values), None)
        _finish_variable(prop, n_cells, len(frame))
        frames.append(frame)
    return frames[0] if len(frames) == 1 else pd.concat(frames)


def _iter_blocks(plan: _Plan, block_rows: int | None) -> Iterator[pd.DataFrame]:
    for prop in plan.properties:
        values = _transposed(plan, prop)
        data = values.data
        n_cells = n_kept = 0
        if _is_dask(data):
            starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in data.chunks]
            pieces: Iterator[tuple[np.ndarray, tuple[int, ...] | None]] = (
                (
                    np.asarray(data.blocks[idx].compute()),
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


def _validate_blocks(
    plan: _Plan,
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
    allow_duplicates = allow_duplicates or _positions_unique(plan)
    n_rows = 0
    blocks = _iter_blocks(plan, block_rows)
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


def _transposed(plan: _Plan, prop: _Property) -> xr.DataArray:
    return plan.ds[prop.variable].transpose(*prop.extra_dims, *plan.spatial_dims)


def _finish_variable(prop: _Property, n_cells: int, n_kept: int) -> None:
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
    plan: _Plan, prop: _Property, values: np.ndarray, start: tuple[int, ...] | None
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
            f"{plan.spatial_dims} = {quote(_plain_label(first['index']))}; positions must be finite "
            "where there is a value",
            table,
        )

    if n_extra:
        lookup = np.empty(math.prod(e_shape), dtype=object)
        for k, combo in enumerate(np.ndindex(*e_shape)):
            entry = dict(plan.metadata or {})
            for dim, rel, off in zip(prop.extra_dims, combo, e_start, strict=True):
                entry[str(dim)] = _json_scalar(plan.dim_labels(dim)[rel + off])
            lookup[k] = entry
        meta = lookup[keep // ns] if ns else np.empty(0, dtype=object)
    else:
        meta = _constant(plan.metadata, n)
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
    frame = pd.DataFrame(
        {name: pd.Series(columns[name], copy=False) for name in RECORD_COLUMNS}, copy=False
    )
    frame.index = index
    return frame, flat.size


def _axis_values(
    plan: _Plan,
    axis: _Axis,
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
                f"represent exactly, e.g. {values[where[0]]} at {quote(_plain_label(cells[0]))}",
                table,
            )
        return values.astype("float64")
    raise MapStructureError(  # pragma: no cover - the pandera schema rejects these first
        f"{quote(name)} holds {values.dtype} values, not real numbers",
        failure_table([(None, name, "real_number", str(values.dtype))]),
    )


def _cell_labels(
    plan: _Plan, s_flat: np.ndarray, s_shape: tuple[int, ...], s_start: tuple[int, ...]
) -> list[Any]:
    rel = np.unravel_index(s_flat, s_shape)
    return [
        _label(plan, tuple(int(r[i]) + off for r, off in zip(rel, s_start, strict=True)))
        for i in range(len(s_flat))
    ]


def _index(plan: _Plan, positions: list[np.ndarray]) -> pd.Index:
    names = [str(d) if not isinstance(d, str) else d for d in plan.spatial_dims]
    if len(positions) == 1:
        return pd.Index(plan.dim_labels(plan.spatial_dims[0])[positions[0]], name=names[0])
    levels = [plan.dim_level(d) for d in plan.spatial_dims]
    if all(level is not None for level in levels):
        # Each position maps to its label's code in the sorted labels: nothing to hash.
        return pd.MultiIndex(
            levels=[level[0] for level in levels if level is not None],
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


def _is_dask(data: Any) -> bool:
    try:
        import dask.array
    except ImportError:
        return False
    return isinstance(data, dask.array.Array)


def _is_unit_text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


class _RealNumber(_XarrayDataType):
    """pandera dtype accepting any integer or float array (not bool, complex, text)."""

    def __init__(self) -> None:
        object.__setattr__(self, "type", np.dtype("float64"))

    def check(self, pandera_dtype: Any, data_container: Any = None) -> bool:
        return data_container is not None and data_container.dtype.kind in "iuf"

    def __str__(self) -> str:
        return "real number"

    def __repr__(self) -> str:
        return "RealNumber()"


# -- annotation frames back to maps ----------------------------------------------------------
def frame_to_map(frame: pd.DataFrame, *, dims: str | Sequence[str] | None = None) -> xr.Dataset:
    """Put annotations (an annotation frame or canonical records) back on a map.

    Parameters
    ----------
    frame : pandas.DataFrame
        Needs ``property_name``, ``property_value``, ``coord_x`` and ``coord_y``; uses
        ``coord_z``, ``property_unit``, ``coord_units``, ``coord_ref_frame``,
        ``char_source_type``, ``data_id`` and ``physical_sample_id`` when present. Never
        modified.
    dims : str or sequence of str, optional
        ``("y", "x")`` (or ``("z", "y", "x")``, any names) for a grid, ``"point"`` (any
        name) for scattered points. Default: a grid on ``(y, x)`` when the positions fill
        at least half of the grid made of their distinct x and y values (and there are
        several of each), else points along ``point``.

    Returns
    -------
    xarray.Dataset
        One float64 variable per property (in order of first appearance), NaN where a
        property has no value. On a grid the coordinates ``x`` and ``y`` (and ``z``) are
        the sorted distinct positions; as points, they run along the point dimension in
        order of first appearance. A ``z`` that is the same everywhere becomes a scalar
        coordinate. ``units`` attributes come from ``property_unit`` (on the variables) and
        ``coord_units`` (on the coordinates); ``char_source_type``, ``data_id``,
        ``coord_ref_frame`` and ``physical_sample_id`` become attributes of the Dataset
        when they are the same on every row, else of a variable when the same on all of
        its rows. Annotation ids, versions, timestamps and metadata are not kept: the
        frame is the place for them.

    Raises
    ------
    MapStructureError
        For rows without x or y, mixed coordinate units or reference frames, a property
        in several units, or (with grid ``dims``) two values of a property at one
        position.

    Examples
    --------
    >>> import pandas as pd
    >>> from atomscale_accessors.flatten import frame_to_map
    >>> frame = pd.DataFrame(
    ...     {
    ...         "property_name": ["thickness"] * 3,
    ...         "property_value": [101.5, 99.0, 98.0],
    ...         "property_unit": ["nm"] * 3,
    ...         "coord_x": [0.0, 5.0, 5.0],
    ...         "coord_y": [0.0, 0.0, 5.0],
    ...         "coord_units": ["mm"] * 3,
    ...     }
    ... )
    >>> ds = frame_to_map(frame)
    >>> ds.thickness.values
    array([[101.5,  99. ],
           [  nan,  98. ]])
    >>> ds.thickness.attrs, ds.x.attrs
    ({'units': 'nm'}, {'units': 'mm'})
    """
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [
        c for c in ("property_name", "property_value", "coord_x", "coord_y") if c not in frame
    ]
    if missing:
        raise MapStructureError(
            f"the frame lacks the columns {missing} needed to place annotations on a map",
            failure_table((None, c, "column_present", None) for c in missing),
        )
    grid_dims, point_dim = _parse_dims(dims)
    if len(frame) == 0:
        return xr.Dataset()
    problems = _Problems("the annotations cannot be put on a map")
    props = frame["property_name"].astype(object).to_numpy()
    if pd.isna(props).any():
        problems.add("some rows have no property_name", "property_name", "not_nullable")
    values = frame["property_value"].to_numpy(dtype="float64", na_value=np.nan)
    x = frame["coord_x"].to_numpy(dtype="float64", na_value=np.nan)
    y = frame["coord_y"].to_numpy(dtype="float64", na_value=np.nan)
    zcol = frame.get("coord_z")
    z = (
        zcol.to_numpy(dtype="float64", na_value=np.nan)
        if zcol is not None
        else np.full(len(frame), np.nan)
    )
    unplaced = np.isnan(x) | np.isnan(y)
    if unplaced.any():
        problems.add(
            f"{int(unplaced.sum())} annotations have no x or y coordinate and cannot be placed "
            "on a map: leave them out, e.g. frame.dropna(subset=['coord_x', 'coord_y'])",
            ("coord_x", "coord_y"),
            "position_given",
        )
    coord_units = _single(frame, "coord_units", problems, "coordinate units")
    ref_frame = _single(frame, "coord_ref_frame", problems, "coordinate reference frames")
    names = list(pd.unique(props))
    for name in names:
        if name in ("x", "y", "z") or (point_dim is not None and name == point_dim):
            problems.add(
                f"the property {quote(name)} has the name of a coordinate of the map",
                "property_name",
                "distinct_names",
                name,
            )
    by_prop = {name: props == name for name in names}
    units = _per_property(frame, "property_unit", by_prop, problems, "units")
    problems.raise_if_any()

    z_all_nan = bool(np.isnan(z).all())
    z_values = np.unique(z[~np.isnan(z)])
    z_scalar = not np.isnan(z).any() and len(z_values) == 1
    z_axis = not z_all_nan and not z_scalar
    ux, uy = np.unique(x), np.unique(y)
    uz = z_values if z_axis else None

    if point_dim is None and grid_dims is None:
        # Choose: a grid when the positions fill it well, else points. Checking the row
        # count first keeps scattered points from ever allocating their sparse grid.
        n_cells = len(ux) * len(uy) * (len(uz) if uz is not None else 1)
        gridable = (
            (uz is None or not np.isnan(z).any())
            and len(ux) > 1
            and len(uy) > 1
            and len(frame) >= _GRID_MIN_FILL * n_cells
        )
        if gridable:
            cell, _ = _grid_cells(x, y, z, ux, uy, uz)
            filled = np.count_nonzero(np.bincount(cell, minlength=n_cells))
            gridable = filled >= _GRID_MIN_FILL * n_cells and not any(
                _first_repeat(cell[rows], n_cells) is not None for rows in by_prop.values()
            )
        if gridable:
            grid_dims = ("z", "y", "x") if uz is not None else ("y", "x")
        else:
            point_dim = "point"
    if grid_dims is not None:
        ds = _to_grid(values, x, y, z, names, by_prop, grid_dims, ux, uy, uz, z_scalar)
    else:
        ds = _to_points(props, values, x, y, z, names, by_prop, point_dim, z_axis, z_scalar)

    for role in ("x", "y", "z"):
        if role in ds.coords and coord_units is not None:
            ds[role].attrs["units"] = coord_units
    for name in names:
        if units.get(name) is not None:
            ds[name].attrs["units"] = units[name]
    if ref_frame is not None:
        ds.attrs["coord_ref_frame"] = ref_frame
    for column in ("char_source_type", "data_id", "physical_sample_id"):
        if column not in frame:
            continue
        col = frame[column].astype(object)
        everywhere = col.dropna().unique()
        if len(everywhere) == 1 and col.notna().all():
            ds.attrs[column] = str(everywhere[0])
            continue
        for name in names:
            own = col[by_prop[name]]
            found = own.dropna().unique()
            if len(found) == 1 and own.notna().all():
                ds[name].attrs[column] = str(found[0])
    return ds


def _parse_dims(dims: str | Sequence[str] | None) -> tuple[tuple[str, ...] | None, str | None]:
    if dims is None:
        return None, None
    dims = (dims,) if isinstance(dims, str) else tuple(dims)
    if len(dims) == 1:
        if dims[0] in ("x", "y", "z"):
            raise ValueError(
                f"the point dimension cannot be named {quote(dims[0])}, a coordinate's name"
            )
        return None, dims[0]
    if len(dims) not in (2, 3) or len(set(dims)) != len(dims):
        raise ValueError(
            f"dims must be one name (points) or two or three distinct names (a grid), got {quote(dims)}"
        )
    roles = ("y", "x") if len(dims) == 2 else ("z", "y", "x")
    for dim, role in zip(dims, roles, strict=True):
        if dim in ("x", "y", "z") and dim != role:
            raise ValueError(
                f"dims={quote(dims)} puts {quote(dim)} where {quote(role)} belongs: grid dims are in the order "
                f"{roles}"
            )
    return dims, None


def _single(frame: pd.DataFrame, column: str, problems: _Problems, what: str) -> str | None:
    if column not in frame:
        return None
    col = frame[column].astype(object)
    found = col.dropna().unique().tolist()
    if len(found) > 1 or (found and col.isna().any()):
        shown = found + ([None] if col.isna().any() else [])
        problems.add(
            f"the frame mixes {what} {quote_list(shown)}: select one first, e.g. "
            f"frame[frame[{quote(column)}] == {quote(found[0])}]",
            column,
            "single_value",
            tuple(shown),
        )
        return None
    return str(found[0]) if found else None


def _per_property(
    frame: pd.DataFrame,
    column: str,
    by_prop: dict[Any, np.ndarray],
    problems: _Problems,
    what: str,
) -> dict[Any, str | None]:
    if column not in frame:
        return {}
    col = frame[column].astype(object)
    out: dict[Any, str | None] = {}
    for name, rows in by_prop.items():
        found = col[rows].dropna().unique().tolist()
        if len(found) > 1:
            problems.add(
                f"the property {quote(name)} comes in several {what} {quote_list(found)}: convert or select "
                "one first",
                column,
                "single_value",
                tuple(found),
            )
        out[name] = str(found[0]) if len(found) == 1 else None
    return out


def _grid_cells(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    ux: np.ndarray,
    uy: np.ndarray,
    uz: np.ndarray | None,
) -> tuple[np.ndarray, tuple[int, ...]]:
    """The flat cell number of every row on the grid of the distinct positions."""
    axes = [(uy, y), (ux, x)] if uz is None else [(uz, z), (uy, y), (ux, x)]
    shape = tuple(len(u) for u, _ in axes)
    return np.ravel_multi_index(tuple(np.searchsorted(u, v) for u, v in axes), shape), shape


def _first_repeat(cells: np.ndarray, n_cells: int) -> int | None:
    """Position in ``cells`` of the first cell number that occurs twice, if any."""
    counts = np.bincount(cells, minlength=n_cells)
    if counts.max(initial=0) < 2:
        return None
    return int(np.flatnonzero(counts[cells] > 1)[0])


def _to_grid(
    values: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    names: list[Any],
    by_prop: dict[Any, np.ndarray],
    grid_dims: tuple[str, ...],
    ux: np.ndarray,
    uy: np.ndarray,
    uz: np.ndarray | None,
    z_scalar: bool,
) -> xr.Dataset:
    def refuse(message: str, check: str) -> MapStructureError:
        return MapStructureError(message, failure_table([(None, "coord_z", check, None)]))

    if len(grid_dims) == 3 and uz is None:
        state = "the same everywhere" if z_scalar else "missing"
        raise refuse(f"dims={quote(grid_dims)} asks for a 3-D grid but z is {state}", "grid_axis")
    if len(grid_dims) == 2 and uz is not None:
        raise refuse(
            f"dims={quote(grid_dims)} asks for a 2-D grid but z varies: pass three dims, e.g. "
            "('z', 'y', 'x'), or dims='point'",
            "grid_axis",
        )
    if uz is not None and np.isnan(z).any():
        raise refuse("some annotations have no z: they cannot go on a 3-D grid", "position_given")
    cell, shape = _grid_cells(x, y, z, ux, uy, uz)
    n_cells = math.prod(shape)
    data_vars = {}
    for name in names:
        rows = by_prop[name]
        cells = cell[rows]
        repeat = _first_repeat(cells, n_cells)
        if repeat is not None:
            i = np.flatnonzero(rows)[repeat]
            raise MapStructureError(
                f"the property {quote(name)} has several values at one position (x={quote(_plain(x[i]))}, "
                f"y={quote(_plain(y[i]))}): a grid holds one per cell; use dims='point'",
                failure_table([(None, "property_value", "unique_position", name)]),
            )
        grid = np.full(n_cells, np.nan)
        grid[cells] = values[rows]
        data_vars[name] = (grid_dims, grid.reshape(shape))
    roles = ("y", "x") if uz is None else ("z", "y", "x")
    axes = (uy, ux) if uz is None else (uz, uy, ux)
    coords: dict[str, Any] = {
        role: (dim, u) for role, dim, u in zip(roles, grid_dims, axes, strict=True)
    }
    if z_scalar:
        coords["z"] = ((), z[0])
    return xr.Dataset(data_vars, coords=coords)


def _to_points(
    props: np.ndarray,
    values: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    names: list[Any],
    by_prop: dict[Any, np.ndarray],
    point_dim: str,
    z_axis: bool,
    z_scalar: bool,
) -> xr.Dataset:
    keys = pd.DataFrame({"p": props, "x": x, "y": y, "z": z})
    # A property measured twice at one position takes two points there.
    keys["n"] = keys.groupby(["p", "x", "y", "z"], sort=False, dropna=False).cumcount()
    point = keys.groupby(["x", "y", "z", "n"], sort=False, dropna=False).ngroup().to_numpy()
    n_points = int(point.max()) + 1
    px, py, pz = (np.empty(n_points) for _ in range(3))
    px[point], py[point], pz[point] = x, y, z
    data_vars = {}
    for name in names:
        rows = by_prop[name]
        column = np.full(n_points, np.nan)
        column[point[rows]] = values[rows]
        data_vars[name] = (point_dim, column)
    coords: dict[str, Any] = {"x": (point_dim, px), "y": (point_dim, py)}
    if z_axis:
        coords["z"] = (point_dim, pz)
    elif z_scalar:
        coords["z"] = ((), z[0])
    return xr.Dataset(data_vars, coords=coords)


# -- small helpers ---------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _plain_label(label: Any) -> Any:
    if isinstance(label, tuple):
        return tuple(_plain(v) for v in label)
    return _plain(label)


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

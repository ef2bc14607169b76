"""Annotation frames back to maps: the inverse of flattening.

:func:`frame_to_map` puts annotations (fetched, or canonical records) on a grid when their
positions fill one, else along a point dimension; units and the text fields that are the
same on every row become attributes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import MapStructureError
from ..failures import agree, failure_table, plural, quote, quote_list
from ..fields import SAMPLE_DIM, SAMPLE_ID, SAMPLE_NAME
from .plan import StructureProblems, plain_scalar

__all__ = ["frame_to_map"]

# frame_to_map puts points on a grid when they fill at least this share of its cells.
_GRID_MIN_FILL = 0.5
_NEEDED = ("property_name", "property_value", "coord_x", "coord_y")


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
    >>> from atomscale_accessors.maps import frame_to_map
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
    missing = [c for c in _NEEDED if c not in frame]
    if missing:
        raise MapStructureError(
            f"the frame lacks the columns {missing} needed to place annotations on a map",
            failure_table((None, c, "column_present", None) for c in missing),
        )
    grid_dims, point_dim = _parse_dims(dims)
    if len(frame) == 0:
        return xr.Dataset()
    if SAMPLE_ID in frame and frame[SAMPLE_ID].nunique(dropna=False) > 1:
        return _sample_stack(frame, dims)
    rows, coord_units, ref_frame, units = _read_frame(frame, point_dim)
    if point_dim is None and grid_dims is None:
        grid_dims, point_dim = _choose_dims(rows)
    if grid_dims is not None:
        ds = _to_grid(rows, grid_dims)
    else:
        ds = _to_points(rows, point_dim or "point")
    _set_attributes(ds, frame, rows, (coord_units, ref_frame), units)
    return ds


def _sample_stack(frame: pd.DataFrame, dims: str | Sequence[str] | None) -> xr.Dataset:
    """The maps of several samples along a ``sample`` dimension labelled by their names
    (ids where a frame has no ``sample_name``, or names repeat), grids aligned."""
    parts = dict(list(frame.groupby(SAMPLE_ID, sort=False, dropna=False)))
    labels = {sid: str(sid) for sid in parts}
    if SAMPLE_NAME in frame:
        names = {sid: part[SAMPLE_NAME].dropna() for sid, part in parts.items()}
        named = {sid: str(n.iloc[0]) if len(n) else str(sid) for sid, n in names.items()}
        if len(set(named.values())) == len(named):
            labels = named
    if dims is None:  # one shape for all: a grid when every sample's map is one
        choices = {_choose_dims(_read_frame(part, None)[0])[0] for part in parts.values()}
        grid = choices.pop() if len(choices) == 1 else None
        dims = grid if grid is not None else "point"
    order = sorted(parts, key=lambda sid: labels[sid])
    maps = [frame_to_map(parts[sid], dims=dims) for sid in order]
    stack = xr.concat(
        maps,
        dim=pd.Index([labels[sid] for sid in order], name=SAMPLE_DIM),
        join="outer",
        combine_attrs="drop_conflicts",
    )
    return stack.assign_coords({SAMPLE_ID: (SAMPLE_DIM, [str(sid) for sid in order])})


def _read_frame(
    frame: pd.DataFrame, point_dim: str | None
) -> tuple[_Rows, str | None, str | None, dict[Any, str | None]]:
    """The rows, the coordinate units, the reference frame and each property's unit;
    everything that keeps the frame off a map is reported in one error."""
    problems = StructureProblems("the annotations cannot be put on a map")
    rows = _read_rows(frame, problems)
    coord_units = _single(frame, "coord_units", problems, "coordinate units")
    ref_frame = _single(frame, "coord_ref_frame", problems, "coordinate reference frames")
    for name in rows.names:
        if name in ("x", "y", "z") or (point_dim is not None and name == point_dim):
            problems.add(
                f"the property {quote(name)} has the name of a coordinate of the map",
                "property_name",
                "distinct_names",
                name,
            )
    units = _per_property(frame, "property_unit", rows.by_prop, problems, "units")
    problems.raise_if_any()
    return rows, coord_units, ref_frame, units


def _set_attributes(
    ds: xr.Dataset,
    frame: pd.DataFrame,
    rows: _Rows,
    frame_wide: tuple[str | None, str | None],
    units: dict[Any, str | None],
) -> None:
    """Units on the coordinates and variables; the text fields as attributes."""
    coord_units, ref_frame = frame_wide
    for role in ("x", "y", "z"):
        if role in ds.coords and coord_units is not None:
            ds[role].attrs["units"] = coord_units
    for name in rows.names:
        if units.get(name) is not None:
            ds[name].attrs["units"] = units[name]
    if ref_frame is not None:
        ds.attrs["coord_ref_frame"] = ref_frame
    _copy_text_attributes(frame, rows, ds)


@dataclass
class _Rows:
    """The rows of a frame as arrays: property, value and position of each."""

    props: np.ndarray
    values: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    names: list[Any]  # the properties, in order of first appearance
    by_prop: dict[Any, np.ndarray]  # the rows of each property, as a boolean mask
    ux: np.ndarray  # the distinct positions, sorted
    uy: np.ndarray
    uz: np.ndarray | None  # None unless z is an axis (varies)
    z_scalar: bool  # z is the same on every row

    @property
    def z_axis(self) -> bool:
        return self.uz is not None


def _read_rows(frame: pd.DataFrame, problems: StructureProblems) -> _Rows:
    props = frame["property_name"].astype(object).to_numpy()
    if pd.isna(props).any():
        problems.add("some rows have no property_name", "property_name", "not_nullable")
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
            f"{plural(int(unplaced.sum()), 'annotation')} {agree(int(unplaced.sum()), 'has', 'have')} "
            "no x or y coordinate and cannot be placed "
            "on a map: leave them out, e.g. frame.dropna(subset=['coord_x', 'coord_y'])",
            ("coord_x", "coord_y"),
            "position_given",
        )
    names = list(pd.unique(props))
    z_values = np.unique(z[~np.isnan(z)])
    z_scalar = not np.isnan(z).any() and len(z_values) == 1
    z_axis = not np.isnan(z).all() and not z_scalar
    return _Rows(
        props=props,
        values=frame["property_value"].to_numpy(dtype="float64", na_value=np.nan),
        x=x,
        y=y,
        z=z,
        names=names,
        by_prop={name: props == name for name in names},
        ux=np.unique(x),
        uy=np.unique(y),
        uz=z_values if z_axis else None,
        z_scalar=z_scalar,
    )


def _choose_dims(rows: _Rows) -> tuple[tuple[str, ...] | None, str | None]:
    """A grid when the positions fill it well, else points."""
    # Checking the row count first keeps scattered points from ever allocating their
    # sparse grid.
    n_cells = len(rows.ux) * len(rows.uy) * (len(rows.uz) if rows.uz is not None else 1)
    gridable = (
        (rows.uz is None or not np.isnan(rows.z).any())
        and len(rows.ux) > 1
        and len(rows.uy) > 1
        and len(rows.x) >= _GRID_MIN_FILL * n_cells
    )
    if gridable:
        cell, _ = _grid_cells(rows)
        filled = np.count_nonzero(np.bincount(cell, minlength=n_cells))
        gridable = bool(filled >= _GRID_MIN_FILL * n_cells) and not any(
            _first_repeat(cell[mask], n_cells) is not None for mask in rows.by_prop.values()
        )
    if gridable:
        return ("z", "y", "x") if rows.uz is not None else ("y", "x"), None
    return None, "point"


def _copy_text_attributes(frame: pd.DataFrame, rows: _Rows, ds: xr.Dataset) -> None:
    """Text columns the same on every row become attributes of the Dataset, else of a
    variable when the same on all of its rows."""
    for column in ("char_source_type", "data_id", "physical_sample_id"):
        if column not in frame:
            continue
        col = frame[column].astype(object)
        everywhere = col.dropna().unique()
        if len(everywhere) == 1 and col.notna().all():
            ds.attrs[column] = str(everywhere[0])
            continue
        for name in rows.names:
            own = col[rows.by_prop[name]]
            found = own.dropna().unique()
            if len(found) == 1 and own.notna().all():
                ds[name].attrs[column] = str(found[0])


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


def _single(frame: pd.DataFrame, column: str, problems: StructureProblems, what: str) -> str | None:
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
    problems: StructureProblems,
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


def _grid_cells(rows: _Rows) -> tuple[np.ndarray, tuple[int, ...]]:
    """The flat cell number of every row on the grid of the distinct positions."""
    axes = [(rows.uy, rows.y), (rows.ux, rows.x)]
    if rows.uz is not None:
        axes.insert(0, (rows.uz, rows.z))
    shape = tuple(len(u) for u, _ in axes)
    return np.ravel_multi_index(tuple(np.searchsorted(u, v) for u, v in axes), shape), shape


def _first_repeat(cells: np.ndarray, n_cells: int) -> int | None:
    """Position in ``cells`` of the first cell number that occurs twice, if any."""
    counts = np.bincount(cells, minlength=n_cells)
    if counts.max(initial=0) < 2:
        return None
    return int(np.flatnonzero(counts[cells] > 1)[0])


def _to_grid(rows: _Rows, grid_dims: tuple[str, ...]) -> xr.Dataset:
    _check_grid_dims(rows, grid_dims)
    cell, shape = _grid_cells(rows)
    n_cells = math.prod(shape)
    data_vars = {}
    for name in rows.names:
        mask = rows.by_prop[name]
        cells = cell[mask]
        repeat = _first_repeat(cells, n_cells)
        if repeat is not None:
            i = np.flatnonzero(mask)[repeat]
            raise MapStructureError(
                f"the property {quote(name)} has several values at one position "
                f"(x={quote(plain_scalar(rows.x[i]))}, y={quote(plain_scalar(rows.y[i]))}): "
                "a grid holds one per cell; use dims='point'",
                failure_table([(None, "property_value", "unique_position", name)]),
            )
        grid = np.full(n_cells, np.nan)
        grid[cells] = rows.values[mask]
        data_vars[name] = (grid_dims, grid.reshape(shape))
    roles: tuple[str, ...]
    axes: tuple[np.ndarray, ...]
    if rows.uz is None:
        roles, axes = ("y", "x"), (rows.uy, rows.ux)
    else:
        roles, axes = ("z", "y", "x"), (rows.uz, rows.uy, rows.ux)
    coords: dict[str, Any] = {
        role: (dim, u) for role, dim, u in zip(roles, grid_dims, axes, strict=True)
    }
    if rows.z_scalar:
        coords["z"] = ((), rows.z[0])
    return xr.Dataset(data_vars, coords=coords)


def _check_grid_dims(rows: _Rows, grid_dims: tuple[str, ...]) -> None:
    """Grid dims given by the caller must match whether z varies."""

    def refuse(message: str, check: str) -> MapStructureError:
        return MapStructureError(message, failure_table([(None, "coord_z", check, None)]))

    if len(grid_dims) == 3 and rows.uz is None:
        state = "the same everywhere" if rows.z_scalar else "missing"
        raise refuse(f"dims={quote(grid_dims)} asks for a 3-D grid but z is {state}", "grid_axis")
    if len(grid_dims) == 2 and rows.uz is not None:
        raise refuse(
            f"dims={quote(grid_dims)} asks for a 2-D grid but z varies: pass three dims, e.g. "
            "('z', 'y', 'x'), or dims='point'",
            "grid_axis",
        )
    if rows.uz is not None and np.isnan(rows.z).any():
        raise refuse("some annotations have no z: they cannot go on a 3-D grid", "position_given")


def _to_points(rows: _Rows, point_dim: str) -> xr.Dataset:
    keys = pd.DataFrame({"p": rows.props, "x": rows.x, "y": rows.y, "z": rows.z})
    # A property measured twice at one position takes two points there.
    keys["n"] = keys.groupby(["p", "x", "y", "z"], sort=False, dropna=False).cumcount()
    point = keys.groupby(["x", "y", "z", "n"], sort=False, dropna=False).ngroup().to_numpy()
    n_points = int(point.max()) + 1
    px, py, pz = (np.empty(n_points) for _ in range(3))
    px[point], py[point], pz[point] = rows.x, rows.y, rows.z
    data_vars = {}
    for name in rows.names:
        mask = rows.by_prop[name]
        column = np.full(n_points, np.nan)
        column[point[mask]] = rows.values[mask]
        data_vars[name] = (point_dim, column)
    coords: dict[str, Any] = {"x": (point_dim, px), "y": (point_dim, py)}
    if rows.z_axis:
        coords["z"] = (point_dim, pz)
    elif rows.z_scalar:
        coords["z"] = ((), rows.z[0])
    return xr.Dataset(data_vars, coords=coords)

"""Reading a map's structure: where the positions are, which variables are properties.

Everything here looks at the map's coordinates, dimensions and attributes, never at its
values (apart from the coordinates, for duplicate positions), so a bad map is refused
before a single value is read, and a dask-backed map is not computed.

Maps understood
---------------
* a regular grid: 1-D ``x`` and ``y`` coordinates on two dimensions, in any order;
* a curvilinear grid: 2-D ``x`` and ``y`` coordinates on the same two dimensions;
* scattered points: ``x`` and ``y`` along one dimension (e.g. ``point``);
* any of these with a ``z`` coordinate (scalar, along the same dimensions, or on a
  dimension of its own for a volume).

Coordinates are found, in this order, by an explicit name (``x=``, ``y=``, ``z=``), by the
CF ``axis`` attribute (``axis="X"``), by a CF ``standard_name`` (:data:`STANDARD_NAMES`:
``projection_x_coordinate``, ``projection_y_coordinate``), or by a common name
(:data:`COORD_NAMES`: ``x``, ``X``, ``x_mm``, ``xc``, ...). Geographic names (``lon``,
``lat``, and the standard names ``longitude`` and ``latitude``) are deliberately not
recognised: an annotation position is on a sample, not on the Earth. A coordinate may also be
a data variable (scattered data often keeps ``x`` and ``y`` as columns); it is then used as a
coordinate and is not a property. :func:`find_coordinates` is the one place this is decided,
for uploads and pictures alike: when two coordinates could serve, both refuse to guess.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import xarray as xr

from .. import units
from ..failures import clip, quote, quote_list
from ..options import ExtraDims, MapOptions
from ..records import DEFAULT_COORD_REF_FRAME
from .plan import MapPlan, MapProperty, StructureProblems, check_unique_positions
from .positions import resolve_axes
from .schema import map_structure_schema, run_schema

__all__ = [
    "COORD_NAMES",
    "STANDARD_NAMES",
    "find_coordinate",
    "find_coordinates",
]

log = logging.getLogger(__name__)

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
#: CF ``standard_name`` values recognised for the x, y and z coordinate. (CF names no
#: standard name for a height on a sample: a z coordinate is found by ``axis="Z"`` or name.)
STANDARD_NAMES: dict[str, tuple[str, ...]] = {
    "x": ("projection_x_coordinate",),
    "y": ("projection_y_coordinate",),
    "z": (),
}


# -- the coordinate resolver -----------------------------------------------------------------
def find_coordinates(
    ds: xr.Dataset, given: Mapping[str, Hashable | None]
) -> dict[str, Hashable | None]:
    """The coordinates holding the positions of a map, one per role.

    The one resolver of the package: :func:`~atomscale_accessors.maps.flatten_map` (and so
    every upload) and :func:`~atomscale_accessors.plotting.plot_map` use it, so a map
    that uploads also plots, and the other way round.

    Parameters
    ----------
    ds : xarray.Dataset
        The map.
    given : dict
        ``{role: name or None}`` for the roles ``"x"``, ``"y"`` and ``"z"`` to look up. A
        name is used as given; None looks for the coordinate with the CF attribute
        ``axis="X"`` (``"Y"``, ``"Z"``), else for one of :data:`COORD_NAMES` among the
        coordinates, then among the data variables.

    Returns
    -------
    dict
        ``{role: name}``; the name is None for a ``z`` that the map does not have.

    Raises
    ------
    MapStructureError
        Listing every role that cannot be resolved: a given name that is not in the map,
        an ``x`` or ``y`` that cannot be found, or several candidates for one role (never
        a guess: the message names the candidates and the argument, ``x=`` say, that
        chooses one).

    Examples
    --------
    >>> from atomscale_accessors.datasets import wafer_thickness_map
    >>> from atomscale_accessors.maps import find_coordinates
    >>> ds = wafer_thickness_map(n=5)
    >>> find_coordinates(ds, {"x": None, "y": None, "z": None})
    {'x': 'x', 'y': 'y', 'z': None}
    >>> ds = ds.assign_coords(x_mm=ds.x)
    >>> find_coordinates(ds, {"x": None, "y": None})
    Traceback (most recent call last):
    ...
    atomscale_accessors.errors.MapStructureError: the map cannot be turned into annotations:
      - several candidates for the x coordinate: ['x', 'x_mm']; name one with x=
    >>> find_coordinates(ds, {"x": "x_mm", "y": None})
    {'x': 'x_mm', 'y': 'y'}
    """
    problems = StructureProblems()
    names = {role: _resolve(ds, role, name, problems) for role, name in given.items()}
    problems.raise_if_any()
    return names


def find_coordinate(ds: xr.Dataset, role: str, given: Hashable | None = None) -> Hashable | None:
    """The coordinate of one role (``"x"``, ``"y"`` or ``"z"``): see :func:`find_coordinates`.

    Examples
    --------
    >>> from atomscale_accessors.datasets import xps_line_scan
    >>> from atomscale_accessors.maps import find_coordinate
    >>> find_coordinate(xps_line_scan(), "y")
    'y'
    """
    return find_coordinates(ds, {role: given})[role]


def _resolve(
    ds: xr.Dataset, role: str, given: Hashable | None, problems: StructureProblems
) -> Hashable | None:
    if given is not None:
        return _given_coordinate(ds, role, given, problems)
    marked = (
        ("axis", lambda value: str(value).upper() == role.upper()),
        ("standard_name", lambda value: value in STANDARD_NAMES[role]),
    )
    for attr, wanted in marked:
        hits = [n for n, c in ds.coords.items() if attr in c.attrs and wanted(c.attrs[attr])]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            said = f"{attr}={quote(ds[hits[0]].attrs[attr])}"
            _ambiguous(role, f"several coordinates have {said}", hits, problems)
            return None
    for pool in (ds.coords, ds.data_vars):
        hits = [n for n in COORD_NAMES[role] if n in pool]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            _ambiguous(role, f"several candidates for the {role} coordinate", hits, problems)
            return None
    if role != "z":
        _not_found(ds, role, problems)
    return None


def _ambiguous(role: str, found: str, names: list[Hashable], problems: StructureProblems) -> None:
    # Never a guess: the first name of COORD_NAMES may well be the wrong one.
    problems.add(
        f"{found}: {quote_list(names)}; name one with {role}=", role, "unique_axis", tuple(names)
    )


def _given_coordinate(
    ds: xr.Dataset, role: str, given: Hashable, problems: StructureProblems
) -> Hashable | None:
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


def _not_found(ds: xr.Dataset, role: str, problems: StructureProblems) -> None:
    dims = [d for d in ds.dims if str(d).lower() == role]
    hint = (
        f"; the dimension {quote(dims[0])} has no coordinate values: assign positions with "
        f"ds.assign_coords({clip(dims[0])}=...)"
        if dims
        else ""
    )
    problems.add(
        f"no {role} coordinate found (looked for axis={quote(role.upper())}, "
        f"standard_name={quote(STANDARD_NAMES[role][0])} and the names "
        f"{', '.join(COORD_NAMES[role][:6])}, ...; coordinates: {quote_list(ds.coords)}): "
        f"name it with {role}=...{hint}",
        role,
        "coordinate_present",
        None,
    )


# -- the plan: what the map is, checked before any value is read --------------------------
def plan_map(ds: xr.Dataset, options: MapOptions) -> MapPlan:
    """Read and check the structure of a map; raise MapStructureError listing every
    problem found, step by step."""
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"expected an xarray Dataset, got {type(ds).__name__}")
    # 0. Values held as pint quantities: their magnitudes, their units as attributes.
    ds = _without_quantities(ds)
    # 1. Where the positions are.
    names = find_coordinates(ds, {"x": options.x, "y": options.y, "z": options.z})
    problems = StructureProblems()
    ds, axes_dims, spatial = _spatial_layout(ds, names, problems)
    found = [n for n in names.values() if n is not None]

    # 2. Which variables are properties.
    selected = _select_variables(ds, options.variables, set(found), spatial, problems)
    problems.raise_if_any()
    first_dims = ds[selected[0]].dims
    spatial_dims = tuple(d for d in first_dims if d in spatial) + tuple(
        d for d in spatial if d not in first_dims
    )

    # 3. Structure, with pandera: real numbers, spatial dimensions, units attributes.
    unit_given = _per_variable(options.property_unit, selected, "property_unit", problems)
    coord_needs_units = {n: options.coord_units is None for n in found}
    schema, unit_schemas = map_structure_schema(
        {v: v not in unit_given for v in selected}, coord_needs_units, spatial_dims
    )
    run_schema(schema, ds, problems, set(found))
    for name, unit_schema in unit_schemas.items():
        run_schema(unit_schema, ds[name], problems, set(found))

    # 4. Dimensions besides the spatial ones.
    extras = _extra_dims(ds, selected, spatial_dims, options.extra_dims, problems)
    problems.raise_if_any()

    # 5. Units of the positions.
    axes, target = resolve_axes(ds, names, axes_dims, options.coord_units, problems)

    # 6. The properties and their text fields.
    texts = {"char_source_type": options.char_source_type, "data_id": options.data_id}
    names_given = _per_variable(options.property_name, selected, "property_name", problems)
    properties = _properties(ds, selected, names_given, unit_given, texts, extras, problems)
    problems.raise_if_any()

    plan = MapPlan(
        ds=ds,
        axes=axes,
        spatial_dims=spatial_dims,
        properties=properties,
        coord_units=target,
        coord_ref_frame=_option(options.coord_ref_frame, "coord_ref_frame", None, ds)
        or DEFAULT_COORD_REF_FRAME,
        metadata=dict(options.metadata) if options.metadata is not None else None,
    )
    # 7. Two cells at one position (checked on the coordinates alone, so also for dask maps).
    check_unique_positions(plan, problems)
    problems.raise_if_any()
    return plan


def _without_quantities(ds: xr.Dataset) -> xr.Dataset:
    plain, conflicts = units.split_quantities(ds)
    problems = StructureProblems()
    for name, written, unit in conflicts:
        problems.add(
            f"{quote(name)} holds a quantity in {quote(unit)} but its units attribute says "
            f"{quote(written)}: drop the attribute, or convert the quantity",
            name,
            "units_agree",
            written,
        )
    problems.raise_if_any()
    return plain


def _spatial_layout(
    ds: xr.Dataset, names: dict[str, Hashable | None], problems: StructureProblems
) -> tuple[xr.Dataset, dict[str, tuple[Hashable, ...]], list[Hashable]]:
    """The map with its axes as coordinates, the dims of each axis, the spatial dims."""
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
    return ds, axes_dims, spatial


def _select_variables(
    ds: xr.Dataset,
    variables: Hashable | Sequence[Hashable] | None,
    axes: set[Hashable],
    spatial: list[Hashable],
    problems: StructureProblems,
) -> list[Hashable]:
    if variables is not None:
        return _given_variables(ds, variables, axes, problems)
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


def _given_variables(
    ds: xr.Dataset,
    variables: Hashable | Sequence[Hashable],
    axes: set[Hashable],
    problems: StructureProblems,
) -> list[Hashable]:
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


def _per_variable(
    option: Any, selected: list[Hashable], what: str, problems: StructureProblems
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


def _extra_dims(
    ds: xr.Dataset,
    selected: list[Hashable],
    spatial_dims: tuple[Hashable, ...],
    extra_dims: ExtraDims,
    problems: StructureProblems,
) -> dict[Hashable, tuple[Hashable, ...]]:
    """Each variable's dimensions besides the spatial ones (a problem unless kept)."""
    extras = {v: tuple(d for d in ds[v].dims if d not in spatial_dims) for v in selected}
    if extra_dims == "error":
        for v, dims in extras.items():
            for d in dims:
                problems.add(
                    _extra_dim_message(v, d, ds.sizes[d], spatial_dims), v, "extra_dims", d
                )
    return extras


def _extra_dim_message(
    variable: Hashable, dim: Hashable, size: int, spatial_dims: tuple[Hashable, ...]
) -> str:
    return (
        f"variable {quote(variable)} has the dimension {quote(dim)} (size {size}) besides the spatial "
        f"dimensions {spatial_dims}: select one slice with .sel({clip(dim)}=...) or "
        f".isel({clip(dim)}=0), or pass extra_dims='metadata' to keep every slice with its "
        f"{clip(dim)} in the metadata"
    )


def _properties(
    ds: xr.Dataset,
    selected: list[Hashable],
    names_given: dict[Hashable, Any],
    unit_given: dict[Hashable, Any],
    texts: dict[str, Any],
    extras: dict[Hashable, tuple[Hashable, ...]],
    problems: StructureProblems,
) -> tuple[MapProperty, ...]:
    """The properties of the selected variables; two giving one property name is a problem."""
    properties = []
    for v in selected:
        var = ds[v]
        prop_name = names_given.get(v, var.attrs.get("property_name", v))
        properties.append(
            MapProperty(
                variable=v,
                name=prop_name if isinstance(prop_name, str) else str(prop_name),
                unit=unit_given.get(v, var.attrs.get("units")),
                char_source_type=_option(texts["char_source_type"], "char_source_type", var, ds),
                data_id=_option(texts["data_id"], "data_id", var, ds),
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
    return tuple(properties)

"""The ``pandera.xarray`` schemas of a map's structure, and their failures as problems.

A map's structure (real numbers on the spatial dimensions, ``units`` attributes) is
checked with pandera, as records are; the failures pandera reports become sentences that
say how to fix the map.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pandera.xarray as pax
from pandera.engines.xarray_engine import DataType as _XarrayDataType
from pandera.errors import SchemaError, SchemaErrors

from ..failures import quote
from .plan import StructureProblems

__all__ = ["map_structure_schema"]


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

    Examples
    --------
    >>> from atomscale_accessors.datasets import wafer_thickness_map
    >>> from atomscale_accessors.maps import map_structure_schema
    >>> schema, unit_schemas = map_structure_schema(
    ...     {"thickness": True}, {"x": True, "y": True}, ("y", "x")
    ... )
    >>> sorted(unit_schemas)
    ['x', 'y']
    >>> _ = schema.validate(wafer_thickness_map(n=5))
    """
    # pandera.xarray annotates names as str, yet takes any hashable name, as xarray does:
    # hence the ignores below.
    data_vars = {
        name: pax.DataVar(
            dtype=_RealNumber(),
            dims=tuple(spatial_dims),  # type: ignore[arg-type]
            ordered_dims=False,
            nullable=True,
            attrs={"units": _is_unit_text} if needs_units else None,
        )
        for name, needs_units in variables.items()
    }
    coord_specs = {name: pax.Coordinate(dtype=_RealNumber(), nullable=True) for name in coords}
    unit_schemas = {
        name: pax.DataArraySchema(
            name=name,  # type: ignore[arg-type]
            attrs={"units": _is_unit_text},
            nullable=True,
        )
        for name, needs_units in coords.items()
        if needs_units
    }
    schema = pax.DatasetSchema(
        data_vars=data_vars,  # type: ignore[arg-type]
        coords=coord_specs,  # type: ignore[arg-type]
    )
    return schema, unit_schemas


def run_schema(schema: Any, obj: Any, problems: StructureProblems, coords: set[Hashable]) -> None:
    """Validate ``obj`` with ``schema``, adding each failure to ``problems`` (the
    ``coords`` are the names reported as coordinates rather than variables)."""
    try:
        schema.validate(obj, lazy=True)
    except SchemaErrors as exc:
        for error in exc.schema_errors:
            _add_schema_error(error, problems, coords)
    except SchemaError as error:  # pragma: no cover - lazy=True collects
        _add_schema_error(error, problems, coords)


def _add_schema_error(
    error: SchemaError, problems: StructureProblems, coords: set[Hashable]
) -> None:
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

"""The units of a map's positions: the one unit every position is sent in, and the
conversion of each coordinate to it (with pint, when installed)."""

from __future__ import annotations

from collections.abc import Callable, Hashable

import numpy as np
import xarray as xr

from .. import units
from ..failures import quote
from .plan import MapAxis, StructureProblems

__all__ = ["resolve_axes"]


def resolve_axes(
    ds: xr.Dataset,
    names: dict[str, Hashable | None],
    axes_dims: dict[str, tuple[Hashable, ...]],
    coord_units: str | None,
    problems: StructureProblems,
) -> tuple[tuple[MapAxis, ...], str]:
    """The axes with their unit conversions; the unit every position is given in (in its
    one spelling, :func:`~atomscale_accessors.units.coordinate_unit`)."""
    found = {role: n for role, n in names.items() if n is not None}
    sources, target = _axis_units(ds, found, coord_units, problems)
    differ = [role for role, source in sources.items() if source != target]
    if differ and units.unit_registry() is None:
        _cannot_convert(found, sources, target, coord_units, differ, problems)
    axes = []
    for role, name in found.items():
        convert = None
        if role in differ:
            convert = _converter(role, name, sources[role], target, problems)
        axes.append(MapAxis(role=role, name=name, dims=axes_dims[role], convert=convert))
    problems.raise_if_any()
    return tuple(axes), target


def _axis_units(
    ds: xr.Dataset,
    found: dict[str, Hashable],
    coord_units: str | None,
    problems: StructureProblems,
) -> tuple[dict[str, str], str]:
    """Each axis's unit and the target unit, in their one spelling."""
    if coord_units is not None and (not isinstance(coord_units, str) or not coord_units.strip()):
        problems.add(f"coord_units={quote(coord_units)} is not a unit", "coord_units", "units_text")
        problems.raise_if_any()
    given = {role: units.coordinate_unit(ds[n].attrs.get("units")) for role, n in found.items()}
    target = units.coordinate_unit(coord_units) if coord_units is not None else given["x"]
    return {role: unit if unit is not None else target for role, unit in given.items()}, target


def _cannot_convert(
    found: dict[str, Hashable],
    sources: dict[str, str],
    target: str,
    coord_units: str | None,
    differ: list[str],
    problems: StructureProblems,
) -> None:
    """The one problem of positions that need converting, without pint to do it."""
    by_unit: dict[str, list[str]] = {}
    for role, source in sources.items():
        by_unit.setdefault(source, []).append(role)
    if coord_units is not None:
        held = ", ".join(f"{quote(u)} ({' and '.join(r)})" for u, r in by_unit.items())
        problem = (
            f"coord_units={quote(coord_units)} asks for positions in {quote(target)}, but the "
            f"coordinates are in {held}, and pint is not installed to convert them"
        )
        one = next(iter(by_unit)) if len(by_unit) == 1 else None
        fix = f", pass coord_units={quote(one)}" if one is not None else ""
    else:
        held = ", ".join(f"{role} in {quote(source)}" for role, source in sources.items())
        problem = (
            f"the coordinates are in different units ({held}) and pint is not installed to "
            f"convert {' and '.join(differ)} to {quote(target)}"
        )
        fix = ""
    problems.add(
        f'{problem}: install pint (pip install "atomscale-accessors[units]"){fix}, or '
        "convert the coordinates to one unit yourself",
        found[differ[0]],
        "same_units",
        sources[differ[0]],
    )
    problems.raise_if_any()


def _converter(
    role: str, name: Hashable, source: str, target: str, problems: StructureProblems
) -> Callable[[np.ndarray], np.ndarray] | None:
    try:
        return units.converter(source, target)
    except ValueError as exc:
        problems.add(
            f"cannot convert {role} ({quote(name)}) from {quote(source)} to {quote(target)}: {exc}",
            name,
            "convertible_units",
            source,
        )
        return None

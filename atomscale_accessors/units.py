"""Units: the one spelling of a coordinate unit, pint when it is installed, and data held
as pint quantities taken apart into values and a unit.

pint is optional (the ``units`` extra). Without it, units are compared as they are
written, and coordinates in different units are an error rather than a guess.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import xarray as xr

__all__ = [
    "converter",
    "coordinate_unit",
    "is_quantity",
    "magnitudes",
    "split_quantities",
    "unit_registry",
    "unit_symbol",
]


@functools.cache
def unit_registry() -> Any:
    """pint's application registry (the one pint-xarray uses too), or None without pint."""
    try:
        import pint
    except ImportError:
        return None
    return pint.get_application_registry()


def converter(source: str, target: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function converting values from unit ``source`` to unit ``target`` with pint;
    ValueError (saying why) when pint cannot, or is not installed."""
    registry = unit_registry()
    if registry is None:
        raise ValueError("pint is not installed")
    try:
        registry.Quantity(1.0, source).to(target)
    except Exception as exc:  # pint raises several unrelated types for bad units
        raise ValueError(str(exc)) from None

    def convert(values: np.ndarray) -> np.ndarray:
        return np.asarray(registry.Quantity(values, source).to(target).magnitude, dtype="float64")

    return convert


def is_quantity(data: Any) -> bool:
    """Whether ``data`` is a pint quantity (told by its shape, so pint is never imported
    for data that cannot be one)."""
    return hasattr(data, "magnitude") and hasattr(getattr(data, "units", None), "dimensionality")


def unit_symbol(unit: Any) -> str:
    """A pint unit as its short symbol, written compactly: ``nm``, ``mm``, ``1/cm**3``."""
    return f"{unit:~C}"


@functools.lru_cache(maxsize=256)
def _symbol_of(text: str) -> str | None:
    registry = unit_registry()
    if registry is None:
        return None
    try:
        symbol = unit_symbol(registry.Unit(text))
    except Exception:  # pint raises several unrelated types for text it cannot read
        return None
    return symbol or None  # a blank or dimensionless unit keeps its text


def coordinate_unit(text: Any) -> Any:
    """The one spelling of a coordinate unit: pint's short symbol (``millimeter``, ``mm``
    and ``millimetre`` all give ``mm``) when pint is installed and knows the unit; the
    text as given otherwise (and anything that is not text, for validation to report).

    Positions are the same position only in the same unit text, so every coordinate
    unit the library sends goes through here.

    Examples
    --------
    >>> coordinate_unit("millimeter")  # with pint installed
    'mm'
    >>> coordinate_unit("not a unit")
    'not a unit'
    """
    if not isinstance(text, str) or not text.strip() or unit_registry() is None:
        return text
    return _symbol_of(text.strip()) or text


def split_quantities(ds: xr.Dataset) -> tuple[xr.Dataset, list[tuple[Hashable, str, str]]]:
    """``ds`` with every variable held as a pint quantity (``ds.pint.quantify()``, or a
    Quantity given as data) replaced by its magnitude, its unit written in the ``units``
    attribute; and the variables whose ``units`` attribute said otherwise, as
    ``(name, attribute, unit of the data)``, for the caller to report.

    The data are not read: a quantity wrapping a dask array stays lazy.
    """
    held = [name for name, var in ds.variables.items() if is_quantity(var.data)]
    if not held:
        return ds, []
    conflicts = []
    for name in held:
        written = ds.variables[name].attrs.get("units")
        unit = unit_symbol(ds.variables[name].data.units)
        if written is not None and coordinate_unit(written) != coordinate_unit(unit):
            conflicts.append((name, written, unit))
    if hasattr(ds, "pint") and hasattr(ds.pint, "dequantify"):
        # pint-xarray's own way back, which also drops the indexes it made for quantified
        # dimension coordinates (those cannot become pandas indexes).
        return ds.pint.dequantify(format="~C"), conflicts
    return magnitudes(ds, held), conflicts


def magnitudes(ds: xr.Dataset, names: list[Hashable]) -> xr.Dataset:
    """``ds`` with the quantities of ``names`` as magnitudes and ``units`` attributes,
    without pint-xarray (whose quantified indexes need its own ``dequantify``)."""
    plain = ds.copy()
    for name in names:
        var = plain.variables[name]
        attrs = {**var.attrs, "units": unit_symbol(var.data.units)}
        plain[name] = xr.Variable(var.dims, var.data.magnitude, attrs, var.encoding)
    return plain

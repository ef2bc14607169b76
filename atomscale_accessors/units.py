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
    """A pint unit as its short symbol, written compactly: ``nm``, ``mm``, ``1/cm**3``;
    micro as ``u`` (``um``), the spelling files and keyboards have, rather than one of the
    two characters that look like µ, where that reads back as the same unit."""
    symbol = f"{unit:~C}"
    plain = symbol.translate(_MICRO)
    return plain if plain != symbol and _reads_as(plain, unit) else symbol


_MICRO = str.maketrans({"\u00b5": "u", "\u03bc": "u"})


def _reads_as(text: str, unit: Any) -> bool:
    """Whether pint reads ``text`` as ``unit`` (``u`` alone is an atomic mass unit, not
    the micron that pint writes as ``µ``)."""
    try:
        return bool(unit._REGISTRY.Unit(text) == unit)
    except Exception:  # pint raises several unrelated types for text it cannot read
        return False


@functools.lru_cache(maxsize=256)
def _symbol_of(text: str) -> str | None:
    registry = unit_registry()
    if registry is None:
        return None
    try:
        unit = registry.Unit(text)
    except Exception:  # pint raises several unrelated types for text it cannot read
        return None
    symbol = unit_symbol(unit)
    # A blank (dimensionless) symbol, or one that is not plain text (micron's µ), keeps
    # the text as written.
    return symbol if symbol.isascii() and symbol and _reads_as(symbol, unit) else None


def coordinate_unit(text: Any) -> Any:
    """The one spelling of a coordinate unit: pint's short symbol (``millimeter``, ``mm``
    and ``millimetre`` all give ``mm``; ``micrometer`` and ``µm`` give ``um``) when pint
    is installed and knows the unit; the text as given otherwise (and anything that is
    not text, for validation to report).

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
    symbols = {name: unit_symbol(ds.variables[name].data.units) for name in held}
    for name, unit in symbols.items():
        written = ds.variables[name].attrs.get("units")
        if written is not None and coordinate_unit(written) != coordinate_unit(unit):
            conflicts.append((name, written, unit))
    if not (hasattr(ds, "pint") and hasattr(ds.pint, "dequantify")):
        return magnitudes(ds, held), conflicts
    # pint-xarray's own way back, which also drops the indexes it made for quantified
    # dimension coordinates (those cannot become pandas indexes); the units written as
    # everywhere else.
    plain = ds.pint.dequantify()
    for name, unit in symbols.items():
        plain.variables[name].attrs["units"] = unit
    return plain, conflicts


def magnitudes(ds: xr.Dataset, names: list[Hashable]) -> xr.Dataset:
    """``ds`` with the quantities of ``names`` as magnitudes and ``units`` attributes,
    without pint-xarray (whose quantified indexes need its own ``dequantify``)."""
    plain = ds.copy()
    for name in names:
        var = plain.variables[name]
        attrs = {**var.attrs, "units": unit_symbol(var.data.units)}
        plain[name] = xr.Variable(var.dims, var.data.magnitude, attrs, var.encoding)
    return plain

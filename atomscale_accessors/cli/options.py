"""The mapping options of ``validate`` and ``upload``, as the accessors' keyword options.

A table (``DataFrame.atomscale``) and a NetCDF map (``Dataset.atomscale``) take different
options; one that applies only to the other kind of file is a usage error.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .exits import UsageError

__all__ = ["map_options", "mapping_for", "table_mapping"]


def _split(items: Sequence[str] | None) -> list[str]:
    """Repeated options and comma lists, flattened: ``-a x,y -a z`` -> ``[x, y, z]``."""
    out: list[str] = []
    for item in items or []:
        out.extend(part.strip() for part in item.split(",") if part.strip())
    return out


def _pairs(items: Sequence[str] | None, option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in _split(items):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UsageError(f"{option} takes NAME=VALUE, got {item!r}")
        pairs[name.strip()] = value.strip()
    return pairs


def _common_mapping(args: argparse.Namespace) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for option in ("x", "y", "z", "coord_units", "coord_ref_frame", "char_source_type", "data_id"):
        value = getattr(args, option, None)
        if value is not None:
            mapping[option] = value
    return mapping


def table_mapping(args: argparse.Namespace) -> dict[str, Any]:
    """Options for ``DataFrame.atomscale`` (see :func:`~atomscale_accessors.records.to_records`)."""
    for option, given in (("--variables", args.variables), ("--extra-dims", args.extra_dims)):
        if given:
            raise UsageError(f"{option} applies to NetCDF maps, not to tables")
    mapping = _common_mapping(args)
    if args.value is not None:
        mapping["value"] = args.value
    if args.values:
        items = _split(args.values)
        if any("=" in item for item in items):
            mapping["values"] = _pairs(items, "--values")
        else:
            mapping["values"] = items
    if args.property_name is not None:
        mapping["property_name"] = args.property_name
    if args.property_unit is not None:
        mapping["property_unit"] = args.property_unit
    if args.units:
        mapping["units"] = _pairs(args.units, "--units")
    if args.metadata_columns:
        mapping["metadata"] = _split(args.metadata_columns)
    return mapping


def map_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options for ``Dataset.atomscale`` (see :func:`~atomscale_accessors.maps.flatten_map`)."""
    for option, given, instead in (
        ("--value", args.value, "--variables"),
        ("--values", args.values, "--variables"),
        ("--metadata-columns", args.metadata_columns, None),
    ):
        if given:
            hint = f"; use {instead}" if instead else ""
            raise UsageError(f"{option} applies to tables, not to NetCDF maps{hint}")
    options = _common_mapping(args)
    if args.variables:
        options["variables"] = _split(args.variables)
    if args.property_name is not None:
        name = args.property_name
        options["property_name"] = _pairs([name], "--property-name") if "=" in name else name
    if args.property_unit is not None and args.units:
        raise UsageError("give --property-unit (every variable) or --units VARIABLE=UNIT, not both")
    if args.property_unit is not None:
        options["property_unit"] = args.property_unit
    if args.units:
        options["property_unit"] = _pairs(args.units, "--units")
    if args.extra_dims is not None:
        options["extra_dims"] = args.extra_dims
    return options


def mapping_for(data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The accessor's options for ``data``: :func:`table_mapping` or :func:`map_options`."""
    import pandas as pd

    return table_mapping(args) if isinstance(data, pd.DataFrame) else map_options(args)

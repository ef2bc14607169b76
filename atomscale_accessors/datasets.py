"""Realistic example maps for the documentation, the tests and the demo.

Each function builds a small :class:`xarray.Dataset` shaped like a real measurement: CF
``units`` attributes on the values and the coordinates, the technique in the
``char_source_type`` attribute, positions in millimetres relative to the wafer centre. The
maps are deterministic for a given ``seed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
import xarray as xr

__all__ = ["sheet_resistance_map", "wafer_thickness_map", "xps_line_scan"]


def wafer_thickness_map(
    n: int = 61,
    diameter_mm: float = 300.0,
    seed: int = 0,
    *,
    profile: Literal["centre", "edge"] = "centre",
    mean_nm: float = 100.0,
    chunks: int | Mapping[str, int] | None = None,
) -> xr.Dataset:
    """A film thickness map of a round wafer on a regular (y, x) grid.

    Parameters
    ----------
    n : int, default 61
        Grid points along x and along y (61 gives a 5 mm pitch on a 300 mm wafer).
    diameter_mm : float, default 300
        Wafer diameter; cells outside the wafer are NaN.
    seed : int, default 0
        Seed of the measurement noise.
    profile : {"centre", "edge"}, default "centre"
        Thickest at the centre (typical of spin coating and many CVD processes) or at the
        edge.
    mean_nm : float, default 100
        Thickness at the mean radius, roughly.
    chunks : int or dict, optional
        Return a dask-backed map with these chunks (needs dask).

    Returns
    -------
    xarray.Dataset
        Variable ``thickness`` (nm) on ``(y, x)`` with coordinates in mm; attributes
        ``char_source_type="ellipsometry"`` and ``coord_ref_frame="sample_relative"``.

    Examples
    --------
    >>> from atomscale_accessors.datasets import wafer_thickness_map
    >>> ds = wafer_thickness_map(n=31)
    >>> ds.thickness.dims, ds.thickness.attrs["units"], ds.x.attrs["units"]
    (('y', 'x'), 'nm', 'mm')
    >>> int(ds.thickness.notnull().sum())  # cells on the wafer
    709
    """
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    if profile not in ("centre", "edge"):
        raise ValueError(f"profile must be 'centre' or 'edge', got {profile!r}")
    radius = diameter_mm / 2.0
    axis = np.linspace(-radius, radius, n)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    r = np.hypot(xx, yy) / radius
    rng = np.random.default_rng(seed)
    # A parabolic radial profile of +-3 % is typical of deposition non-uniformity.
    slope = -0.03 if profile == "centre" else 0.03
    thickness = mean_nm * (1.0 + slope * (r**2 - 0.5)) + rng.normal(0.0, 0.002 * mean_nm, r.shape)
    thickness[r > 1.0] = np.nan
    ds = xr.Dataset(
        {"thickness": (("y", "x"), thickness, {"units": "nm"})},
        coords={"y": ("y", axis.copy(), {"units": "mm"}), "x": ("x", axis, {"units": "mm"})},
        attrs={"char_source_type": "ellipsometry", "coord_ref_frame": "sample_relative"},
    )
    return ds.chunk(chunks) if chunks is not None else ds


def sheet_resistance_map(
    seed: int = 0,
    *,
    diameter_mm: float = 300.0,
    edge_exclusion_mm: float = 3.0,
    mean_ohm_sq: float = 50.0,
) -> xr.Dataset:
    """A four-point-probe sheet resistance map on the standard 49-site pattern.

    The sites are the centre and three rings of 8, 16 and 24 points at one, two and three
    thirds of the usable radius, the pattern of SEMI MF84-style wafer mapping.

    Parameters
    ----------
    seed : int, default 0
        Seed of the measurement noise.
    diameter_mm : float, default 300
        Wafer diameter.
    edge_exclusion_mm : float, default 3
        The outer ring sits this far inside the wafer edge.
    mean_ohm_sq : float, default 50
        Sheet resistance at the centre, roughly.

    Returns
    -------
    xarray.Dataset
        Variable ``sheet_resistance`` (ohm/sq) along the dimension ``point`` (49 sites),
        coordinates ``x`` and ``y`` along it in mm, attribute
        ``char_source_type="four_point_probe"``.

    Examples
    --------
    >>> from atomscale_accessors.datasets import sheet_resistance_map
    >>> ds = sheet_resistance_map()
    >>> ds.sizes["point"], ds.sheet_resistance.attrs["units"]
    (49, 'ohm/sq')
    """
    usable = diameter_mm / 2.0 - edge_exclusion_mm
    xs, ys = [0.0], [0.0]
    for ring in (1, 2, 3):
        angles = np.arange(8 * ring) * (2.0 * np.pi / (8 * ring))
        xs.extend(usable * ring / 3.0 * np.cos(angles))
        ys.extend(usable * ring / 3.0 * np.sin(angles))
    x = np.round(np.array(xs), 6)
    y = np.round(np.array(ys), 6)
    r = np.hypot(x, y) / usable
    rng = np.random.default_rng(seed)
    # Thinner films at the edge conduct less: resistance rises with radius.
    values = mean_ohm_sq * (1.0 + 0.04 * r**2) + rng.normal(0.0, 0.003 * mean_ohm_sq, r.shape)
    return xr.Dataset(
        {"sheet_resistance": ("point", values, {"units": "ohm/sq"})},
        coords={"x": ("point", x, {"units": "mm"}), "y": ("point", y, {"units": "mm"})},
        attrs={"char_source_type": "four_point_probe", "coord_ref_frame": "sample_relative"},
    )


def xps_line_scan(
    n: int = 41,
    seed: int = 0,
    *,
    start_mm: tuple[float, float] = (-100.0, -100.0),
    end_mm: tuple[float, float] = (100.0, 100.0),
) -> xr.Dataset:
    """An XPS line scan of the Sr/Ti ratio of a SrTiO3 film across a wafer.

    Parameters
    ----------
    n : int, default 41
        Points along the line.
    seed : int, default 0
        Seed of the measurement noise.
    start_mm, end_mm : tuple of float
        (x, y) of the first and last point.

    Returns
    -------
    xarray.Dataset
        Variable ``sr_ti_ratio`` (dimensionless, units ``"1"``) along the dimension
        ``point``, coordinates ``x`` and ``y`` along it in mm, attribute
        ``char_source_type="xps"``.

    Examples
    --------
    >>> from atomscale_accessors.datasets import xps_line_scan
    >>> ds = xps_line_scan(n=5)
    >>> ds.sr_ti_ratio.dims, ds.sr_ti_ratio.attrs["units"]
    (('point',), '1')
    """
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    t = np.linspace(0.0, 1.0, n)
    x = start_mm[0] + t * (end_mm[0] - start_mm[0])
    y = start_mm[1] + t * (end_mm[1] - start_mm[1])
    rng = np.random.default_rng(seed)
    # A slight Sr excess growing across the wafer, as from an off-centre source.
    ratio = 0.98 + 0.05 * t + rng.normal(0.0, 0.004, n)
    return xr.Dataset(
        {"sr_ti_ratio": ("point", ratio, {"units": "1"})},
        coords={"x": ("point", x, {"units": "mm"}), "y": ("point", y, {"units": "mm"})},
        attrs={"char_source_type": "xps", "coord_ref_frame": "sample_relative"},
    )

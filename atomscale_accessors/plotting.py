"""Wafer-map pictures of measurement maps and annotation frames.

A gridded map is drawn with ``pcolormesh`` (cells without a value stay transparent),
scattered points with ``scatter`` coloured by value. The colour bar names the property and
its unit, the axes name the coordinate unit, the aspect is equal, and the outline of the
wafer is drawn when the map is one (see :func:`wafer_diameter` for the rule).

matplotlib is an optional dependency (the ``plot`` extra) and is imported only when a
picture is drawn.

Examples
--------
>>> import matplotlib
>>> matplotlib.use("Agg")
>>> from atomscale_accessors.datasets import wafer_thickness_map
>>> from atomscale_accessors.plotting import new_axes, plot_map
>>> ax = plot_map(wafer_thickness_map(n=31), ax=new_axes())
>>> ax.get_xlabel(), ax.collections[0].colorbar.ax.get_ylabel()
('x [mm]', 'thickness [nm]')
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from .fields import SAMPLE_DIM, SAMPLE_ID, SAMPLE_NAME
from .maps import COORD_NAMES, find_coordinates, frame_to_map

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "OUTLINE_GID",
    "STANDARD_WAFER_DIAMETERS_MM",
    "new_axes",
    "plot_annotations",
    "plot_map",
    "wafer_diameter",
]

#: Wafer diameters recognised by ``outline="auto"``, in millimetres (2 and 3 inch, then
#: 100 to 450 mm).
STANDARD_WAFER_DIAMETERS_MM: tuple[float, ...] = (
    50.8,
    76.2,
    100.0,
    125.0,
    150.0,
    200.0,
    300.0,
    450.0,
)
#: ``gid`` of the circle drawn as the wafer outline (to find it on an Axes).
OUTLINE_GID = "wafer-outline"

# Millimetres per coordinate unit: only lengths can be compared with a wafer size.
_MM_PER_UNIT = {
    "mm": 1.0,
    "millimeter": 1.0,
    "millimetre": 1.0,
    "cm": 10.0,
    "m": 1000.0,
    "um": 1e-3,
    "µm": 1e-3,
    "μm": 1e-3,
    "micron": 1e-3,
    "micrometer": 1e-3,
    "micrometre": 1e-3,
    "nm": 1e-6,
    "in": 25.4,
    "inch": 25.4,
}
# A point may lie this little outside the wafer edge (rounding of stage positions).
_EDGE_TOLERANCE = 0.01
# outline="auto" wants the points to reach at least this share of the wafer radius.
_MIN_REACH = 0.7
_PLOT_EXTRA = 'pip install "atomscale-accessors[plot]"'
# The size of a new figure, in inches.
_FIGSIZE = (6.4, 5.2)
# A wafer map has an equal aspect: "compressed" lays out such axes without losing the pad
# at the figure's edge, where "constrained" can push the y label past it (a plain savefig
# then cuts it).
_LAYOUT = "compressed"

Outline = Literal["auto", "wafer", False] | None


def import_matplotlib() -> Any:
    """The ``matplotlib`` module, or an ImportError that says how to install it."""
    try:
        import matplotlib
        import matplotlib.figure
        import matplotlib.patches
    except ImportError as exc:
        raise ImportError(
            f"plotting needs matplotlib, which is not installed: {_PLOT_EXTRA}"
        ) from exc
    return matplotlib


def new_axes(figsize: tuple[float, float] = _FIGSIZE) -> Axes:
    """Axes on a new figure that is not managed by pyplot.

    Such a figure needs no display and no GUI backend, and is freed when it goes out of
    scope; save it with ``ax.figure.savefig(...)``. Use it in scripts and servers; in a
    notebook, let :func:`plot_map` create a pyplot figure (``ax=None``).

    Examples
    --------
    >>> from atomscale_accessors.plotting import new_axes
    >>> ax = new_axes()
    >>> type(ax.figure).__name__
    'Figure'
    """
    mpl = import_matplotlib()
    figure = mpl.figure.Figure(figsize=figsize, layout=_LAYOUT)
    return figure.add_subplot()


def wafer_diameter(x: Any, y: Any, coord_units: str | None, *, strict: bool = True) -> float | None:
    """The diameter of the standard wafer that points lie on, in the coordinate unit.

    The rule of ``outline="auto"``: the coordinates must be a length (mm, um, cm, m, in);
    the points (those at more than a quarter of the largest radius) must lie around the
    origin in all four quadrants, as on a wafer measured from its centre; the diameter is
    the smallest of :data:`STANDARD_WAFER_DIAMETERS_MM` that holds every point (1 %
    tolerance), and the points must reach at least 70 % of its radius. A line scan, a
    corner of a wafer or a small sample therefore get no outline.

    Parameters
    ----------
    x, y : array-like
        Positions of the points with a value.
    coord_units : str or None
        Unit of the positions.
    strict : bool, default True
        Apply the whole rule. With ``False`` only the smallest standard size holding the
        points is looked for (the coordinates must still be a length).

    Returns
    -------
    float or None
        The diameter in ``coord_units``, or None when the points do not look like a wafer.

    Examples
    --------
    >>> from atomscale_accessors.datasets import sheet_resistance_map, xps_line_scan
    >>> from atomscale_accessors.plotting import wafer_diameter
    >>> ds = sheet_resistance_map(diameter_mm=200.0)
    >>> wafer_diameter(ds.x, ds.y, "mm")
    200.0
    >>> line = xps_line_scan()
    >>> print(wafer_diameter(line.x, line.y, "mm"))
    None
    """
    scale = _MM_PER_UNIT.get(str(coord_units).strip()) if coord_units is not None else None
    if scale is None:
        return None
    xs = np.asarray(x, dtype="float64").ravel() * scale
    ys = np.asarray(y, dtype="float64").ravel() * scale
    keep = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = xs[keep], ys[keep]
    if xs.size == 0:
        return None
    r = np.hypot(xs, ys)
    r_max = float(r.max())
    if r_max == 0.0:
        return None
    if strict:
        far = r > 0.25 * r_max
        angles = np.mod(np.arctan2(ys[far], xs[far]), 2.0 * np.pi)
        quadrants = np.unique(np.minimum((angles // (np.pi / 2.0)).astype(int), 3))
        if quadrants.size < 4:
            return None
    for diameter in STANDARD_WAFER_DIAMETERS_MM:
        radius = diameter / 2.0
        if r_max <= radius * (1.0 + _EDGE_TOLERANCE):
            if strict and r_max < _MIN_REACH * radius:
                return None
            return diameter / scale
    return None


def plot_map(
    obj: xr.Dataset | xr.DataArray,
    variable: Hashable | None = None,
    *,
    ax: Axes | None = None,
    x: Hashable | None = None,
    y: Hashable | None = None,
    outline: Outline = "auto",
    wafer_diameter: float | None = None,
    colorbar: bool = True,
    title: str | bool | None = None,
    **kwargs: Any,
) -> Axes:
    """Draw one variable of a gridded or scattered map as a wafer map.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        The map: values on ``(y, x)`` with 1-D coordinates (a grid), on two dimensions
        with 2-D ``x`` and ``y`` coordinates (a curvilinear grid), or along one dimension
        with ``x`` and ``y`` along it (points).
    variable : hashable, optional
        The data variable to draw; required when the Dataset has several. For a
        DataArray, the name shown (default: the array's name).
    ax : matplotlib.axes.Axes, optional
        Where to draw; default a new pyplot figure.
    x, y : hashable, optional
        Names of the coordinates. Default: the coordinate with the CF attribute
        ``axis="X"`` (``"Y"``), else the one of the usual names (``x``, ``X``, ``x_mm``,
        ...; see :data:`~atomscale_accessors.maps.COORD_NAMES`) that the map has; found
        as for an upload (:func:`~atomscale_accessors.maps.find_coordinates`).
    outline : {"auto", "wafer", None}, default "auto"
        The wafer's outline, a circle around the origin: ``"auto"`` draws it when the map
        looks like a wafer (see :func:`wafer_diameter`) or when ``wafer_diameter`` is
        given; ``"wafer"`` always draws it (with the smallest standard size that holds
        the points, else a circle through the farthest point); ``None`` never.
    wafer_diameter : float, optional
        The outline's diameter, in the coordinate unit.
    colorbar : bool, default True
        Add a colour bar labelled with the property and its unit.
    title : str or bool, optional
        The title; default the property and the technique; ``False`` for none.
    **kwargs
        Passed to ``pcolormesh`` (grids) or ``scatter`` (points), e.g. ``cmap``,
        ``vmin``, ``vmax``, ``s``.

    Returns
    -------
    matplotlib.axes.Axes
        The Axes drawn on.

    Raises
    ------
    ImportError
        When matplotlib is not installed (``pip install "atomscale-accessors[plot]"``).
    ValueError
        When the variable cannot be found, or has more dimensions than the map (select one
        slice first).
    MapStructureError
        (a ValueError) When the coordinates cannot be found, or several could serve as x
        (or y): name one with ``x=`` (``y=``). Uploads refuse the same maps.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from atomscale_accessors.datasets import sheet_resistance_map
    >>> from atomscale_accessors.plotting import OUTLINE_GID, new_axes, plot_map
    >>> ax = plot_map(sheet_resistance_map(), ax=new_axes())
    >>> [p.get_gid() for p in ax.patches]
    ['wafer-outline']
    """
    import_matplotlib()
    ds, name = as_dataset(obj, variable)
    var = ds[name]
    # The resolver of uploads: a map with two candidates for x is refused by both.
    names = find_coordinates(ds, {"x": x, "y": y})
    xc, yc = ds[names["x"]], ds[names["y"]]
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=_FIGSIZE, layout=_LAYOUT)
    kwargs.setdefault("cmap", "viridis")
    artist, px, py = _draw_values(ax, var, name, xc, yc, kwargs)

    x_units = xc.attrs.get("units")
    ax.set_xlabel(axis_label(str(names["x"]), x_units))
    ax.set_ylabel(axis_label(str(names["y"]), yc.attrs.get("units")))
    ax.set_aspect("equal")
    diameter = _outline_diameter(outline, wafer_diameter, px, py, x_units)
    if diameter is not None:
        _draw_outline(ax, diameter, x_units)
    _add_captions(ax, ds, var, name, artist, colorbar=colorbar, title=title)
    return ax


def plot_annotations(
    frame: pd.DataFrame,
    property_name: str | None = None,
    *,
    ax: Axes | None = None,
    outline: Outline = "auto",
    wafer_diameter: float | None = None,
    colorbar: bool = True,
    title: str | bool | None = None,
    **kwargs: Any,
) -> Axes | np.ndarray:
    """Draw one property of an annotation frame (or of canonical records) as a wafer map.

    The rows of the property are put on a map with
    :func:`~atomscale_accessors.maps.frame_to_map`: a grid when the points fill one
    (drawn with ``pcolormesh``), else points (drawn with ``scatter``). Rows without an x or
    y position are left out.

    Parameters
    ----------
    frame : pandas.DataFrame
        Needs ``property_name``, ``property_value``, ``coord_x`` and ``coord_y``; uses
        ``property_unit``, ``coord_units`` and ``char_source_type`` for the labels.
    property_name : str, optional
        The property to draw; required when the frame holds several.
    ax, outline, wafer_diameter, colorbar, title, **kwargs
        As for :func:`plot_map`.

    Returns
    -------
    matplotlib.axes.Axes or numpy.ndarray
        The Axes drawn on; for a frame of several samples, an array of Axes, one panel
        per sample.

    Raises
    ------
    ImportError
        When matplotlib is not installed.
    ValueError
        When columns are missing, the property is not in the frame, or the frame holds
        several properties and none was chosen.
    MapStructureError
        When the rows mix coordinate units or value units.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> from atomscale_accessors.datasets import sheet_resistance_map
    >>> from atomscale_accessors.plotting import new_axes, plot_annotations
    >>> records = sheet_resistance_map().atomscale.to_annotations()
    >>> ax = plot_annotations(records, ax=new_axes())
    >>> ax.collections[0].colorbar.ax.get_ylabel()
    'sheet_resistance [ohm/sq]'
    """
    import_matplotlib()
    needed = ["property_name", "property_value", "coord_x", "coord_y"]
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise ValueError(
            f"the frame lacks the columns {missing}: plot an annotation frame (from fetch or "
            "upload) or canonical records (from to_annotations)"
        )
    names = pd.unique(frame["property_name"].dropna().astype(object)).tolist()
    if property_name is None:
        if len(names) != 1:
            raise ValueError(
                f"the frame holds {len(names)} properties {names[:10]}: choose one with "
                "property_name=..."
                if names
                else "the frame holds no annotations to plot"
            )
        property_name = names[0]
    elif property_name not in names:
        raise ValueError(f"no annotations of {property_name!r} in the frame (properties: {names})")
    rows = frame[(frame["property_name"] == property_name).to_numpy()]
    rows = rows[rows["coord_x"].notna().to_numpy() & rows["coord_y"].notna().to_numpy()]
    if rows.empty:
        raise ValueError(f"no annotation of {property_name!r} has an x and y position")
    columns = [
        c
        for c in (
            *needed,
            "coord_z",
            "property_unit",
            "coord_units",
            "coord_ref_frame",
            "char_source_type",
            SAMPLE_ID,
            SAMPLE_NAME,
        )
        if c in rows.columns
    ]
    ds = frame_to_map(rows[columns].reset_index(drop=True))
    if SAMPLE_DIM in ds.dims:  # a frame of several samples: small multiples
        from .multiples import plot_stack

        return plot_stack(ds, property_name, **kwargs)
    return plot_map(
        ds,
        property_name,
        ax=ax,
        outline=outline,
        wafer_diameter=wafer_diameter,
        colorbar=colorbar,
        title=title,
        **kwargs,
    )


# -- helpers ---------------------------------------------------------------------------------
def _draw_values(
    ax: Axes,
    var: xr.DataArray,
    name: Hashable,
    xc: xr.DataArray,
    yc: xr.DataArray,
    kwargs: dict[str, Any],
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Draw the values as the coordinates lay them out (a grid of cells with
    ``pcolormesh``, or points with ``scatter``); return the artist and the positions of
    the cells or points that have a value."""
    if xc.ndim == 1 and xc.dims == yc.dims:
        _check_dims(var, set(xc.dims), name)
        return _draw_points(ax, var.to_numpy(), xc.to_numpy(), yc.to_numpy(), kwargs)
    if xc.ndim == 1 and yc.ndim == 1:
        # A regular grid: cells are centred on the coordinates.
        _check_dims(var, {xc.dims[0], yc.dims[0]}, name)
        gx, gy, values = _sorted_grid(var, xc, yc)
        mx, my = np.meshgrid(gx, gy)
    elif xc.ndim == 2 and xc.dims == yc.dims:
        # A curvilinear grid: 2-D positions of the cell centres.
        _check_dims(var, set(xc.dims), name)
        values = var.transpose(*xc.dims).to_numpy()
        gx, gy = mx, my = xc.to_numpy(), yc.to_numpy()
    else:
        raise ValueError(
            f"cannot draw {name!r}: the coordinates {xc.name!r} {tuple(xc.dims)} and "
            f"{yc.name!r} {tuple(yc.dims)} form neither a grid nor points"
        )
    kwargs.setdefault("shading", "nearest")
    artist = ax.pcolormesh(gx, gy, np.ma.masked_invalid(values), **kwargs)
    has = np.isfinite(values)
    return artist, mx[has], my[has]


def _sorted_grid(
    var: xr.DataArray, xc: xr.DataArray, yc: xr.DataArray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A regular grid's axes in increasing order, and its values ``(y, x)`` to match."""
    ox, oy = np.argsort(xc.to_numpy(), kind="stable"), np.argsort(yc.to_numpy(), kind="stable")
    values = var.transpose(yc.dims[0], xc.dims[0]).to_numpy()[np.ix_(oy, ox)]
    return xc.to_numpy()[ox], yc.to_numpy()[oy], values


def _draw_points(
    ax: Axes, values: np.ndarray, x: np.ndarray, y: np.ndarray, kwargs: dict[str, Any]
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Scattered points, coloured by value; points without a value are left out."""
    has = np.isfinite(values)
    px, py = x[has], y[has]
    # Large markers for a 49-point map, small ones for thousands of points.
    kwargs.setdefault("s", float(np.clip(4000.0 / max(has.sum(), 1), 4.0, 120.0)))
    kwargs.setdefault("edgecolors", "none")
    return ax.scatter(px, py, c=values[has], **kwargs), px, py


def _draw_outline(ax: Axes, diameter: float, units: Any) -> None:
    """The wafer's edge, a circle around the origin, with the view widened to hold it."""
    patches = import_matplotlib().patches
    radius = diameter / 2.0
    ax.add_patch(
        patches.Circle(
            (0.0, 0.0),
            radius,
            fill=False,
            edgecolor="0.35",
            linewidth=1.0,
            gid=OUTLINE_GID,
            label=f"wafer, {diameter:g} {units or ''}".strip(),
        )
    )
    margin = 1.04 * radius
    ax.set_xlim(min(ax.get_xlim()[0], -margin), max(ax.get_xlim()[1], margin))
    ax.set_ylim(min(ax.get_ylim()[0], -margin), max(ax.get_ylim()[1], margin))


def _add_captions(
    ax: Axes,
    ds: xr.Dataset,
    var: xr.DataArray,
    name: Hashable,
    artist: Any,
    *,
    colorbar: bool,
    title: str | bool | None,
) -> None:
    """The colour bar (property and unit) and the title (property and technique)."""
    prop = str(var.attrs.get("property_name", name))
    if colorbar:
        ax.figure.colorbar(artist, ax=ax, label=axis_label(prop, var.attrs.get("units")))
    if title is None:
        technique = var.attrs.get("char_source_type", ds.attrs.get("char_source_type"))
        title = f"{prop} ({technique})" if technique else prop
    if title:
        ax.set_title(str(title))


def as_dataset(
    obj: xr.Dataset | xr.DataArray, variable: Hashable | None
) -> tuple[xr.Dataset, Hashable]:
    if isinstance(obj, xr.DataArray):
        name = variable if variable is not None else (obj.name if obj.name is not None else "value")
        return obj.to_dataset(name=name), name
    if not isinstance(obj, xr.Dataset):
        raise TypeError(f"expected an xarray Dataset or DataArray, got {type(obj).__name__}")
    if variable is not None:
        if variable not in obj.data_vars:
            raise ValueError(
                f"no data variable {variable!r} (data variables: {list(obj.data_vars)})"
            )
        return obj, variable
    axes = {n for role in ("x", "y", "z") for n in COORD_NAMES[role]}
    candidates = [n for n, v in obj.data_vars.items() if v.ndim >= 1 and n not in axes]
    if len(candidates) != 1:
        raise ValueError(
            f"the Dataset has {len(candidates)} data variables to draw {candidates[:10]}: "
            "choose one with variable=..."
            if candidates
            else "the Dataset has no data variable to draw"
        )
    return obj, candidates[0]


def _check_dims(var: xr.DataArray, spatial: set[Hashable], name: Hashable) -> None:
    extra = [d for d in var.dims if d not in spatial and var.sizes[d] > 1]
    if extra:
        raise ValueError(
            f"{name!r} has the dimensions {extra} besides the map's: draw one slice, e.g. "
            f"ds.isel({extra[0]}=0)"
        )
    if not spatial <= set(var.dims):
        raise ValueError(f"{name!r} is not on the map's dimensions {sorted(map(str, spatial))}")


def axis_label(name: str, unit: Any) -> str:
    if unit is None or str(unit).strip() == "":
        return name
    if str(unit).strip() == "1":
        return f"{name} (dimensionless)"
    return f"{name} [{unit}]"


def _outline_diameter(
    outline: Outline,
    given: float | None,
    px: np.ndarray,
    py: np.ndarray,
    coord_units: Any,
) -> float | None:
    if outline is None or outline is False:
        return None
    if outline not in ("auto", "wafer"):
        raise ValueError(f"outline must be 'auto', 'wafer' or None, got {outline!r}")
    if given is not None:
        if not given > 0:
            raise ValueError(f"wafer_diameter must be positive, got {given!r}")
        return float(given)
    units = None if coord_units is None else str(coord_units)
    if outline == "auto":
        return wafer_diameter(px, py, units)
    found = wafer_diameter(px, py, units, strict=False)
    if found is not None:
        return found
    r = np.hypot(px, py)
    return 2.0 * float(r.max()) if r.size and r.max() > 0 else None

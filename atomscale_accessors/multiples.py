"""Small multiples: the maps of a lot side by side, on one colour scale.

A stack of maps (``thickness(sample, y, x)``, as ``to_xarray()`` makes it from a frame of
several samples, or as a lot is kept) is drawn one map per panel with
:func:`~atomscale_accessors.plotting.plot_map`, every panel with the same ``vmin`` and
``vmax``, and one colour bar for all: equal colours are equal values across the lot.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from .fields import SAMPLE_DIM
from .plotting import as_dataset, axis_label, import_matplotlib, plot_map

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_stack"]

_PANEL = 2.6  # inches per panel side
# A new figure's margins and gaps, in inches, laid out once here: a layout engine (as
# "compressed") measures every panel's ticks and labels at each draw, seconds for a lot.
_LEFT, _RIGHT, _BOTTOM, _TOP = 0.8, 1.1, 0.6, 0.85  # right: the colour bar; top: titles
_WSPACE, _HSPACE = 0.15, 0.4  # between panels; a row's gap holds the next row's titles
_BAR_GAP, _BAR_WIDTH = 0.2, 0.18


def plot_stack(
    obj: xr.Dataset | xr.DataArray,
    variable: Hashable | None = None,
    *,
    sample_dim: Hashable = SAMPLE_DIM,
    ncols: int | None = None,
    figure: Figure | None = None,
    **kwargs: Any,
) -> np.ndarray:
    """Draw each map of a stack in its own panel, on one shared colour scale.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataArray
        The stack: a variable on ``sample_dim`` and a map's dimensions.
    variable : hashable, optional
        The data variable to draw; required when the Dataset has several.
    sample_dim : hashable, default "sample"
        The dimension with one map per label; the labels are the panels' titles.
    ncols : int, optional
        Panels per row; default about the square root of their number (5 for 25).
    figure : matplotlib.figure.Figure, optional
        Where to draw; default a new pyplot figure.
    **kwargs
        As for :func:`~atomscale_accessors.plotting.plot_map` (``x=``, ``y=``, ``outline=``,
        ``cmap``, ...); ``vmin`` and ``vmax`` default to the range of the whole stack.

    Returns
    -------
    numpy.ndarray of matplotlib.axes.Axes
        The panels, row by row (those left over are hidden).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import xarray as xr
    >>> from atomscale_accessors.datasets import wafer_thickness_map
    >>> from atomscale_accessors.multiples import plot_stack
    >>> lot = xr.concat(
    ...     [wafer_thickness_map(n=9, seed=i) for i in range(4)], dim="sample"
    ... ).assign_coords(sample=["W1", "W2", "W3", "W4"])
    >>> axes = plot_stack(lot)
    >>> axes.shape, [ax.get_title() for ax in axes.ravel()]
    ((2, 2), ['W1', 'W2', 'W3', 'W4'])
    """
    import_matplotlib()
    ds, name = as_dataset(obj, variable)
    var = ds[name]
    if sample_dim not in var.dims:
        raise ValueError(
            f"{name!r} has no dimension {sample_dim!r} to draw one panel per sample "
            f"(dimensions: {list(var.dims)})"
        )
    labels = (
        list(ds[sample_dim].values)
        if sample_dim in ds.coords
        else list(range(var.sizes[sample_dim]))
    )
    kwargs.setdefault("vmin", float(var.min(skipna=True)))
    kwargs.setdefault("vmax", float(var.max(skipna=True)))
    axes, bar = _panels(len(labels), ncols, figure)
    artist = None
    for i, (ax, label) in enumerate(zip(axes.ravel(), labels, strict=False)):
        one = ds.isel({sample_dim: i}, drop=True)
        plot_map(one, name, ax=ax, colorbar=False, title=str(label), **kwargs)
        artist = ax.collections[0] if ax.collections else artist
    for ax in axes.ravel()[len(labels) :]:
        ax.set_visible(False)
    for ax in axes.ravel():
        ax.label_outer()  # axis labels on the outer panels only
    if artist is not None:
        prop = str(var.attrs.get("property_name", name))
        label = axis_label(prop, var.attrs.get("units"))
        if bar is None:  # the caller's figure, laid out as the caller chose
            axes.ravel()[0].figure.colorbar(artist, ax=list(axes.ravel()), label=label)
        else:
            bar.figure.colorbar(artist, cax=bar, label=label)
    return axes


def _panels(n: int, ncols: int | None, figure: Figure | None) -> tuple[np.ndarray, Axes | None]:
    """A grid of at least ``n`` panels, and the colour bar's Axes when the figure is new."""
    if n < 1:
        raise ValueError("the stack holds no map to draw")
    cols = ncols if ncols is not None else math.ceil(math.sqrt(n))
    if isinstance(cols, bool) or not isinstance(cols, int) or cols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    rows = math.ceil(n / cols)
    if figure is not None:
        axes = figure.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)
        return np.asarray(axes), None
    import matplotlib.pyplot as plt

    width = _LEFT + cols * _PANEL + (cols - 1) * _WSPACE + _RIGHT
    height = _BOTTOM + rows * _PANEL + (rows - 1) * _HSPACE + _TOP
    figure = plt.figure(figsize=(width, height))
    grid = {
        "left": _LEFT / width,
        "right": 1 - _RIGHT / width,
        "bottom": _BOTTOM / height,
        "top": 1 - _TOP / height,
        "wspace": _WSPACE / _PANEL,
        "hspace": _HSPACE / _PANEL,
    }
    axes = figure.subplots(rows, cols, squeeze=False, sharex=True, sharey=True, gridspec_kw=grid)
    bar = figure.add_axes(
        (
            grid["right"] + _BAR_GAP / width,
            grid["bottom"],
            _BAR_WIDTH / width,
            grid["top"] - grid["bottom"],
        )
    )
    return np.asarray(axes), bar

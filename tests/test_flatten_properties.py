"""Property-based tests of the flatten / frame_to_map laws on random maps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr
from conftest import needs_dask
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from atomscale_accessors.maps import flatten_map, frame_to_map, iter_flatten_map

SETTINGS = settings(max_examples=40, deadline=None)
# Finite values of every magnitude, signed zeros and subnormals included.
VALUES = st.floats(allow_nan=False, allow_infinity=False)
COORDS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def sorted_axis(n: int) -> st.SearchStrategy[np.ndarray]:
    return st.lists(COORDS, min_size=n, max_size=n, unique=True).map(
        lambda v: np.array(sorted(v), dtype="float64")
    )


@st.composite
def grids(draw) -> xr.Dataset:
    """A (y, x) map of one or two properties with a random NaN mask."""
    ny, nx = draw(st.integers(2, 6)), draw(st.integers(2, 6))
    x, y = draw(sorted_axis(nx)), draw(sorted_axis(ny))
    n_props = draw(st.integers(1, 2))
    data_vars = {}
    for k in range(n_props):
        values = draw(hnp.arrays("float64", (ny, nx), elements=VALUES))
        mask = draw(hnp.arrays(bool, (ny, nx)))
        values[mask] = np.nan
        data_vars[f"p{k}"] = (
            ("y", "x"),
            values,
            {"units": draw(st.sampled_from(["nm", "1", "ohm/sq"]))},
        )
    ds = xr.Dataset(
        data_vars,
        coords={"x": ("x", x, {"units": "mm"}), "y": ("y", y, {"units": "mm"})},
        attrs={"coord_ref_frame": draw(st.sampled_from(["sample_relative", "stage_absolute"]))},
    )
    if draw(st.booleans()):
        ds.attrs["char_source_type"] = "ellipsometry"
    return ds


def has_values(ds: xr.Dataset) -> bool:
    return all(bool(ds[v].notnull().any()) for v in ds.data_vars)


def drop_empty(ds: xr.Dataset, dims: tuple[str, ...]) -> xr.Dataset:
    """``ds`` less the rows, columns or points where no property has a value."""
    for dim in dims:
        others = [d for d in ds.dims if d != dim]
        keep = np.zeros(ds.sizes[dim], dtype=bool)
        for v in ds.data_vars:
            keep |= ds[v].notnull().any(others).values if others else ds[v].notnull().values
        ds = ds.isel({dim: keep})
    return ds


@SETTINGS
@given(grids())
def test_grid_round_trip(ds):
    if not has_values(ds):
        return
    before = ds.copy(deep=True)
    rec = flatten_map(ds)
    assert len(rec) == sum(int(ds[v].notnull().sum()) for v in ds.data_vars)
    back = frame_to_map(rec, dims=("y", "x"))
    # Float values, coordinates and units bit for bit; NaN cells stay NaN.
    xr.testing.assert_identical(back, drop_empty(ds, ("y", "x")))
    expected = drop_empty(ds, ("y", "x"))
    for v in ds.data_vars:
        # assert_identical takes -0.0 for 0.0; the bits must match too.
        np.testing.assert_array_equal(
            back[v].values.view("int64"), expected[v].values.view("int64")
        )
    xr.testing.assert_identical(ds, before)


@SETTINGS
@given(grids())
def test_every_record_is_its_cell(ds):
    if not has_values(ds):
        return
    rec = flatten_map(ds)
    for (yv, xv), row in zip(rec.index, rec.itertuples(), strict=True):
        cell = ds[row.property_name].sel(x=xv, y=yv).item()
        assert (row.coord_x, row.coord_y) == (xv, yv)
        assert np.float64(cell).view("int64") == np.float64(row.property_value).view("int64")


@st.composite
def scattered(draw) -> xr.Dataset:
    n = draw(st.integers(1, 30))
    positions = draw(st.lists(st.tuples(COORDS, COORDS), min_size=n, max_size=n, unique=True))
    x = np.array([p[0] for p in positions])
    y = np.array([p[1] for p in positions])
    values = draw(hnp.arrays("float64", n, elements=VALUES))
    values[draw(hnp.arrays(bool, n))] = np.nan
    coords = {"x": ("point", x, {"units": "mm"}), "y": ("point", y, {"units": "mm"})}
    if draw(st.booleans()):
        coords["z"] = ("point", draw(hnp.arrays("float64", n, elements=COORDS)), {"units": "mm"})
    return xr.Dataset(
        {"sheet_resistance": ("point", values, {"units": "ohm/sq"})},
        coords=coords,
        attrs={"coord_ref_frame": "sample_relative"},
    )


@SETTINGS
@given(scattered())
def test_scattered_round_trip(ds):
    if not has_values(ds):
        return
    back = frame_to_map(flatten_map(ds), dims="point")
    expected = drop_empty(ds, ("point",))
    if "z" in expected.coords and len(np.unique(expected.z.values)) == 1:
        # One z for every point comes back as a scalar coordinate.
        expected = expected.assign_coords(z=((), expected.z.values[0], expected.z.attrs))
    xr.testing.assert_identical(back, expected)


@SETTINGS
@given(
    grids(), st.integers(1, 4), st.integers(1, 4), st.sampled_from(["float64", "float32", "int32"])
)
@needs_dask
def test_streamed_blocks_equal_the_whole_map(ds, cy, cx, dtype):
    if not has_values(ds):
        return
    if dtype != "float64":
        # Integer and float32 maps convert losslessly; NaN cells become 0 for integers.
        if dtype == "int32":
            ds = ds.fillna(0).clip(-(2**31) + 1, 2**31 - 1).astype(dtype)
        else:
            ds = ds.clip(-3e38, 3e38).astype(dtype)
        for v in ds.data_vars:
            ds[v].attrs["units"] = "1"
        if not has_values(ds):
            return
    whole = flatten_map(ds)
    streamed = pd.concat(list(iter_flatten_map(ds.chunk({"y": cy, "x": cx}))))
    key = ["property_name", "coord_y", "coord_x"]
    pd.testing.assert_frame_equal(
        streamed.sort_values(key).reset_index(drop=True),
        whole.sort_values(key).reset_index(drop=True),
    )
    for v in ds.data_vars:
        exact = ds[v].values.astype("float64")
        got = whole.loc[whole["property_name"] == v, "property_value"].to_numpy()
        np.testing.assert_array_equal(got, exact[~np.isnan(exact)])

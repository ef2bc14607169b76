"""Property-based tests: canonical records, maps, and the round trip through the server.

Strategies here generate what users hand the library (tables with their own column names,
labels, units, text and metadata; maps with unsorted or transposed axes, masks, units,
scalar ``z``, curvilinear grids and extra dimensions). The laws:

* validation accepts every record that ``to_records`` or ``flatten_map`` produced from a
  well-formed input, and changes nothing in it;
* flattening a map and putting the records back on a map gives the map again (these
  strategies complement ``test_flatten_properties.py``: other layouts, other units);
* uploading and fetching again is the identity on values and positions, bit for bit.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import module_server, needs_units
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from atomscale_accessors import Client, RetryPolicy, fetch
from atomscale_accessors.maps import flatten_map, frame_to_map
from atomscale_accessors.records import to_records
from atomscale_accessors.schemas import RECORD_COLUMNS
from atomscale_accessors.validation import validate_records

if TYPE_CHECKING:
    from atomscale_accessors.server import LocalServer

LAWS = settings(max_examples=60, deadline=None)
ROUND_TRIPS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- value strategies -------------------------------------------------------------------------
# Every finite float: signed zeros, subnormals, the largest and smallest magnitudes.
VALUES = st.floats(allow_nan=False, allow_infinity=False)
COORDS = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
EXACT_INTS = st.integers(min_value=-(2**53), max_value=2**53)
# Any text but lone surrogates (not Unicode scalar values, so not text JSON can carry).
TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=24).filter(
    lambda s: s.strip() != ""
)
UNITS = st.sampled_from(["nm", "um", "1", "ohm/sq", "at.%", "eV", "a.u.", "Ω/□"]) | TEXT
COORD_UNITS = st.sampled_from(["mm", "um", "nm", "cm", "m"])
FRAMES = st.sampled_from(["sample_relative", "stage_absolute"])
JSON_SCALARS = (
    st.none()
    | st.booleans()
    | EXACT_INTS
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=("Cs",)), max_size=6), inner, max_size=3
        )
    ),
    max_leaves=8,
)
METADATA = st.dictionaries(
    st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8),
    JSON_VALUES,
    min_size=1,
    max_size=4,
)


def index_for(draw: st.DrawFn, n: int) -> pd.Index:
    """Row labels as users have them: default, text, shuffled integers, repeated, 2 levels."""
    kind = draw(st.sampled_from(["range", "text", "ints", "repeated", "multi"]))
    if kind == "range":
        return pd.RangeIndex(n)
    if kind == "text":
        return pd.Index([f"site-{i}" for i in range(n)], name="site")
    if kind == "ints":
        return pd.Index(draw(st.permutations(list(range(100, 100 + n)))), name="n")
    if kind == "repeated":
        return pd.Index([f"wafer-{i % 3}" for i in range(n)], name="wafer")
    return pd.MultiIndex.from_arrays(
        [[f"lot-{i % 2}" for i in range(n)], list(range(n))], names=["lot", "point"]
    )


@st.composite
def user_tables(draw: st.DrawFn) -> tuple[pd.DataFrame, dict[str, Any], list[str]]:
    """A user's table, the mapping options that describe it, and its value columns."""
    n = draw(st.integers(1, 20))
    positions = draw(st.lists(st.tuples(COORDS, COORDS), min_size=n, max_size=n, unique=True))
    columns: dict[str, Any] = {
        "pos x": [p[0] for p in positions],
        "pos y": [p[1] for p in positions],
    }
    options: dict[str, Any] = {
        "x": "pos x",
        "y": "pos y",
        "coord_units": draw(COORD_UNITS),
        "coord_ref_frame": draw(FRAMES),
    }
    if draw(st.booleans()):
        columns["height"] = draw(st.lists(COORDS, min_size=n, max_size=n))
        options["z"] = "height"
    n_props = draw(st.integers(1, 3))
    value_columns = [f"value {k}" for k in range(n_props)]
    for name in value_columns:
        if draw(st.booleans()):
            columns[name] = draw(st.lists(VALUES, min_size=n, max_size=n))
        else:
            columns[name] = np.array(draw(st.lists(EXACT_INTS, min_size=n, max_size=n)))
    if n_props == 1 and draw(st.booleans()):
        options["value"] = value_columns[0]
        options["property_name"] = draw(TEXT)
        options["property_unit"] = draw(UNITS)
    else:
        names = draw(st.lists(TEXT, min_size=n_props, max_size=n_props, unique=True))
        options["values"] = dict(zip(value_columns, names, strict=True))
        options["units"] = {name: draw(UNITS) for name in names}
    technique = draw(st.sampled_from(["none", "constant", "column"]))
    if technique == "constant":
        options["char_source_type"] = draw(TEXT)
    elif technique == "column":
        columns["technique"] = draw(st.lists(st.none() | TEXT, min_size=n, max_size=n))
        options["char_source_type"] = "technique"
    if draw(st.booleans()):
        columns["data"] = [str(u) for u in draw(st.lists(st.uuids(), min_size=n, max_size=n))]
        options["data_id"] = "data"
    if draw(st.booleans()):
        columns["meta"] = draw(st.lists(st.none() | METADATA, min_size=n, max_size=n))
        options["metadata"] = "meta"
    frame = pd.DataFrame(columns, index=index_for(draw, n))
    return frame, options, value_columns


# -- records ----------------------------------------------------------------------------------
@LAWS
@given(user_tables())
def test_validate_accepts_what_to_records_produced(table):
    df, options, value_columns = table
    before = df.copy(deep=True)
    records = to_records(df, **options)
    checked = validate_records(records.copy(deep=True))
    pd.testing.assert_frame_equal(checked, records)
    assert list(records.columns) == list(RECORD_COLUMNS)
    # One record per row and property, labelled by the row, with the value bit for bit.
    assert len(records) == len(df) * len(value_columns)
    assert list(records.index) == list(df.index) * len(value_columns)
    sent = np.concatenate([df[c].to_numpy(dtype="float64") for c in value_columns])
    np.testing.assert_array_equal(
        records["property_value"].to_numpy().view("int64"), sent.view("int64")
    )
    np.testing.assert_array_equal(
        records["coord_x"].to_numpy().view("int64"),
        np.tile(df["pos x"].to_numpy(dtype="float64"), len(value_columns)).view("int64"),
    )
    pd.testing.assert_frame_equal(df, before)
    # Validating twice changes nothing either.
    pd.testing.assert_frame_equal(validate_records(checked), records)


# -- maps -------------------------------------------------------------------------------------
def axis(n: int, order: str) -> st.SearchStrategy[np.ndarray]:
    values = st.lists(COORDS, min_size=n, max_size=n, unique=True).map(np.array)
    if order == "ascending":
        return values.map(np.sort)
    if order == "descending":
        return values.map(lambda v: np.sort(v)[::-1].copy())
    return values


@st.composite
def maps(draw: st.DrawFn) -> xr.Dataset:
    """A gridded map: axes in any order and direction, either dimension order, masks,
    integer or float values, any units, maybe a scalar z and a technique."""
    ny, nx = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    order = draw(st.sampled_from(["ascending", "descending", "shuffled"]))
    x, y = draw(axis(nx, order)), draw(axis(ny, order))
    dims = draw(st.sampled_from([("y", "x"), ("x", "y")]))
    shape = (ny, nx) if dims == ("y", "x") else (nx, ny)
    unit = draw(COORD_UNITS)
    data_vars = {}
    for k in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            values = draw(hnp.arrays("float64", shape, elements=VALUES))
            values[draw(hnp.arrays(bool, shape))] = np.nan
        else:
            values = draw(hnp.arrays("int64", shape, elements=EXACT_INTS))
        data_vars[f"prop_{k}"] = (dims, values, {"units": draw(UNITS)})
    coords: dict[str, Any] = {"x": ("x", x, {"units": unit}), "y": ("y", y, {"units": unit})}
    if draw(st.booleans()):
        coords["z"] = ((), draw(COORDS), {"units": unit})
    attrs = {"coord_ref_frame": draw(FRAMES)}
    if draw(st.booleans()):
        attrs["char_source_type"] = draw(TEXT)
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def with_values(ds: xr.Dataset) -> bool:
    return all(bool(ds[v].notnull().any()) for v in ds.data_vars)


def as_stored(ds: xr.Dataset) -> xr.Dataset:
    """What a map looks like once back from records: float64 values on sorted (y, x) axes,
    without the rows and columns where no property has a value."""
    ds = ds.transpose("y", "x").sortby(["y", "x"])
    ds = ds.assign({v: ds[v].astype("float64") for v in ds.data_vars})
    for dim in ("y", "x"):
        other = "x" if dim == "y" else "y"
        keep = np.zeros(ds.sizes[dim], dtype=bool)
        for v in ds.data_vars:
            keep |= ds[v].notnull().any(other).values
        ds = ds.isel({dim: keep})
    return ds


@LAWS
@given(maps())
def test_map_round_trip_through_records(ds):
    assume(with_values(ds))
    before = ds.copy(deep=True)
    records = flatten_map(ds)
    pd.testing.assert_frame_equal(validate_records(records.copy(deep=True)), records)
    back = frame_to_map(records, dims=("y", "x"))
    expected = as_stored(ds)
    xr.testing.assert_identical(back, expected)
    for v in expected.data_vars:
        np.testing.assert_array_equal(
            back[v].values.view("int64"), expected[v].values.view("int64")
        )
    xr.testing.assert_identical(ds, before)


@st.composite
def curvilinear_maps(draw: st.DrawFn) -> xr.Dataset:
    """2-D x and y coordinates (a rotated or sheared grid), with a mask."""
    ni, nj = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    i, j = np.meshgrid(np.arange(ni, dtype=float), np.arange(nj, dtype=float), indexing="ij")
    angle = draw(st.floats(0.0, math.pi / 2))
    pitch = draw(st.floats(0.5, 10.0))
    x = pitch * (np.cos(angle) * j - np.sin(angle) * i) + draw(COORDS)
    y = pitch * (np.sin(angle) * j + np.cos(angle) * i) + draw(COORDS)
    values = draw(hnp.arrays("float64", (ni, nj), elements=VALUES))
    values[draw(hnp.arrays(bool, (ni, nj)))] = np.nan
    return xr.Dataset(
        {"thickness": (("row", "col"), values, {"units": "nm"})},
        coords={
            "x": (("row", "col"), x, {"units": "mm"}),
            "y": (("row", "col"), y, {"units": "mm"}),
        },
    )


@LAWS
@given(curvilinear_maps())
def test_curvilinear_cells_become_their_records(ds):
    assume(with_values(ds))
    assume(
        len({(a, b) for a, b in zip(ds.x.values.ravel(), ds.y.values.ravel(), strict=True)})
        == ds.x.size
    )
    records = flatten_map(ds)
    validate_records(records)
    mask = ds.thickness.notnull().values
    cells = sorted(
        zip(ds.x.values[mask], ds.y.values[mask], ds.thickness.values[mask], strict=True)
    )
    got = sorted(
        zip(records["coord_x"], records["coord_y"], records["property_value"], strict=True)
    )
    assert got == cells
    assert records.index.names == ["row", "col"]
    # Back as points, the same cells come out.
    points = frame_to_map(records, dims="point").to_dataframe()
    assert sorted(zip(points["x"], points["y"], points["thickness"], strict=True)) == cells


@LAWS
@given(maps(), st.lists(COORDS, min_size=1, max_size=3, unique=True))
def test_extra_dimension_slices_carry_their_coordinate(ds, wavelengths):
    assume(with_values(ds))
    name = next(iter(ds.data_vars))
    stacked = xr.concat([ds[[name]]] * len(wavelengths), dim="wavelength").assign_coords(
        wavelength=wavelengths
    )
    records = flatten_map(stacked, extra_dims="metadata")
    validate_records(records, allow_duplicates=True)
    per_slice = int(ds[name].notnull().sum())
    assert len(records) == per_slice * len(wavelengths)
    seen = [m["wavelength"] for m in records["metadata"]]
    assert sorted(set(seen)) == sorted(wavelengths)
    for w in wavelengths:
        part = records[[s == w for s in seen]]
        np.testing.assert_array_equal(
            np.sort(part["property_value"].to_numpy()),
            np.sort(ds[name].values[ds[name].notnull().values].astype("float64")),
        )


@needs_units
@LAWS
@given(maps(), st.sampled_from([("um", 1e-3), ("cm", 10.0), ("m", 1000.0)]))
def test_coordinates_in_another_unit_are_converted(ds, conversion):
    assume(with_values(ds))
    unit, factor = conversion
    ds = ds.assign_coords(
        x=("x", ds.x.values, {"units": "mm"}), y=("y", ds.y.values, {"units": unit})
    )
    if "z" in ds.coords:
        ds = ds.drop_vars("z")
    records = flatten_map(ds)
    assert set(records["coord_units"]) == {"mm"}
    first = next(iter(ds.data_vars))
    part = records[records["property_name"] == first]
    label_y = part.index.get_level_values("y").to_numpy(dtype="float64")
    np.testing.assert_allclose(part["coord_y"].to_numpy(), label_y * factor, rtol=1e-12, atol=0)
    label_x = part.index.get_level_values("x").to_numpy(dtype="float64")
    np.testing.assert_array_equal(part["coord_x"].to_numpy(), label_x)


# -- upload then fetch --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    yield from module_server()


@pytest.fixture(scope="module")
def client(server) -> Client:
    return Client(
        api_key=server.api_key,
        endpoint=server.endpoint,
        retry=RetryPolicy(max_attempts=4, backoff=0.01, max_wait=0.5, settle=0.05),
    )


def bits(values: Any) -> np.ndarray:
    return np.asarray(values, dtype="float64").view("int64")


@ROUND_TRIPS
@given(user_tables())
def test_upload_then_fetch_is_the_identity_for_tables(server, client, table):
    df, options, _ = table
    sample_id = server.create_sample(f"prop-{uuid.uuid4()}")
    records = to_records(df, **options)
    created = df.atomscale.upload(
        sample_id, client=client, progress_bar=False, chunksize=7, **options
    )
    assert len(created) == len(records)
    assert list(created.index) == list(records.index)
    stored = fetch(sample_id, client=client)
    assert len(stored) == len(records) == server.annotation_count(sample_id)
    key = ["property_name", "coord_x", "coord_y"]
    want = records.astype({"property_name": object}).sort_values(key).reset_index(drop=True)
    got = stored.astype({"property_name": object}).sort_values(key).reset_index(drop=True)
    for column in ("property_value", "coord_x", "coord_y", "coord_z"):
        np.testing.assert_array_equal(bits(got[column]), bits(want[column]), err_msg=column)
    for column in (
        "property_name",
        "property_unit",
        "coord_units",
        "coord_ref_frame",
        "char_source_type",
        "data_id",
    ):
        mine = [None if pd.isna(v) else v for v in want[column]]
        theirs = [None if pd.isna(v) else v for v in got[column].astype(object)]
        assert theirs == mine, column
    mine = [m if isinstance(m, dict) else None for m in want["metadata"]]
    theirs = [m if isinstance(m, dict) else None for m in got["metadata"]]
    assert theirs == mine


@ROUND_TRIPS
@given(maps())
def test_upload_then_fetch_is_the_identity_for_maps(server, client, ds):
    assume(with_values(ds))
    sample_id = server.create_sample(f"prop-{uuid.uuid4()}")
    created = ds.atomscale.upload(sample_id, client=client, progress_bar=False, chunksize=9)
    assert len(created) == sum(int(ds[v].notnull().sum()) for v in ds.data_vars)
    back = fetch(sample_id, client=client).atomscale.to_xarray(dims=("y", "x"))
    expected = as_stored(ds).assign_attrs(physical_sample_id=sample_id)
    xr.testing.assert_identical(back, expected)
    for v in expected.data_vars:
        np.testing.assert_array_equal(bits(back[v].values), bits(expected[v].values))
    for role in ("x", "y"):
        np.testing.assert_array_equal(bits(back[role].values), bits(expected[role].values))

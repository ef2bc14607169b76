"""xarray maps to canonical records and back (no server involved).

Most tests run on three variants of the same map, as users hold them: a Dataset, a
DataArray, and a dask-chunked Dataset.
"""

from __future__ import annotations

import doctest
import logging

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import needs_dask, needs_plot, needs_units

import atomscale_accessors
from atomscale_accessors import datasets, maps, units, xarray_accessor
from atomscale_accessors.datasets import sheet_resistance_map, wafer_thickness_map, xps_line_scan
from atomscale_accessors.errors import AnnotationValidationError, MapStructureError
from atomscale_accessors.maps import flatten as maps_flatten
from atomscale_accessors.maps import (
    flatten_map,
    frame_to_map,
    gridding,
    iter_flatten_map,
    structure,
    validate_map,
)
from atomscale_accessors.maps import schema as maps_schema
from atomscale_accessors.schemas import RECORD_COLUMNS

UUID = "0b0e6b1c-3f4e-4a53-9d55-4c1f3f0f7a10"
DASK = pytest.param("dask", marks=needs_dask)
VARIANTS = ["dataset", "dataarray", DASK]
_ = atomscale_accessors  # registers the accessors


def as_variant(ds: xr.Dataset, variant: str, chunks: int = 2) -> xr.Dataset | xr.DataArray:
    """The map as a user of ``variant`` holds it."""
    if variant == "dataset":
        return ds
    if variant == "dask":
        return ds.chunk(dict.fromkeys(ds.dims, chunks))
    (name,) = [n for n in ds.data_vars if n not in ("x", "y", "z")]
    # A DataArray keeps what a Dataset holds in its attributes in its own attributes.
    return ds[name].assign_attrs({**ds.attrs, **ds[name].attrs})


def grid(
    order: tuple[str, str] = ("y", "x"), *, nan_at: tuple[int, int] | None = (0, 2)
) -> xr.Dataset:
    """A 3 x 4 thickness grid with distinct values and one NaN cell."""
    x = np.array([-7.5, 0.0, 7.5, 15.0])
    y = np.array([-5.0, 0.0, 5.0])
    values = 100.0 + np.arange(12.0).reshape(3, 4) / 8.0
    if nan_at is not None:
        values[nan_at] = np.nan
    da = xr.DataArray(values, dims=("y", "x"), attrs={"units": "nm"}).transpose(*order)
    return xr.Dataset(
        {"thickness": da},
        coords={"x": ("x", x, {"units": "mm"}), "y": ("y", y, {"units": "mm"})},
        attrs={"char_source_type": "ellipsometry"},
    )


def records_of(obj: xr.Dataset | xr.DataArray, **options) -> pd.DataFrame:
    return obj.atomscale.to_annotations(**options)


def as_cells(rec: pd.DataFrame) -> set[tuple]:
    return set(
        zip(
            rec["property_name"], rec["coord_x"], rec["coord_y"], rec["property_value"], strict=True
        )
    )


def structure_error(obj, **options) -> MapStructureError:
    with pytest.raises(MapStructureError) as info:
        records_of(obj, **options)
    return info.value


# -- maps of every shape ---------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("order", [("y", "x"), ("x", "y")])
def test_regular_grid_in_either_dim_order(variant, order, caplog):
    ds = grid(order)
    before = ds.copy(deep=True)
    caplog.set_level(logging.INFO, logger="atomscale_accessors")
    rec = records_of(as_variant(ds, variant))

    assert list(rec.columns) == list(RECORD_COLUMNS)
    assert len(rec) == 11
    # Independent oracle: every non-NaN cell, looked up by label.
    expected = {
        ("thickness", float(xv), float(yv), float(ds.thickness.sel(x=xv, y=yv)))
        for xv in ds.x.values
        for yv in ds.y.values
        if not np.isnan(ds.thickness.sel(x=xv, y=yv))
    }
    assert as_cells(rec) == expected
    assert rec.index.names == list(order)
    for (first, second), row in zip(rec.index, rec.itertuples(), strict=True):
        labels = dict(zip(order, (first, second), strict=True))
        assert (labels["x"], labels["y"]) == (row.coord_x, row.coord_y)
    assert (rec["property_unit"] == "nm").all()
    assert (rec["coord_units"] == "mm").all()
    assert (rec["coord_ref_frame"] == "sample_relative").all()
    assert (rec["char_source_type"] == "ellipsometry").all()
    assert rec["coord_z"].isna().all()
    assert rec["data_id"].isna().all() and rec["metadata"].isna().all()
    for column in ("property_value", "coord_x", "coord_y", "coord_z"):
        assert rec[column].dtype == np.float64
    # Text repeats one value over the map: categoricals, not a million string pointers.
    for column in ("property_name", "property_unit", "coord_units", "data_id"):
        assert isinstance(rec[column].dtype, pd.CategoricalDtype)
    assert rec["metadata"].dtype == object
    assert "skipped 1 NaN cells of 12" in caplog.text
    xr.testing.assert_identical(ds, before)
    assert ds.attrs == before.attrs and ds.thickness.attrs == {"units": "nm"}


def test_rows_follow_the_cells_in_row_major_order():
    rec = flatten_map(grid(nan_at=None))
    np.testing.assert_array_equal(rec["property_value"], 100.0 + np.arange(12.0) / 8.0)
    assert rec.index[1] == (-5.0, 0.0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_curvilinear_grid(variant):
    rows, cols = np.meshgrid(np.arange(3.0), np.arange(4.0), indexing="ij")
    angle = np.deg2rad(30.0)
    x2 = 10.0 * (cols * np.cos(angle) - rows * np.sin(angle))
    y2 = 10.0 * (cols * np.sin(angle) + rows * np.cos(angle))
    values = np.arange(12.0).reshape(3, 4) + 0.25
    values[1, 1] = np.nan
    ds = xr.Dataset(
        {"pl_intensity": (("row", "col"), values, {"units": "count"})},
        coords={
            "x": (("row", "col"), x2, {"units": "mm"}),
            "y": (("row", "col"), y2, {"units": "mm"}),
        },
    )
    rec = records_of(as_variant(ds, variant))
    assert len(rec) == 11
    assert rec.index.names == ["row", "col"]
    for (r, c), row in zip(rec.index, rec.itertuples(), strict=True):
        assert (row.coord_x, row.coord_y, row.property_value) == (x2[r, c], y2[r, c], values[r, c])


@pytest.mark.parametrize("variant", VARIANTS)
def test_scattered_points_on_the_49_site_pattern(variant):
    ds = sheet_resistance_map()
    rec = records_of(as_variant(ds, variant))
    assert len(rec) == 49
    assert rec.index.name == "point" and not isinstance(rec.index, pd.MultiIndex)
    assert rec.index.tolist() == list(range(49))
    np.testing.assert_array_equal(rec["coord_x"], ds.x.values)
    np.testing.assert_array_equal(rec["coord_y"], ds.y.values)
    np.testing.assert_array_equal(rec["property_value"], ds.sheet_resistance.values)
    assert (rec["property_unit"] == "ohm/sq").all()
    assert (rec["char_source_type"] == "four_point_probe").all()


def test_line_scan_of_a_dimensionless_ratio():
    rec = records_of(xps_line_scan(n=7))
    assert len(rec) == 7 and (rec["property_unit"] == "1").all()
    assert rec["property_name"].iloc[0] == "sr_ti_ratio"


def test_example_maps_are_deterministic_and_realistic():
    a, b = wafer_thickness_map(seed=3), wafer_thickness_map(seed=3)
    xr.testing.assert_identical(a, b)
    assert not wafer_thickness_map(seed=4).thickness.equals(a.thickness)
    centre = float(a.thickness.sel(x=0.0, y=0.0))
    edge = float(a.thickness.sel(x=145.0, y=0.0))
    assert centre > edge  # centre-thick by default
    edge_thick = wafer_thickness_map(profile="edge")
    assert float(edge_thick.thickness.sel(x=0.0, y=0.0)) < float(
        edge_thick.thickness.sel(x=145.0, y=0.0)
    )
    corner = a.thickness.sel(x=150.0, y=150.0)
    assert np.isnan(corner)  # outside the wafer
    r = np.hypot(sheet_resistance_map().x, sheet_resistance_map().y)
    assert sorted(np.unique(np.round(r.values, 3)).tolist()) == [0.0, 49.0, 98.0, 147.0]


# -- z ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_scalar_z_applies_to_every_record(variant):
    ds = grid().assign_coords(z=((), 0.5, {"units": "mm"}))
    rec = records_of(as_variant(ds, variant))
    assert (rec["coord_z"] == 0.5).all()


def test_z_along_the_points():
    ds = sheet_resistance_map()
    ds = ds.assign_coords(z=("point", np.linspace(0.0, 1.0, 49), {"units": "mm"}))
    rec = records_of(ds)
    np.testing.assert_array_equal(rec["coord_z"], ds.z.values)


def test_volume_with_a_z_dimension():
    values = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    ds = xr.Dataset(
        {"density": (("z", "y", "x"), values, {"units": "g/cm**3"})},
        coords={
            "x": ("x", np.arange(4.0), {"units": "um"}),
            "y": ("y", np.arange(3.0), {"units": "um"}),
            "z": ("z", [0.0, 0.25], {"units": "um"}),
        },
    )
    rec = records_of(ds)
    assert len(rec) == 24 and rec.index.names == ["z", "y", "x"]
    assert rec.loc[(0.25, 2.0, 3.0), "property_value"] == 23.0
    assert rec.loc[(0.25, 2.0, 3.0), "coord_z"] == 0.25


# -- finding the coordinates -----------------------------------------------------------------
def test_cf_axis_attribute_finds_the_coordinates():
    ds = grid().rename({"x": "lateral", "y": "vertical"})
    ds["lateral"].attrs["axis"] = "X"
    ds["vertical"].attrs["axis"] = "Y"
    rec = records_of(ds)
    assert as_cells(rec) == as_cells(records_of(grid()))


def test_common_names_are_found():
    ds = grid().rename({"x": "x_mm", "y": "y_mm"})
    assert as_cells(records_of(ds)) == as_cells(records_of(grid()))


def test_explicit_names_win_over_guesses():
    ds = grid().assign_coords(
        u=("x", [0.0, 1.0, 2.0, 3.0], {"units": "mm"}), v=("y", [0.0, 1.0, 2.0], {"units": "mm"})
    )
    rec = records_of(ds, x="u", y="v")
    assert sorted(set(rec["coord_x"])) == [0.0, 1.0, 2.0, 3.0]
    assert sorted(set(rec["coord_y"])) == [0.0, 1.0, 2.0]


def test_several_candidates_are_an_error_not_a_guess():
    ds = grid().assign_coords(x_mm=("x", [0.0, 1.0, 2.0, 3.0], {"units": "mm"}))
    err = structure_error(ds)
    assert "several candidates for the x coordinate" in str(err)
    assert "'x', 'x_mm'" in str(err)


def test_missing_coordinate_names_what_was_looked_for():
    ds = grid().drop_vars("x")
    err = structure_error(ds)
    assert "no x coordinate found" in str(err)
    assert "assign_coords(x=" in str(err)
    assert err.failure_cases["check"].tolist() == ["coordinate_present"]
    err = structure_error(grid(), x="nope")
    assert "x='nope'" in str(err)


def test_coordinates_kept_as_data_variables_are_used_as_coordinates():
    ds = sheet_resistance_map().reset_coords(["x", "y"])
    assert "x" in ds.data_vars
    rec = records_of(ds)
    assert set(rec["property_name"]) == {"sheet_resistance"}
    np.testing.assert_array_equal(rec["coord_x"], ds.x.values)
    assert "x" in ds.data_vars  # the caller's Dataset is untouched


# -- which variables, named how --------------------------------------------------------------
def test_every_variable_on_the_spatial_dims_is_a_property_property_by_property():
    ds = grid(nan_at=None)
    ds["roughness"] = ds.thickness / 100.0
    ds["roughness"].attrs = {"units": "nm"}
    ds["profile"] = ("x", np.arange(4.0), {"units": "nm"})  # not a map: left out
    rec = records_of(ds)
    assert rec["property_name"].tolist() == ["thickness"] * 12 + ["roughness"] * 12
    assert rec.index[:12].equals(rec.index[12:])
    only = records_of(ds, variables=["roughness"])
    assert set(only["property_name"]) == {"roughness"}


def test_names_from_arguments_and_attributes():
    ds = grid()
    ds["thickness"].attrs["property_name"] = "film_thickness"
    assert set(records_of(ds)["property_name"]) == {"film_thickness"}
    assert set(records_of(ds, property_name="t")["property_name"]) == {"t"}
    assert set(records_of(ds, property_name={"thickness": "t2"})["property_name"]) == {"t2"}


def test_one_name_for_several_variables_is_an_error():
    ds = grid()
    ds["other"] = ds.thickness
    err = structure_error(ds, property_name="same")
    assert "same name" in str(err)
    ds["other"].attrs["property_name"] = "thickness"
    err = structure_error(ds)
    assert "both give the property 'thickness'" in str(err)


def test_unknown_variable_is_named():
    err = structure_error(grid(), variables=["thickness", "nope"])
    assert "no data variable 'nope'" in str(err)


def test_no_variable_on_the_spatial_dims():
    ds = grid().drop_vars("thickness").assign(profile=("x", np.arange(4.0), {"units": "nm"}))
    err = structure_error(ds)
    assert "no data variable has the spatial dimensions" in str(err)


def test_dataarray_needs_a_name():
    da = grid().thickness.rename(None)
    with pytest.raises(MapStructureError, match="no name"):
        da.atomscale.to_annotations()
    rec = da.atomscale.to_annotations(property_name="t")
    assert set(rec["property_name"]) == {"t"}


# -- text fields -----------------------------------------------------------------------------
def test_text_fields_come_from_arguments_then_variable_then_dataset():
    ds = grid()
    ds.attrs.update(data_id=UUID, coord_ref_frame="stage_absolute")
    rec = records_of(ds)
    assert set(rec["data_id"]) == {UUID}
    assert set(rec["coord_ref_frame"]) == {"stage_absolute"}
    ds["thickness"].attrs["char_source_type"] = "reflectometry"
    assert set(records_of(ds)["char_source_type"]) == {"reflectometry"}
    rec = records_of(ds, char_source_type="xrr", coord_ref_frame="sample_relative")
    assert set(rec["char_source_type"]) == {"xrr"}
    assert set(rec["coord_ref_frame"]) == {"sample_relative"}


def test_metadata_for_every_record():
    rec = records_of(grid(), metadata={"run": "A7"})
    assert all(m == {"run": "A7"} for m in rec["metadata"])


# -- units -----------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_units_from_arguments(variant):
    ds = grid()
    ds["thickness"].attrs = {}
    ds["x"].attrs = {}
    ds["y"].attrs = {}
    obj = as_variant(ds, variant)
    err = structure_error(obj)
    assert set(err.failure_cases["column"]) == {"thickness", "x", "y"}
    assert set(err.failure_cases["check"]) == {"units_given"}
    assert 'use "1" for a dimensionless quantity' in str(err)
    rec = records_of(obj, property_unit="um", coord_units="cm")
    assert set(rec["property_unit"]) == {"um"} and set(rec["coord_units"]) == {"cm"}
    rec = records_of(obj, property_unit={"thickness": "nm"}, coord_units="mm")
    assert set(rec["property_unit"]) == {"nm"}


def test_unit_attribute_that_is_not_text_is_an_error():
    ds = grid()
    ds["thickness"].attrs["units"] = ""
    err = structure_error(ds)
    assert "which is not a unit" in str(err)


@needs_units
@pytest.mark.parametrize("variant", VARIANTS)
def test_coordinates_in_different_units_are_converted_with_pint(variant):
    ds = grid()
    ds["y"] = ds.y.assign_attrs(units="um") * 1000.0
    ds["y"].attrs["units"] = "um"
    rec = records_of(as_variant(ds, variant))
    assert set(rec["coord_units"]) == {"mm"}
    assert as_cells(rec) == as_cells(records_of(grid()))


@needs_units
def test_coord_units_argument_converts_attributes():
    rec = records_of(grid(), coord_units="um")
    assert set(rec["coord_units"]) == {"um"}
    assert sorted(set(rec["coord_x"])) == [-7500.0, 0.0, 7500.0, 15000.0]


def test_different_units_without_pint_are_an_error(monkeypatch):
    monkeypatch.setattr(units, "unit_registry", lambda: None)
    ds = grid()
    ds["y"].attrs["units"] = "um"
    err = structure_error(ds)
    assert "pint is not installed" in str(err)
    assert "x in 'mm'" in str(err) and "y in 'um'" in str(err)
    assert err.failure_cases["check"].tolist() == ["same_units"]
    # Equal units need no pint.
    assert len(records_of(grid())) == 11


@needs_units
def test_unconvertible_units_are_an_error():
    ds = grid()
    ds["y"].attrs["units"] = "s"
    err = structure_error(ds)
    assert "cannot convert y ('y') from 's' to 'mm'" in str(err)


# -- values ----------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", ["int16", "int64", "uint32", "float32", "float16"])
def test_integer_and_narrow_float_values_convert_losslessly(variant, dtype):
    ds = grid(nan_at=None)
    raw = (np.arange(12) * 3).reshape(3, 4).astype(dtype)
    ds["thickness"] = (("y", "x"), raw, {"units": "nm"})
    rec = records_of(as_variant(ds, variant))
    assert rec["property_value"].dtype == np.float64
    np.testing.assert_array_equal(rec["property_value"], raw.astype("float64").ravel())


def test_float32_values_keep_their_exact_value():
    ds = grid(nan_at=None)
    raw = np.full((3, 4), 0.1, dtype="float32")
    ds["thickness"] = (("y", "x"), raw, {"units": "nm"})
    rec = records_of(ds)
    assert rec["property_value"].iloc[0] == float(np.float32(0.1)) != 0.1


@pytest.mark.parametrize("variant", ["dataset", DASK])
def test_integers_beyond_2_53_are_an_error(variant):
    ds = grid(nan_at=None)
    raw = np.zeros((3, 4), dtype="int64")
    raw[2, 1] = 2**53 + 1
    ds["thickness"] = (("y", "x"), raw, {"units": "1"})
    with pytest.raises(AnnotationValidationError) as info:
        records_of(as_variant(ds, variant))
    assert "beyond 2**53" in str(info.value)
    assert info.value.failure_cases["index"].tolist() == [(5.0, 0.0)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_cell_nan_is_nothing_to_upload(variant):
    ds = grid()
    ds["thickness"] = ds.thickness * np.nan
    ds["thickness"].attrs["units"] = "nm"
    with pytest.raises(MapStructureError, match="every cell of variable 'thickness' is NaN"):
        records_of(as_variant(ds, variant))


@pytest.mark.parametrize(
    ("values", "what"),
    [
        (np.array([["a"] * 4] * 3), "<U1"),
        (np.ones((3, 4), dtype=bool), "bool"),
        (np.ones((3, 4), dtype=complex), "complex128"),
        (np.array([[{"a": 1}] * 4] * 3, dtype=object), "object"),
    ],
)
def test_non_numeric_variables_are_an_error(values, what):
    ds = grid().assign(thickness=(("y", "x"), values, {"units": "nm"}))
    err = structure_error(ds)
    assert f"variable 'thickness' holds {what} values, not real numbers" in str(err)
    assert err.failure_cases["check"].tolist() == ["real_number"]


def test_non_numeric_coordinate_is_an_error():
    ds = grid().assign_coords(x=("x", ["a", "b", "c", "d"], {"units": "mm"}))
    err = structure_error(ds)
    assert "coordinate 'x' holds" in str(err)


@pytest.mark.parametrize("variant", VARIANTS)
def test_non_finite_coordinate_where_there_is_a_value(variant):
    ds = grid(nan_at=(0, 2))
    x = ds.x.values.copy()
    x[2] = np.inf
    bad = ds.assign_coords(x=("x", x, {"units": "mm"}))
    with pytest.raises(MapStructureError) as info:
        records_of(as_variant(bad, variant))
    cases = info.value.failure_cases
    assert set(cases["column"]) == {"x"} and set(cases["check"]) == {"finite_coordinate"}
    assert len(cases) == 2  # rows 1 and 2 at that x have values; row 0 is NaN there
    # A NaN position is fine where the value is NaN too.
    x[2] = np.nan
    thickness = ds.thickness.values.copy()
    thickness[:, 2] = np.nan
    fine = ds.assign_coords(x=("x", x, {"units": "mm"})).assign(
        thickness=(("y", "x"), thickness, {"units": "nm"})
    )
    assert len(records_of(as_variant(fine, variant))) == 9


def test_duplicate_positions_on_a_grid_axis():
    ds = grid().assign_coords(x=("x", [0.0, 1.0, 0.0, 2.0], {"units": "mm"}))
    err = structure_error(ds)
    assert "repeats the value 0.0" in str(err) and "[0, 2]" in str(err)


@pytest.mark.parametrize("variant", ["dataset", "dataarray"])
def test_duplicate_positions_of_scattered_points(variant):
    ds = sheet_resistance_map()
    x, y = ds.x.values.copy(), ds.y.values.copy()
    x[10], y[10] = x[3], y[3]
    ds = ds.assign_coords(x=("point", x, {"units": "mm"}), y=("point", y, {"units": "mm"}))
    err = structure_error(as_variant(ds, variant))
    assert "2 cells share a position" in str(err) and "[3, 10]" in str(err)


# -- extra dimensions ------------------------------------------------------------------------
def spectral_map() -> xr.Dataset:
    ds = grid(nan_at=None)
    cube = np.stack([ds.thickness.values, ds.thickness.values + 1.0])
    return ds.assign(thickness=(("wavelength", "y", "x"), cube, {"units": "nm"})).assign_coords(
        wavelength=("wavelength", [532.0, 633.0], {"units": "nm"})
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_extra_dimension_is_an_error_naming_it(variant):
    err = structure_error(as_variant(spectral_map(), variant))
    assert "dimension 'wavelength' (size 2)" in str(err)
    assert ".sel(wavelength=...)" in str(err) and "extra_dims='metadata'" in str(err)
    rec = records_of(as_variant(spectral_map(), variant).sel(wavelength=633.0))
    assert len(rec) == 12


@pytest.mark.parametrize("variant", VARIANTS)
def test_extra_dimension_into_metadata(variant):
    rec = records_of(
        as_variant(spectral_map(), variant), extra_dims="metadata", metadata={"run": 7}
    )
    assert len(rec) == 24
    for meta, value in zip(rec["metadata"], rec["property_value"], strict=True):
        assert meta in ({"run": 7, "wavelength": 532.0}, {"run": 7, "wavelength": 633.0})
        assert (value >= 101.0) == (meta["wavelength"] == 633.0) or value >= 101.0
    first = rec[[m["wavelength"] == 532.0 for m in rec["metadata"]]]
    np.testing.assert_array_equal(
        first["property_value"], spectral_map().thickness[0].values.ravel()
    )
    assert type(rec["metadata"].iloc[0]["wavelength"]) is float


def test_datetime_extra_dimension_becomes_iso_text():
    ds = grid(nan_at=None).expand_dims(time=pd.to_datetime(["2026-01-02T03:04:05"]))
    rec = records_of(ds, extra_dims="metadata")
    assert rec["metadata"].iloc[0] == {"time": "2026-01-02T03:04:05"}


def test_extra_dimension_records_validate_with_duplicates_allowed():
    rec = spectral_map().atomscale.validate(extra_dims="metadata")
    assert len(rec) == 24
    with pytest.raises(AnnotationValidationError):
        spectral_map().atomscale.validate(extra_dims="metadata", allow_duplicates=False)


# -- validation ------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_validate_checks_values_after_flattening(variant):
    ds = grid()
    bad = ds.thickness.values.copy()
    bad[2, 3] = np.inf
    ds = ds.assign(thickness=(("y", "x"), bad, {"units": "nm"}))
    with pytest.raises(AnnotationValidationError) as info:
        as_variant(ds, variant).atomscale.validate()
    cases = info.value.failure_cases
    assert cases["index"].tolist() == [(5.0, 15.0)]
    assert cases["check"].tolist() == ["finite"]
    ok = as_variant(grid(), variant).atomscale.validate()
    assert len(ok) == 11


def test_validate_rejects_a_bad_reference_frame_from_attributes():
    ds = grid()
    ds.attrs["coord_ref_frame"] = "wafer"
    with pytest.raises(AnnotationValidationError) as info:
        ds.atomscale.validate()
    assert set(info.value.failure_cases["column"]) == {"coord_ref_frame"}


def test_structure_is_checked_with_a_pandera_schema():
    import pandera.xarray as pax

    schema, unit_schemas = maps.map_structure_schema(
        {"thickness": True}, {"x": True, "y": False}, ("y", "x")
    )
    assert isinstance(schema, pax.DatasetSchema)
    assert set(unit_schemas) == {"x"}
    schema.validate(grid())


# -- dask: block by block --------------------------------------------------------------------
def counting_map(calls: list) -> xr.Dataset:
    """A dask map of 4 x 4 blocks that records each block it computes."""
    import dask.array as da

    def compute_block(block):
        if block.size:  # dask also calls it once on an empty array to learn the output type
            calls.append(block.shape)
        return block + 100.0

    n = 16
    base = da.arange(n * n, dtype="float64", chunks=4).reshape(n, n).rechunk(4)
    values = base.map_blocks(compute_block, dtype="float64")
    axis = np.arange(n, dtype="float64")
    return xr.Dataset(
        {"thickness": (("y", "x"), values, {"units": "nm"})},
        coords={"x": ("x", axis, {"units": "mm"}), "y": ("y", axis, {"units": "mm"})},
    )


@needs_dask
def test_dask_map_is_flattened_one_block_at_a_time():
    calls: list = []
    ds = counting_map(calls)
    blocks = iter_flatten_map(ds)
    assert calls == []  # checking the structure reads no value
    first = next(blocks)
    assert len(calls) == 1 and calls[0] == (4, 4)
    assert len(first) == 16
    rest = list(blocks)
    assert len(calls) == 16 and all(shape == (4, 4) for shape in calls)
    streamed = pd.concat([first, *rest]).sort_index()
    whole = flatten_map(ds.compute())
    pd.testing.assert_frame_equal(streamed, whole.sort_index())


@needs_dask
def test_dask_blocks_are_computed_by_the_scheduler_dask_is_configured_with():
    import dask
    import dask.threaded

    used: list[int] = []

    def scheduler(graph, keys, **kwargs):
        used.append(1)
        return dask.threaded.get(graph, keys, **kwargs)

    ds = counting_map([])
    with dask.config.set(scheduler=scheduler):
        blocks = list(iter_flatten_map(ds))
    assert len(used) == 16  # one compute per block, each by the configured scheduler
    assert sum(map(len, blocks)) == 256


def test_block_rows_splits_blocks():
    ds = wafer_thickness_map(n=11)
    sizes = [len(b) for b in iter_flatten_map(ds, block_rows=20)]
    assert sizes == [20, 20, 20, 20, 1]
    with pytest.raises(ValueError, match="block_rows"):
        iter_flatten_map(ds, block_rows=0)


@needs_dask
def test_structure_errors_surface_when_streaming_starts():
    ds = grid().chunk(2)
    ds["thickness"].attrs = {}
    with pytest.raises(MapStructureError):
        iter_flatten_map(ds)  # no next() needed


# -- back to a map ---------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_grid_round_trip(variant):
    ds = wafer_thickness_map(n=15)
    back = frame_to_map(records_of(as_variant(ds, variant)))
    xr.testing.assert_identical(back, ds)


@pytest.mark.parametrize("variant", VARIANTS)
def test_scattered_round_trip(variant):
    ds = sheet_resistance_map()
    back = frame_to_map(records_of(as_variant(ds, variant)))
    xr.testing.assert_identical(back, ds)


def test_round_trip_with_several_properties_and_z():
    ds = grid(nan_at=None).assign_coords(z=((), 0.5, {"units": "mm"}))
    ds["roughness"] = (("y", "x"), np.arange(12.0).reshape(3, 4), {"units": "nm"})
    ds.attrs["coord_ref_frame"] = "sample_relative"
    back = frame_to_map(flatten_map(ds))
    xr.testing.assert_identical(back, ds)


def test_frame_to_map_from_an_annotation_frame():
    rec = flatten_map(grid())
    frame = rec.reset_index(drop=True).assign(
        annotation_id=[UUID] * len(rec),
        physical_sample_id=UUID,
        last_updated=pd.Timestamp("2026-01-01", tz="UTC"),
        version="1",
    )
    for column in ("property_name", "property_unit", "coord_units", "coord_ref_frame"):
        frame[column] = frame[column].astype(pd.Series(["a"]).dtype)  # str on pandas 3
    back = frame_to_map(frame)
    assert back.attrs["physical_sample_id"] == UUID
    xr.testing.assert_equal(back, grid())
    assert back.thickness.attrs == {"units": "nm"}


def test_sparse_points_stay_points_and_dense_points_make_a_grid():
    assert "point" in frame_to_map(flatten_map(sheet_resistance_map())).dims
    dense = frame_to_map(flatten_map(grid()))
    assert dense.thickness.dims == ("y", "x")
    forced = frame_to_map(flatten_map(grid()), dims="site")
    assert forced.thickness.dims == ("site",) and forced.sizes["site"] == 11
    named = frame_to_map(flatten_map(sheet_resistance_map()), dims=("row", "col"))
    assert named.sheet_resistance.dims == ("row", "col")
    assert int(named.sheet_resistance.notnull().sum()) == 49


def test_frame_to_map_volume():
    values = np.arange(8.0).reshape(2, 2, 2)
    ds = xr.Dataset(
        {"density": (("z", "y", "x"), values, {"units": "1"})},
        coords={k: (k, [0.0, 1.0], {"units": "um"}) for k in ("z", "y", "x")},
        attrs={"coord_ref_frame": "sample_relative"},
    )
    xr.testing.assert_identical(frame_to_map(flatten_map(ds)), ds)


def test_per_property_attributes_when_not_shared():
    ds = grid(nan_at=None)
    ds["roughness"] = (("y", "x"), np.ones((3, 4)), {"units": "nm", "char_source_type": "afm"})
    back = frame_to_map(flatten_map(ds))
    assert "char_source_type" not in back.attrs
    assert back.thickness.attrs["char_source_type"] == "ellipsometry"
    assert back.roughness.attrs["char_source_type"] == "afm"


def test_several_values_at_one_position():
    rec = flatten_map(spectral_map(), extra_dims="metadata")
    auto = frame_to_map(rec)
    assert auto.thickness.dims == ("point",) and auto.sizes["point"] == 24
    with pytest.raises(MapStructureError, match="several values at one position"):
        frame_to_map(rec, dims=("y", "x"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"coord_units": ["mm", "um"]}, "mixes coordinate units"),
        (
            {"coord_ref_frame": ["sample_relative", "stage_absolute"]},
            "mixes coordinate reference frames",
        ),
        ({"property_unit": ["nm", "um"]}, "comes in several units"),
        ({"coord_x": [1.0, np.nan]}, "no x or y coordinate"),
    ],
)
def test_frame_to_map_refuses_what_does_not_fit_one_map(change, message):
    frame = pd.DataFrame(
        {
            "property_name": ["t", "t"],
            "property_value": [1.0, 2.0],
            "property_unit": ["nm", "nm"],
            "coord_x": [0.0, 1.0],
            "coord_y": [0.0, 0.0],
            "coord_units": ["mm", "mm"],
            "coord_ref_frame": ["sample_relative"] * 2,
        }
    ).assign(**change)
    with pytest.raises(MapStructureError, match=message):
        frame_to_map(frame)


def test_frame_to_map_edge_cases():
    empty = flatten_map(grid()).iloc[:0]
    assert frame_to_map(empty).data_vars == {}
    with pytest.raises(MapStructureError, match="lacks the columns"):
        frame_to_map(pd.DataFrame({"property_value": [1.0]}))
    with pytest.raises(ValueError, match="dims must be"):
        frame_to_map(flatten_map(grid()), dims=("a", "b", "c", "d"))


def test_frame_is_not_modified():
    rec = flatten_map(grid())
    before = rec.copy()
    frame_to_map(rec)
    pd.testing.assert_frame_equal(rec, before)


# -- docs ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "module",
    [
        structure,
        maps_schema,
        pytest.param(maps_flatten, marks=needs_dask),
        gridding,
        datasets,
        pytest.param(xarray_accessor, marks=needs_plot),
    ],
)
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("dims", [("x", "y"), ("y", "z", "x"), "x"])
def test_frame_to_map_refuses_dims_that_clash_with_coordinate_names(dims):
    with pytest.raises(ValueError, match=r"dims=|point dimension"):
        frame_to_map(flatten_map(grid()), dims=dims)


def test_descending_coordinates_give_the_index_from_arrays_gives():
    # Rasters often run y from top to bottom; the index must still know it is unsorted.
    ds = xr.Dataset(
        {"thickness": (("y", "x"), np.arange(12.0).reshape(3, 4), {"units": "nm"})},
        coords={
            "y": ("y", [2.0, 1.0, 0.0], {"units": "mm"}),
            "x": ("x", [0.0, 1.0, 2.0, 3.0], {"units": "mm"}),
        },
    )
    index = flatten_map(ds).index
    rebuilt = pd.MultiIndex.from_arrays(
        [index.get_level_values(0), index.get_level_values(1)], names=index.names
    )
    assert index.equals(rebuilt)
    assert [level.tolist() for level in index.levels] == [[0.0, 1.0, 2.0], [0.0, 1.0, 2.0, 3.0]]
    assert not index.is_monotonic_increasing
    records = flatten_map(ds).sort_index()
    assert len(records.loc[0.0:1.0]) == 8


def test_technique_given_as_nan_is_unset_and_as_an_array_is_refused():
    ds = xr.Dataset(
        {"thickness": (("y", "x"), np.ones((2, 2)), {"units": "nm"})},
        coords={"y": ("y", [0.0, 1.0], {"units": "mm"}), "x": ("x", [0.0, 1.0], {"units": "mm"})},
    )
    ds.attrs["char_source_type"] = np.nan
    assert flatten_map(ds)["char_source_type"].isna().all()
    ds.attrs["char_source_type"] = np.array([1, 2])
    with pytest.raises(AnnotationValidationError, match="char_source_type: text"):
        validate_map(ds)

"""Units: data held as pint quantities, one spelling of coordinate units, and coordinates
found by their CF standard_name."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import atomscale_accessors
from atomscale_accessors import units
from atomscale_accessors.datasets import wafer_thickness_map
from atomscale_accessors.errors import AnnotationValidationError, MapStructureError
from atomscale_accessors.maps import find_coordinates, flatten_map

pint = pytest.importorskip("pint")
pint_xarray = pytest.importorskip("pint_xarray")
UREG = pint.get_application_registry()


def plain_map() -> xr.Dataset:
    return wafer_thickness_map(n=7)


def records(obj, **options) -> pd.DataFrame:
    return obj.atomscale.to_annotations(**options).reset_index(drop=True)


# -- quantities -----------------------------------------------------------------------------
def test_a_quantified_dataset_gives_the_records_of_the_plain_one():
    ds = plain_map()
    quantified = ds.pint.quantify()
    assert isinstance(quantified["thickness"].data, UREG.Quantity)
    got = records(quantified)
    assert isinstance(quantified["thickness"].data, UREG.Quantity)  # left alone
    assert "units" not in quantified["thickness"].attrs
    pd.testing.assert_frame_equal(got, records(ds))
    assert set(got["property_unit"]) == {"nm"} and set(got["coord_units"]) == {"mm"}


def test_a_dataarray_holding_a_quantity_takes_its_unit():
    da = xr.DataArray(
        UREG.Quantity(np.array([[1.0, 2.0], [3.0, 4.0]]), "micrometer"),
        dims=("y", "x"),
        coords={"x": ("x", [0.0, 5.0], {"units": "mm"}), "y": ("y", [0.0, 5.0], {"units": "mm"})},
        name="thickness",
    )
    got = records(da)
    assert got["property_value"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert set(got["property_unit"]) == {"um"}


def test_quantities_in_other_units_are_converted_like_attributes():
    ds = plain_map()
    in_um = ds.assign_coords(x=(ds.x * 1000.0).assign_attrs(units="micrometer")).pint.quantify()
    got = records(in_um, coord_units="mm")
    np.testing.assert_allclose(got["coord_x"], records(ds)["coord_x"])


def test_magnitudes_without_pint_xarray():
    # A quantity given as data, taken apart without the pint accessor.
    ds = xr.Dataset(
        {"t": ("p", UREG.Quantity(np.arange(3.0), "nanometer"), {"long_name": "thickness"})},
        coords={"xx": ("p", UREG.Quantity(np.arange(3.0), "millimeter"))},
    )
    plain = units.magnitudes(ds, ["t", "xx"])
    assert type(plain["t"].data) is np.ndarray and type(plain["xx"].data) is np.ndarray
    assert plain["t"].attrs == {"long_name": "thickness", "units": "nm"}
    assert plain["xx"].attrs == {"units": "mm"} and "xx" in plain.coords
    assert isinstance(ds["t"].data, UREG.Quantity)  # the caller's map is left alone


def test_a_dask_backed_quantity_stays_lazy():
    dask = pytest.importorskip("dask")
    ds = plain_map().chunk({"y": 3}).pint.quantify()
    plain, conflicts = units.split_quantities(ds)
    assert conflicts == [] and dask.is_dask_collection(plain["thickness"].data)
    assert len(records(ds)) == len(records(plain_map()))


def test_a_quantity_and_a_units_attribute_that_disagree_are_refused():
    ds = plain_map()
    ds["thickness"] = ds["thickness"].copy(data=UREG.Quantity(ds["thickness"].values, "um"))
    ds["thickness"].attrs["units"] = "nm"
    with pytest.raises(MapStructureError) as info:
        records(ds)
    assert "'thickness' holds a quantity in 'um' but its units attribute says 'nm'" in str(
        info.value
    )


# -- one spelling of coordinate units ------------------------------------------------------
@pytest.mark.parametrize(
    ("typed", "spelled"),
    [
        ("millimeter", "mm"),
        ("millimetre", "mm"),
        ("mm", "mm"),
        ("meter", "m"),
        ("um", "um"),
        ("\u00b5m", "um"),  # the micro sign
        ("\u03bcm", "um"),  # the Greek letter mu
        ("micrometer", "um"),
        ("micron", "micron"),  # pint writes it µ, which is not plain text; u is not a micron
    ],
)
def test_coordinate_units_have_one_spelling(typed, spelled):
    assert units.coordinate_unit(typed) == spelled


def test_unknown_units_and_non_text_are_kept_as_given():
    assert units.coordinate_unit("wafer steps") == "wafer steps"
    assert units.coordinate_unit(" ") == " "
    assert units.coordinate_unit(3) == 3


def test_without_pint_units_are_kept_as_typed(monkeypatch):
    monkeypatch.setattr(units, "unit_registry", lambda: None)
    assert units.coordinate_unit("millimeter") == "millimeter"
    frame = pd.DataFrame({"x": [1.0], "y": [2.0], "thk": [3.0]})
    got = frame.atomscale.to_annotations(
        value="thk", property_name="t", property_unit="nm", coord_units="millimeter"
    )
    assert got["coord_units"].tolist() == ["millimeter"]


def test_a_map_with_two_spellings_of_one_unit_needs_no_conversion():
    ds = plain_map()
    ds["x"].attrs["units"] = "millimeter"
    got = records(ds)
    assert set(got["coord_units"]) == {"mm"}
    pd.testing.assert_frame_equal(got, records(plain_map()))


def test_a_table_with_two_spellings_of_one_unit_is_one_unit():
    frame = pd.DataFrame(
        {
            "x": [1.0, 2.0],
            "y": [0.0, 0.0],
            "thk": [3.0, 4.0],
            "unit": ["millimeter", "mm"],
        }
    )
    got = frame.atomscale.to_annotations(
        value="thk", property_name="t", property_unit="nm", coord_units="unit"
    )
    assert got["coord_units"].tolist() == ["mm", "mm"]


def test_two_spellings_are_one_position_on_the_server(client, sample_id):
    frame = pd.DataFrame({"x": [1.0, 2.0], "y": [0.0, 0.0], "thk": [3.0, 4.0]})
    mapping = {"value": "thk", "property_name": "thickness", "property_unit": "nm"}
    frame.atomscale.upload(sample_id, client=client, coord_units="millimeter", **mapping)
    again = frame.atomscale.upload(
        sample_id, client=client, coord_units="mm", if_exists="skip", **mapping
    )
    assert len(again) == 0
    stored = atomscale_accessors.fetch(sample_id, client=client)
    assert len(stored) == 2 and set(stored["coord_units"]) == {"mm"}


def test_a_table_with_two_units_is_still_refused():
    frame = pd.DataFrame(
        {"x": [1.0, 2.0], "y": [0.0, 0.0], "thk": [3.0, 4.0], "unit": ["millimeter", "um"]}
    )
    mapping = {"value": "thk", "property_name": "t", "property_unit": "nm", "coord_units": "unit"}
    with pytest.raises(AnnotationValidationError) as info:
        frame.atomscale.validate(**mapping)
    assert "one_coordinate_unit" in str(info.value)
    # Two spellings of one unit pass the same check.
    same = frame.assign(unit=["millimeter", "mm"]).atomscale.validate(**mapping)
    assert same["coord_units"].tolist() == ["mm", "mm"]


# -- coordinates by CF standard_name -----------------------------------------------------
def projected(**extra) -> xr.Dataset:
    ds = plain_map().rename(x="easting", y="northing")
    ds["easting"].attrs["standard_name"] = "projection_x_coordinate"
    ds["northing"].attrs["standard_name"] = "projection_y_coordinate"
    return ds.assign_coords(**extra)


def test_coordinates_are_found_by_standard_name():
    ds = projected()
    assert find_coordinates(ds, {"x": None, "y": None, "z": None}) == {
        "x": "easting",
        "y": "northing",
        "z": None,
    }
    got = flatten_map(ds)
    pd.testing.assert_frame_equal(
        got.reset_index(drop=True), flatten_map(plain_map()).reset_index(drop=True)
    )


def test_two_coordinates_with_one_standard_name_are_not_guessed():
    ds = projected()
    ds = ds.assign_coords(east2=ds.easting.copy())
    with pytest.raises(MapStructureError) as info:
        find_coordinates(ds, {"x": None, "y": None})
    message = str(info.value)
    assert "standard_name='projection_x_coordinate'" in message
    assert "'easting'" in message and "'east2'" in message and "x=" in message


def test_the_axis_attribute_comes_before_the_standard_name():
    ds = projected()
    ds = ds.assign_coords(col=("easting", np.arange(ds.sizes["easting"]) * 1.0, {"axis": "X"}))
    assert find_coordinates(ds, {"x": None, "y": None})["x"] == "col"


def test_a_geographic_standard_name_is_not_a_position():
    ds = plain_map().rename(x="lon")
    ds["lon"].attrs["standard_name"] = "longitude"
    with pytest.raises(MapStructureError, match="no x coordinate found"):
        find_coordinates(ds, {"x": None, "y": None})

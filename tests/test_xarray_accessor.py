"""Uploading xarray maps to the real local server, and getting them back as maps."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import atomscale_accessors
from atomscale_accessors import fetch
from atomscale_accessors.datasets import sheet_resistance_map, wafer_thickness_map
from atomscale_accessors.errors import (
    AnnotationExistsError,
    AnnotationValidationError,
    MapStructureError,
)
from atomscale_accessors.schemas import ANNOTATION_COLUMNS

VARIANTS = ["dataset", "dataarray", "dask"]


def as_variant(ds: xr.Dataset, variant: str) -> xr.Dataset | xr.DataArray:
    if variant == "dataset":
        return ds
    if variant == "dask":
        return ds.chunk(dict.fromkeys(ds.dims, 4))
    (name,) = ds.data_vars
    return ds[name].assign_attrs({**ds.attrs, **ds[name].attrs})


def test_accessors_are_registered_on_import():
    assert isinstance(xr.Dataset().atomscale, atomscale_accessors.AtomscaleDatasetAccessor)
    assert isinstance(xr.DataArray(1.0).atomscale, atomscale_accessors.AtomscaleDataArrayAccessor)


@pytest.mark.parametrize("variant", VARIANTS)
def test_grid_upload_fetch_to_xarray_round_trip(variant, client, atomscale_server, sample_id):
    ds = wafer_thickness_map(n=13)
    obj = as_variant(ds, variant)
    created = obj.atomscale.upload(sample_id, client=client, progress_bar=False)

    n_cells = int(ds.thickness.notnull().sum())
    assert len(created) == n_cells == atomscale_server.annotation_count(sample_id)
    assert list(created.columns) == list(ANNOTATION_COLUMNS)
    # Indexed like the records: by the (y, x) labels of the cells.
    assert created.index.names == ["y", "x"]
    assert sorted(created.index) == sorted(obj.atomscale.to_annotations().index)
    assert np.array_equal(created["coord_x"].to_numpy(), created.index.get_level_values("x"))
    assert created["annotation_id"].is_unique

    stored = fetch(sample_id, client=client)
    back = stored.atomscale.to_xarray()
    xr.testing.assert_equal(back, ds)
    assert back.thickness.attrs == {"units": "nm"}
    assert back.x.attrs == back.y.attrs == {"units": "mm"}
    assert back.attrs["char_source_type"] == "ellipsometry"
    assert back.attrs["physical_sample_id"] == sample_id


@pytest.mark.parametrize("variant", VARIANTS)
def test_scattered_upload_round_trip(variant, client, sample_id):
    ds = sheet_resistance_map()
    created = as_variant(ds, variant).atomscale.upload(sample_id, client=client, progress_bar=False)
    assert created.index.name == "point"
    assert sorted(created.index) == list(range(49))
    back = fetch(sample_id, client=client).atomscale.to_xarray()
    assert back.sheet_resistance.dims == ("point",)
    # Order along point comes from the server's answer; compare by position.
    got = back.to_dataframe().set_index(["x", "y"])["sheet_resistance"].sort_index()
    want = ds.to_dataframe().set_index(["x", "y"])["sheet_resistance"].sort_index()
    pd.testing.assert_series_equal(got, want, check_exact=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_invalid_structure_sends_nothing(variant, client, atomscale_server, sample_id):
    ds = wafer_thickness_map(n=9)
    ds["thickness"].attrs = {}
    with pytest.raises(MapStructureError, match="has no units"):
        as_variant(ds, variant).atomscale.upload(sample_id, client=client)
    assert atomscale_server.request_count() == 0


@pytest.mark.parametrize("variant", VARIANTS)
def test_bad_value_in_the_last_block_sends_nothing(variant, client, atomscale_server, sample_id):
    ds = wafer_thickness_map(n=13)
    values = ds.thickness.values.copy()
    values[6, 12] = np.inf  # the last dask block of the dask variant
    ds = ds.assign(thickness=(("y", "x"), values, {"units": "nm"}))
    with pytest.raises(AnnotationValidationError) as info:
        as_variant(ds, variant).atomscale.upload(sample_id, client=client)
    assert info.value.failure_cases["index"].tolist() == [(0.0, 150.0)]
    assert atomscale_server.request_count() == 0
    assert atomscale_server.annotation_count(sample_id) == 0


def test_dask_upload_is_streamed_in_blocks(client, atomscale_server, sample_id):
    ds = wafer_thickness_map(n=21, chunks={"y": 5, "x": 7})
    created = ds.atomscale.upload(
        sample_id, client=client, chunksize=50, block_rows=30, progress_bar=False
    )
    assert len(created) == int(ds.thickness.notnull().sum())
    assert atomscale_server.annotation_count(sample_id) == len(created)
    stored = fetch(sample_id, client=client).atomscale.to_xarray()
    xr.testing.assert_equal(stored, ds.compute())


def test_second_upload_fails_then_skips(client, atomscale_server, sample_id):
    ds = sheet_resistance_map()
    ds.atomscale.upload(sample_id, client=client, progress_bar=False)
    with pytest.raises(AnnotationExistsError):
        ds.atomscale.upload(sample_id, client=client, progress_bar=False)
    again = ds.atomscale.upload(sample_id, client=client, if_exists="skip", progress_bar=False)
    assert len(again) == 0
    assert atomscale_server.annotation_count(sample_id) == 49


def test_options_reach_the_records(client, sample_id):
    da = wafer_thickness_map(n=7).thickness.rename(None)
    created = da.atomscale.upload(
        sample_id,
        client=client,
        property_name="film_thickness",
        char_source_type="reflectometry",
        metadata={"recipe": "B12"},
        progress_bar=False,
    )
    assert set(created["property_name"]) == {"film_thickness"}
    assert set(created["char_source_type"]) == {"reflectometry"}
    assert all(m == {"recipe": "B12"} for m in created["metadata"])


def test_dry_run_sends_nothing(client, atomscale_server, sample_id):
    planned = wafer_thickness_map(n=9, chunks=4).atomscale.upload(
        sample_id, client=client, dry_run=True, chunksize=10
    )
    assert planned["chunk"].max() >= 1
    assert atomscale_server.request_count() == 0


def test_a_streamed_map_lists_only_its_properties_within_its_extent(atomscale_server, sample_id):
    # A dask map in metres, uploaded in millimetres: the upload lists what the sample
    # holds for the map's property, within the map's box converted to millimetres.
    from urllib.parse import parse_qs, urlsplit

    from fault_proxy import FaultProxy

    ds = wafer_thickness_map(n=9, chunks=4)
    ds = ds.assign_coords(x=ds.x.values / 1000.0, y=ds.y.values / 1000.0)
    ds.x.attrs["units"] = ds.y.attrs["units"] = "m"
    elsewhere = sheet_resistance_map().rename(sheet_resistance="thickness")
    elsewhere["thickness"].attrs["units"] = "nm"
    far_right = (elsewhere.x + 1000.0).assign_attrs(elsewhere.x.attrs)
    elsewhere = elsewhere.assign_coords(x=far_right)
    with FaultProxy(atomscale_server.endpoint) as proxy:
        client = atomscale_accessors.Client(
            api_key=atomscale_server.api_key, endpoint=proxy.endpoint
        )
        before = len(elsewhere.atomscale.upload(sample_id, client=client, progress_bar=False))
        proxy.clear()
        created = ds.atomscale.upload(
            sample_id, client=client, coord_units="mm", if_exists="skip", progress_bar=False
        )
        listings = [parse_qs(urlsplit(t).query) for m, t in proxy.targets if m == "GET"]
    assert len(created) == int(ds.thickness.notnull().sum())
    assert listings, "the upload did not list what the sample holds"
    for query in listings:
        assert query["property_name"] == ["thickness"]
        assert float(query["x_min"][0]) == pytest.approx(float(created["coord_x"].min()))
        assert float(query["x_max"][0]) == pytest.approx(float(created["coord_x"].max()))
        assert float(query["y_max"][0]) == pytest.approx(float(created["coord_y"].max()))
    assert atomscale_server.annotation_count(sample_id) == len(created) + before


def test_unknown_keywords_are_named_with_a_suggestion(client, atomscale_server, sample_id):
    with pytest.raises(TypeError, match=r"'coord_unit' \(did you mean 'coord_units'\?\)"):
        sheet_resistance_map().atomscale.upload(sample_id, client=client, coord_unit="mm")
    with pytest.raises(ValueError, match="block_rows must be a positive integer"):
        sheet_resistance_map().atomscale.upload(sample_id, client=client, block_rows=0)
    assert atomscale_server.request_count() == 0


def _stack(names: list[str], n: int = 7, chunks: Any = None) -> xr.Dataset:
    maps = [wafer_thickness_map(n=n, seed=i) for i in range(len(names))]
    stack = xr.concat(maps, dim=pd.Index(names, name="wafer"))
    return stack.chunk(chunks) if chunks is not None else stack


@pytest.mark.parametrize("chunks", [None, {"y": 3}], ids=["numpy", "dask"])
def test_a_stack_uploads_one_map_per_sample(client, atomscale_server, chunks):
    w1 = atomscale_server.create_sample("W01")
    stack = _stack(["w01", "W02", "W03"], chunks=chunks)
    created = stack.atomscale.upload(
        sample_dim="wafer", client=client, create_sample=True, progress_bar=False
    )
    ids = {s["name"]: s["id"] for s in atomscale_server.store.list_samples()}
    assert ids["W01"] == w1 and set(ids) == {"W01", "W02", "W03"}
    for name in ("W01", "W02", "W03"):
        back = fetch(ids[name], client=client).atomscale.to_xarray()
        expected = stack.sel(wafer=name.lower() if name == "W01" else name, drop=True)
        xr.testing.assert_equal(back, expected.compute())
        points = int(expected.thickness.notnull().sum())
        if chunks is None:  # the created annotations
            assert (created["physical_sample_id"] == ids[name]).sum() == points
        else:  # uploaded in a task per sample: one summary row per sample
            row = created[created["physical_sample_id"] == ids[name]]
            assert row[["records", "created", "existing"]].values.tolist() == [[points, points, 0]]


def test_a_stack_is_validated_whole_before_anything_is_sent(client, atomscale_server):
    stack = _stack(["A", "B", "C"])
    stack["thickness"][1, 2, 3] = np.inf  # in B
    stack["thickness"][2, 3, 3] = -np.inf  # in C
    with pytest.raises(AnnotationValidationError) as info:
        stack.atomscale.upload(sample_dim="wafer", client=client, create_sample=True)
    assert "2 of 3 maps along 'wafer' are invalid" in str(info.value)
    assert set(info.value.failure_cases["sample"]) == {"B", "C"}
    assert atomscale_server.request_count() == 0


def test_stack_labels_must_name_distinct_samples(client, atomscale_server):
    with pytest.raises(MapStructureError, match="name one sample twice"):
        _stack(["A", " a"]).atomscale.upload(sample_dim="wafer", client=client)
    with pytest.raises(MapStructureError, match="no dimension 'lot'"):
        _stack(["A"]).atomscale.upload(sample_dim="lot", client=client)
    assert atomscale_server.request_count() == 0

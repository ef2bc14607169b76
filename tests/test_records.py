"""A user's DataFrame in any shape to canonical records (no server involved)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import THICKNESS_MAPPING, thickness_frame

from atomscale_accessors.errors import AnnotationValidationError
from atomscale_accessors.records import to_records
from atomscale_accessors.schemas import RECORD_COLUMNS

UUID = "0b0e6b1c-3f4e-4a53-9d55-4c1f3f0f7a10"


def test_long_frame_with_own_names_keeps_labels_and_values():
    df = thickness_frame(5)
    before = df.copy()
    rec = df.atomscale.to_annotations(**THICKNESS_MAPPING)
    assert list(rec.columns) == list(RECORD_COLUMNS)
    assert rec.index.equals(df.index)
    assert (rec["property_name"] == "thickness").all()
    assert (rec["property_unit"] == "nm").all()
    assert (rec["coord_units"] == "mm").all()
    assert (rec["coord_ref_frame"] == "sample_relative").all()
    np.testing.assert_array_equal(rec["property_value"].to_numpy(), df["thk"].to_numpy())
    np.testing.assert_array_equal(rec["coord_x"].to_numpy(), df["x_mm"].to_numpy())
    assert rec["coord_z"].isna().all()
    pd.testing.assert_frame_equal(df, before)


def test_canonical_frame_passes_through():
    df = pd.DataFrame(
        {
            "property_name": ["thickness", "sheet_resistance"],
            "property_value": [101.5, 42.0],
            "property_unit": ["nm", "ohm/sq"],
            "coord_x": [1.5, 3.0],
            "coord_y": [2.0, 2.0],
            "coord_units": ["mm", "mm"],
            "char_source_type": ["ellipsometry", "four_point_probe"],
        }
    )
    rec = to_records(df)
    assert rec["property_name"].tolist() == ["thickness", "sheet_resistance"]
    assert rec["property_unit"].tolist() == ["nm", "ohm/sq"]
    assert rec["char_source_type"].tolist() == ["ellipsometry", "four_point_probe"]


def test_property_name_column_and_plain_xy_names():
    df = pd.DataFrame(
        {"x": [0, 1], "y": [0, 0], "prop": ["a", "b"], "val": [1, 2], "unit": ["nm", "eV"]}
    )
    rec = to_records(df, value="val", property_name="prop", property_unit="unit", coord_units="mm")
    assert rec["property_name"].tolist() == ["a", "b"]
    assert rec["property_unit"].tolist() == ["nm", "eV"]
    # integers become floats, exactly
    assert rec["property_value"].dtype == np.float64
    assert rec["coord_x"].tolist() == [0.0, 1.0]


def test_value_column_names_the_property_by_default():
    df = pd.DataFrame({"x": [0.0], "y": [0.0], "thickness": [3.0]})
    rec = to_records(df, value="thickness", property_unit="nm", coord_units="mm")
    assert rec["property_name"].tolist() == ["thickness"]


@pytest.mark.parametrize("values", [["thk", "rs"], {"thk": "thickness", "rs": "sheet_resistance"}])
def test_wide_frame_one_property_per_column(values):
    df = pd.DataFrame(
        {"x": [0.0, 5.0, 10.0], "y": [0.0, 0.0, 1.0], "thk": [1.0, 2.0, 3.0], "rs": [10, 20, 30]},
        index=pd.Index([7, 8, 9], name="site"),
    )
    units = (
        {"thickness": "nm", "rs": "ohm/sq"}
        if isinstance(values, dict)
        else {"thk": "nm", "rs": "ohm/sq"}
    )
    rec = to_records(df, values=values, units=units, coord_units="mm")
    assert len(rec) == 6
    assert rec.index.tolist() == [7, 8, 9, 7, 8, 9]
    expected_names = (
        ["thickness"] * 3 + ["sheet_resistance"] * 3
        if isinstance(values, dict)
        else ["thk"] * 3 + ["rs"] * 3
    )
    assert rec["property_name"].tolist() == expected_names
    assert rec["property_unit"].tolist() == ["nm"] * 3 + ["ohm/sq"] * 3
    assert rec["property_value"].tolist() == [1.0, 2.0, 3.0, 10.0, 20.0, 30.0]
    assert rec["coord_x"].tolist() == [0.0, 5.0, 10.0] * 2


def test_constants_for_every_text_field():
    df = thickness_frame(3)
    rec = to_records(
        df,
        **THICKNESS_MAPPING,
        char_source_type="ellipsometry",
        data_id=UUID,
        coord_ref_frame="stage_absolute",
    )
    assert set(rec["char_source_type"]) == {"ellipsometry"}
    assert set(rec["data_id"]) == {UUID}
    assert set(rec["coord_ref_frame"]) == {"stage_absolute"}


def test_metadata_from_dict_column_and_folded_columns():
    df = thickness_frame(3).assign(operator=["ann", "bo", None], recipe=[1, 2, 3])
    rec = to_records(df, **THICKNESS_MAPPING, metadata=["operator", "recipe"])
    assert rec["metadata"].tolist() == [
        {"operator": "ann", "recipe": 1},
        {"operator": "bo", "recipe": 2},
        {"operator": None, "recipe": 3},
    ]
    assert all(type(m["recipe"]) is int for m in rec["metadata"])  # numpy scalars unwrapped
    rec = to_records(thickness_frame(2), **THICKNESS_MAPPING, metadata={"run": "r7"})
    assert rec["metadata"].tolist() == [{"run": "r7"}, {"run": "r7"}]
    df = thickness_frame(2).assign(meta=[{"a": 1}, None])
    rec = to_records(df, **THICKNESS_MAPPING, metadata="meta")
    assert rec["metadata"].iloc[0] == {"a": 1}
    assert pd.isna(rec["metadata"].iloc[1])


def test_unknown_columns_are_listed():
    df = thickness_frame(3).assign(operator="ann", lot=1)
    with pytest.raises(
        AnnotationValidationError, match=r"unknown columns \['operator', 'lot'\]"
    ) as info:
        to_records(df, **THICKNESS_MAPPING)
    assert "unknown_columns" in set(info.value.failure_cases["check"])


def test_text_is_never_converted_to_numbers():
    df = thickness_frame(4)
    df["thk"] = df["thk"].astype(object)
    df.loc["site-002", "thk"] = "101.5"
    with pytest.raises(AnnotationValidationError, match="not numbers") as info:
        to_records(df, **THICKNESS_MAPPING)
    cases = info.value.failure_cases
    assert cases["index"].tolist() == ["site-002"]
    assert cases["failure_case"].tolist() == ["101.5"]


def test_text_dtype_column_is_not_a_number():
    df = thickness_frame(2).astype({"thk": str})
    with pytest.raises(AnnotationValidationError, match="not numbers"):
        to_records(df, **THICKNESS_MAPPING)


def test_booleans_and_huge_integers_are_refused():
    df = thickness_frame(2).assign(flag=[True, False])
    with pytest.raises(AnnotationValidationError, match="booleans"):
        to_records(df, **{**THICKNESS_MAPPING, "value": "flag"}, metadata=["thk"])
    df = thickness_frame(2).assign(big=[2**53 + 1, 1])
    with pytest.raises(AnnotationValidationError, match="2\\*\\*53") as info:
        to_records(df, **{**THICKNESS_MAPPING, "value": "big"}, metadata=["thk"])
    assert info.value.failure_cases["index"].tolist() == ["site-000"]


def test_missing_unit_is_an_error_not_a_guess():
    mapping = {k: v for k, v in THICKNESS_MAPPING.items() if k != "property_unit"}
    with pytest.raises(AnnotationValidationError, match="no unit for property 'thickness'"):
        to_records(thickness_frame(2), **mapping)


def test_missing_value_column_names_the_options():
    with pytest.raises(AnnotationValidationError, match="no value column"):
        to_records(pd.DataFrame({"x": [1.0], "y": [2.0]}))
    with pytest.raises(AnnotationValidationError, match="no column 'nope'"):
        to_records(thickness_frame(2), **{**THICKNESS_MAPPING, "x": "nope"})


def test_value_and_values_together_is_an_error():
    with pytest.raises(AnnotationValidationError, match="not both"):
        to_records(thickness_frame(2), **THICKNESS_MAPPING, values=["thk"])


def test_unexpected_option_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected mapping options"):
        to_records(thickness_frame(2), **THICKNESS_MAPPING, colour="red")


def test_not_a_frame_is_a_type_error():
    with pytest.raises(TypeError, match="pandas DataFrame"):
        to_records([1, 2, 3])


def test_annotation_frame_is_accepted_again():
    frame = pd.DataFrame(
        {
            "annotation_id": [UUID],
            "data_id": [None],
            "char_source_type": ["xrd"],
            "property_name": ["thickness"],
            "property_value": [1.0],
            "property_unit": ["nm"],
            "coord_x": [1.0],
            "coord_y": [2.0],
            "coord_z": [np.nan],
            "coord_ref_frame": ["sample_relative"],
            "coord_units": ["mm"],
            "metadata": [None],
            "last_updated": pd.to_datetime(["2026-01-01T00:00:00Z"]),
            "physical_sample_id": [UUID],
            "version": ["1"],
        }
    )
    rec = to_records(frame)
    assert rec["property_name"].tolist() == ["thickness"]
    assert rec["char_source_type"].tolist() == ["xrd"]


def test_float32_and_nullable_integer_columns():
    df = pd.DataFrame(
        {
            "x": np.array([0.1, 0.2], dtype=np.float32),
            "y": pd.array([1, None], dtype="Int64"),
            "v": np.array([1.5, 2.5], dtype=np.float32),
        }
    )
    rec = to_records(df, value="v", property_name="p", property_unit="1", coord_units="mm")
    assert rec["coord_x"].tolist() == [float(np.float32(0.1)), float(np.float32(0.2))]
    assert rec["coord_y"].iloc[0] == 1.0
    assert np.isnan(rec["coord_y"].iloc[1])


def test_property_name_equal_to_the_value_column_is_a_name():
    df = pd.DataFrame({"x": [0.0], "y": [0.0], "thickness": [3.0]})
    rec = to_records(
        df, value="thickness", property_name="thickness", property_unit="nm", coord_units="mm"
    )
    assert rec["property_name"].tolist() == ["thickness"]


def test_nullable_string_column_with_missing_values():
    df = thickness_frame(3).assign(technique=pd.array(["xrd", pd.NA, "xps"], dtype="string"))
    rec = to_records(df, **THICKNESS_MAPPING, char_source_type="technique")
    assert rec["char_source_type"].tolist()[::2] == ["xrd", "xps"]
    assert pd.isna(rec["char_source_type"].iloc[1])
    bad = thickness_frame(2).assign(technique=pd.array([1, pd.NA], dtype="Int64"))
    with pytest.raises(AnnotationValidationError, match="must hold text"):
        to_records(bad, **THICKNESS_MAPPING, char_source_type="technique")


def test_building_and_schema_problems_come_in_one_error():
    df = thickness_frame(4).assign(lot=1)
    df.loc["site-002", "thk"] = np.nan
    with pytest.raises(AnnotationValidationError) as info:
        df.atomscale.validate(**THICKNESS_MAPPING)
    checks = set(info.value.failure_cases["check"])
    assert checks == {"unknown_columns", "not_nullable"}
    assert "unknown columns ['lot']" in str(info.value)
    assert "row 'site-002': property_value = nan" in str(info.value)


def test_records_do_not_share_metadata_dicts():
    df = thickness_frame(2).assign(meta=[{"a": 1}, {"a": 2}])
    rec = to_records(df, **THICKNESS_MAPPING, metadata="meta")
    rec["metadata"].iloc[0]["a"] = "changed"
    assert df["meta"].iloc[0] == {"a": 1}
    rec = to_records(thickness_frame(2), **THICKNESS_MAPPING, metadata={"run": 1})
    rec["metadata"].iloc[0]["run"] = 2
    assert rec["metadata"].iloc[1] == {"run": 1}

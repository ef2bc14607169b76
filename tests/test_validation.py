"""The records schema: every check, the capped message, the complete failure table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import THICKNESS_MAPPING, thickness_frame

from atomscale_accessors.errors import AnnotationValidationError, AtomscaleWarning
from atomscale_accessors.failures import MAX_FAILURE_CASES
from atomscale_accessors.records import to_records
from atomscale_accessors.schemas import MAX_METADATA_BYTES, MAX_METADATA_DEPTH
from atomscale_accessors.validation import ValidationReport, validate_records


def nested(depth: int) -> dict:
    """Metadata ``depth`` levels deep, alternating objects and arrays."""
    value: dict | list = {"leaf": 1}
    for level in range(depth - 1):
        # Arrays and objects in turn; the outermost is an object.
        value = [value] if level % 2 == 0 and level < depth - 2 else {"a": value}
    return value


def records(n: int = 6, **changes) -> pd.DataFrame:
    rec = to_records(thickness_frame(n), **THICKNESS_MAPPING)
    for column, (label, value) in changes.items():
        rec[column] = rec[column].astype(object) if not isinstance(value, float) else rec[column]
        rec.loc[label, column] = value
    return rec


def failures(rec: pd.DataFrame, **kwargs) -> pd.DataFrame:
    with pytest.raises(AnnotationValidationError) as info:
        validate_records(rec, **kwargs)
    return info.value.failure_cases


def test_valid_records_come_back_unchanged():
    rec = records()
    out = validate_records(rec)
    pd.testing.assert_frame_equal(out, rec)


@pytest.mark.parametrize(
    ("column", "value", "check"),
    [
        ("property_value", np.nan, "not_nullable"),
        ("property_value", np.inf, "finite"),
        ("coord_x", -np.inf, "finite"),
        ("property_name", "", "length_1_to_1024"),
        ("property_name", "x" * 5000, "length_1_to_1024"),
        ("coord_ref_frame", "wafer_frame", "isin(['sample_relative', 'stage_absolute'])"),
        ("data_id", "not-a-uuid", "uuid"),
        ("data_id", "../../etc/passwd", "uuid"),
        ("metadata", {"when": object()}, "json_object"),
        ("metadata", {"x": float("nan")}, "json_object"),
        ("metadata", [1, 2], "json_object"),
        ("metadata", {"blob": "x" * 70_000}, f"encoded_at_most_{MAX_METADATA_BYTES}_bytes"),
        ("metadata", nested(MAX_METADATA_DEPTH + 1), f"depth_at_most_{MAX_METADATA_DEPTH}"),
        ("metadata", nested(200), f"depth_at_most_{MAX_METADATA_DEPTH}"),
        ("property_unit", 5, "text"),
    ],
)
def test_each_check_names_row_column_and_reason(column, value, check):
    rec = records()
    rec[column] = (
        rec[column].astype(object) if column not in ("property_value", "coord_x") else rec[column]
    )
    rec.at["site-003", column] = value
    cases = failures(rec)
    row = cases[cases["column"] == column]
    assert set(row["index"]) == {"site-003"}, cases
    assert check in row["check"].tolist()


def test_coord_units_required_with_coordinates():
    rec = records()
    rec["coord_units"] = rec["coord_units"].astype(object)
    rec.at["site-001", "coord_units"] = None
    cases = failures(rec)
    assert cases["check"].tolist() == ["coord_units_given_with_coordinates"]
    assert cases["index"].tolist() == ["site-001"]


def test_coordinates_are_optional_without_units():
    rec = records(1)
    rec[["coord_x", "coord_y"]] = np.nan
    rec["coord_units"] = None
    assert len(validate_records(rec)) == 1
    # Without a position, two values of one property are at "the same position".
    cases = failures(pd.concat([rec, rec.rename(index={"site-000": "again"})]))
    assert set(cases["check"]) == {"unique_position"}


def test_duplicate_positions_unless_allowed():
    rec = records(4)
    rec.iloc[2, rec.columns.get_loc("coord_x")] = rec.iloc[1]["coord_x"]
    rec.iloc[2, rec.columns.get_loc("coord_y")] = rec.iloc[1]["coord_y"]
    cases = failures(rec)
    assert cases["check"].unique().tolist() == ["unique_position"]
    assert sorted(cases["index"]) == ["site-001", "site-002"]
    assert len(validate_records(rec, allow_duplicates=True)) == 4


def test_same_position_different_property_is_not_a_duplicate():
    rec = records(3)
    other = rec.assign(property_name="sheet_resistance", property_unit="ohm/sq")
    both = pd.concat([rec, other])
    assert len(validate_records(both)) == 6


def test_dropna_drops_and_reports():
    rec = records(5)
    rec.loc[["site-001", "site-004"], "property_value"] = np.nan
    report = ValidationReport()
    with pytest.warns(AtomscaleWarning, match="left out 2 records"):
        out = validate_records(rec, dropna=True, report=report)
    assert out.index.tolist() == ["site-000", "site-002", "site-003"]
    assert report.n_dropped == 2
    assert report.dropped["index"].tolist() == ["site-001", "site-004"]


def test_message_and_table_are_capped_and_counts_exact():
    n = MAX_FAILURE_CASES + 50_000
    df = pd.DataFrame({"x": np.arange(n, dtype=float), "y": 0.0, "v": np.nan})
    rec = to_records(df, value="v", property_name="p", property_unit="1", coord_units="mm")
    with pytest.raises(AnnotationValidationError) as info:
        validate_records(rec)
    message = str(info.value)
    assert len(info.value.failure_cases) == MAX_FAILURE_CASES
    assert message.count("\n") < 20
    assert f"{n:,} of {n:,} records failed validation ({n:,} failures)" in message
    assert f"property_value: not_nullable ({n:,} cases)" in message
    assert "50,000 more only counted" in message
    # one example line for the rows failing alike, naming the first of them in input order
    assert "  rows 0, 1, 2, 3, 4 and more: property_value = nan (not_nullable)" in message


def test_multiindex_labels_are_reported():
    idx = pd.MultiIndex.from_product([[0.0, 1.0], [5.0, 6.0]], names=["y", "x"])
    df = pd.DataFrame({"v": [1.0, np.inf, 2.0, 3.0]}, index=idx).reset_index()
    rec = to_records(
        df, value="v", property_name="p", property_unit="1", coord_units="mm"
    ).set_index(idx)
    cases = failures(rec)
    assert cases["index"].tolist() == [(0.0, 6.0)]


def test_validate_accessor_returns_validated_records():
    out = thickness_frame(4).atomscale.validate(**THICKNESS_MAPPING)
    assert len(out) == 4
    with pytest.raises(AnnotationValidationError, match="not_nullable"):
        thickness_frame(4).assign(thk=np.nan).atomscale.validate(**THICKNESS_MAPPING)


@pytest.mark.parametrize(
    ("column", "values", "check"),
    [
        ("property_unit", ["nm", "nm", "um", "nm", "nm", "nm"], "one_unit_per_property"),
        ("coord_units", ["mm", "mm", "mm", "cm", "mm", "mm"], "one_coordinate_unit"),
        ("char_source_type", ["xrd", "xrd", "x\udcffrd", "xrd", "xrd", "xrd"], "text"),
        (
            "char_source_type",
            ["xrd", "xrd", "x" * 1025, "xrd", "xrd", "xrd"],
            "length_at_most_1024",
        ),
    ],
)
def test_frame_wide_rules(column, values, check):
    rec = records()
    rec[column] = pd.Series(values, index=rec.index, dtype=object)
    cases = failures(rec)
    assert cases["check"].tolist() == [check]
    assert cases["index"].tolist() == [rec.index[2 if check != "one_coordinate_unit" else 3]]


def test_half_a_position_is_refused():
    rec = records()
    rec.loc["site-001", "coord_x"] = np.nan
    cases = failures(rec)
    assert cases["check"].tolist() == ["x_and_y_together"]
    assert cases["index"].tolist() == ["site-001"]


def test_an_empty_frame_is_refused_by_validate():
    with pytest.raises(AnnotationValidationError, match="no rows"):
        thickness_frame(3).iloc[:0].atomscale.validate(**THICKNESS_MAPPING)


def test_the_records_model_checks_by_the_records_schema():
    import pandera.errors

    from atomscale_accessors.schemas import RecordsModel, records_schema

    good = records(4)
    assert RecordsModel.validate(good) is not None
    bad = good.assign(property_value=[1.0, np.inf, 2.0, 3.0], coord_ref_frame="wafer")
    with pytest.raises(pandera.errors.SchemaErrors) as caught:
        RecordsModel.validate(bad, lazy=True)
    checks = set(caught.value.failure_cases["check"])
    assert {"finite", "isin(['sample_relative', 'stage_absolute'])"} <= checks
    assert RecordsModel.to_schema() is records_schema()
    # Without the position rule, a copy: the shared schema keeps it.
    assert "unique_position" not in [c.name for c in records_schema(allow_duplicates=True).checks]
    assert "unique_position" in [c.name for c in records_schema().checks]

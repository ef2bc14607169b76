"""Input integrity: bounded failure tables and messages, limits the server enforces, every
problem of a frame in one error.

A lazy map that is wrong throughout fails after a few blocks with the failure table capped;
a record the server would refuse (metadata nested too deep) is refused before anything is
sent; a megabyte of text in a name or a cell never makes a megabyte of message.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import THICKNESS_MAPPING, thickness_frame

import atomscale_accessors
from atomscale_accessors import options
from atomscale_accessors.errors import AnnotationValidationError, AtomscaleError
from atomscale_accessors.failures import (
    FAILURE_COLUMNS,
    MAX_EXAMPLES,
    MAX_FAILURE_CASES,
    MAX_MESSAGE,
    MAX_QUOTED,
    FailureCollector,
    failure_table,
    quote,
)
from atomscale_accessors.schemas import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_RECORD_BYTES,
    MAX_TEXT_LENGTH,
    encode_metadata,
)
from atomscale_accessors.upload import encode
from atomscale_accessors.validation import validate_records

da = pytest.importorskip("dask.array", reason="needs the dask extra")

_ = atomscale_accessors  # registers the accessors
UUID = "0b0e6b1c-3f4e-4a53-9d55-4c1f3f0f7a10"
HUGE = "x" * 10**6


def bad_lazy_map(n: int, chunks: int, calls: list | None = None) -> xr.Dataset:
    """An n x n dask map whose every cell is inf; ``calls`` records each block computed."""

    def compute_block(block: np.ndarray) -> np.ndarray:
        if calls is not None and block.size:  # dask also calls it on an empty array
            calls.append(block.shape)
        return block

    values = da.full((n, n), np.inf, chunks=chunks).map_blocks(compute_block, dtype="float64")
    axis = np.arange(float(n))
    return xr.Dataset(
        {"thickness": (("y", "x"), values, {"units": "nm"})},
        coords={"x": ("x", axis, {"units": "mm"}), "y": ("y", axis, {"units": "mm"})},
    )


def validation_error(call) -> AnnotationValidationError:
    with pytest.raises(AnnotationValidationError) as info:
        call()
    return info.value


def lazy_map_entry_points(ds: xr.Dataset) -> dict[str, AnnotationValidationError]:
    """The error of each way a lazy map is validated: ``validate`` and the upload's pass."""
    return {
        "validate": validation_error(ds.atomscale.validate),
        "upload": validation_error(
            lambda: ds.atomscale.upload(UUID, dry_run=True, progress_bar=False)
        ),
    }


# -- the collector -----------------------------------------------------------------------------
def test_collector_keeps_the_cap_and_counts_everything():
    failures = FailureCollector(limit=5)
    failures.add_cases(range(4), "property_value", "finite", [np.inf] * 4)
    assert not failures.full
    failures.add(failure_table((i, "coord_x", "finite", -np.inf) for i in range(4, 10)))
    failures.add_one("columns", "unknown_columns")
    assert failures.full
    assert failures.counts == {
        ("property_value", "finite"): 4,
        ("coord_x", "finite"): 6,
        ("columns", "unknown_columns"): 1,
    }
    assert failures.n_failures == 11
    assert failures.dropped == 6
    table = failures.table()
    assert list(table.columns) == list(FAILURE_COLUMNS)
    assert table["index"].tolist() == [0, 1, 2, 3, 4]


def test_message_shows_no_example_twice_and_says_one_failure():
    failures = FailureCollector()
    failures.add(failure_table([("p1", "thk", "is_number", "abc")] * 30))
    message = failures.message(2)
    assert message.count("row 'p1': thk = 'abc' (is_number)") == 1
    assert "1 of 2 records failed validation (30 failures)" in message
    one = FailureCollector()
    one.add_one("property_value", "finite", np.inf, index=0)
    assert "1 of 1 record failed validation (1 failure):" in one.message(1)
    assert "(1 case)" in one.message(1)


def test_message_is_capped_whatever_the_table_holds():
    failures = FailureCollector()
    failures.add(
        failure_table((f"{i}{HUGE}", f"{i}{HUGE}", HUGE, HUGE) for i in range(MAX_EXAMPLES * 5))
    )
    message = failures.message(10**6, reasons=["a reason"])
    assert len(message) <= MAX_MESSAGE
    assert message.count("1,000,001 characters") >= MAX_EXAMPLES  # every quote is capped
    assert "and 40 more columns and checks" in message
    assert "row '0xxx" in message
    flooded = failures.message(10**6, reasons=[HUGE + str(i) for i in range(50)])
    assert len(flooded) <= MAX_MESSAGE
    assert "message cut at" in flooded
    assert quote(HUGE).startswith("'xxx") and len(quote(HUGE)) < MAX_QUOTED + 30


# -- item 6: a lazy map with many bad cells ----------------------------------------------------
def test_a_lazy_map_bad_throughout_stops_early_with_the_cap_of_cases():
    calls: list = []
    n_blocks = 16
    ds = bad_lazy_map(400, 100, calls)  # 16 blocks of 10,000 cells, every one inf
    for how, error in lazy_map_entry_points(ds).items():
        assert len(error.failure_cases) == MAX_FAILURE_CASES, how
        message = str(error)
        assert "validation stopped early" in message, how
        assert "at least" in message and "property_value: finite (at least" in message, how
        assert len(message) <= MAX_MESSAGE
    # Stopped once the cap was reached: each pass read 11 of the 16 blocks.
    assert len(calls) == 2 * (MAX_FAILURE_CASES // 10_000 + 1) < 2 * n_blocks


def test_a_lazy_map_not_stopped_early_reports_exact_counts():
    n = 400  # one block of 160,000 bad cells: more than the cap, and nothing left to read
    ds = bad_lazy_map(n, n)
    for how, error in lazy_map_entry_points(ds).items():
        assert len(error.failure_cases) == MAX_FAILURE_CASES, how
        message = str(error)
        assert "stopped early" not in message and "at least" not in message, how
        assert f"{n * n:,} of {n * n:,} records failed validation ({n * n:,} failures)" in message
        assert f"property_value: finite ({n * n:,} cases)" in message
        assert f"{n * n - MAX_FAILURE_CASES:,} more only counted" in message


def test_a_valid_lazy_map_validates_block_by_block():
    ds = bad_lazy_map(40, 10).copy()
    ds["thickness"] = ds["thickness"].copy(data=da.ones((40, 40), chunks=10))
    records = ds.atomscale.validate()
    assert len(records) == 1600
    assert set(records.index) == set(ds.compute().atomscale.to_annotations().index)


def test_a_position_repeated_across_blocks_of_a_lazy_map_is_refused():
    # 2-D coordinates are not checked by the plan when lazy: the blocks are checked together.
    x = np.arange(16.0).reshape(4, 4)
    x[3, 3] = x[0, 0]  # the first and the last cell, in different blocks, at one position
    ds = xr.Dataset(
        {"thickness": (("j", "i"), da.ones((4, 4), chunks=2), {"units": "nm"})},
        coords={
            "x": (("j", "i"), da.from_array(x, chunks=2), {"units": "mm"}),
            "y": (("j", "i"), da.zeros((4, 4), chunks=2), {"units": "mm"}),
        },
    )
    error = validation_error(ds.atomscale.validate)
    assert set(error.failure_cases["check"]) == {"unique_position"}
    assert sorted(error.failure_cases["index"]) == [(0, 0), (3, 3)]


# -- item 8: limits the server enforces ----------------------------------------------------------
def nested(depth: int) -> dict:
    value: dict | list = {"leaf": 1}
    for level in range(depth - 1):
        # Arrays and objects in turn; the outermost is an object.
        value = [value] if level % 2 == 0 and level < depth - 2 else {"a": value}
    return value


@pytest.mark.parametrize("depth", [MAX_METADATA_DEPTH + 1, 200, 5_000])
def test_metadata_nested_deeper_than_the_server_takes_is_refused(depth):
    frame = thickness_frame(4).assign(meta=[{"ok": 1}, nested(depth), {"ok": 2}, {"ok": 3}])
    error = validation_error(lambda: frame.atomscale.validate(**THICKNESS_MAPPING, metadata="meta"))
    cases = error.failure_cases
    deep = cases[cases["check"] == f"depth_at_most_{MAX_METADATA_DEPTH}"]
    reported = cases[["index", "column", "check"]].to_dict("records")
    assert deep["index"].tolist() == ["site-001"], reported
    assert f"depth_at_most_{MAX_METADATA_DEPTH}" in str(error)
    assert "site-001" in str(error)
    assert len(str(error)) <= MAX_MESSAGE


def test_metadata_at_the_depth_limit_passes():
    frame = thickness_frame(2).assign(meta=[nested(MAX_METADATA_DEPTH), {"ok": 1}])
    assert len(frame.atomscale.validate(**THICKNESS_MAPPING, metadata="meta")) == 2


def test_the_largest_valid_record_encodes_to_the_stated_bound():
    text = "\U0001f600" * MAX_TEXT_LENGTH  # 12 bytes a character, ASCII-escaped
    meta = {"k": ""}
    meta["k"] = "a" * (MAX_METADATA_BYTES - len(encode_metadata(meta)))
    number = -2.2250738585072014e-308  # one of the longest float64 texts
    record = pd.DataFrame(
        {
            "property_name": [text],
            "property_value": [number],
            "property_unit": [text],
            "char_source_type": [text],
            "coord_ref_frame": ["sample_relative"],
            "coord_units": [text],
            "coord_x": [number],
            "coord_y": [number],
            "coord_z": [number],
            "data_id": [UUID],
            "metadata": [meta],
        }
    )
    validate_records(record)  # at every limit, and valid
    assert int(encode.EncodedRecords(record).sizes[0]) == MAX_RECORD_BYTES
    assert MAX_RECORD_BYTES <= options.MIN_CHUNK_BYTES  # one record always fits a chunk


# -- item 9: messages bounded whatever the input -------------------------------------------------
MAPPING = {**THICKNESS_MAPPING}


def _frame(**columns) -> pd.DataFrame:
    return thickness_frame(3).assign(**columns)


HUGE_INPUTS = {
    "unknown-column": (lambda: _frame(**{HUGE: 1.0}).atomscale.validate(**MAPPING), "unknown"),
    "missing-mapped-column": (
        lambda: _frame().atomscale.validate(**{**MAPPING, "x": HUGE}),
        "no column",
    ),
    "property-name": (
        lambda: _frame().atomscale.validate(**{**MAPPING, "property_name": HUGE}),
        "length_1_to_1024",
    ),
    "text-column-value": (
        lambda: _frame(unit=[HUGE, "nm", "nm"]).atomscale.validate(
            **{**MAPPING, "property_unit": "unit"}
        ),
        "length_at_most_1024",
    ),
    "text-in-value-column": (
        lambda: _frame(thk=np.array([HUGE, 1.0, 2.0], dtype=object)).atomscale.validate(
            **{**MAPPING, "property_unit": "nm"}
        ),
        "not numbers",
    ),
    "map-variable-name": (
        lambda: xr.Dataset(
            {HUGE: (("y", "x"), np.ones((2, 2)))},
            coords={"x": ("x", [0.0, 1.0], {"units": "mm"}), "y": ("y", [0.0, 1.0])},
        ).atomscale.validate(),
        "no units",
    ),
}


@pytest.mark.parametrize("name", list(HUGE_INPUTS))
def test_a_megabyte_of_text_makes_a_short_message_naming_the_problem(name):
    call, says = HUGE_INPUTS[name]
    with pytest.raises(AtomscaleError) as info:
        call()
    message = str(info.value)
    assert len(message) <= MAX_MESSAGE, len(message)
    assert says in message
    assert "1,000,000 characters" in message


# -- every problem at once -----------------------------------------------------------------------
def test_text_missing_and_infinite_values_of_one_column_are_reported_together():
    # As a CSV reader leaves a column of numbers with stray text in it.
    thk = pd.Series([101.5, "abc", np.nan, np.inf, float("1e400"), 99.0], dtype=object)
    frame = thickness_frame(6).assign(thk=thk.to_numpy())
    error = validation_error(lambda: frame.atomscale.validate(**MAPPING))
    found = set(zip(error.failure_cases["index"], error.failure_cases["check"], strict=True))
    assert found == {
        ("site-001", "is_number"),
        ("site-002", "not_nullable"),
        ("site-003", "finite"),
        ("site-004", "finite"),
    }
    message = str(error)
    assert "4 of 6 records failed validation (4 failures)" in message
    assert "'abc'" in message


def test_a_frame_of_canonical_columns_without_property_name_is_refused():
    frame = pd.DataFrame({"property_value": [1.0, np.inf], "x": [0.0, 1.0], "y": [0.0, 0.0]})
    units = {"property_unit": "nm", "coord_units": "mm"}
    error = validation_error(lambda: frame.atomscale.validate(**units))
    assert "property_name" in str(error)
    checks = set(error.failure_cases["check"])
    assert checks == {"name_given", "finite"}  # and the bad value, in the same error
    with pytest.raises(AnnotationValidationError, match="property_name"):
        frame.atomscale.to_annotations(**units)
    named = frame.iloc[:1].atomscale.validate(property_name="thickness", **units)
    assert named["property_name"].tolist() == ["thickness"]


def test_mapping_problems_have_no_row_none_lines():
    frame = thickness_frame(3).assign(operator="kb", lot="A7")
    error = validation_error(lambda: frame.atomscale.validate(**{**MAPPING, "y": "nope"}))
    message = str(error)
    assert "row None" not in message
    unknown = error.failure_cases[error.failure_cases["check"] == "unknown_columns"]
    assert sorted(unknown["column"]) == ["lot", "operator", "y_mm"]
    assert "failed validation (4 failures)" in message

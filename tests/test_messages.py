"""Messages: examples without repeats, no row for a failure of the whole input, a hint for
every missing unit, plural agreement, the command line's own option names, and errors that
name the URL or the port they are about."""

from __future__ import annotations

import re
import socket

import numpy as np
import pandas as pd
import pytest
from conftest import needs_server

from atomscale_accessors import Client, RetryPolicy, units
from atomscale_accessors.cli import EXIT_API, EXIT_INVALID, main
from atomscale_accessors.cli.exits import command_line_terms
from atomscale_accessors.datasets import wafer_thickness_map
from atomscale_accessors.errors import (
    AnnotationExistsError,
    AnnotationValidationError,
    MapStructureError,
    TransportError,
    UploadError,
)
from atomscale_accessors.failures import MAX_EXAMPLES, FailureCollector, failure_table

MAPPING = {"value": "thk", "property_name": "thickness", "property_unit": "nm"}
CLI_MAPPING = ["--value", "thk", "--property-name", "thickness", "--property-unit", "nm"]


def points(n: int, **columns) -> pd.DataFrame:
    return pd.DataFrame({"x": np.arange(n, dtype=float), "y": 0.0, "thk": 1.0, **columns})


# -- examples ---------------------------------------------------------------------------------
def test_rows_failing_alike_share_one_example_line():
    frame = points(12, thk=["abc"] * 12)
    with pytest.raises(AnnotationValidationError) as info:
        frame.atomscale.validate(coord_units="mm", **MAPPING)
    message = str(info.value)
    assert message.count("thk = 'abc' (is_number)") == 1
    assert "rows 0, 1, 2, 3, 4 and 7 more: thk = 'abc' (is_number)" in message
    assert "example (all in .failure_cases):" in message


def test_distinct_failures_keep_their_own_lines_up_to_the_cap():
    failures = FailureCollector()
    failures.add(failure_table((i, "thk", "finite", float(i) * np.inf) for i in range(1, 30)))
    failures.add(failure_table([(i, "thk", "is_number", f"text {i}") for i in range(30)]))
    lines = [line for line in failures.message(60).splitlines() if line.startswith("  row")]
    assert len(lines) == MAX_EXAMPLES
    assert lines[0] == "  rows 1, 2, 3, 4, 5 and 24 more: thk = inf (finite)"
    assert lines[1] == "  row 0: thk = 'text 0' (is_number)"


@pytest.mark.parametrize("label", [None, np.nan, pd.NA, pd.NaT])
def test_a_failure_of_the_whole_input_is_never_shown_as_a_row(label):
    failures = FailureCollector()
    failures.add(
        failure_table(
            [
                (label, "property_value", "column_in_frame", "property_value"),
                (label, "property_unit", "text", {"thk": 3}),
            ]
        )
    )
    message = failures.message(3)
    assert "row " not in message
    assert "property_value: column_in_frame (1 case)" in message
    assert "  property_unit (text): {'thk': 3}" in message


def test_a_missing_value_column_gives_no_row_line():
    with pytest.raises(AnnotationValidationError) as info:
        points(3).atomscale.validate(value="property_value", property_name="t")
    assert "row None" not in str(info.value) and "row " not in str(info.value)


# -- hints for missing units ------------------------------------------------------------------
def test_a_missing_coord_units_has_a_hint_line():
    with pytest.raises(AnnotationValidationError) as info:
        points(3).atomscale.validate(**MAPPING)
    message = str(info.value)
    assert "  - positions without a unit: pass coord_units='mm'" in message
    assert "coord_units_given_with_coordinates (3 cases)" in message
    assert "  - no unit for property" not in message
    # Both hints when both units are missing, each once.
    with pytest.raises(AnnotationValidationError) as info:
        points(3).atomscale.validate(value="thk", property_name="thickness")
    message = str(info.value)
    assert message.count("no unit for property 'thickness'") == 1
    assert message.count("positions without a unit") == 1


def test_a_map_in_metres_for_coord_units_mm_without_pint(monkeypatch):
    monkeypatch.setattr(units, "unit_registry", lambda: None)
    ds = wafer_thickness_map(n=5)
    for axis in ("x", "y"):
        ds[axis] = (ds[axis] / 1000.0).assign_attrs(units="m")
    with pytest.raises(MapStructureError) as info:
        ds.atomscale.to_annotations(coord_units="mm")
    message = str(info.value)
    assert "coord_units='mm' asks for positions in 'mm'" in message
    assert "the coordinates are in 'm' (x and y)" in message
    assert "pass coord_units='m'" in message and "atomscale-accessors[units]" in message
    assert "different units" not in message
    assert info.value.failure_cases["check"].tolist() == ["same_units"]


# -- plural agreement -------------------------------------------------------------------------
def test_one_of_everything_is_said_in_the_singular(client, sample_id):
    with pytest.raises(AnnotationValidationError) as info:
        points(1, thk=[np.inf]).atomscale.validate(coord_units="mm", **MAPPING)
    assert "1 of 1 record failed validation (1 failure):" in str(info.value)
    assert "1 records" not in str(info.value) and "1 failures" not in str(info.value)

    points(1).atomscale.upload(sample_id, client=client, coord_units="mm", **MAPPING)
    with pytest.raises(AnnotationExistsError) as info:
        points(1).atomscale.upload(sample_id, client=client, coord_units="mm", **MAPPING)
    assert str(info.value).startswith("1 record is already stored on the sample")


def test_an_upload_error_agrees_with_its_counts(atomscale_server, sample_id):
    client = Client(
        api_key=atomscale_server.api_key,
        endpoint=atomscale_server.endpoint,
        retry=RetryPolicy(max_attempts=1),
    )
    atomscale_server.inject("error_before_commit", route="bulk_create", status=422, after=1)
    with pytest.raises(UploadError) as info:
        points(2).atomscale.upload(
            sample_id, client=client, coord_units="mm", chunksize=1, max_workers=1, **MAPPING
        )
    assert "1 annotation was created or updated, 1 was not created." in str(info.value)


@pytest.mark.usefixtures("env_client")
def test_the_command_line_agrees_too(run, tmp_path):
    path = tmp_path / "one.csv"
    points(1).to_csv(path, index=False)
    status, out, _ = run("validate", path, *CLI_MAPPING, "--coord-units", "mm")
    assert status == 0
    assert "1 record: 1 point, 1 property" in out


# -- the command line's words -------------------------------------------------------------
PYTHON_SYNTAX = re.compile(r"\b(value|values|if_exists|coord_units|metadata)=|\.existing|\.created")


@pytest.mark.usefixtures("env_client")
def test_validate_speaks_in_options(run, tmp_path):
    path = tmp_path / "points.csv"
    points(3, operator="me").to_csv(path, index=False)
    status, _, err = run("validate", path, "--property-name", "t")
    assert status == EXIT_INVALID
    assert "pass --value COLUMN (long form) or --values COLUMNS (wide form)" in err
    assert "map them (--x, --y, --value, --values, ...) or fold them into --metadata-columns" in err
    assert not PYTHON_SYNTAX.search(err), err

    status, _, err = run("validate", path, *CLI_MAPPING, "--metadata-columns", "operator")
    assert status == EXIT_INVALID
    assert "pass --coord-units mm (or the unit they are in)" in err
    assert "example (all written by --failures CSV):" in err
    assert ".failure_cases" not in err


@pytest.mark.usefixtures("env_client")
def test_upload_errors_speak_in_options(run, tmp_path, sample_id, atomscale_server):
    path = tmp_path / "points.csv"
    points(2).to_csv(path, index=False)
    args = ("upload", path, "--sample", sample_id, *CLI_MAPPING, "--coord-units", "mm")
    assert run(*args, "--no-progress")[0] == 0
    status, _, err = run(*args, "--no-progress")
    assert status == EXIT_INVALID
    assert "2 records are already stored" in err and "Pass --if-exists skip" in err
    assert not PYTHON_SYNTAX.search(err), err

    atomscale_server.inject("error_before_commit", route="bulk_create", status=422)
    status, _, err = run(*args, "--no-progress", "--if-exists", "append")
    assert status == EXIT_API
    assert "Re-run the same upload with --if-exists skip" in err
    assert not PYTHON_SYNTAX.search(err), err


def test_terms_that_are_not_options_are_left_alone():
    text = (
        "several coordinates have axis='X'; assign them with ds.assign_coords(x=...) or "
        ".isel(wavelength=0), or pass extra_dims='metadata' or x="
    )
    assert command_line_terms(text, "validate") == (
        "several coordinates have axis='X'; assign them with ds.assign_coords(x=...) or "
        ".isel(wavelength=0), or pass --extra-dims metadata or --x"
    )
    assert command_line_terms("pass dropna=True or progress_bar=False", "upload") == (
        "pass --dropna or --no-progress"
    )
    assert command_line_terms("pass value='x'", None) == "pass value='x'"


# -- errors that name where -------------------------------------------------------------------
@pytest.mark.usefixtures("env_client")
def test_an_unreachable_endpoint_is_named_without_the_key(run, monkeypatch):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}/prefix/"
    client = Client(api_key="secret-key-1234", endpoint=endpoint, retry=RetryPolicy(max_attempts=1))
    with pytest.raises(TransportError) as info:
        client.list_samples()
    message = str(info.value)
    assert f"GET {endpoint}physical_samples/ could not reach the server" in message
    assert "secret-key-1234" not in message

    monkeypatch.setenv("AS_API_ENDPOINT", endpoint)
    unknown = "a1b2c3d4-5678-90ab-cdef-1234567890ab"
    status, _, err = run("fetch", "--sample", unknown, "--max-attempts", "1")
    assert status == EXIT_API
    assert f"{endpoint}physical_samples/" in err and "AS_API_ENDPOINT" in err


@needs_server
def test_serve_names_the_port_it_cannot_take(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status = main(["serve", "--host", "127.0.0.1", "--port", str(port)])
    err = capsys.readouterr().err
    assert status == 1
    assert f"cannot serve on 127.0.0.1 port {port}" in err
    assert "--port" in err

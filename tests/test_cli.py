"""The command line: validate, upload and fetch against the real local server.

In-process through ``main([...])`` with captured output, plus a real ``python -m`` run.
Every test that reaches the server checks that the API key never shows in the output.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import thickness_frame

from atomscale_accessors import cli
from atomscale_accessors.cli import EXIT_API, EXIT_INVALID, EXIT_OK, EXIT_USAGE, files, main
from atomscale_accessors.cli.options import map_options, table_mapping
from atomscale_accessors.datasets import sheet_resistance_map, wafer_thickness_map

MAPPING = [
    "--x",
    "x_mm",
    "--y",
    "y_mm",
    "--value",
    "thk",
    "--property-name",
    "thickness",
    "--property-unit",
    "nm",
    "--coord-units",
    "mm",
]
HAS_NETCDF = bool(files.netcdf_engines())
needs_netcdf = pytest.mark.skipif(
    not HAS_NETCDF, reason="no netCDF engine for xarray (h5netcdf, netCDF4 or scipy)"
)


@pytest.fixture
def points_csv(tmp_path: Path) -> Path:
    path = tmp_path / "points.csv"
    thickness_frame(30).reset_index(drop=True).to_csv(path, index=False)
    return path


def sorted_values(frame: pd.DataFrame) -> pd.DataFrame:
    cols = ["property_name", "coord_x", "coord_y", "property_value"]
    # Text as plain objects: fetched frames keep repeated text as categoricals.
    out = frame[cols].astype({"property_name": object})
    return out.sort_values(cols[:3]).reset_index(drop=True)


# -- usage ---------------------------------------------------------------------------------------
def test_help_lists_every_command_and_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "serve", "validate", "upload", "fetch"):
        assert command in out
    assert "AS_API_KEY" in out and "exit status" in out


@pytest.mark.parametrize(
    "argv",
    [
        ["upload", "x.csv"],  # no --sample
        ["fetch", "--sample", "  "],  # blank
        ["upload", "x.csv", "--sample", "a1b2c3d4-5678-90ab-cdef-1234567890ab", "--if-exists", "x"],
        ["fetch", "--sample", "a1b2c3d4-5678-90ab-cdef-1234567890ab", "--x-range", "1"],
        ["frobnicate"],
    ],
)
def test_argparse_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == EXIT_USAGE
    assert "usage:" in capsys.readouterr().err


def test_options_of_the_wrong_kind_of_file_are_usage_errors(run, points_csv, tmp_path):
    status, _, err = run("validate", points_csv, "--variables", "thk")
    assert status == EXIT_USAGE
    assert "--variables applies to NetCDF maps" in err
    status, _, err = run("validate", points_csv, "--units", "thickness")
    assert status == EXIT_USAGE
    assert "NAME=VALUE" in err


def test_mapping_options_reach_the_library(points_csv):
    args = cli.build_parser().parse_args(
        [
            "validate",
            str(points_csv),
            "--values",
            "a,b",
            "--values",
            "c",
            "--units",
            "a=nm,b=eV",
            "--units",
            "c=1",
            "--metadata-columns",
            "op",
            "--char-source-type",
            "xrd",
        ]
    )
    assert table_mapping(args) == {
        "values": ["a", "b", "c"],
        "units": {"a": "nm", "b": "eV", "c": "1"},
        "metadata": ["op"],
        "char_source_type": "xrd",
    }
    renamed = cli.build_parser().parse_args(["validate", "m.nc", "--values", "thk=thickness"])
    assert table_mapping(renamed) == {"values": {"thk": "thickness"}}
    nc = cli.build_parser().parse_args(
        ["validate", "m.nc", "--variables", "t", "--units", "t=nm", "--property-name", "t=thk"]
    )
    assert map_options(nc) == {
        "variables": ["t"],
        "property_unit": {"t": "nm"},
        "property_name": {"t": "thk"},
    }


# -- validate --------------------------------------------------------------------------------------
def test_validate_says_what_a_good_file_holds(run, points_csv):
    status, out, err = run("validate", points_csv, *MAPPING, "--char-source-type", "ellipsometry")
    assert status == EXIT_OK, err
    assert "valid" in out
    assert "30 records: 30 points, 1 property" in out
    assert "thickness" in out and " nm " in out
    assert "positions in mm (sample_relative); technique: ellipsometry" in out


def test_validate_lists_failures_capped_with_line_numbers(run, tmp_path):
    frame = thickness_frame(40).reset_index(drop=True)
    frame.loc[5:30, "thk"] = np.nan  # 26 failures, more than the message shows
    frame.loc[1, "x_mm"] = np.inf
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    every = tmp_path / "failures.csv"

    status, out, err = run("validate", path, *MAPPING)
    assert status == EXIT_INVALID
    assert out == ""
    assert "27 of 40 records failed validation" in err
    assert "property_value: not_nullable (26 cases)" in err
    # The 26 missing values share one example line, naming a few of their rows.
    assert "examples (all written by --failures CSV)" in err
    assert "  rows 7, 8, 9, 10, 11 and 21 more: property_value = nan (not_nullable)" in err
    assert "row 3: coord_x = inf" in err  # data row 1 is line 3 of the file
    assert "line in the file" in err
    assert "Traceback" not in err

    status, out, _ = run("validate", path, *MAPPING, "--failures", every)
    assert status == EXIT_INVALID
    assert len(pd.read_csv(every)) == 27
    assert "27 failures written" in out


def test_unreadable_files_exit_1(run, tmp_path, monkeypatch):
    status, _, err = run("validate", tmp_path / "missing.csv")
    assert status == EXIT_INVALID
    assert "no such file" in err
    odd = tmp_path / "points.xlsx"
    odd.write_text("x")
    status, _, err = run("validate", odd)
    assert status == EXIT_INVALID
    assert ".csv" in err and ".parquet" in err and ".nc" in err
    broken = tmp_path / "broken.csv"
    broken.write_text('x,y\n"1,2\n')  # a quote that never closes
    status, _, err = run("validate", broken)
    assert status == EXIT_INVALID
    assert "cannot read" in err
    if files.parquet_available():
        broken = tmp_path / "broken.parquet"
        broken.write_bytes(b"not parquet at all")
        status, _, err = run("validate", broken)
        assert status == EXIT_INVALID
        assert "cannot read" in err


def test_missing_parquet_and_netcdf_engines_are_clear_errors(run, tmp_path, monkeypatch):
    path = tmp_path / "points.parquet"
    path.write_bytes(b"PAR1")
    monkeypatch.setattr(files, "parquet_available", lambda: False)
    status, _, err = run("validate", path)
    assert status == EXIT_INVALID
    assert 'pip install "atomscale-accessors[io]"' in err

    nc = tmp_path / "map.nc"
    nc.write_bytes(b"CDF")
    monkeypatch.setattr(files, "netcdf_engines", lambda: [])
    status, _, err = run("validate", nc)
    assert status == EXIT_INVALID
    assert "netCDF engine" in err and "atomscale-accessors[io]" in err
    # An output format that cannot be written fails before anything is fetched.
    status, _, err = run(
        "fetch", "--sample", "a1b2c3d4-5678-90ab-cdef-1234567890ab", "-o", tmp_path / "o.nc"
    )
    assert status == EXIT_INVALID
    assert "netCDF engine" in err


# The command line in a fresh interpreter where pyarrow and fastparquet cannot be imported,
# as in an install without the io extra (arguments after the script go to main).
_WITHOUT_PARQUET = """
import sys


class NoParquet:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("pyarrow", "fastparquet"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NoParquet())
from atomscale_accessors.cli import main

sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("command", ["fetch", "validate"])
def test_parquet_without_pyarrow_names_the_io_extra(tmp_path, command):
    stored = tmp_path / "stored.parquet"
    if command == "fetch":  # the output is checked before anything is fetched
        argv = ["fetch", "--sample", "a1b2c3d4-5678-90ab-cdef-1234567890ab", "-o", stored]
        argv += ["--api-key", "not-used", "--endpoint", "http://127.0.0.1:9/"]
    else:
        stored.write_bytes(b"PAR1")
        argv = ["validate", stored, *MAPPING]
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PARQUET, *map(str, argv)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == EXIT_INVALID, result.stderr
    assert "Parquet needs pyarrow" in result.stderr
    assert 'pip install "atomscale-accessors[io]"' in result.stderr
    assert "Traceback" not in result.stderr
    assert command == "validate" or not stored.exists()


# -- upload and fetch --------------------------------------------------------------------------------
def test_csv_upload_fetch_round_trip(run, env_client, atomscale_server, sample_id, points_csv):
    created = points_csv.parent / "created.csv"
    status, out, err = run("upload", points_csv, "--sample", sample_id, *MAPPING, "-o", created)
    assert status == EXIT_OK, err
    assert "30 annotations created" in out
    assert atomscale_server.annotation_count(sample_id) == 30
    written = pd.read_csv(created)
    assert written["line"].tolist() == list(range(2, 32))  # the input rows, by line
    assert written["annotation_id"].is_unique

    back = points_csv.parent / "back.csv"
    status, out, err = run("fetch", "--sample", sample_id, "-o", back)
    assert status == EXIT_OK, err
    assert "30 annotations" in out
    source = pd.read_csv(points_csv)
    fetched = pd.read_csv(back)
    expected = pd.DataFrame(
        {
            "property_name": "thickness",
            "coord_x": source["x_mm"],
            "coord_y": source["y_mm"],
            "property_value": source["thk"],
        }
    )
    pd.testing.assert_frame_equal(sorted_values(fetched), sorted_values(expected))

    # The fetched file is itself a valid upload for another sample.
    other = atomscale_server.create_sample("copy")
    status, out, err = run("upload", back, "--sample", other)
    assert status == EXIT_OK, err
    assert atomscale_server.annotation_count(other) == 30


def test_rerun_is_refused_then_skip_sends_nothing_twice(
    run, env_client, atomscale_server, sample_id, points_csv
):
    assert run("upload", points_csv, "--sample", sample_id, *MAPPING)[0] == EXIT_OK
    status, out, err = run("upload", points_csv, "--sample", sample_id, *MAPPING)
    assert status == EXIT_INVALID
    assert "already stored" in err and "--if-exists skip" in err
    status, out, err = run(
        "upload", points_csv, "--sample", sample_id, *MAPPING, "--if-exists", "skip"
    )
    assert status == EXIT_OK, err
    assert "0 annotations created" in out
    assert atomscale_server.annotation_count(sample_id) == 30


def test_dry_run_sends_nothing_and_needs_no_key(
    run, atomscale_server, sample_id, points_csv, monkeypatch
):
    for name in ("AS_API_KEY", "ATOMSCALE_API_KEY", "AS_API_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    status, out, err = run(
        "upload", points_csv, "--sample", sample_id, *MAPPING, "--dry-run", "--chunk-size", "7"
    )
    assert status == EXIT_OK, err
    assert "30 annotations would be sent" in out and "in 5 requests" in out
    assert atomscale_server.annotation_count(sample_id) == 0


def test_parquet_round_trip_keeps_metadata(run, env_client, sample_id, tmp_path):
    pytest.importorskip("pyarrow")
    frame = thickness_frame(12).reset_index(drop=True)
    frame["operator"] = "ann"
    frame["rs"] = frame["thk"] / 2
    source = tmp_path / "points.parquet"
    frame.to_parquet(source)
    status, out, err = run(
        "upload",
        source,
        "--sample",
        sample_id,
        "--x",
        "x_mm",
        "--y",
        "y_mm",
        "--values",
        "thk=thickness,rs=sheet_resistance",
        "--units",
        "thickness=nm,sheet_resistance=ohm/sq",
        "--coord-units",
        "mm",
        "--metadata-columns",
        "operator",
    )
    assert status == EXIT_OK, err
    assert "24 annotations created" in out

    back = tmp_path / "back.parquet"
    status, _, err = run("fetch", "--sample", sample_id, "-o", back, "--property-name", "thickness")
    assert status == EXIT_OK, err
    fetched = pd.read_parquet(back)
    assert len(fetched) == 12
    expected = frame.rename(columns={"x_mm": "coord_x", "y_mm": "coord_y", "thk": "property_value"})
    expected = expected.assign(property_name="thickness")
    pd.testing.assert_frame_equal(sorted_values(fetched), sorted_values(expected))
    assert set(fetched["metadata"]) == {'{"operator": "ann"}'}
    # Read back by the command line, the JSON metadata is a dict again and validates.
    status, out, err = run("validate", back)
    assert status == EXIT_OK, err
    assert "12 records: 12 points, 1 property" in out


@needs_netcdf
def test_netcdf_upload_fetch_validate_round_trip(run, env_client, sample_id, tmp_path):
    ds = wafer_thickness_map(n=15)
    source = tmp_path / "map.nc"
    ds.to_netcdf(source)
    status, out, err = run("validate", source)
    assert status == EXIT_OK, err
    n_cells = int(ds.thickness.notnull().sum())
    assert f"{n_cells} records: {n_cells} points" in out

    status, out, err = run("upload", source, "--sample", sample_id)
    assert status == EXIT_OK, err
    assert f"{n_cells} annotations created" in out

    back = tmp_path / "back.nc"
    status, out, err = run("fetch", "--sample", sample_id, "-o", back)
    assert status == EXIT_OK, err
    with xr.open_dataset(back) as stored:
        fetched = stored.load()
    np.testing.assert_array_equal(fetched.thickness.values, ds.thickness.values)
    assert fetched.thickness.attrs["units"] == "nm"
    assert fetched.x.attrs["units"] == "mm"
    status, out, err = run("validate", back)
    assert status == EXIT_OK, err
    assert f"{n_cells} records" in out


def test_fetch_prints_a_compact_table_and_filters(run, env_client, client, sample_id):
    sheet_resistance_map().atomscale.upload(sample_id, client=client, progress_bar=False)
    status, out, err = run("fetch", "--sample", sample_id, "--rows", "6")
    assert status == EXIT_OK, err
    assert out.startswith(f"49 annotations of sample {sample_id} (sheet_resistance: 49 in ohm/sq)")
    lines = out.splitlines()
    assert "property_value" in lines[1] and "coord_x" in lines[1]
    assert "..." in out
    assert len(lines) == 2 + 6 + 1  # summary, header, 3 first, "...", 3 last
    status, out, _ = run(
        "fetch", "--sample", sample_id, "--x-range", "-1", "1", "--y-range", "-1", "1"
    )
    assert status == EXIT_OK
    assert out.startswith("1 annotation of sample")  # only the centre site
    status, out, _ = run("fetch", "--sample", sample_id, "--property-name", "thickness")
    assert status == EXIT_OK
    assert "no annotations" in out


# -- errors -------------------------------------------------------------------------------------
def test_api_errors_exit_3_and_never_show_the_key(run, atomscale_server, sample_id, monkeypatch):
    key = atomscale_server.api_key
    endpoint = atomscale_server.endpoint
    monkeypatch.delenv("AS_API_KEY", raising=False)
    monkeypatch.delenv("ATOMSCALE_API_KEY", raising=False)
    monkeypatch.delenv("AS_API_ENDPOINT", raising=False)

    unknown = "a1b2c3d4-5678-90ab-cdef-1234567890ab"
    status, _, err = run("fetch", "--sample", unknown, "--api-key", key, "--endpoint", endpoint)
    assert status == EXIT_API
    assert "404" in err and "Check the sample id" in err

    status, _, err = run(
        "fetch", "--sample", sample_id, "--api-key", "wrong-key-42", "--endpoint", endpoint
    )
    assert status == EXIT_API
    assert "401" in err and "AS_API_KEY" in err
    assert "wrong-key-42" not in err

    status, _, err = run("fetch", "--sample", sample_id, "--endpoint", endpoint)
    assert status == EXIT_API
    assert "no Atomscale API key" in err

    monkeypatch.setenv("AS_API_KEY", key)
    unreachable = ["--endpoint", "http://127.0.0.1:9/", "--max-attempts", "1"]
    status, _, err = run("fetch", "--sample", sample_id, *unreachable)
    assert status == EXIT_API
    assert "could not reach the server" in err
    assert "Traceback" not in err


def test_debug_shows_the_traceback_without_the_key(run, atomscale_server, monkeypatch):
    monkeypatch.setenv("AS_API_KEY", atomscale_server.api_key)
    monkeypatch.setenv("AS_API_ENDPOINT", atomscale_server.endpoint)
    status, _, err = run("fetch", "--sample", "a1b2c3d4-5678-90ab-cdef-1234567890ab", "--debug")
    assert status == EXIT_API
    assert "Traceback" in err and "ApiError" in err


def test_an_upload_stopped_part_way_exits_3_and_skip_completes_it(
    run, env_client, atomscale_server, sample_id, points_csv
):
    atomscale_server.inject(
        "error_before_commit", status=400, route="bulk_create", after=2, times=50
    )
    argv = ["upload", points_csv, "--sample", sample_id, *MAPPING, "--chunk-size", "5"]
    status, _, err = run(*argv)
    assert status == EXIT_API
    assert "--if-exists skip completes the upload" in err
    assert 0 < atomscale_server.annotation_count(sample_id) < 30
    atomscale_server.clear_faults()
    status, _, err = run(*argv, "--if-exists", "skip")
    assert status == EXIT_OK, err
    assert atomscale_server.annotation_count(sample_id) == 30


class _Terminal:
    """A stand-in stderr that says it is a terminal, as when a person is watching."""

    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_unless_no_progress(
    env_client, atomscale_server, sample_id, points_csv, monkeypatch
):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["upload", str(points_csv), "--sample", sample_id, *MAPPING]
    assert main([*argv, "--no-progress"]) == EXIT_OK
    assert "upload" not in terminal.text
    assert main([*argv, "--if-exists", "append"]) == EXIT_OK
    assert "upload" in terminal.text and "30" in terminal.text
    assert atomscale_server.api_key not in terminal.text


# -- a real process -------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_python_m_upload_in_a_subprocess(atomscale_server, sample_id, points_csv):
    env = {
        **os.environ,
        "AS_API_KEY": atomscale_server.api_key,
        "AS_API_ENDPOINT": atomscale_server.endpoint,
    }
    env.pop("ATOMSCALE_API_KEY", None)
    command = [sys.executable, "-m", "atomscale_accessors", "upload", str(points_csv)]
    command += ["--sample", sample_id, *MAPPING]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        timeout=110,
    )
    assert done.returncode == EXIT_OK, done.stderr
    assert "30 annotations created" in done.stdout
    assert atomscale_server.annotation_count(sample_id) == 30
    again = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        timeout=110,
    )
    assert again.returncode == EXIT_INVALID
    assert "Traceback" not in again.stderr
    for output in (done.stdout, done.stderr, again.stdout, again.stderr):
        assert atomscale_server.api_key not in output


def test_max_attempts_bounds_the_requests_to_a_busy_server(run, atomscale_server, sample_id):
    atomscale_server.inject("error_before_commit", status=503, route="list_annotations", times=50)
    atomscale_server.reset_counters()
    connection = ["--api-key", atomscale_server.api_key, "--endpoint", atomscale_server.endpoint]
    status, _, err = run("fetch", "--sample", sample_id, *connection, "--max-attempts", "2")
    assert status == EXIT_API and "503" in err
    assert atomscale_server.request_count("list_annotations") == 2

    atomscale_server.reset_counters()
    status, _, _ = run("fetch", "--sample", sample_id, *connection, "--max-attempts", "1")
    assert status == EXIT_API
    assert atomscale_server.request_count("list_annotations") == 1


@pytest.mark.parametrize("given", ["0", "-3", "two"])
def test_max_attempts_below_one_is_a_usage_error(given, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fetch", "--sample", "S", "--max-attempts", given])
    assert done.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--max-attempts" in err and repr(given) in err

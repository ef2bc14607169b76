"""The ``atomscale-accessors`` command line.

One function per subcommand (``cmd_<name>``), registered in :func:`build_parser`; add a
subcommand by writing its function and one ``_add_<name>`` block there.

The subcommands: ``demo`` (the whole story on a local server: validate, upload, fetch,
round trip, pictures), ``serve`` (the local Atomscale-compatible server), ``validate FILE``
(check a CSV, Parquet or NetCDF file and say what it holds; nothing is sent), ``upload FILE
--sample UUID`` (validate the file, then create its annotations on a sample, exactly once)
and ``fetch --sample UUID`` (the sample's annotations, as a table or written to a file).

The key and the endpoint come from ``AS_API_KEY`` (or ``ATOMSCALE_API_KEY``) and
``AS_API_ENDPOINT``, as for the library, or from ``--api-key`` and ``--endpoint``. Prefer
the variable: a key given on the command line can be read by every user of the machine in
the process list and stays in the shell's history.

Exit status: 0 done; 1 invalid input (the data failed validation, it is already stored, the
file cannot be read or written); 2 usage (wrong options); 3 configuration, API or network
error (no API key, the server answered an error, it could not be reached, an upload stopped
part way). Errors are one paragraph on stderr; ``--debug`` adds the traceback.

Examples
--------
Run a local server on a file database, with a generated key printed once::

    atomscale-accessors serve --port 8000 --db annotations.sqlite

Check a table, upload it, and fetch it back as NetCDF::

    atomscale-accessors validate points.csv --x x_mm --y y_mm --value thk \\
        --property-name thickness --property-unit nm --coord-units mm
    atomscale-accessors upload points.csv --sample a1b2c3d4-5678-90ab-cdef-1234567890ab \\
        --x x_mm --y y_mm --value thk --property-name thickness --property-unit nm \\
        --coord-units mm -o created.csv
    atomscale-accessors fetch --sample a1b2c3d4-5678-90ab-cdef-1234567890ab -o stored.nc
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import (
    AnnotationExistsError,
    AnnotationValidationError,
    ApiError,
    ConfigurationError,
    InvalidIdentifierError,
    TransportError,
    UploadError,
)
from .failures import MAX_FAILURE_CASES

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

    from .client import Client

__all__ = [
    "EXIT_API",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "cmd_demo",
    "cmd_fetch",
    "cmd_serve",
    "cmd_upload",
    "cmd_validate",
    "main",
]

Handler = Callable[[argparse.Namespace], int]

#: Exit status: done.
EXIT_OK = 0
#: Exit status: invalid input (validation failed, already stored, unreadable file).
EXIT_INVALID = 1
#: Exit status: usage (unknown or conflicting options).
EXIT_USAGE = 2
#: Exit status: configuration, API or network error.
EXIT_API = 3

_TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
_NETCDF_SUFFIXES = {".nc", ".nc4", ".netcdf", ".cdf"}
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zip", ".zst"}
# Engines xarray can read and write NetCDF with, in order of preference.
_NETCDF_ENGINES = ("netcdf4", "h5netcdf", "scipy")
_NETCDF_HINT = 'pip install "atomscale-accessors[netcdf]" (or netCDF4, or scipy for NetCDF3 files)'
_PARQUET_HINT = "pip install pyarrow"
_KEY_VARIABLES = ("AS_API_KEY", "ATOMSCALE_API_KEY")
# Columns shown by ``fetch`` on the terminal.
_SHOWN_COLUMNS = [
    "property_name",
    "property_value",
    "property_unit",
    "coord_x",
    "coord_y",
    "coord_units",
    "char_source_type",
]


class _UsageError(Exception):
    """Options that parse but do not fit together (exit status 2)."""


class _InputError(Exception):
    """A file that cannot be read or written (exit status 1)."""


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0-65535, got {value}")
    return value


def _limit(text: str) -> int | None:
    """A size limit: a non-negative int, or ``none`` for no limit."""
    if text.lower() == "none":
        return None
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"limit must be >= 0 or 'none', got {value}")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the local Atomscale-compatible server in the foreground.

    Prints the endpoint once the socket is bound, and the API key when it was generated
    (a key given with ``--api-key`` is never echoed).
    """
    try:
        from atomscale_accessors.server import serve
    except ImportError as exc:
        print(
            f"error: the server needs its extra ({exc.name} is missing): "
            'pip install "atomscale-accessors[server]"',
            file=sys.stderr,
        )
        return 1

    where = "in memory" if args.db is None else args.db

    def announce(endpoint: str, api_key: str, generated: bool) -> None:
        print(f"Serving the Atomscale annotation API at {endpoint} (database: {where})")
        if generated:
            print(f"API key (generated, shown once): {api_key}")
        sys.stdout.flush()  # a parent process may be waiting for these lines

    try:
        serve(
            host=args.host,
            port=args.port,
            db_path=args.db,
            api_key=args.api_key,
            access_log=not args.no_access_log,
            max_bulk_annotations=args.max_bulk_annotations,
            max_body_bytes=args.max_body_bytes,
            on_ready=announce,
        )
    except OSError as exc:  # port taken, database path unusable
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # uvicorn stops gracefully on Ctrl+C, then raises the signal again once done
        pass
    return 0


def _add_serve(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run a local server that speaks the Atomscale annotation API",
        description=(
            "Run a local server that speaks the Atomscale annotation API, with its data in"
            " SQLite. Every request needs the API key in the X-API-KEY header."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    parser.add_argument(
        "--port", type=_port, default=8000, help="port, 0 for any free one (default: %(default)s)"
    )
    parser.add_argument(
        "--db", metavar="PATH", default=None, help="SQLite file (default: in memory)"
    )
    parser.add_argument(
        "--api-key",
        metavar="KEY",
        default=None,
        help="the key clients must send (default: generate one and print it)",
    )
    parser.add_argument(
        "--max-bulk-annotations",
        type=_limit,
        default=50_000,
        metavar="N",
        help="most annotations per bulk request, or 'none' (default: %(default)s)",
    )
    parser.add_argument(
        "--max-body-bytes",
        type=_limit,
        default=64 * 2**20,
        metavar="N",
        help="largest request body in bytes, or 'none' (default: %(default)s)",
    )
    parser.add_argument(
        "--no-access-log", action="store_true", help="do not log one line per request"
    )
    parser.set_defaults(handler=cmd_serve)


# -- files -----------------------------------------------------------------------------------
def _file_kind(path: Path) -> str:
    """``csv``, ``tsv``, ``parquet`` or ``netcdf``, from the file name's extension."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in _NETCDF_SUFFIXES:
        return "netcdf"
    if last in _TABLE_SUFFIXES:
        return _TABLE_SUFFIXES[last]
    raise _InputError(
        f"cannot tell the format of {str(path)!r} from its extension: use .csv, .tsv, "
        ".parquet or .nc"
    )


def _netcdf_engines() -> list[str]:
    """The NetCDF engines xarray finds installed, in order of preference."""
    import xarray as xr

    installed = xr.backends.list_engines()
    return [name for name in _NETCDF_ENGINES if name in installed]


def _netcdf_engine() -> str:
    engines = _netcdf_engines()
    if not engines:
        raise _InputError(
            f"reading and writing NetCDF needs a netCDF engine for xarray and none is "
            f"installed: {_NETCDF_HINT}"
        )
    return engines[0]


def _parquet_available() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("pyarrow", "fastparquet"))


def _check_parquet() -> None:
    if not _parquet_available():
        raise _InputError(f"reading and writing Parquet needs pyarrow: {_PARQUET_HINT}")


def _read_input(path_text: str) -> pd.DataFrame | xr.Dataset:
    """Read a CSV/TSV or Parquet table, or a NetCDF map, into memory.

    CSV rows are labelled by their line in the file (the header is line 1), so that
    validation failures point at lines a person can find. A ``metadata`` column of JSON
    text (as written by ``fetch -o``) is decoded into dicts.
    """
    import pandas as pd

    path = Path(path_text)
    kind = _file_kind(path)
    if not path.is_file():
        raise _InputError(f"no such file: {path_text!r}")
    try:
        if kind == "netcdf":
            import xarray as xr

            engine = _netcdf_engine()
            # Loaded whole and closed at once: the file may be rewritten right after.
            with xr.open_dataset(path, engine=engine) as ds:
                return ds.load()
        if kind == "parquet":
            _check_parquet()
            frame = pd.read_parquet(path)
        else:
            frame = _numbers_kept(pd.read_csv(path, sep="\t" if kind == "tsv" else ","))
            frame.index = pd.RangeIndex(2, len(frame) + 2, name="line")
    except _InputError:
        raise
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise _InputError(f"cannot read {path_text!r}: {_first_line(exc)}") from exc
    if "metadata" in frame.columns:
        frame["metadata"] = _decode_metadata(frame["metadata"])
    return frame


def _numbers_kept(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers read as numbers in a text column that has a few stray cells.

    One cell that is not a number makes the CSV reader read the whole column as text;
    this keeps the numerals as numbers, so validation names only the stray cells (by
    their line in the file) instead of every row.
    """
    import pandas as pd

    for name in frame.columns:
        column = frame[name]
        if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
            continue
        numbers = pd.to_numeric(column, errors="coerce")
        parsed = numbers.notna()
        if parsed.sum() > (column.notna() & ~parsed).sum():  # mostly numbers
            frame[name] = column.astype(object).where(~parsed, numbers.astype(object))
    return frame


def _decode_metadata(column: pd.Series) -> pd.Series:
    def decode(value: Any) -> Any:
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                return json.loads(value)
            except ValueError:
                return value  # left for validation to report
        return value

    return column.astype(object).map(decode)


def _encode_metadata(frame: pd.DataFrame) -> pd.DataFrame:
    """Metadata dicts as JSON text, which CSV and Parquet store without loss."""
    if "metadata" not in frame.columns:
        return frame
    text = frame["metadata"].map(
        lambda v: json.dumps(v) if isinstance(v, dict) else None, na_action="ignore"
    )
    return frame.assign(metadata=text.astype(object))


def _check_output(path_text: str) -> str:
    """The kind of an output file; checked before anything is sent or fetched."""
    kind = _file_kind(Path(path_text))
    if kind == "netcdf":
        _netcdf_engine()
    elif kind == "parquet":
        _check_parquet()
    return kind


def _write_frame(frame: pd.DataFrame, path_text: str, *, keep_index: bool = False) -> None:
    """Write an annotation frame as CSV/TSV, Parquet, or a NetCDF map (via ``to_xarray``)."""
    import pandas as pd

    kind = _check_output(path_text)
    try:
        if kind == "netcdf":
            ds = frame.atomscale.to_xarray()
            ds.to_netcdf(path_text, engine=_netcdf_engine())
            return
        out = _encode_metadata(frame)
        default_index = out.index.names == [None] and out.index.equals(pd.RangeIndex(len(out)))
        if keep_index and not default_index:
            out = out.reset_index()
        if kind == "parquet":
            out.to_parquet(path_text, index=False)
        else:
            out.to_csv(path_text, index=False, sep="\t" if kind == "tsv" else ",")
    except OSError as exc:
        raise _InputError(f"cannot write {path_text!r}: {_first_line(exc)}") from exc


# -- mapping options ---------------------------------------------------------------------------
def _split(items: Sequence[str] | None) -> list[str]:
    """Repeated options and comma lists, flattened: ``-a x,y -a z`` -> ``[x, y, z]``."""
    out: list[str] = []
    for item in items or []:
        out.extend(part.strip() for part in item.split(",") if part.strip())
    return out


def _pairs(items: Sequence[str] | None, option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in _split(items):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise _UsageError(f"{option} takes NAME=VALUE, got {item!r}")
        pairs[name.strip()] = value.strip()
    return pairs


def _common_mapping(args: argparse.Namespace) -> dict[str, Any]:
    mapping: dict[str, Any] = {}
    for option in ("x", "y", "z", "coord_units", "coord_ref_frame", "char_source_type", "data_id"):
        value = getattr(args, option, None)
        if value is not None:
            mapping[option] = value
    return mapping


def _table_mapping(args: argparse.Namespace) -> dict[str, Any]:
    """Options for ``DataFrame.atomscale`` (see :func:`~atomscale_accessors.records.to_records`)."""
    for option, given in (("--variables", args.variables), ("--extra-dims", args.extra_dims)):
        if given:
            raise _UsageError(f"{option} applies to NetCDF maps, not to tables")
    mapping = _common_mapping(args)
    if args.value is not None:
        mapping["value"] = args.value
    if args.values:
        items = _split(args.values)
        if any("=" in item for item in items):
            mapping["values"] = _pairs(items, "--values")
        else:
            mapping["values"] = items
    if args.property_name is not None:
        mapping["property_name"] = args.property_name
    if args.property_unit is not None:
        mapping["property_unit"] = args.property_unit
    if args.units:
        mapping["units"] = _pairs(args.units, "--units")
    if args.metadata_columns:
        mapping["metadata"] = _split(args.metadata_columns)
    return mapping


def _map_options(args: argparse.Namespace) -> dict[str, Any]:
    """Options for ``Dataset.atomscale`` (see :func:`~atomscale_accessors.flatten.flatten_map`)."""
    for option, given, instead in (
        ("--value", args.value, "--variables"),
        ("--values", args.values, "--variables"),
        ("--metadata-columns", args.metadata_columns, None),
    ):
        if given:
            hint = f"; use {instead}" if instead else ""
            raise _UsageError(f"{option} applies to tables, not to NetCDF maps{hint}")
    options = _common_mapping(args)
    if args.variables:
        options["variables"] = _split(args.variables)
    if args.property_name is not None:
        name = args.property_name
        options["property_name"] = _pairs([name], "--property-name") if "=" in name else name
    if args.property_unit is not None and args.units:
        raise _UsageError(
            "give --property-unit (every variable) or --units VARIABLE=UNIT, not both"
        )
    if args.property_unit is not None:
        options["property_unit"] = args.property_unit
    if args.units:
        options["property_unit"] = _pairs(args.units, "--units")
    if args.extra_dims is not None:
        options["extra_dims"] = args.extra_dims
    return options


def _mapping_for(data: Any, args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    return _table_mapping(args) if isinstance(data, pd.DataFrame) else _map_options(args)


# -- summaries ---------------------------------------------------------------------------------
def _describe_records(records: pd.DataFrame) -> list[str]:
    """What validated records hold: points, properties with units and ranges, coordinates."""
    from .demo import _format_table

    n_points = len(records[["coord_x", "coord_y", "coord_z"]].drop_duplicates())
    names = records["property_name"].unique().tolist()
    rows = []
    for name in names:
        part = records[(records["property_name"] == name).to_numpy()]
        values = part["property_value"]
        rows.append(
            (
                str(name),
                f"{len(part):,}",
                _joined(part["property_unit"]),
                f"{values.min():.6g}",
                f"{values.mean():.6g}",
                f"{values.max():.6g}",
            )
        )
    lines = [
        f"{len(records):,} records: {n_points:,} points, {len(names)} "
        f"{'property' if len(names) == 1 else 'properties'}"
    ]
    table = _format_table(("property", "records", "unit", "min", "mean", "max"), rows, {1, 3, 4, 5})
    lines += ["  " + line for line in table.splitlines()]
    coords = f"positions in {_joined(records['coord_units']) or 'no unit'}"
    coords += f" ({_joined(records['coord_ref_frame'])})"
    technique = _joined(records["char_source_type"])
    if technique:
        coords += f"; technique: {technique}"
    lines.append("  " + coords)
    return lines


def _joined(column: pd.Series) -> str:
    found = [str(v) for v in column.dropna().unique().tolist()]
    return ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# -- clients -----------------------------------------------------------------------------------
def _client(args: argparse.Namespace) -> Client:
    from .client import Client

    return Client(api_key=args.api_key, endpoint=args.endpoint)


def _secrets(args: argparse.Namespace | None) -> list[str]:
    """Every key this process could be using, to mask it in anything printed."""
    found = [getattr(args, "api_key", None)] if args is not None else []
    found += [os.environ.get(name) for name in _KEY_VARIABLES]
    # Masking a very short "key" would garble every message; such keys are rejected anyway.
    return [key for key in found if key and len(key) >= 4]


def _redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


# -- subcommands ----------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo (:func:`atomscale_accessors.demo.run_demo`) and print its summary."""
    from .demo import run_demo

    output = Path(args.output)
    print("atomscale-accessors demo: wafer maps from xarray to the Atomscale API and back\n")
    result = run_demo(output, progress=False if args.no_progress else None, echo=print)
    print()
    print(result.table())
    print()
    if not result.ok:
        print(result.summary(), file=sys.stderr)
        print("error: a check of the demo failed (see above)", file=sys.stderr)
        return EXIT_INVALID
    print(f"all checks passed in {result.seconds:.1f} s")
    return EXIT_OK


def cmd_validate(args: argparse.Namespace) -> int:
    """Read a file, validate it as the library would before an upload, say what it holds."""
    data = _read_input(args.file)
    mapping = _mapping_for(data, args)
    try:
        records = data.atomscale.validate(dropna=args.dropna, **mapping)
    except AnnotationValidationError as exc:
        if args.failures:
            exc.failure_cases.to_csv(args.failures, index=False)
            print(f"{len(exc.failure_cases):,} failures written to {args.failures}")
        raise
    print(f"{args.file}: valid")
    for line in _describe_records(records):
        print(line)
    return EXIT_OK


def cmd_upload(args: argparse.Namespace) -> int:
    """Validate a file and create its annotations on a sample, exactly once."""
    from .demo import _format_table

    if args.output is not None:
        _check_output(args.output)
    data = _read_input(args.file)
    mapping = _mapping_for(data, args)
    # A dry run sends nothing, so it needs no key.
    client = None if args.dry_run else _client(args)
    started = time.perf_counter()
    created = data.atomscale.upload(
        args.sample,
        client=client,
        if_exists=args.if_exists,
        chunk_size=args.chunk_size,
        progress=False if args.no_progress else None,
        dry_run=args.dry_run,
        dropna=args.dropna,
        **mapping,
    )
    seconds = time.perf_counter() - started
    if args.dry_run:
        n_requests = int(created["chunk"].nunique()) if len(created) else 0
        print(
            f"dry run: {args.file} is valid; {len(created):,} annotations would be sent to "
            f"sample {args.sample} in {n_requests} request(s); nothing was sent"
        )
        return EXIT_OK
    verb = "created or updated" if args.if_exists == "update" else "created"
    print(f"{args.file} -> sample {args.sample} at {getattr(client, 'endpoint', '?')}")
    if len(created):
        rows = [
            (str(name), _joined(part["property_unit"]), f"{len(part):,}")
            for name, part in created.groupby("property_name", sort=False, observed=True)
        ]
        table = _format_table(("property", "unit", verb), rows, {2})
        for line in table.splitlines():
            print("  " + line)
    note = " (annotations already stored were skipped)" if args.if_exists == "skip" else ""
    print(f"{len(created):,} annotations {verb} in {seconds:.2f} s{note}")
    if args.output is not None:
        _write_frame(created, args.output, keep_index=True)
        print(f"created annotations written to {args.output}")
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch a sample's annotations; print them, or write them to a file."""
    from .frames import fetch

    if args.output is not None:
        _check_output(args.output)
    client = _client(args)
    frame = fetch(
        args.sample,
        property_name=args.property_name,
        char_source_type=args.char_source_type,
        x_range=tuple(args.x_range) if args.x_range else None,
        y_range=tuple(args.y_range) if args.y_range else None,
        client=client,
    )
    if args.output is not None:
        if len(frame) == 0 and _file_kind(Path(args.output)) == "netcdf":
            print("no annotations match: nothing to put on a map, no file written")
            return EXIT_OK
        _write_frame(frame, args.output)
        print(f"{len(frame):,} annotations of sample {args.sample} written to {args.output}")
        return EXIT_OK
    if len(frame) == 0:
        print(f"no annotations on sample {args.sample} match")
        return EXIT_OK
    counts = ", ".join(
        f"{name}: {len(part):,} in {_joined(part['property_unit']) or 'no unit'}"
        for name, part in frame.groupby("property_name", sort=False, observed=True)
    )
    print(f"{len(frame):,} annotations on sample {args.sample} ({counts})")
    print(frame[_SHOWN_COLUMNS].to_string(max_rows=args.rows, index=False))
    return EXIT_OK


# -- argument types ----------------------------------------------------------------------------
def _sample(text: str) -> str:
    from .client import check_uuid

    try:
        return check_uuid(text)
    except InvalidIdentifierError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


# -- parsers -----------------------------------------------------------------------------------
def _debug_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--debug", action="store_true", help="show tracebacks and the library's debug log"
    )
    return parent


def _connection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--api-key",
        metavar="KEY",
        default=None,
        help="API key (default: AS_API_KEY, then ATOMSCALE_API_KEY); prefer the variable: "
        "a key on the command line shows in the process list and the shell history",
    )
    group.add_argument(
        "--endpoint",
        metavar="URL",
        default=None,
        help="API base URL (default: AS_API_ENDPOINT, then https://api.atomscale.ai/)",
    )
    return parent


def _mapping_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "file", metavar="FILE", help="a .csv, .tsv or .parquet table, or a .nc NetCDF map"
    )
    group = parent.add_argument_group(
        "mapping",
        "Where each annotation field comes from, as in the library: a column (tables) or "
        "variable (NetCDF) name, or a constant for every row. Without options, the usual "
        "names are found (x, y, property_value, ...; CF units attributes in NetCDF).",
    )
    group.add_argument("--x", metavar="NAME", help="x coordinate column / coordinate")
    group.add_argument("--y", metavar="NAME", help="y coordinate column / coordinate")
    group.add_argument("--z", metavar="NAME", help="z coordinate column / coordinate")
    group.add_argument("--value", metavar="COLUMN", help="tables, long form: the column of values")
    group.add_argument(
        "--values",
        metavar="COLUMNS",
        action="append",
        help="tables, wide form: value columns, one property each (comma list or "
        "repeated; COLUMN=PROPERTY to rename)",
    )
    group.add_argument(
        "--variables",
        metavar="NAMES",
        action="append",
        help="NetCDF: the data variables to upload (comma list or repeated)",
    )
    group.add_argument(
        "--property-name",
        metavar="NAME",
        help="property name, or the column holding it (NetCDF: VARIABLE=NAME,... to rename)",
    )
    group.add_argument(
        "--property-unit",
        metavar="UNIT",
        help='unit of the values, or the column holding it ("1": dimensionless)',
    )
    group.add_argument(
        "--units",
        metavar="NAME=UNIT",
        action="append",
        help="unit per property (tables) or per variable (NetCDF); repeated or comma list",
    )
    group.add_argument("--coord-units", metavar="UNIT", help="unit of the coordinates")
    group.add_argument(
        "--coord-ref-frame",
        metavar="FRAME",
        help="sample_relative (default) or stage_absolute, or the column holding it",
    )
    group.add_argument(
        "--char-source-type",
        metavar="TECHNIQUE",
        help="characterisation technique (ellipsometry, xrd, ...), or its column",
    )
    group.add_argument("--data-id", metavar="UUID", help="data item the values come from")
    group.add_argument(
        "--metadata-columns",
        metavar="COLUMNS",
        action="append",
        help="tables: columns folded into each annotation's metadata (comma list or repeated)",
    )
    group.add_argument(
        "--extra-dims",
        choices=("error", "metadata"),
        default=None,
        help="NetCDF: a variable with more dimensions than the map is an error (default), "
        "or each slice is uploaded with its coordinate in the metadata",
    )
    group.add_argument(
        "--dropna", action="store_true", help="leave out rows without a value instead of failing"
    )
    return parent


def _add_demo(subparsers: argparse._SubParsersAction, parents: list[Any]) -> None:
    parser = subparsers.add_parser(
        "demo",
        parents=parents,
        help="run the whole story on a local server (nothing else needed)",
        description=(
            "Start a local server on a temporary SQLite database, create a sample, validate"
            " and upload a 300 mm wafer thickness map and a 49-point sheet resistance map,"
            " fetch them back, check the round trip, show that a re-run is refused, print a"
            " summary and write PNG pictures of the fetched maps (needs matplotlib:"
            ' pip install "atomscale-accessors[plot]").'
        ),
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="DIR",
        default=".",
        help="directory for wafer_thickness.png and sheet_resistance.png (default: here)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=cmd_demo)


def _add_validate(subparsers: argparse._SubParsersAction, parents: list[Any]) -> None:
    parser = subparsers.add_parser(
        "validate",
        parents=parents,
        help="check a file of measurements (nothing is sent)",
        description=(
            "Read a CSV, TSV, Parquet or NetCDF file, validate it as an upload would, and say"
            " what it holds (points, properties, units), or list what fails. CSV rows are"
            " named by their line in the file (the header is line 1)."
        ),
    )
    parser.add_argument(
        "--failures",
        metavar="CSV",
        default=None,
        help=f"write the validation failures to this CSV (the first {MAX_FAILURE_CASES:,}; "
        "the message counts all)",
    )
    parser.set_defaults(handler=cmd_validate)


def _add_upload(subparsers: argparse._SubParsersAction, parents: list[Any]) -> None:
    parser = subparsers.add_parser(
        "upload",
        parents=parents,
        help="validate a file and create its annotations on a sample",
        description=(
            "Validate the whole file, then create its annotations on a sample, exactly once:"
            " nothing is sent when any row is invalid, and a re-run does not double the"
            " annotations (see --if-exists)."
        ),
    )
    parser.add_argument("--sample", required=True, type=_sample, metavar="UUID", help="sample id")
    parser.add_argument(
        "--if-exists",
        choices=("fail", "skip", "append", "update"),
        default="fail",
        help="when annotations are already stored at the same positions: refuse and send"
        " nothing (fail, the default), send only the new ones (skip), send everything"
        " (append), or overwrite the stored values (update)",
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        default=None,
        help="write the created annotations (.csv, .tsv, .parquet or .nc)",
    )
    parser.add_argument(
        "--chunk-size", type=_positive, default=None, metavar="N", help="annotations per request"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and plan the requests; send nothing"
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (default: one on a terminal)",
    )
    parser.set_defaults(handler=cmd_upload)


def _add_fetch(subparsers: argparse._SubParsersAction, parents: list[Any]) -> None:
    parser = subparsers.add_parser(
        "fetch",
        parents=parents,
        help="get a sample's annotations, as a table or a file",
        description=(
            "Fetch a sample's annotations: printed as a compact table, or written with -o as"
            " CSV/TSV, Parquet (metadata as JSON text) or NetCDF (put back on a grid, or"
            " along 'point' for scattered points)."
        ),
    )
    parser.add_argument("--sample", required=True, type=_sample, metavar="UUID", help="sample id")
    parser.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        default=None,
        help="write to FILE (.csv, .tsv, .parquet or .nc) instead of printing",
    )
    parser.add_argument("--property-name", metavar="NAME", help="only this property")
    parser.add_argument("--char-source-type", metavar="TECHNIQUE", help="only this technique")
    parser.add_argument(
        "--x-range", nargs=2, type=float, metavar=("MIN", "MAX"), help="only MIN <= x <= MAX"
    )
    parser.add_argument(
        "--y-range", nargs=2, type=float, metavar=("MIN", "MAX"), help="only MIN <= y <= MAX"
    )
    parser.add_argument(
        "--rows",
        type=_positive,
        default=20,
        metavar="N",
        help="rows shown on the terminal, first and last (default: %(default)s)",
    )
    parser.set_defaults(handler=cmd_fetch)


_EPILOG = """\
configuration:
  AS_API_KEY (or ATOMSCALE_API_KEY)  the API key; preferred over --api-key, which shows
                                     in the process list
  AS_API_ENDPOINT                    the API base URL (default https://api.atomscale.ai/)

exit status:
  0  done
  1  invalid input: validation failed, annotations already stored, file unreadable
  2  usage: unknown or conflicting options
  3  configuration, API or network error: no API key, an error answer, no connection,
     an upload stopped part way (re-run it with --if-exists skip)
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="atomscale-accessors",
        description="Validate measurement maps and attach them to Atomscale samples.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    debug, connection, mapping = _debug_options(), _connection_options(), _mapping_options()
    _add_demo(subparsers, [debug])
    _add_serve(subparsers)
    _add_validate(subparsers, [mapping, debug])
    _add_upload(subparsers, [mapping, connection, debug])
    _add_fetch(subparsers, [connection, debug])
    return parser


# -- errors ------------------------------------------------------------------------------------
def _explain(exc: BaseException, args: argparse.Namespace) -> tuple[int, str]:
    """The exit status and the paragraph printed for an error."""
    subject = getattr(args, "file", None)
    if isinstance(exc, _UsageError):
        return EXIT_USAGE, f"error: {exc} (see atomscale-accessors {args.command} --help)"
    if isinstance(exc, _InputError):
        return EXIT_INVALID, f"error: {exc}"
    if isinstance(exc, AnnotationExistsError):
        return EXIT_INVALID, (
            f"error: {exc}\nOn the command line: --if-exists skip sends only what is missing."
        )
    if isinstance(exc, AnnotationValidationError):
        where = f"{subject}: " if subject else ""
        notes = []
        if subject and Path(subject).suffix.lower() in (".csv", ".tsv"):
            notes.append("Rows are numbered by their line in the file (the header is line 1).")
        if args.command == "validate" and not args.failures:
            notes.append("The failures as a table: --failures FILE.csv.")
        return EXIT_INVALID, f"error: {where}{exc}" + "".join("\n" + n for n in notes)
    if isinstance(exc, InvalidIdentifierError):
        return EXIT_USAGE, f"error: {exc}"
    if isinstance(exc, ConfigurationError):
        return EXIT_API, f"error: {exc} (or pass --api-key / --endpoint)"
    if isinstance(exc, UploadError):
        return EXIT_API, (
            f"error: {exc}\nCreated {len(exc.created):,}, not created "
            f"{len(exc.not_created):,}, unknown {len(exc.unknown):,}. Re-running the same "
            "command with --if-exists skip completes the upload without duplicates."
        )
    if isinstance(exc, ApiError):
        hint = {
            401: " Check the API key (AS_API_KEY or --api-key).",
            403: " The API key lacks the scope for this request.",
            404: " Check the sample id and the endpoint.",
        }.get(exc.status_code, "")
        return EXIT_API, f"error: {exc}.{hint}"
    if isinstance(exc, TransportError):
        endpoint = args.endpoint or os.environ.get("AS_API_ENDPOINT") or "the API"
        return EXIT_API, f"error: {exc}. Is {endpoint} reachable?"
    if isinstance(exc, ImportError):
        return EXIT_INVALID, f"error: {exc}"
    if isinstance(exc, OSError):
        return EXIT_INVALID, f"error: {_first_line(exc)}"
    return EXIT_INVALID, (
        f"error: {type(exc).__name__}: {_first_line(exc)} (run again with --debug for the "
        "traceback)"
    )


@contextlib.contextmanager
def _debug_log(debug: bool) -> Iterator[None]:
    """With ``--debug``, the library's log on stderr, for this command only."""
    if not debug:
        yield
        return
    logger = logging.getLogger("atomscale_accessors")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        The exit status: 0 done, 1 invalid input, 2 usage, 3 configuration, API or
        network error.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = bool(getattr(args, "debug", False))
    try:
        with _debug_log(debug):
            return handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of our output went away (``| head``): stop quietly, as other tools do.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        secrets = _secrets(args)
        if debug:
            print(_redact(traceback.format_exc(), secrets), file=sys.stderr, end="")
        code, message = _explain(exc, args)
        print(_redact(message, secrets), file=sys.stderr)
        return code

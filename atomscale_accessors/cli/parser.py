"""The argument parser: every subcommand, its options and its help.

Add a subcommand by writing its ``cmd_<name>`` function in
:mod:`~atomscale_accessors.cli.commands` and one ``_add_<name>`` block here, called from
:func:`build_parser`.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..failures import MAX_FAILURE_CASES
from ..retry import RetryPolicy
from .catalog import cmd_projects_list, cmd_samples_create, cmd_samples_list
from .commands import cmd_demo, cmd_fetch, cmd_serve, cmd_upload, cmd_validate

__all__ = ["build_parser"]


# -- argument types ----------------------------------------------------------------------------
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


def _sample_text(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("a sample is given by its name or UUID, not blank")
    return text


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
    group.add_argument(
        "--max-attempts",
        metavar="N",
        type=_at_least_one,
        default=None,
        help="attempts per request before giving up on a server that refuses, is busy or "
        f"does not answer (default: {RetryPolicy.max_attempts}; 1: no retries)",
    )
    return parent


def _at_least_one(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return number


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
        "--out",
        "--output",
        "-o",
        dest="output",
        metavar="DIR",
        default=".",
        help="folder for wafer_thickness.png and sheet_resistance.png, created when missing"
        " (default: the current folder)",
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
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument(
        "--sample", type=_sample_text, metavar="SAMPLE", help="the sample: its name or UUID"
    )
    target.add_argument(
        "--sample-column",
        metavar="COLUMN",
        help="the column (of a NetCDF file: the dimension) naming each row's sample; one"
        " exactly-once upload per sample",
    )
    parser.add_argument(
        "--create-samples",
        action="store_true",
        help="create the samples whose names match none (default: an unknown name is an error)",
    )
    _project_option(parser, "look the names up in this project, and add created samples to it")
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
        "--chunk-size",
        "--chunksize",
        dest="chunksize",
        type=_positive,
        default=None,
        metavar="N",
        help="annotations per request",
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
    parser.add_argument(
        "--sample",
        action="append",
        type=_sample_text,
        metavar="SAMPLE",
        help="a sample's name or UUID; repeat it for several (one table, with sample_name)",
    )
    _project_option(parser, "every sample of this project (or, with --sample, the names in it)")
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


def _project_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--project", metavar="PROJECT", default=None, help=help_text)


def _add_samples(subparsers: argparse._SubParsersAction, parents: list[Any]) -> None:
    parser = subparsers.add_parser(
        "samples",
        help="list samples, or create one by name",
        description=(
            "Samples by name: names match ignoring case and blanks around them, as in the"
            " official SDK."
        ),
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list",
        parents=parents,
        help="list the samples, sorted by name",
        description="List the samples, one line per sample and project, sorted by name.",
    )
    _project_option(listing, "only this project's samples (its name or UUID)")
    listing.set_defaults(handler=cmd_samples_list)
    create = actions.add_parser(
        "create",
        parents=parents,
        help="create a sample by name (kept if it exists); prints its id",
        description=(
            "Create a sample by name and print its id on stdout. A sample of that name"
            " (ignoring case and blanks around it) is kept, not made twice, also when"
            " another process creates it at the same moment."
        ),
    )
    create.add_argument("name", metavar="NAME", help="the sample's name, e.g. W0421-07")
    _project_option(create, "add the sample to this project (its name or UUID)")
    create.set_defaults(handler=cmd_samples_create)


def _add_projects(subparsers: argparse._SubParsersAction, parents: list[Any]) -> None:
    parser = subparsers.add_parser(
        "projects",
        help="list the projects",
        description="Projects are made on the platform; the API has no route to create one.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser(
        "list", parents=parents, help="list the projects with their number of samples"
    )
    listing.set_defaults(handler=cmd_projects_list)


_EPILOG = """\
configuration:
  AS_API_KEY (or ATOMSCALE_API_KEY)  the API key; preferred over --api-key, which shows
                                     in the process list
  AS_API_ENDPOINT                    the API base URL (default https://api.atomscale.ai/)

exit status:
  0  done
  1  invalid input: validation failed, annotations already stored, file unreadable,
     no sample or project of that name (or several)
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
    _add_samples(subparsers, [connection, debug])
    _add_projects(subparsers, [connection, debug])
    return parser

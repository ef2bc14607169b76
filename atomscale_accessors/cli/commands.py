"""The subcommands: one ``cmd_<name>`` function each, given the parsed command line.

Each returns the exit status; errors are raised, and :func:`~atomscale_accessors.cli.main`
turns them into one paragraph on stderr (see :mod:`atomscale_accessors.cli.exits`).
"""

from __future__ import annotations

import argparse
import errno
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import AnnotationValidationError
from ..failures import plural
from .exits import EXIT_INVALID, EXIT_OK
from .files import check_output, file_kind, read_input, write_frame
from .options import mapping_for

if TYPE_CHECKING:
    import pandas as pd

    from ..client import Client

__all__ = ["cmd_demo", "cmd_fetch", "cmd_serve", "cmd_upload", "cmd_validate"]

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


# -- summaries ---------------------------------------------------------------------------------
def _describe_records(records: pd.DataFrame) -> list[str]:
    """What validated records hold: points, properties with units and ranges, coordinates."""
    from ..demo import format_table

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
        f"{plural(len(records), 'record')}: {plural(n_points, 'point')}, "
        f"{plural(len(names), 'property', 'properties')}"
    ]
    table = format_table(("property", "records", "unit", "min", "mean", "max"), rows, {1, 3, 4, 5})
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


# -- clients -----------------------------------------------------------------------------------
def _client(args: argparse.Namespace) -> Client:
    from ..client import Client

    return Client(api_key=args.api_key, endpoint=args.endpoint)


# -- subcommands ----------------------------------------------------------------------------------
def _serve_error(exc: OSError, args: argparse.Namespace) -> str:
    """What went wrong starting the server: a socket error names the address and port."""
    if exc.filename is not None or exc.errno not in _SOCKET_ERRORS:
        return str(exc)
    reason = _SOCKET_ERRORS[exc.errno]
    return f"cannot serve on {args.host} port {args.port}: {exc.strerror or exc}; {reason}"


_SOCKET_ERRORS = {
    errno.EADDRINUSE: "another server is running there? Choose another with --port",
    errno.EACCES: "ports below 1024 need privileges: choose another with --port",
    errno.EADDRNOTAVAIL: "the address is not one of this machine's: see --host",
}


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
        print(f"error: {_serve_error(exc, args)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # uvicorn stops gracefully on Ctrl+C, then raises the signal again once done
        pass
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo (:func:`atomscale_accessors.demo.run_demo`) and print its summary."""
    from ..demo import run_demo

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
    data = read_input(args.file)
    mapping = mapping_for(data, args)
    try:
        records = data.atomscale.validate(dropna=args.dropna, **mapping)
    except AnnotationValidationError as exc:
        if args.failures:
            exc.failure_cases.to_csv(args.failures, index=False)
            print(f"{plural(len(exc.failure_cases), 'failure')} written to {args.failures}")
        raise
    print(f"{args.file}: valid")
    for line in _describe_records(records):
        print(line)
    return EXIT_OK


def cmd_upload(args: argparse.Namespace) -> int:
    """Validate a file and create its annotations on a sample, exactly once."""
    from ..demo import format_table

    if args.output is not None:
        check_output(args.output)
    data = read_input(args.file)
    mapping = mapping_for(data, args)
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
            f"dry run: {args.file} is valid; {plural(len(created), 'annotation')} would be "
            f"sent to sample {args.sample} in {plural(n_requests, 'request')}; nothing was sent"
        )
        return EXIT_OK
    verb = "created or updated" if args.if_exists == "update" else "created"
    print(f"{args.file} -> sample {args.sample} at {getattr(client, 'endpoint', '?')}")
    if len(created):
        rows = [
            (str(name), _joined(part["property_unit"]), f"{len(part):,}")
            for name, part in created.groupby("property_name", sort=False, observed=True)
        ]
        table = format_table(("property", "unit", verb), rows, {2})
        for line in table.splitlines():
            print("  " + line)
    note = " (annotations already stored were skipped)" if args.if_exists == "skip" else ""
    print(f"{plural(len(created), 'annotation')} {verb} in {seconds:.2f} s{note}")
    if args.output is not None:
        write_frame(created, args.output, keep_index=True)
        print(f"created annotations written to {args.output}")
    return EXIT_OK


def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch a sample's annotations; print them, or write them to a file."""
    from ..frames import fetch

    if args.output is not None:
        check_output(args.output)
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
        if len(frame) == 0 and file_kind(Path(args.output)) == "netcdf":
            print("no annotations match: nothing to put on a map, no file written")
            return EXIT_OK
        write_frame(frame, args.output)
        print(
            f"{plural(len(frame), 'annotation')} of sample {args.sample} written to {args.output}"
        )
        return EXIT_OK
    if len(frame) == 0:
        print(f"no annotations on sample {args.sample} match")
        return EXIT_OK
    counts = ", ".join(
        f"{name}: {len(part):,} in {_joined(part['property_unit']) or 'no unit'}"
        for name, part in frame.groupby("property_name", sort=False, observed=True)
    )
    print(f"{plural(len(frame), 'annotation')} on sample {args.sample} ({counts})")
    print(frame[_SHOWN_COLUMNS].to_string(max_rows=args.rows, index=False))
    return EXIT_OK

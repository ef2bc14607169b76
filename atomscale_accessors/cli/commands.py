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
from typing import TYPE_CHECKING, Any

from ..errors import AnnotationValidationError
from ..failures import plural
from ..fields import SAMPLE_NAME
from .exits import EXIT_INVALID, EXIT_OK, EXIT_USAGE
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
def client_for(args: argparse.Namespace) -> Client:
    from ..client import Client
    from ..retry import RetryPolicy

    attempts = args.max_attempts
    retry = RetryPolicy(max_attempts=attempts) if attempts is not None else None
    return Client(api_key=args.api_key, endpoint=args.endpoint, retry=retry)


# What an upload would do with the records stored already, per --if-exists.
_WITH_STORED = {
    "fail": "the upload would be refused (--if-exists skip sends only the new ones)",
    "skip": "--if-exists skip would send only the new ones",
    "update": "--if-exists update would overwrite their stored values",
    "append": "--if-exists append would store them a second time",
}


def _report_dry_run(planned: pd.DataFrame, args: argparse.Namespace) -> None:
    """Print what a dry run found: the requests it would make, and what is stored already."""
    if args.sample is None:
        per_sample = planned.groupby("sample", sort=False)["chunk"].nunique()
        print(
            f"dry run: {args.file} is valid; {plural(len(planned), 'annotation')} would be "
            f"sent to {plural(len(per_sample), 'sample')} in "
            f"{plural(int(per_sample.sum()), 'request')}; nothing was sent"
        )
        return
    n_requests = int(planned["chunk"].nunique()) if len(planned) else 0
    print(
        f"dry run: {args.file} is valid; {plural(len(planned), 'annotation')} would be "
        f"sent to sample {args.sample} in {plural(n_requests, 'request')}; nothing was sent"
    )
    if len(planned):
        print(_stored_already(planned.drop(columns="chunk"), args))


def _stored_already(records: pd.DataFrame, args: argparse.Namespace) -> str:
    """How many of a dry run's records the sample holds already, as a line of text; when no
    key is configured or the server cannot be asked, why that was not checked."""
    from ..errors import ApiError, ConfigurationError, NotFoundError, TransportError
    from ..frame_builder import FrameBuilder
    from ..retry import describe
    from ..samples import SampleResolver
    from ..upload.existing import Existing, Listing
    from ..upload.ledger import Ledger
    from ..upload.send import Uploader

    try:
        client = client_for(args)
    except ConfigurationError:
        return "not compared with what the sample holds: no API key (set AS_API_KEY)"
    try:
        sample_id = SampleResolver(client, project=args.project).resolve(args.sample)
        uploader = Uploader(client, sample_id, Ledger(FrameBuilder(sample_id)))
        existing = Existing.list(uploader, Listing.of(records))
    except NotFoundError as exc:
        return f"not compared with what the sample holds: {exc}"
    except (ApiError, TransportError) as exc:
        return f"not compared with what the sample holds: {describe(exc)} from {client.endpoint}"
    n_stored = int((existing.lookup(records) >= 0).sum())
    where = f"on sample {args.sample} at {client.endpoint}"
    if n_stored == 0:
        return f"none of the {len(records):,} records is stored {where} yet"
    verb = "is" if n_stored == 1 else "are"
    return (
        f"{n_stored:,} of the {len(records):,} records {verb} stored already {where}: "
        + _WITH_STORED[args.if_exists]
    )


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

    Prints the endpoint once the socket is bound, the API key when it was generated (a key
    given with ``--api-key`` is never echoed), and the two lines a user needs next: the
    environment to set, and how to create a sample.
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
            print(f"API key (generated for this run): {api_key}")
        key = api_key if generated else "<the key given with --api-key>"
        print(f"Next, in another shell: export AS_API_ENDPOINT={endpoint} AS_API_KEY={key}")
        print("Then create a sample: atomscale-accessors samples create W0421-07")
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
    result = run_demo(output, progress_bar=False if args.no_progress else None, echo=print)
    print()
    print(result.table())
    print()
    if result.lot is not None:
        print(result.lot_summary())
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
    client = None if args.dry_run else client_for(args)
    target = _upload_target(data, args)
    if client is not None:
        # Before the upload starts: its progress bar follows on the terminal.
        where = f"sample {args.sample}" if args.sample else f"the samples in {args.sample_column}"
        print(f"{args.file} -> {where} at {client.endpoint}", flush=True)
    started = time.perf_counter()
    created = data.atomscale.upload(
        **target,
        create_sample=args.create_samples,
        project=args.project,
        client=client,
        if_exists=args.if_exists,
        chunksize=args.chunksize,
        progress_bar=False if args.no_progress else None,
        dry_run=args.dry_run,
        dropna=args.dropna,
        **mapping,
    )
    seconds = time.perf_counter() - started
    if args.dry_run:
        _report_dry_run(created, args)
        return EXIT_OK
    verb = "created or updated" if args.if_exists == "update" else "created"
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


def _upload_target(data: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Where an upload goes: one sample, or the sample each row (or map) names."""
    import pandas as pd

    if args.sample is not None:
        return {"sample": args.sample}
    if isinstance(data, pd.DataFrame):
        return {"sample_column": args.sample_column}
    return {"sample_dim": args.sample_column}


def cmd_fetch(args: argparse.Namespace) -> int:
    """Fetch a sample's annotations; print them, or write them to a file."""
    from ..frames import fetch

    if not args.sample and args.project is None:
        print(
            "error: fetch needs --sample (a name or UUID, repeatable) or --project", file=sys.stderr
        )
        return EXIT_USAGE
    if args.output is not None:
        check_output(args.output)
    client = client_for(args)
    samples = args.sample[0] if args.sample and len(args.sample) == 1 else args.sample
    what = f"sample {samples}" if isinstance(samples, str) else _samples_named(args)
    frame = fetch(
        samples,
        project=args.project,
        property_name=args.property_name,
        char_source_type=args.char_source_type,
        x_range=tuple(args.x_range) if args.x_range else None,
        y_range=tuple(args.y_range) if args.y_range else None,
        client=client,
    )
    if args.output is not None:
        _write_fetched(frame, args.output, what)
        return EXIT_OK
    _print_fetched(frame, what, args.rows)
    return EXIT_OK


def _write_fetched(frame: pd.DataFrame, output: str, what: str) -> None:
    if len(frame) == 0 and file_kind(Path(output)) == "netcdf":
        print("no annotations match: nothing to put on a map, no file written")
        return
    write_frame(frame, output)
    print(f"{plural(len(frame), 'annotation')} of {what} written to {output}")


def _print_fetched(frame: pd.DataFrame, what: str, rows: int | None) -> None:
    if len(frame) == 0:
        print(f"no annotations of {what} match")
        return
    counts = ", ".join(
        f"{name}: {len(part):,} in {_joined(part['property_unit']) or 'no unit'}"
        for name, part in frame.groupby("property_name", sort=False, observed=True)
    )
    print(f"{plural(len(frame), 'annotation')} of {what} ({counts})")
    shown = [SAMPLE_NAME, *_SHOWN_COLUMNS] if SAMPLE_NAME in frame else list(_SHOWN_COLUMNS)
    print(frame[shown].to_string(max_rows=rows, index=False))


def _samples_named(args: argparse.Namespace) -> str:
    if args.sample:
        return plural(len(args.sample), "sample")
    return f"project {args.project}"

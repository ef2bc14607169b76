"""The ``atomscale-accessors`` command line.

One function per subcommand (``cmd_<name>``), registered in :func:`build_parser`; add a
subcommand by writing its function and one ``_add_<name>`` block there.

Examples
--------
Run a local server on a file database, with a generated key printed once::

    atomscale-accessors serve --port 8000 --db annotations.sqlite
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

__all__ = ["build_parser", "cmd_serve", "main"]

Handler = Callable[[argparse.Namespace], int]


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


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="atomscale-accessors",
        description="Validate measurement maps and attach them to Atomscale samples.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_serve(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Parameters
    ----------
    argv : sequence of str, optional
        Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        The exit status.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    return handler(args)

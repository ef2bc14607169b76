"""The ``atomscale-accessors`` command line.

One function per subcommand (``cmd_<name>``, in :mod:`~atomscale_accessors.cli.commands`),
registered in :func:`build_parser` (:mod:`~atomscale_accessors.cli.parser`); add a
subcommand by writing its function and one ``_add_<name>`` block there. The files read
and written are in :mod:`~atomscale_accessors.cli.files`, the mapping options in
:mod:`~atomscale_accessors.cli.options`, the exit statuses and error messages in
:mod:`~atomscale_accessors.cli.exits`.

The subcommands: ``demo`` (the whole story on a local server: validate, upload, fetch,
round trip, pictures), ``serve`` (the local Atomscale-compatible server), ``validate FILE``
(check a CSV, Parquet or NetCDF file and say what it holds; nothing is sent), ``upload FILE
--sample UUID`` (validate the file, then create its annotations on a sample, exactly once),
``fetch --sample UUID`` (the sample's annotations, as a table or written to a file),
``samples list [--project P]``, ``samples create NAME [--project P]`` (prints the sample's
id) and ``projects list``.

The key and the endpoint come from ``AS_API_KEY`` (or ``ATOMSCALE_API_KEY``) and
``AS_API_ENDPOINT``, as for the library, or from ``--api-key`` and ``--endpoint``. Prefer
the variable: a key given on the command line can be read by every user of the machine in
the process list and stays in the shell's history.

Exit status: 0 done; 1 invalid input (the data failed validation, it is already stored, the
file cannot be read or written, no sample or project has the name given); 2 usage (wrong
options); 3 configuration, API or network error (no API key, the server answered an error,
it could not be reached, an upload stopped part way). Errors are one paragraph on stderr; ``--debug`` adds the traceback.

Examples
--------
Run a local server on a file database, with a generated key printed once::

    atomscale-accessors serve --port 8000 --db annotations.sqlite

Create a sample by name (its id is printed) and list the samples::

    atomscale-accessors samples create W0421-07
    atomscale-accessors samples list

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
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

from ..errors import AtomscaleWarning
from .catalog import cmd_projects_list, cmd_samples_create, cmd_samples_list
from .commands import cmd_demo, cmd_fetch, cmd_serve, cmd_upload, cmd_validate
from .exits import EXIT_API, EXIT_INVALID, EXIT_OK, EXIT_USAGE, explain, redact, secrets
from .parser import build_parser

__all__ = [
    "EXIT_API",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "cmd_demo",
    "cmd_fetch",
    "cmd_projects_list",
    "cmd_samples_create",
    "cmd_samples_list",
    "cmd_serve",
    "cmd_upload",
    "cmd_validate",
    "main",
]

Handler = Callable[[argparse.Namespace], int]


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


@contextlib.contextmanager
def _notes() -> Iterator[None]:
    """The library's notices for the user (``AtomscaleWarning``) as ``note:`` lines on
    stderr, without the file and line a Python warning shows; other warnings as usual."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(
            message: Warning | str,
            category: type[Warning],
            filename: str,
            lineno: int,
            file: TextIO | None = None,
            line: str | None = None,
        ) -> None:
            if issubclass(category, AtomscaleWarning):
                print(f"note: {message}", file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


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
        with _debug_log(debug), _notes():
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
        keys = secrets(args)
        if debug:
            print(redact(traceback.format_exc(), keys), file=sys.stderr, end="")
        code, message = explain(exc, args)
        print(redact(message, keys), file=sys.stderr)
        return code

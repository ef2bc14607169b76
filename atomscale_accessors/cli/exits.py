"""Exit statuses, and the one paragraph printed for each kind of error.

:func:`explain` turns any exception a subcommand raises into its exit status and message;
:func:`secrets` and :func:`redact` keep the API key out of everything printed.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..client import ENDPOINT_VARIABLE, KEY_VARIABLES
from ..errors import (
    AmbiguousNameError,
    AnnotationExistsError,
    AnnotationValidationError,
    ApiError,
    ConfigurationError,
    InvalidIdentifierError,
    NotFoundError,
    SampleNotFoundError,
    TransportError,
    UploadError,
)

__all__ = [
    "EXIT_API",
    "EXIT_INVALID",
    "EXIT_OK",
    "EXIT_USAGE",
    "InputError",
    "UsageError",
    "command_line_terms",
    "explain",
    "first_line",
    "redact",
    "secrets",
]

#: Exit status: done.
EXIT_OK = 0
#: Exit status: invalid input (validation failed, already stored, unreadable file, no
#: sample or project of that name).
EXIT_INVALID = 1
#: Exit status: usage (unknown or conflicting options).
EXIT_USAGE = 2
#: Exit status: configuration, API or network error.
EXIT_API = 3


Explanation = tuple[int, str]


class UsageError(Exception):
    """Options that parse but do not fit together (exit status 2)."""


class InputError(Exception):
    """A file that cannot be read or written (exit status 1)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def secrets(args: argparse.Namespace | None) -> list[str]:
    """Every key this process could be using, to mask it in anything printed."""
    found = [getattr(args, "api_key", None)] if args is not None else []
    found += [os.environ.get(name) for name in KEY_VARIABLES]
    # Masking a very short "key" would garble every message; such keys are rejected anyway.
    return [key for key in found if key and len(key) >= 4]


def redact(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every one of ``secrets`` replaced by ``***``."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


# -- one function per kind of error ------------------------------------------------------------
def _usage(exc: BaseException, args: argparse.Namespace) -> Explanation:
    return EXIT_USAGE, f"error: {exc} (see atomscale-accessors {args.command} --help)"


def _input(exc: BaseException, args: argparse.Namespace) -> Explanation:
    return EXIT_INVALID, f"error: {exc}"


def _exists(exc: BaseException, args: argparse.Namespace) -> Explanation:
    return EXIT_INVALID, (
        f"error: {exc}\nOn the command line: --if-exists skip sends only what is missing."
    )


def _invalid(exc: BaseException, args: argparse.Namespace) -> Explanation:
    subject = getattr(args, "file", None)
    where = f"{subject}: " if subject else ""
    notes = []
    if subject and Path(subject).suffix.lower() in (".csv", ".tsv"):
        notes.append("Rows are numbered by their line in the file (the header is line 1).")
    if args.command == "validate" and not args.failures:
        notes.append("The failures as a table: --failures FILE.csv.")
    return EXIT_INVALID, f"error: {where}{exc}" + "".join("\n" + n for n in notes)


def _identifier(exc: BaseException, args: argparse.Namespace) -> Explanation:
    return EXIT_USAGE, f"error: {exc}"


def _lookup(exc: NotFoundError | AmbiguousNameError, args: argparse.Namespace) -> Explanation:
    from ..samples import CREATE_HINT

    message = str(exc)
    if isinstance(exc, SampleNotFoundError):
        command = f"atomscale-accessors samples create {shlex.quote(exc.wanted)}"
        if exc.project:
            command += f" --project {shlex.quote(exc.project)}"
        message = message.replace(CREATE_HINT, f"create it with: {command}")
    return EXIT_INVALID, f"error: {message}"


def _configuration(exc: BaseException, args: argparse.Namespace) -> Explanation:
    return EXIT_API, f"error: {exc} (or pass --api-key / --endpoint)"


def _upload(exc: UploadError, args: argparse.Namespace) -> Explanation:
    return EXIT_API, (
        f"error: {exc}\nCreated {len(exc.created):,}, not created "
        f"{len(exc.not_created):,}, unknown {len(exc.unknown):,}. Re-running the same "
        "command with --if-exists skip completes the upload without duplicates."
    )


def _api(exc: ApiError, args: argparse.Namespace) -> Explanation:
    hint = {
        401: " Check the API key (AS_API_KEY or --api-key).",
        403: " The API key lacks the scope for this request.",
        404: " Check the sample id and the endpoint.",
    }.get(exc.status_code, "")
    return EXIT_API, f"error: {exc}.{hint}"


def _transport(exc: BaseException, args: argparse.Namespace) -> Explanation:
    # The error names the URL; where the endpoint came from is the command line's to say.
    source = "--endpoint" if args.endpoint else ENDPOINT_VARIABLE
    if not args.endpoint and not os.environ.get(ENDPOINT_VARIABLE):
        source = f"the default; set {ENDPOINT_VARIABLE} or --endpoint for another"
    return EXIT_API, f"error: {exc}. Is the server up, and the endpoint right ({source})?"


def _os(exc: BaseException, args: argparse.Namespace) -> Explanation:
    return EXIT_INVALID, f"error: {first_line(exc)}"


# Tried in order, the first kind the exception is an instance of explains it: an error can
# be of several kinds (a TransportError is an OSError too). Each explainer is given an
# instance of the kind it is listed with.
_EXPLAINERS: tuple[
    tuple[type[BaseException], Callable[[Any, argparse.Namespace], Explanation]], ...
] = (
    (UsageError, _usage),
    (InputError, _input),
    (AnnotationExistsError, _exists),
    (AnnotationValidationError, _invalid),
    (InvalidIdentifierError, _identifier),
    (NotFoundError, _lookup),
    (AmbiguousNameError, _lookup),
    (ConfigurationError, _configuration),
    (UploadError, _upload),
    (ApiError, _api),
    (TransportError, _transport),
    (ImportError, _input),
    (OSError, _os),
)


def explain(exc: BaseException, args: argparse.Namespace) -> Explanation:
    """The exit status and the paragraph printed for an error.

    Parameters
    ----------
    exc : BaseException
        What the subcommand raised.
    args : argparse.Namespace
        The parsed command line: the subcommand, its file and options shape the advice.

    Returns
    -------
    tuple of (int, str)
        The exit status and the message, which starts with ``error:``.
    """
    for kind, explainer in _EXPLAINERS:
        if isinstance(exc, kind):
            code, message = explainer(exc, args)
            return code, command_line_terms(message, getattr(args, "command", None))
    return EXIT_INVALID, (
        f"error: {type(exc).__name__}: {first_line(exc)} (run again with --debug for the traceback)"
    )


# -- the library's words for the command line's -------------------------------------------
# Library arguments whose option has another name on the command line.
_OPTION_FOR = {"metadata": "metadata_columns", "progress_bar": "no_progress"}
# ``name=value`` in a message, as Python is written; not inside a call (``.sel(x=...)``,
# which shows code to run) nor after a dot.
_ARGUMENT = re.compile(
    r"(?<![\w.])(?<!\w\()(?P<name>[a-z][a-z_]*)="
    r"(?P<value>'[^'\n]*'|\"[^\"\n]*\"|\[[^\]\n]*\]|\{[^}\n]*\}|\.\.\.|[\w.+-]+)?"
)
# Attributes of the library's errors: the command line prints its own account instead.
_ATTRIBUTE = re.compile(
    r"(?:^|[\s,(])\.(?:created|not_created|not_updated|unknown|existing|mismatched)\b"
)


@functools.cache
def _options(command: str) -> Mapping[str, argparse.Action]:
    """The options of a subcommand, by their destination name."""
    from .parser import build_parser  # the parser imports the commands, which import this

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            sub = action.choices[command]
            return {a.dest: a for a in sub._actions if a.option_strings}
    return {}


def command_line_terms(message: str, command: str | None) -> str:
    """``message`` with the library's Python terms in the command line's: ``value='<column>'``
    becomes ``--value COLUMN``, ``if_exists='skip'`` ``--if-exists skip``,
    ``.failure_cases`` the ``--failures`` file; clauses about an error's attributes, which
    the command line accounts for itself, are left out.

    Examples
    --------
    >>> command_line_terms("pass value='<column>' or values=[...]", "validate")
    'pass --value COLUMN or --values COLUMNS'
    >>> command_line_terms("pass if_exists='skip' to send only new records", "upload")
    'pass --if-exists skip to send only new records'
    """
    if command is None:
        return message
    options = _options(command)
    if "failures" in options:
        message = message.replace("in .failure_cases", "written by --failures CSV")
        message = message.replace(".failure_cases", "--failures CSV")
    else:
        message = message.replace(".failure_cases", "the failure table (validate --failures CSV)")

    def option(match: re.Match[str]) -> str:
        action = options.get(_OPTION_FOR.get(match["name"], match["name"]))
        if action is None:
            return match[0]
        flag, value = action.option_strings[0], match["value"]
        if value is None or action.nargs == 0:
            return flag
        metavar = action.metavar if isinstance(action.metavar, str) else match["name"].upper()
        if value[0] in "'\"" and not value[1:].startswith("<"):
            return f"{flag} {value[1:-1]}"
        return f"{flag} {value if value[0].isalnum() else metavar}"

    return "\n".join(
        _without_attributes(_ARGUMENT.sub(option, line)) for line in message.split("\n")
    )


def _without_attributes(line: str) -> str:
    clauses = re.split(r"(?<=[.;])\s+", line)
    kept = [clause for clause in clauses if not _ATTRIBUTE.search(clause)]
    if len(kept) == len(clauses):
        return line
    text = " ".join(kept)
    return text[:-1] + "." if text.endswith(";") else text

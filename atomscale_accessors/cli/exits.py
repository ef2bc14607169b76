"""Exit statuses, and the one paragraph printed for each kind of error.

:func:`explain` turns any exception a subcommand raises into its exit status and message;
:func:`secrets` and :func:`redact` keep the API key out of everything printed.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Callable, Sequence
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
    endpoint = args.endpoint or os.environ.get(ENDPOINT_VARIABLE) or "the API"
    return EXIT_API, f"error: {exc}. Is {endpoint} reachable?"


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
            return explainer(exc, args)
    return EXIT_INVALID, (
        f"error: {type(exc).__name__}: {first_line(exc)} (run again with --debug for the traceback)"
    )

"""The exception tree of ``atomscale_accessors``.

Every error the library raises derives from :class:`AtomscaleError` and also from the
builtin that describes it best, so ``except ValueError`` keeps working for code that does
not know this library. Errors carry structured data (status codes, the server's ``detail``,
failure tables, what was and was not created) so callers never have to parse a message.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "AmbiguousNameError",
    "AnnotationExistsError",
    "AnnotationValidationError",
    "ApiError",
    "AtomscaleError",
    "AtomscaleWarning",
    "ConfigurationError",
    "InvalidIdentifierError",
    "MapStructureError",
    "NotFoundError",
    "ProjectNotFoundError",
    "SampleNotFoundError",
    "TransportError",
    "UploadError",
]


class AtomscaleError(Exception):
    """Root of every error raised by ``atomscale_accessors``.

    Errors pickle with their attributes (they travel back from dask workers).
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # The default rebuilds from ``args`` alone, which misses keyword-only arguments.
        state = self.__dict__.copy()
        return (_rebuild, (type(self), self.args, state))


def _rebuild(cls: type[AtomscaleError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class AtomscaleWarning(UserWarning):
    """A notice meant for the user, such as the rows that ``dropna=True`` left out."""


class ConfigurationError(AtomscaleError, ValueError):
    """The client cannot be configured: no API key, a bad endpoint, an insecure transport."""


class AnnotationValidationError(AtomscaleError, ValueError):
    """Input data failed validation; nothing was sent.

    Attributes
    ----------
    failure_cases : pandas.DataFrame
        One row per failure with the columns ``index`` (the input row label, or ``None``
        for a failure of the whole frame), ``column``, ``check`` and ``failure_case``
        (the offending value). It keeps at most ``failures.MAX_FAILURE_CASES`` rows (the
        message says how many more there were); the message shows only a few examples.
    """

    def __init__(
        self,
        message: str,
        failure_cases: pd.DataFrame | None = None,
        *,
        reasons: list[str] | None = None,
    ) -> None:
        super().__init__(message)
        self.reasons = list(reasons or [])
        if failure_cases is None:
            import pandas as pd

            from .failures import FAILURE_COLUMNS

            failure_cases = pd.DataFrame(columns=list(FAILURE_COLUMNS))
        self.failure_cases = failure_cases


class MapStructureError(AnnotationValidationError):
    """An xarray map does not have the structure of a spatial map (dimensions, coordinates, units)."""


class InvalidIdentifierError(AtomscaleError, ValueError):
    """A sample, annotation or data id is not a UUID (checked before it goes into a URL)."""


class NotFoundError(AtomscaleError, LookupError):
    """No sample (or project) has the given name or UUID; nothing was created.

    Attributes
    ----------
    wanted : str
        The name or UUID asked for, stripped.
    suggestions : list of str
        Names close to it (at most five), best first.
    project : str or None
        The project whose samples were searched, or the project not found, as given;
        ``None`` for a search of all samples.
    """

    def __init__(
        self,
        message: str,
        *,
        wanted: str,
        suggestions: list[str] | None = None,
        project: str | None = None,
    ) -> None:
        super().__init__(message)
        self.wanted = wanted
        self.suggestions = list(suggestions or [])
        self.project = project


class SampleNotFoundError(NotFoundError):
    """No sample has the given name or UUID (and none was to be created)."""


class ProjectNotFoundError(NotFoundError):
    """No project has the given name or UUID."""


class AmbiguousNameError(AtomscaleError, LookupError):
    """A name matches several samples (or projects) once case and blanks are ignored.

    Attributes
    ----------
    name : str
        The name asked for, stripped.
    matches : dict of str to str
        Each matching id and its name as stored.
    """

    def __init__(self, message: str, *, name: str, matches: dict[str, str]) -> None:
        super().__init__(message)
        self.name = name
        self.matches = dict(matches)


class TransportError(AtomscaleError, ConnectionError):
    """The request could not be completed on the network (refused, reset, timed out).

    Attributes
    ----------
    sent : bool
        False when the request provably never reached the server (connection refused,
        connect timeout); True when it may have (read timeout, reset after sending), so
        it may have taken effect.
    timed_out : bool
        The server did not answer in time: it may still be working on the request.
    """

    def __init__(self, message: str, *, sent: bool, timed_out: bool = False) -> None:
        super().__init__(message)
        self.sent = sent
        self.timed_out = timed_out


class ApiError(AtomscaleError, RuntimeError):
    """The server answered with a status outside 2xx.

    Attributes
    ----------
    status_code : int
        The HTTP status.
    detail : Any
        The server's ``detail`` (a string, or FastAPI's list of validation errors), or the
        raw body text when the answer was not JSON.
    method, path : str
        The request that failed (the path never contains the API key).
    retry_after : float or None
        Seconds the server asked to wait (``Retry-After``), when it said.
    """

    def __init__(
        self,
        status_code: int,
        detail: Any,
        *,
        method: str = "",
        path: str = "",
        retry_after: float | None = None,
    ) -> None:
        self.status_code = status_code
        self.detail = detail
        self.method = method
        self.path = path
        self.retry_after = retry_after
        where = f" on {method} {path}" if method else ""
        super().__init__(f"the Atomscale API answered {status_code}{where}: {_short(detail)}")


class AnnotationExistsError(AtomscaleError, ValueError):
    """``if_exists="fail"`` and some input rows are already stored on the sample.

    Attributes
    ----------
    existing : pandas.DataFrame
        The annotation frame of the stored annotations that clash with the input, indexed
        by the labels of the input rows they clash with.
    """

    def __init__(self, message: str, existing: pd.DataFrame) -> None:
        super().__init__(message)
        self.existing = existing


class UploadError(AtomscaleError, RuntimeError):
    """An upload stopped part way; the attributes say exactly where it stands.

    Re-running the same upload with ``if_exists="skip"`` completes it without duplicates.

    Attributes
    ----------
    created : pandas.DataFrame
        Annotation frame of what is stored, indexed like the input rows.
    not_created : pandas.DataFrame
        Canonical records that are not stored.
    not_updated : pandas.DataFrame
        With ``if_exists="update"``: canonical records whose stored annotation was not
        updated (re-run with ``if_exists="update"``).
    unknown : pandas.DataFrame
        Canonical records whose fate could not be established (the server failed after
        receiving them and could not be asked afterwards, or stored something else than
        was sent); they may or may not be stored.
    mismatched : pandas.DataFrame
        Annotation frame of what the sample holds at the positions of records of
        ``unknown`` that the server stored with other content than was sent (a rounded
        value, say), indexed like those records.
    extra : pandas.DataFrame
        With ``verify=True``: annotation frame of the annotations at this upload's
        positions that neither the state before the upload nor the upload account for.
    cause : BaseException
        The error that stopped the upload (also chained as ``__cause__``).
    """

    def __init__(
        self,
        message: str,
        *,
        created: pd.DataFrame,
        not_created: pd.DataFrame,
        not_updated: pd.DataFrame | None = None,
        unknown: pd.DataFrame | None = None,
        cause: BaseException | None = None,
        mismatched: pd.DataFrame | None = None,
        extra: pd.DataFrame | None = None,
    ) -> None:
        super().__init__(message)
        self.created = created
        self.not_created = not_created
        self.not_updated = not_updated if not_updated is not None else not_created.iloc[:0]
        self.unknown = unknown if unknown is not None else not_created.iloc[:0]
        self.mismatched = mismatched if mismatched is not None else created.iloc[:0]
        self.extra = extra if extra is not None else created.iloc[:0]
        self.cause = cause


def _short(detail: Any, limit: int = 500) -> str:
    text = detail if isinstance(detail, str) else repr(detail)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning issued by the caller of this function point
    at the first line outside the package: the user's call, however deep the path."""
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level


_PACKAGE = __name__.partition(".")[0] + "."

"""When to try a request again, and for how long: one policy, one classification of
failures, and the transport's retries of requests that are safe to repeat.

A bulk create is not idempotent, so what happens after it failed depends on whether it can
have taken effect; :func:`classify` says which, and the upload acts on it. GET and PATCH
are safe to repeat (a GET changes nothing; a PATCH sets fields to given values, so a second
one leaves what the first left), so any failure of theirs that may pass is retried by the
HTTP transport itself: :func:`transport_retry` builds the urllib3 ``Retry`` every client
session mounts, which never repeats any other method.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import logging
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, Self

from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from .deadline import WATCHDOG
from .errors import ApiError, TransportError

if TYPE_CHECKING:  # urllib3 1.26, which requests allows, has no BaseHTTPResponse
    from types import TracebackType

    from urllib3 import BaseHTTPResponse
    from urllib3.connectionpool import ConnectionPool

__all__ = [
    "AMBIGUOUS_STATUSES",
    "REPEATABLE_METHODS",
    "RETRY_STATUSES",
    "Action",
    "RetryPolicy",
    "Tries",
    "classify",
    "describe",
    "may_be_running",
    "pause",
    "retry_after_seconds",
    "stopping",
    "transport_retry",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard an upload tries before giving up on a chunk.

    Attributes
    ----------
    max_attempts : int
        Attempts per chunk for failures that provably did not take effect (refused
        connections, 429, 503), and per GET or PATCH for any failure that may pass, the
        first attempt included.
    backoff : float
        First wait in seconds when the server gives no ``Retry-After``; doubles each time.
    max_wait : float
        Cap on any single wait, including one asked for by ``Retry-After``.
    jitter : float
        Share of a backoff wait added at random (0.5: up to half as long again) before a
        GET or PATCH is repeated, so that clients refused together do not return together.
        A wait asked for by ``Retry-After`` is kept as asked.
    settle : float or None
        Seconds to wait after a timeout (or a 504) before asking the server what landed,
        since it may still be working on the request. Default: twice the read timeout,
        capped by ``max_wait``.
    give_up_after : float
        Seconds after the first attempt of a request (or of a chunk) after which a
        failure is not retried: with ``max_attempts``, it bounds how long an upload
        keeps trying a server that does not answer.
    """

    max_attempts: int = 6
    backoff: float = 0.25
    max_wait: float = 30.0
    settle: float | None = None
    give_up_after: float = 120.0
    jitter: float = 0.5

    def allows(self, attempt: int, started: float) -> bool:
        """Whether attempt number ``attempt`` of a series begun at ``started`` (a
        ``time.monotonic()`` reading) may be followed by another: the one rule for how
        long any request is retried."""
        return attempt < self.max_attempts and time.monotonic() - started < self.give_up_after

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before attempt number ``attempt + 1`` (``attempt`` >= 1)."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_wait))
        return min(self.backoff * 2 ** (attempt - 1), self.max_wait)

    def jittered_wait(self, attempt: int, retry_after: float | None = None) -> float:
        """:meth:`wait`, with up to ``jitter`` of it added at random when the server did not
        say how long to wait."""
        wait = self.wait(attempt, retry_after)
        if retry_after is None and self.jitter > 0:
            wait = min(wait * (1.0 + self.jitter * random.random()), self.max_wait)
        return wait


# Statuses after which the request provably did not take effect: safe to send again.
RETRY_STATUSES = frozenset({429, 503})
# Statuses after which the request may have taken effect: ask the server before resending.
AMBIGUOUS_STATUSES = frozenset({500, 502, 504})
# Methods the transport repeats after a failure that may pass: see the module's notes.
REPEATABLE_METHODS = frozenset({"GET", "PATCH"})


def may_be_running(exc: BaseException) -> bool:
    """Whether the server may still be working on the failed request (it timed out, or a
    gateway gave up on it with 504): a commit can land after the failure."""
    if isinstance(exc, TransportError):
        return exc.timed_out
    return isinstance(exc, ApiError) and exc.status_code == 504


def describe(exc: BaseException) -> str:
    """A failure in a few words, for a log line."""
    if isinstance(exc, ApiError):
        return f"HTTP {exc.status_code}"
    return str(exc) or type(exc).__name__


class Action(Enum):
    """What to do after a bulk create failed."""

    SPLIT = "split"  # refused as too large, nothing stored: send it in halves
    RETRY = "retry"  # provably not taken effect: wait, then send it again
    RECONCILE = "reconcile"  # may have taken effect: ask what is stored before resending
    FAIL = "fail"  # refused for good: stop


def classify(exc: BaseException, *, rows: int = 1) -> Action:
    """What a failed bulk create of ``rows`` records calls for; the one place this is said.

    Examples
    --------
    >>> from atomscale_accessors.errors import ApiError
    >>> [classify(ApiError(s, "x"), rows=10).value for s in (413, 429, 500, 422)]
    ['split', 'retry', 'reconcile', 'fail']
    """
    if isinstance(exc, TransportError):
        return Action.RECONCILE if exc.sent else Action.RETRY
    if not isinstance(exc, ApiError):
        return Action.FAIL
    if exc.status_code == 413 and rows > 1:
        return Action.SPLIT
    if exc.status_code in RETRY_STATUSES:
        return Action.RETRY
    if exc.status_code in AMBIGUOUS_STATUSES:
        return Action.RECONCILE
    return Action.FAIL


class Tries:
    """The attempts of one series (a chunk, a GET): how many and since when, within the
    policy's bounds. ``stop`` ends a wait early."""

    def __init__(self, policy: RetryPolicy, stop: threading.Event | None = None) -> None:
        self.policy = policy
        self.stop = stop
        self.attempt = 1
        self.started = time.monotonic()

    def spent(self) -> bool:
        """Whether no further attempt may start."""
        return not self.policy.allows(self.attempt - 1, self.started)

    def again(self, exc: BaseException) -> bool:
        """Wait for the next attempt if the policy allows one; False when it does not, or
        when ``stop`` was set while waiting."""
        if not self.policy.allows(self.attempt, self.started):
            return False
        if not pause(self.policy, self.attempt, exc, self.stop):
            return False
        self.attempt += 1
        return True


def pause(
    policy: RetryPolicy, attempt: int, exc: BaseException, stop: threading.Event | None = None
) -> bool:
    """Wait before attempt ``attempt + 1`` as the policy (and a ``Retry-After``) says;
    False when ``stop`` was set meanwhile."""
    delay = policy.wait(attempt, getattr(exc, "retry_after", None))
    log.info("retrying in %.2f s after %s", delay, describe(exc))
    if stop is None:
        time.sleep(delay)
        return True
    return not stop.wait(delay)


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header as seconds (a number of seconds or an HTTP date); None
    when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


_current = threading.local()


@contextlib.contextmanager
def stopping(stop: threading.Event | None) -> Iterator[None]:
    """Within the block, the calling thread's transport retries end when ``stop`` is set:
    a wait ends early, and no further attempt is made."""
    before = getattr(_current, "stop", None)
    _current.stop = stop
    try:
        yield
    finally:
        _current.stop = before


def _stopped() -> bool:
    stop = getattr(_current, "stop", None)
    return stop is not None and stop.is_set()


class _TransportRetry(Retry):
    """urllib3's ``Retry`` following a :class:`RetryPolicy`: attempts and time by
    :meth:`RetryPolicy.allows`, waits by :meth:`RetryPolicy.jittered_wait` (``Retry-After``
    respected, capped by ``max_wait``), all within the request's deadline; and no retry
    at all of a method outside :data:`REPEATABLE_METHODS`, whatever the failure (urllib3
    would repeat any method after a refused connection)."""

    def __init__(
        self, *args: Any, policy: RetryPolicy, started: float | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.policy = policy
        self.started = started

    def new(self, **kw: Any) -> _TransportRetry:
        # The clock starts at the first failure of a request; copies carry it along.
        kw.setdefault("policy", self.policy)
        kw.setdefault("started", self.started if self.started is not None else time.monotonic())
        return super().new(**kw)

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        if (
            error is not None
            and not self._is_read_error(error)  # urllib3 re-raises these itself
            and not self._is_method_retryable(method or "")
        ):
            # Reported as urllib3 reports a failure it does not retry: requests turns this
            # into its usual ConnectionError (or ConnectTimeout), the cause as its reason.
            # The pool is None only when called outside urllib3, which urllib3 allows too.
            raise MaxRetryError(_pool, url or "", error) from error  # type: ignore[arg-type]
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def is_exhausted(self) -> bool:
        if super().is_exhausted() or _stopped() or WATCHDOG.remaining() == 0.0:
            return True
        started = self.started if self.started is not None else time.monotonic()
        return not self.policy.allows(len(self.history), started)

    def sleep(self, response: Any = None) -> None:
        retry_after = None
        if response is not None:
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        attempt = max(len(self.history), 1)
        delay = self.policy.jittered_wait(attempt, retry_after)
        left = WATCHDOG.remaining()
        if left is not None:  # no wait beyond the request's deadline
            delay = min(delay, left)
        last = self.history[-1] if self.history else None
        cause = f"HTTP {last.status}" if last is not None and last.status else "a failure"
        if last is not None and last.error is not None:
            cause = type(last.error).__name__
        log.info("retrying in %.2f s after %s", delay, cause)
        stop = getattr(_current, "stop", None)
        if stop is None:
            time.sleep(delay)
        else:
            stop.wait(delay)


def transport_retry(policy: RetryPolicy) -> Retry:
    """The urllib3 ``Retry`` a client's session mounts: GET and PATCH are repeated after a
    refused or cut connection, a timeout, 429 or a 5xx, as ``policy`` allows; nothing else
    is ever repeated by the transport.

    Examples
    --------
    >>> retry = transport_retry(RetryPolicy(max_attempts=3))
    >>> retry.is_retry("GET", 503), retry.is_retry("POST", 503), retry.is_retry("GET", 404)
    (True, False, False)
    """
    return _TransportRetry(
        total=policy.max_attempts - 1,
        allowed_methods=REPEATABLE_METHODS,
        status_forcelist=RETRY_STATUSES | AMBIGUOUS_STATUSES,
        raise_on_status=False,  # the last answer is returned, and becomes an ApiError
        respect_retry_after_header=True,
        policy=policy,
    )

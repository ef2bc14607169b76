"""When to try a request again, and for how long: one classification of failures and
one loop for requests that are safe to repeat.

A bulk create is not idempotent, so what happens after it failed depends on whether it can
have taken effect; :func:`classify` says which. GET and PATCH change nothing (or set the
same values again), so any failure that may pass is retried: :func:`retry_safe`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from .errors import ApiError, TransportError

__all__ = [
    "AMBIGUOUS_STATUSES",
    "RETRY_STATUSES",
    "Action",
    "RetryPolicy",
    "Tries",
    "classify",
    "describe",
    "may_be_running",
    "pause",
    "retry_safe",
    "transient",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How hard an upload tries before giving up on a chunk.

    Attributes
    ----------
    max_attempts : int
        Attempts per chunk for failures that provably did not take effect (refused
        connections, 429, 503), the first attempt included.
    backoff : float
        First wait in seconds when the server gives no ``Retry-After``; doubles each time.
    max_wait : float
        Cap on any single wait, including one asked for by ``Retry-After``.
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


# Statuses after which the request provably did not take effect: safe to send again.
RETRY_STATUSES = frozenset({429, 503})
# Statuses after which the request may have taken effect: ask the server before resending.
AMBIGUOUS_STATUSES = frozenset({500, 502, 504})


def may_be_running(exc: BaseException) -> bool:
    """Whether the server may still be working on the failed request (it timed out, or a
    gateway gave up on it with 504): a commit can land after the failure."""
    if isinstance(exc, TransportError):
        return exc.timed_out
    return isinstance(exc, ApiError) and exc.status_code == 504


def transient(exc: BaseException) -> bool:
    """Whether a failure may pass when the request is repeated: for requests safe to repeat,
    anything :func:`classify` does not call a plain failure."""
    return classify(exc) is not Action.FAIL


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


def retry_safe(
    call: Callable[[], T], policy: RetryPolicy, stop: threading.Event | None = None
) -> T:
    """``call()``, retried on any failure that may pass, within the policy's bounds: for
    requests that are safe to repeat (a GET, a PATCH). ``stop`` ends the waiting early."""
    tries = Tries(policy, stop)
    while True:
        try:
            return call()
        except (TransportError, ApiError) as exc:
            if not transient(exc) or not tries.again(exc):
                raise


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

"""Fault injection, limits and request counters of the local server.

Everything here is deterministic except the token-bucket rate limit, which is about time
by nature: injected faults are consumed by counting matching requests, never by chance.

How injected faults are consumed
--------------------------------
Each authenticated request to a known route is offered to the queued injections in the
order they were made. An injection whose route matches (or is ``"any"``) and which still
has ``after`` requests to let through lets this one through and counts it down. Otherwise
it fires: latency injections all add up; of the other kinds only the first firing one
applies to the request, and the later ones stay queued untouched for the next requests.
An injection that has fired ``times`` times is removed. So
``inject("error_before_commit", status=503); inject("error_before_commit", status=500)``
answers the next request with 503 and the one after with 500.

A fault is spent on the request it was picked for even when that request fails for
another reason first (a 404, 413 or 422 is answered as usual then).

When each kind acts
-------------------
A request is received, its body read and validated, stored (committed), and answered.

- ``latency`` waits before the body is read: a client that gives up meanwhile has its
  request dropped unread, and nothing is stored.
- ``latency_before_commit`` waits after the body is read, then stores: the data lands
  ``seconds`` after the request arrived whether or not the client is still waiting, so a
  client with a shorter read timeout gives up before its data is stored (a late commit).
- ``latency_after_commit`` stores, then waits before answering: a client with a shorter
  read timeout gives up after its data is stored, and never sees the answer.
- ``error_*`` and ``drop_*`` answer an error or close the connection after the body is
  read and validated, before the commit or after it.
- ``rate_limited`` answers 429 before the body is read.

On the listing routes, which store nothing, the two commit latencies are plain delays
before and after the listing is read.

``Retry-After`` is always sent in whole seconds, the only form RFC 9110 allows besides a
date (urllib3, and so the official SDK, refuses anything else): the rate limit's wait is
rounded up, and ``inject("rate_limited", retry_after=...)`` takes whole seconds only, so
that a test never waits longer than it asked without knowing.
"""

from __future__ import annotations

import numbers
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "COMMIT_FAULTS",
    "FAULT_KINDS",
    "LATENCY_KINDS",
    "ROUTE_ALIASES",
    "ROUTE_NAMES",
    "Decision",
    "Faults",
    "Injection",
    "Limits",
    "TokenBucket",
]

ROUTE_NAMES: Final = (
    "create_sample",
    "list_samples",
    "get_sample",
    "sample_timeseries",
    "sample_process_steps",
    "list_projects",
    "project_samples",
    "add_project_sample",
    "list_annotations",
    "create_annotation",
    "bulk_create",
    "update_annotation",
)
"""Names of the server's routes, as used by counters and by ``inject(route=...)``."""

ROUTE_ALIASES: Final = {"bulk": "bulk_create"}
"""Short names accepted wherever a route name is."""

COMMIT_FAULTS: Final = (
    "error_before_commit",
    "error_after_commit",
    "drop_before_commit",
    "drop_after_commit",
)
"""Faults that act around the store: before anything is stored, or after the commit."""

LATENCY_KINDS: Final = ("latency", "latency_before_commit", "latency_after_commit")
"""Faults that delay a request by ``seconds``: before its body is read, between reading it
and the commit, or between the commit and the answer."""

FAULT_KINDS: Final = (*COMMIT_FAULTS, "rate_limited", *LATENCY_KINDS)

_UNSET: Final = object()


@dataclass
class Limits:
    """Request size limits; ``None`` means no limit.

    Attributes
    ----------
    max_bulk_annotations : int or None
        Most annotations in one bulk request (413 beyond).
    max_body_bytes : int or None
        Largest request body in bytes (413 beyond), decided from ``Content-Length``
        before the body is read, and while reading a body sent without one.
    """

    max_bulk_annotations: int | None = 50_000
    max_body_bytes: int | None = 64 * 2**20

    def __post_init__(self) -> None:
        for name in ("max_bulk_annotations", "max_body_bytes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be a non-negative int or None, got {value!r}")

    def update(
        self, max_bulk_annotations: object = _UNSET, max_body_bytes: object = _UNSET
    ) -> None:
        """Change the limits given; ``None`` lifts a limit, omitted ones stay."""
        # Limits checks what it is given when made: the arguments may be anything.
        new = Limits(
            self.max_bulk_annotations if max_bulk_annotations is _UNSET else max_bulk_annotations,  # type: ignore[arg-type]
            self.max_body_bytes if max_body_bytes is _UNSET else max_body_bytes,  # type: ignore[arg-type]
        )
        self.max_bulk_annotations = new.max_bulk_annotations
        self.max_body_bytes = new.max_body_bytes


@dataclass
class Injection:
    """One queued fault; see the module notes for how it is consumed.

    Attributes
    ----------
    kind : str
        One of :data:`FAULT_KINDS`.
    route : str
        A name from :data:`ROUTE_NAMES`, or ``"any"``.
    times : int
        How many more requests it will hit.
    after : int
        How many more matching requests it lets through before it hits.
    status : int or None
        HTTP status of the error kinds.
    retry_after : int or None
        ``Retry-After`` whole seconds of ``rate_limited``; ``None`` sends no header.
    seconds : float
        Added delay of the :data:`LATENCY_KINDS`.
    """

    kind: str
    route: str = "any"
    times: int = 1
    after: int = 0
    status: int | None = None
    retry_after: int | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Decision:
    """What the faults do to one request.

    Attributes
    ----------
    latency : float
        Seconds to wait before the body is read (injected latency only; the global
        latency is applied to every request separately).
    latency_before_commit : float
        Seconds to wait between reading the body and storing it.
    latency_after_commit : float
        Seconds to wait between storing and answering.
    fault : Injection or None
        The one fault other than a latency that hits this request.
    """

    latency: float = 0.0
    latency_before_commit: float = 0.0
    latency_after_commit: float = 0.0
    fault: Injection | None = None


def _whole_seconds(value: object) -> int:
    """``value`` as a whole number of seconds >= 0, or ``ValueError``."""
    integral = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    whole = integral or (isinstance(value, float) and value.is_integer())
    # int() of an Integral or of an integral float, as checked just above.
    seconds = int(value) if whole else -1  # type: ignore[call-overload]
    if seconds < 0:
        raise ValueError(
            "retry_after must be a whole number of seconds >= 0 (Retry-After carries no"
            f" fractions), got {value!r}"
        )
    return seconds


class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst``.

    Parameters
    ----------
    rate : float
        Requests per second allowed on average.
    burst : float, optional
        Requests allowed at once after a quiet period; default ``max(1, rate)``.
    clock : callable, optional
        Monotonic clock, replaceable for tests.
    """

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, got {rate!r}")
        self.rate = float(rate)
        self.burst = float(max(1.0, rate) if burst is None else burst)
        if self.burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def take(self) -> float | None:
        """Take a token: ``None`` when granted, else the seconds until one is available."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tokens) / self.rate


class Faults:
    """The switchable misbehaviour of a server, and its request counters.

    Thread-safe: the server's event loop consults it while tests change it from another
    thread.

    Parameters
    ----------
    latency : float
        Seconds added to every request.
    rate_limit : float or None
        Requests per second before 429 (token bucket); ``None`` for no limit.

    Attributes
    ----------
    reverse_bulk_answers : bool
        Answer bulk creates with the created annotations in reverse order (the API does
        not document the order), so that clients are seen to pair them by content.

    Examples
    --------
    >>> faults = Faults()
    >>> faults.inject("error_before_commit", status=503, route="bulk_create", after=1)
    >>> faults.decide("bulk_create").fault is None  # let through
    True
    >>> faults.decide("bulk_create").fault.status
    503
    >>> faults.decide("bulk_create").fault is None  # spent
    True
    """

    def __init__(self, latency: float = 0.0, rate_limit: float | None = None) -> None:
        self._lock = threading.Lock()
        self._injections: list[Injection] = []
        self._latency = 0.0
        self._bucket: TokenBucket | None = None
        self._counts: dict[str, int] = dict.fromkeys(ROUTE_NAMES, 0)
        self.reverse_bulk_answers = False
        self.set_latency(latency)
        self.set_rate_limit(rate_limit)

    # -- switches ----------------------------------------------------------------------

    def inject(
        self,
        kind: str,
        *,
        route: str = "any",
        times: int = 1,
        after: int = 0,
        status: int | None = None,
        retry_after: int | None = None,
        seconds: float | None = None,
    ) -> None:
        """Queue a fault.

        Parameters
        ----------
        kind : str
            One of :data:`FAULT_KINDS`. ``error_before_commit`` and
            ``error_after_commit`` answer ``status`` (default 500) with
            ``{"detail": ...}``, before anything is stored or after the commit.
            ``drop_before_commit`` and ``drop_after_commit`` close the connection without
            an answer (the client sees a connection error), before storing or after the
            commit. ``rate_limited`` answers 429, with ``Retry-After: retry_after`` when
            that is not ``None``. ``latency`` waits ``seconds`` before the body is read
            (nothing is stored if the client gives up meanwhile);
            ``latency_before_commit`` waits after reading the body, then stores (the
            commit lands late, even if the client has given up);
            ``latency_after_commit`` stores, then waits before answering. See the module
            notes for when each acts.
        route : str
            A name from :data:`ROUTE_NAMES` (or ``"bulk"`` for ``"bulk_create"``), or
            ``"any"``.
        times : int
            How many requests it hits.
        after : int
            How many matching requests it lets through first.
        status : int, optional
            HTTP status (400-599) of the ``error_*`` kinds.
        retry_after : int, optional
            Whole seconds for the ``Retry-After`` header of ``rate_limited`` (an int, or
            a float with no fraction such as ``2.0``): the header allows nothing finer.
        seconds : float, optional
            Delay of the :data:`LATENCY_KINDS` (required for them).

        Raises
        ------
        ValueError
            An unknown kind or route, or an argument that does not fit the kind.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        route = ROUTE_ALIASES.get(route, route)
        if route != "any" and route not in ROUTE_NAMES:
            raise ValueError(f"unknown route {route!r}; expected 'any' or one of {ROUTE_NAMES}")
        if times < 1 or after < 0:
            raise ValueError("times must be at least 1 and after at least 0")
        if kind.startswith("error_"):
            status = 500 if status is None else int(status)
            if not 400 <= status <= 599:
                raise ValueError(f"status must be in 400-599, got {status}")
        elif status is not None:
            raise ValueError(f"status applies only to the error kinds, not {kind!r}")
        if retry_after is not None:
            if kind != "rate_limited":
                raise ValueError("retry_after applies only to 'rate_limited'")
            retry_after = _whole_seconds(retry_after)
        if kind in LATENCY_KINDS:
            if seconds is None or not seconds >= 0:
                raise ValueError(f"{kind} needs seconds >= 0")
        elif seconds is not None:
            raise ValueError(f"seconds applies only to {LATENCY_KINDS}")
        injection = Injection(
            kind=kind,
            route=route,
            times=times,
            after=after,
            status=status,
            retry_after=retry_after,
            seconds=float(seconds or 0.0),
        )
        with self._lock:
            self._injections.append(injection)

    def clear(self) -> None:
        """Drop every queued injection, the global latency and the rate limit, and answer
        bulk creates in order again."""
        with self._lock:
            self._injections.clear()
            self._latency = 0.0
            self._bucket = None
            self.reverse_bulk_answers = False

    def pending(self) -> list[Injection]:
        """Copies of the injections still queued, in order."""
        with self._lock:
            return [Injection(**vars(item)) for item in self._injections]

    @property
    def latency(self) -> float:
        """Seconds added to every request."""
        return self._latency

    def set_latency(self, seconds: float) -> None:
        """Add ``seconds`` to every request from now on (0 to stop)."""
        if not seconds >= 0:
            raise ValueError(f"latency must be >= 0, got {seconds!r}")
        self._latency = float(seconds)

    def set_rate_limit(self, per_second: float | None, burst: float | None = None) -> None:
        """Answer 429 beyond ``per_second`` requests per second; ``None`` lifts the limit.

        Parameters
        ----------
        per_second : float or None
            Sustained rate.
        burst : float, optional
            Requests allowed at once after a quiet period; default ``max(1, per_second)``.
        """
        bucket = None if per_second is None else TokenBucket(per_second, burst)
        with self._lock:
            self._bucket = bucket

    # -- per request -------------------------------------------------------------------

    def admit(self) -> float | None:
        """Ask the rate limit for a request: ``None`` if admitted, else seconds to wait."""
        with self._lock:
            return None if self._bucket is None else self._bucket.take()

    def decide(self, route: str) -> Decision:
        """Pick the injected faults that hit one request to ``route`` and consume them."""
        latency = dict.fromkeys(LATENCY_KINDS, 0.0)
        fault: Injection | None = None
        with self._lock:
            kept: list[Injection] = []
            for item in self._injections:
                if item.route not in ("any", route):
                    kept.append(item)
                    continue
                if item.after > 0:
                    item.after -= 1
                    kept.append(item)
                    continue
                if item.kind in latency:
                    latency[item.kind] += item.seconds
                elif fault is None:
                    fault = Injection(**vars(item))
                else:
                    kept.append(item)  # another fault already hits this request
                    continue
                item.times -= 1
                if item.times > 0:
                    kept.append(item)
            self._injections = kept
        return Decision(
            latency=latency["latency"],
            latency_before_commit=latency["latency_before_commit"],
            latency_after_commit=latency["latency_after_commit"],
            fault=fault,
        )

    # -- counters ----------------------------------------------------------------------

    def count(self, route: str | None) -> None:
        """Count one request; ``None`` for a path or method that matches no route."""
        key = "other" if route is None else route
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    @property
    def request_counts(self) -> dict[str, int]:
        """Requests received per route name (a copy); ``"other"`` appears once non-zero."""
        with self._lock:
            return dict(self._counts)

    def request_count(self, route: str | None = None) -> int:
        """Requests received on one route, or on all when ``route`` is ``None``."""
        with self._lock:
            if route is None:
                return sum(self._counts.values())
            route = ROUTE_ALIASES.get(route, route)
            if route != "other" and route not in ROUTE_NAMES:
                raise ValueError(f"unknown route {route!r}")
            return self._counts.get(route, 0)

    def reset_counters(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            self._counts = dict.fromkeys(ROUTE_NAMES, 0)

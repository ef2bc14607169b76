"""The routes of the local Atomscale-compatible server.

:func:`create_app` builds a FastAPI application over a :class:`~.store.Store`. A small ASGI
middleware in front of the routes counts every request, checks the API key, applies the
rate limit, the latency and the injected faults, and refuses bodies whose
``Content-Length`` is over the limit before a byte of them is read. The handlers read the
raw body and validate it with pydantic straight from the JSON bytes, and answer with
pre-encoded JSON: FastAPI's ``jsonable_encoder`` and response models would cost more than
the whole insert on 5,000-annotation bulk requests.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from . import _json
from .faults import Decision, Faults, Injection, Limits
from .models import (
    annotation_adapter,
    bulk_adapter,
    metadata_depth_errors,
    patch_adapter,
    sample_adapter,
    validation_errors,
)
from .store import AnnotationNotFound, DuplicateSampleName, SampleNotFound, Store

__all__ = ["create_app"]

_T = TypeVar("_T")

# Where the middleware leaves the faults that act inside the handler (around the commit).
_DECISION_KEY = "atomscale.faults"

# uvicorn's own log: the command line shows it, LocalServer keeps it at WARNING.
_log = logging.getLogger("uvicorn.error")

_NO_FAULTS = Decision()

_SAMPLE_NOT_FOUND = "Physical sample not found"
_ANNOTATION_NOT_FOUND = "Annotation not found"


def create_app(
    store: Store,
    api_key: str,
    faults: Faults | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """Build the server application.

    Parameters
    ----------
    store : Store
        Where samples and annotations live.
    api_key : str
        The key every request must carry in ``X-API-KEY``.
    faults : Faults, optional
        Fault switches and request counters; a fresh, inactive one by default.
    limits : Limits, optional
        Request size limits; the defaults of :class:`~.faults.Limits` by default.

    Returns
    -------
    fastapi.FastAPI
        The application. ``app.state.uvicorn_server`` must be set to the running
        ``uvicorn.Server`` for the ``drop_*`` faults to work (they close the request's
        connection at the transport, which only the server can reach).
    """
    if not api_key:
        raise ValueError("the server requires an API key")
    faults = Faults() if faults is None else faults
    limits = Limits() if limits is None else limits

    app = FastAPI(
        title="atomscale-accessors local server",
        # The service's routes are used in both slash forms; a redirect would turn a
        # POST into a second request, so both forms are registered and none redirects.
        redirect_slashes=False,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.store = store
    app.state.faults = faults
    app.state.limits = limits
    app.state.uvicorn_server = None

    # -- helpers closing over this app -------------------------------------------------

    async def before_commit(request: Request) -> Response | None:
        decision: Decision = request.scope.get(_DECISION_KEY, _NO_FAULTS)
        if decision.latency_before_commit:
            # The body is read: the commit that follows happens even if the client leaves.
            await asyncio.sleep(decision.latency_before_commit)
        fault = decision.fault
        if fault is None:
            return None
        if fault.kind == "error_before_commit":
            return _fault_response(fault)
        if fault.kind == "drop_before_commit":
            return await _drop_connection(app, request)
        return None

    async def after_commit(request: Request, response: Response) -> Response:
        decision: Decision = request.scope.get(_DECISION_KEY, _NO_FAULTS)
        if decision.latency_after_commit:
            await asyncio.sleep(decision.latency_after_commit)
        fault = decision.fault
        if fault is None:
            return response
        if fault.kind == "error_after_commit":
            return _fault_response(fault)
        if fault.kind == "drop_after_commit":
            return await _drop_connection(app, request)
        return response

    # -- samples -----------------------------------------------------------------------

    async def create_sample(request: Request) -> Response:
        body = await _read_body(request, limits)
        data = _validate(sample_adapter, body)
        if (early := await before_commit(request)) is not None:
            return early
        try:
            sample = await run_in_threadpool(
                store.create_sample, data["name"], data.get("detail_notes")
            )
        except DuplicateSampleName as exc:
            raise HTTPException(
                status_code=409,
                detail={
                    "message": f"A physical sample named {exc.name!r} already exists",
                    "physical_sample_id": exc.sample_id,
                },
            ) from None
        return await after_commit(request, _json_response(_json.dumps(sample)))

    async def list_samples(
        request: Request, physical_sample_id: uuid.UUID | None = None
    ) -> Response:
        if (early := await before_commit(request)) is not None:
            return early
        wanted = None if physical_sample_id is None else str(physical_sample_id)
        samples = await run_in_threadpool(store.list_samples, wanted)
        return await after_commit(request, _json_response(_json.dumps(samples)))

    # -- annotations -------------------------------------------------------------------

    async def list_annotations(
        request: Request,
        physical_sample_id: uuid.UUID,
        property_name: str | None = None,
        char_source_type: str | None = None,
        x_min: Annotated[float | None, Query(allow_inf_nan=False)] = None,
        x_max: Annotated[float | None, Query(allow_inf_nan=False)] = None,
        y_min: Annotated[float | None, Query(allow_inf_nan=False)] = None,
        y_max: Annotated[float | None, Query(allow_inf_nan=False)] = None,
    ) -> Response:
        if (early := await before_commit(request)) is not None:
            return early

        def work() -> bytes:
            rows = store.list_annotations(
                str(physical_sample_id),
                property_name=property_name,
                char_source_type=char_source_type,
                x_range=(x_min, x_max),
                y_range=(y_min, y_max),
                raw_metadata=True,
            )
            return _json.dumps(rows)

        payload = await _in_thread_404(work)
        return await after_commit(request, _json_response(payload))

    async def create_annotation(request: Request, physical_sample_id: uuid.UUID) -> Response:
        body = await _read_body(request, limits)
        item = _validate(annotation_adapter, body)
        if (early := await before_commit(request)) is not None:
            return early

        def work() -> bytes:
            (created,) = store.create_annotations(str(physical_sample_id), [item])
            return _json.dumps(created)

        payload = await _in_thread_404(work)
        return await after_commit(request, _json_response(payload))

    async def bulk_create(request: Request, physical_sample_id: uuid.UUID) -> Response:
        body = await _read_body(request, limits)
        maximum = limits.max_bulk_annotations
        # A cheap upper bound first, so an oversized request is refused before the full
        # validation; it can only overcount (a metadata key or a value spelled
        # "property_name"), so an excess is confirmed by a plain parse.
        if maximum is not None and body.count(b'"property_name"') > maximum:
            count = await run_in_threadpool(_count_annotations, body)
            if count is not None and count > maximum:
                raise _too_many(count, maximum)
        data = await run_in_threadpool(_validate, bulk_adapter, body)
        items = data["annotations"]
        if maximum is not None and len(items) > maximum:
            # keys written with escapes (\u0070roperty_name) evade the cheap count
            raise _too_many(len(items), maximum)
        if (early := await before_commit(request)) is not None:
            return early

        def work() -> bytes:
            created = store.create_annotations(str(physical_sample_id), items)
            if faults.reverse_bulk_answers:
                created.reverse()
            return _json.dumps(created)

        payload = await _in_thread_404(work)
        return await after_commit(request, _json_response(payload))

    async def update_annotation(
        request: Request, physical_sample_id: uuid.UUID, annotation_id: uuid.UUID
    ) -> Response:
        body = await _read_body(request, limits)
        changes = _validate(patch_adapter, body)
        if (early := await before_commit(request)) is not None:
            return early

        def work() -> bytes:
            updated = store.update_annotation(str(physical_sample_id), str(annotation_id), changes)
            return _json.dumps(updated)

        try:
            payload = await _in_thread_404(work)
        except AnnotationNotFound:
            raise HTTPException(status_code=404, detail=_ANNOTATION_NOT_FOUND) from None
        return await after_commit(request, _json_response(payload))

    routes: Sequence[tuple[str, Callable[..., Any], str, str]] = (
        ("/physical_samples", create_sample, "POST", "create_sample"),
        ("/physical_samples", list_samples, "GET", "list_samples"),
        ("/physical_samples/{physical_sample_id}/annotations", list_annotations, "GET",
         "list_annotations"),
        ("/physical_samples/{physical_sample_id}/annotations", create_annotation, "POST",
         "create_annotation"),
        # before the {annotation_id} route, so "bulk" is never read as an annotation id
        ("/physical_samples/{physical_sample_id}/annotations/bulk", bulk_create, "POST",
         "bulk_create"),
        ("/physical_samples/{physical_sample_id}/annotations/{annotation_id}",
         update_annotation, "PATCH", "update_annotation"),
    )  # fmt: skip
    for path, endpoint, method, name in routes:
        for form in (path, f"{path}/"):
            app.add_api_route(form, endpoint, methods=[method], name=name, include_in_schema=False)

    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    app.add_middleware(
        _Gate, api_key=api_key, faults=faults, limits=limits, routes=app.router.routes
    )
    return app


# -- the gate in front of the routes ---------------------------------------------------


class _Gate:
    """Counting, authentication, rate limit, latency, injected faults, body size.

    A plain ASGI middleware rather than a FastAPI dependency: it must run for every
    request, also those that match no route, and refuse oversized bodies before the
    routing machinery could touch them.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str,
        faults: Faults,
        limits: Limits,
        routes: Sequence[BaseRoute],
    ) -> None:
        self.app = app
        self._key = api_key.encode()
        self._faults = faults
        self._limits = limits
        self._routes = routes

    def _route_name(self, scope: Scope) -> str | None:
        for route in self._routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return getattr(route, "name", None)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        faults = self._faults
        route = self._route_name(scope)
        faults.count(route)
        if faults.latency:
            await asyncio.sleep(faults.latency)  # async: other requests go on meanwhile

        key = _header(scope, b"x-api-key")
        if key is None:
            await _send_json(send, 401, {"detail": "Missing API key (X-API-KEY header)"})
            return
        if not hmac.compare_digest(key, self._key):
            await _send_json(send, 401, {"detail": "Invalid API key"})
            return
        if route is None:  # FastAPI answers 404 or 405
            await self.app(scope, receive, send)
            return

        wait = faults.admit()
        if wait is not None:
            await _send_json(
                send,
                429,
                {"detail": "Rate limit exceeded"},
                [(b"retry-after", _retry_after(wait))],
            )
            return

        decision = faults.decide(route)
        if decision.latency:
            await asyncio.sleep(decision.latency)
        fault = decision.fault
        if fault is not None and fault.kind == "rate_limited":
            headers = []
            if fault.retry_after is not None:
                headers.append((b"retry-after", _retry_after(fault.retry_after)))
            await _send_json(send, 429, {"detail": "Rate limit exceeded"}, headers)
            return

        limit = self._limits.max_body_bytes
        declared = _header(scope, b"content-length")
        if limit is not None and declared is not None and declared.isdigit():
            size = int(declared)
            if size > limit:
                # Answered before the body is read; the server discards the body as it
                # arrives, so the client can finish sending and read this answer.
                await _send_json(send, 413, {"detail": _too_large_message(size, limit)})
                return

        scope[_DECISION_KEY] = decision
        await self.app(scope, receive, send)


# -- helpers ----------------------------------------------------------------------------


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


async def _send_json(
    send: Send,
    status: int,
    payload: Any,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    body = _json.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _retry_after(seconds: float) -> bytes:
    """``Retry-After`` value: whole seconds, rounded up (RFC 9110 allows no fractions, and
    rounding down could tell a client to come back before it may)."""
    return str(max(0, math.ceil(seconds))).encode()


async def _client_disconnected(request: Request, exc: Exception) -> Response:
    """Log one line where uvicorn would log a traceback: a client that leaves before it
    has sent the whole body (it timed out, or was stopped) is not an error of the server."""
    _log.info(
        "client disconnected while sending the body of %s %s", request.method, request.url.path
    )
    return Response(status_code=400)  # never delivered: the connection is gone


def _json_response(payload: bytes) -> Response:
    return Response(content=payload, media_type="application/json")


def _too_large_message(size: int, limit: int) -> str:
    return f"Request body too large: {size} bytes, the limit is {limit} bytes"


def _too_many(count: int, maximum: int) -> HTTPException:
    return HTTPException(
        status_code=413,
        detail=f"Too many annotations in one request: {count}, the limit is {maximum}",
    )


async def _read_body(request: Request, limits: Limits) -> bytes:
    """Read the body, refusing it (413) as soon as it grows past the byte limit.

    The ``Content-Length`` case is refused earlier by the gate; this catches bodies sent
    in chunks without one.
    """
    limit = limits.max_body_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if limit is not None and size > limit:
            raise HTTPException(status_code=413, detail=_too_large_message(size, limit))
        chunks.append(chunk)
    return b"".join(chunks)


def _validate(adapter: TypeAdapter[_T], body: bytes) -> _T:
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        errors = validation_errors(exc)
        if any(e["type"] == "json_invalid" for e in errors):
            # nested past the parser's limit: name the annotations, if metadata is why
            errors = metadata_depth_errors(body) or errors
        raise RequestValidationError(errors) from None


def _count_annotations(body: bytes) -> int | None:
    """The exact number of annotations in a bulk body, or ``None`` if it is not one."""
    try:
        data = _json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return len(data["annotations"])
    return None


async def _in_thread_404(work: Callable[[], _T]) -> _T:
    """Run store work off the event loop; an unknown sample becomes a 404."""
    try:
        return await run_in_threadpool(work)
    except SampleNotFound:
        raise HTTPException(status_code=404, detail=_SAMPLE_NOT_FOUND) from None


def _fault_response(fault: Injection) -> Response:
    status = fault.status or 500
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return Response(
        content=_json.dumps({"detail": f"{phrase} (injected fault)"}),
        status_code=status,
        media_type="application/json",
    )


async def _drop_connection(app: FastAPI, request: Request) -> Response:
    """Close the request's connection at once, so the client gets no answer at all.

    Raising would not do: uvicorn answers 500 to an exception. The connection is found
    among the uvicorn server's by the client's address and its transport aborted.
    """
    server = app.state.uvicorn_server
    client = request.scope.get("client")
    if server is None or client is None:
        raise RuntimeError("dropping a connection needs app.state.uvicorn_server to be set")
    peer = tuple(client)
    for connection in list(server.server_state.connections):
        address = getattr(connection, "client", None)
        if address is not None and tuple(address) == peer:
            connection.transport.abort()
            break
    else:
        raise RuntimeError(f"no open connection from {peer!r} to drop")
    await asyncio.sleep(0)  # let uvicorn see the connection lost before anything is sent
    # Never delivered: uvicorn discards the answer of a request whose connection is gone.
    return Response(status_code=500)

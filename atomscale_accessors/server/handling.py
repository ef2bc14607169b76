"""What every route handler of the local server does the same way: read the body within its
size limit, validate it, run store work off the event loop, answer pre-encoded JSON."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError
from starlette.concurrency import run_in_threadpool

from .catalog import ProjectNotFound, SampleNotFound
from .faults import Limits
from .models import metadata_depth_errors, validation_errors

__all__ = [
    "PROJECT_NOT_FOUND",
    "SAMPLE_NOT_FOUND",
    "AfterCommit",
    "BeforeCommit",
    "in_thread_404",
    "json_response",
    "read_body",
    "too_large_message",
    "validate",
]

_T = TypeVar("_T")

SAMPLE_NOT_FOUND = "Physical sample not found"
PROJECT_NOT_FOUND = "Project not found"

#: The fault hooks around a handler's store work (see ``app.create_app``): the first
#: answers instead of the handler when a fault says so, the second may replace the answer.
BeforeCommit = Callable[[Request], Awaitable[Response | None]]
AfterCommit = Callable[[Request, Response], Awaitable[Response]]


def json_response(payload: bytes) -> Response:
    return Response(content=payload, media_type="application/json")


def too_large_message(size: int, limit: int) -> str:
    return f"Request body too large: {size} bytes, the limit is {limit} bytes"


async def read_body(request: Request, limits: Limits) -> bytes:
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
            raise HTTPException(status_code=413, detail=too_large_message(size, limit))
        chunks.append(chunk)
    return b"".join(chunks)


def validate(adapter: TypeAdapter[_T], body: bytes) -> _T:
    try:
        return adapter.validate_json(body)
    except ValidationError as exc:
        errors = validation_errors(exc)
        if any(e["type"] == "json_invalid" for e in errors):
            # nested past the parser's limit: name the annotations, if metadata is why
            errors = metadata_depth_errors(body) or errors
        raise RequestValidationError(errors) from None


async def in_thread_404(work: Callable[[], _T]) -> _T:
    """Run store work off the event loop; an unknown sample or project becomes a 404."""
    try:
        return await run_in_threadpool(work)
    except SampleNotFound:
        raise HTTPException(status_code=404, detail=SAMPLE_NOT_FOUND) from None
    except ProjectNotFound:
        raise HTTPException(status_code=404, detail=PROJECT_NOT_FOUND) from None

"""The annotation routes of the local server: list, create one, bulk create, update one."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import HTTPException, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from . import _json
from .faults import Faults, Limits
from .handling import (
    AfterCommit,
    BeforeCommit,
    in_thread_404,
    json_response,
    read_body,
    validate,
)
from .models import annotation_adapter, bulk_adapter, patch_adapter
from .sample_routes import RouteSpec
from .store import AnnotationNotFound, Store

__all__ = ["annotation_routes"]

_ANNOTATION_NOT_FOUND = "Annotation not found"


def annotation_routes(
    store: Store,
    limits: Limits,
    faults: Faults,
    before_commit: BeforeCommit,
    after_commit: AfterCommit,
) -> tuple[RouteSpec, ...]:
    """The annotation routes over ``store``, with the app's fault hooks."""

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

        payload = await in_thread_404(work)
        return await after_commit(request, json_response(payload))

    async def create_annotation(request: Request, physical_sample_id: uuid.UUID) -> Response:
        body = await read_body(request, limits)
        item = validate(annotation_adapter, body)
        if (early := await before_commit(request)) is not None:
            return early

        def work() -> bytes:
            (created,) = store.create_annotations(str(physical_sample_id), [item])
            return _json.dumps(created)

        payload = await in_thread_404(work)
        return await after_commit(request, json_response(payload))

    async def bulk_create(request: Request, physical_sample_id: uuid.UUID) -> Response:
        body = await read_body(request, limits)
        maximum = limits.max_bulk_annotations
        # A cheap upper bound first, so an oversized request is refused before the full
        # validation; it can only overcount (a metadata key or a value spelled
        # "property_name"), so an excess is confirmed by a plain parse.
        if maximum is not None and body.count(b'"property_name"') > maximum:
            count = await run_in_threadpool(_count_annotations, body)
            if count is not None and count > maximum:
                raise _too_many(count, maximum)
        data = await run_in_threadpool(validate, bulk_adapter, body)
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

        payload = await in_thread_404(work)
        return await after_commit(request, json_response(payload))

    async def update_annotation(
        request: Request, physical_sample_id: uuid.UUID, annotation_id: uuid.UUID
    ) -> Response:
        body = await read_body(request, limits)
        changes = validate(patch_adapter, body)
        if (early := await before_commit(request)) is not None:
            return early

        def work() -> bytes:
            updated = store.update_annotation(str(physical_sample_id), str(annotation_id), changes)
            return _json.dumps(updated)

        try:
            payload = await in_thread_404(work)
        except AnnotationNotFound:
            raise HTTPException(status_code=404, detail=_ANNOTATION_NOT_FOUND) from None
        return await after_commit(request, json_response(payload))

    return (
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


def _too_many(count: int, maximum: int) -> HTTPException:
    return HTTPException(
        status_code=413,
        detail=f"Too many annotations in one request: {count}, the limit is {maximum}",
    )


def _count_annotations(body: bytes) -> int | None:
    """The exact number of annotations in a bulk body, or ``None`` if it is not one."""
    try:
        data = _json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        return len(data["annotations"])
    return None

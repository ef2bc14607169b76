"""The sample and project routes of the local server.

Beside the routes the client uses (list and create samples), these serve what the official
SDK reads: one sample, the projects, a project's samples, adding a sample to a project,
and a sample's computed timeseries and process steps. The local server computes neither,
so those two answer their documented objects with empty lists for a sample that exists.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from . import _json
from .catalog import DuplicateSampleName
from .faults import Limits
from .handling import (
    AfterCommit,
    BeforeCommit,
    in_thread_404,
    json_response,
    read_body,
    validate,
)
from .models import sample_adapter, tracking_adapter
from .store import Store

__all__ = ["RouteSpec", "sample_routes"]

#: A route: its path (written without the trailing slash), handler, method and name.
RouteSpec = tuple[str, Callable[..., Any], str, str]


def sample_routes(
    store: Store, limits: Limits, before_commit: BeforeCommit, after_commit: AfterCommit
) -> tuple[RouteSpec, ...]:
    """The sample and project routes over ``store``, with the app's fault hooks."""

    async def answer(request: Request, work: Callable[[], Any]) -> Response:
        """Faults before, ``work`` in a thread (404 for unknown ids), faults after."""
        if (early := await before_commit(request)) is not None:
            return early
        result = await in_thread_404(work)
        return await after_commit(request, json_response(_json.dumps(result)))

    async def create_sample(request: Request) -> Response:
        body = await read_body(request, limits)
        data = validate(sample_adapter, body)
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
        return await after_commit(request, json_response(_json.dumps(sample)))

    async def list_samples(
        request: Request, physical_sample_id: uuid.UUID | None = None
    ) -> Response:
        wanted = None if physical_sample_id is None else str(physical_sample_id)
        return await answer(request, lambda: store.list_samples(wanted))

    async def get_sample(request: Request, physical_sample_id: uuid.UUID) -> Response:
        return await answer(request, lambda: store.get_sample(str(physical_sample_id)))

    async def sample_timeseries(request: Request, physical_sample_id: uuid.UUID) -> Response:
        return await answer(request, lambda: _empty(store, physical_sample_id, "properties"))

    async def sample_process_steps(request: Request, physical_sample_id: uuid.UUID) -> Response:
        return await answer(request, lambda: _empty(store, physical_sample_id, "process_steps"))

    async def list_projects(request: Request) -> Response:
        return await answer(request, store.list_projects)

    async def project_samples(request: Request, project_id: uuid.UUID) -> Response:
        return await answer(request, lambda: store.project_samples(str(project_id)))

    async def add_project_sample(request: Request, project_id: uuid.UUID) -> Response:
        data = validate(tracking_adapter, await read_body(request, limits))
        sample_id = str(data["physical_sample_id"])
        return await answer(
            request, lambda: store.add_sample_to_project(str(project_id), sample_id)
        )

    sample = "/physical_samples/{physical_sample_id}"
    project = "/projects/{project_id}"
    return (
        ("/physical_samples", create_sample, "POST", "create_sample"),
        ("/physical_samples", list_samples, "GET", "list_samples"),
        (sample, get_sample, "GET", "get_sample"),
        (f"{sample}/timeseries", sample_timeseries, "GET", "sample_timeseries"),
        (f"{sample}/process_steps", sample_process_steps, "GET", "sample_process_steps"),
        ("/projects", list_projects, "GET", "list_projects"),
        (f"{project}/physical_samples", project_samples, "GET", "project_samples"),
        (
            f"{project}/configuration/tracking_samples",
            add_project_sample,
            "POST",
            "add_project_sample",
        ),
    )


def _empty(store: Store, sample_id: uuid.UUID, field: str) -> dict[str, Any]:
    """``{"physical_sample_id": ..., field: []}`` for a sample that exists."""
    store.get_sample(str(sample_id))  # SampleNotFound -> 404
    return {"physical_sample_id": str(sample_id), field: []}

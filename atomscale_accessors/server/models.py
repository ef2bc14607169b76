"""Request bodies of the local server, validated straight from the raw JSON bytes.

The annotation bodies are ``TypedDict``s rather than pydantic models: validating into plain
dicts is about twice as fast on 5,000-annotation bulk bodies, and the handlers need dicts
anyway. Validation is strict where the service's contract is: a number must be a JSON
number (a string ``"1.5"`` is refused), finite, and unknown fields are refused.

An annotation's metadata is held to two limits, checked for every annotation of a request
before anything of it is stored: :data:`MAX_METADATA_DEPTH` levels of nesting and
:data:`MAX_METADATA_BYTES` of JSON. Both sit well below what the JSON stack itself refuses
(pydantic's parser stops at 200 levels in the whole body, i.e. 197 levels of metadata in a
bulk body; the standard library and msgspec at Python's recursion limit), so that a
client can check them before it sends anything and is never surprised halfway through an
upload.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Annotated, Any, Literal, NotRequired, Required

from pydantic import (
    AfterValidator,
    AllowInfNan,
    ConfigDict,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from pydantic import Strict as _Strict
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from ..limits import COORD_REF_FRAMES, MAX_METADATA_BYTES, MAX_METADATA_DEPTH
from . import _json

__all__ = [
    "COORD_REF_FRAMES",
    "MAX_METADATA_BYTES",
    "MAX_METADATA_DEPTH",
    "AnnotationBody",
    "AnnotationPatch",
    "BulkBody",
    "SampleBody",
    "TrackingSampleBody",
    "annotation_adapter",
    "bulk_adapter",
    "metadata_depth_errors",
    "patch_adapter",
    "sample_adapter",
    "tracking_adapter",
    "validation_errors",
]


# pydantic reads ``__pydantic_config__`` from a TypedDict, whose other members mypy refuses
# (the ignores where it is set).
_CONFIG = ConfigDict(extra="forbid", strict=True)


# No character's ASCII escape is more than 6 times as long as its UTF-8 bytes (DEL: 1 byte
# raw, 6 as \u007f), and no number grows more than that: metadata whose UTF-8 encoding is
# short enough needs no exact measure.
_MOST_GROWTH = 6


def _metadata_depth(value: Any) -> int:
    """Levels of nesting of a metadata object (1 for a flat one), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest


def _too_deep(depth: int) -> PydanticCustomError:
    return PydanticCustomError(
        "metadata_too_deep",
        "Metadata is nested {depth} levels deep, more than the limit of {max_depth}",
        {"depth": depth, "max_depth": MAX_METADATA_DEPTH},
    )


def _check_metadata(value: Any) -> Any:
    # One pass for depth and finiteness (metadata is free-form, so the float fields'
    # finiteness check does not reach it): every annotation of a bulk request comes here.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, float):
                if not math.isfinite(child):
                    raise ValueError("metadata must not contain NaN or Infinity")
            elif isinstance(child, dict | list):
                if depth == MAX_METADATA_DEPTH:
                    raise _too_deep(_metadata_depth(value))
                stack.append((child, depth + 1))
    if len(_json.dumps(value)) * _MOST_GROWTH > MAX_METADATA_BYTES:
        size = len(json.dumps(value, separators=(",", ":")))
        if size > MAX_METADATA_BYTES:
            raise PydanticCustomError(
                "metadata_too_large",
                "Metadata is {size} bytes as JSON, more than the limit of {max_bytes}",
                {"size": size, "max_bytes": MAX_METADATA_BYTES},
            )
    return value


FiniteNumber = Annotated[float, _Strict(), AllowInfNan(False)]
"""A JSON number (int or float), finite; strings and booleans are refused."""

NonEmptyText = Annotated[str, StringConstraints(min_length=1, strict=True)]
CoordRefFrame = Literal["sample_relative", "stage_absolute"]
Metadata = Annotated[dict[str, Any], AfterValidator(_check_metadata)]


class AnnotationBody(TypedDict, total=False):
    """Body of one annotation, as sent to create or bulk create."""

    __pydantic_config__ = _CONFIG  # type: ignore[misc]

    property_name: Required[NonEmptyText]
    property_value: Required[FiniteNumber]
    property_unit: str | None
    char_source_type: str | None
    coord_ref_frame: CoordRefFrame | None
    coord_units: str | None
    coord_x: FiniteNumber | None
    coord_y: FiniteNumber | None
    coord_z: FiniteNumber | None
    data_id: uuid.UUID | None
    metadata: Metadata | None


class BulkBody(TypedDict):
    """Body of a bulk create: ``{"annotations": [...]}``."""

    __pydantic_config__ = _CONFIG  # type: ignore[misc]

    annotations: list[AnnotationBody]


class AnnotationPatch(TypedDict, total=False):
    """Body of a partial update: any subset of the updatable fields.

    ``char_source_type`` and ``data_id`` are not updatable; like any other unknown field
    they are refused (422).
    """

    __pydantic_config__ = _CONFIG  # type: ignore[misc]

    property_name: NonEmptyText
    property_value: FiniteNumber
    property_unit: str | None
    coord_ref_frame: CoordRefFrame
    coord_units: str | None
    coord_x: FiniteNumber | None
    coord_y: FiniteNumber | None
    coord_z: FiniteNumber | None
    metadata: Metadata | None


class SampleBody(TypedDict):
    """Body of a sample creation."""

    __pydantic_config__ = ConfigDict(extra="ignore", strict=True)  # type: ignore[misc]

    name: NonEmptyText
    detail_notes: NotRequired[str | None]


class TrackingSampleBody(TypedDict):
    """Body that adds a sample to a project, as the official SDK sends it."""

    __pydantic_config__ = ConfigDict(extra="ignore", strict=True)  # type: ignore[misc]

    physical_sample_id: uuid.UUID
    # The local server keeps no notion of a project's active sample: checked, not kept.
    set_active: NotRequired[bool]


annotation_adapter: TypeAdapter[AnnotationBody] = TypeAdapter(AnnotationBody)
bulk_adapter: TypeAdapter[BulkBody] = TypeAdapter(BulkBody)
patch_adapter: TypeAdapter[AnnotationPatch] = TypeAdapter(AnnotationPatch)
sample_adapter: TypeAdapter[SampleBody] = TypeAdapter(SampleBody)
tracking_adapter: TypeAdapter[TrackingSampleBody] = TypeAdapter(TrackingSampleBody)


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Turn a pydantic error into FastAPI's 422 ``detail`` list for a request body.

    Parameters
    ----------
    exc : pydantic.ValidationError
        Raised by one of the adapters' ``validate_json``.

    Returns
    -------
    list of dict
        Entries with ``type``, ``loc`` (prefixed with ``"body"``), ``msg``, ``input`` and,
        where pydantic gives one, ``ctx``; all JSON-serialisable.
    """
    details: list[dict[str, Any]] = []
    for error in exc.errors(include_url=False):
        entry: dict[str, Any] = {
            "type": error["type"],
            "loc": ["body", *error["loc"]],
            "msg": error["msg"],
            "input": error.get("input"),
        }
        if error["type"] == "json_invalid":
            # pydantic echoes the whole raw body; FastAPI answers an empty object instead
            entry["input"] = {}
        elif error["type"] in ("metadata_too_deep", "metadata_too_large"):
            entry["input"] = None  # too big to echo back usefully; ctx says how big
        if "ctx" in error:
            entry["ctx"] = {key: _plain(value) for key, value in error["ctx"].items()}
        entry["input"] = _plain(entry["input"])
        details.append(entry)
    return details


def metadata_depth_errors(body: bytes) -> list[dict[str, Any]]:
    """The 422 ``detail`` entries for metadata too deep in a body the parser refused.

    pydantic's JSON parser refuses a body nested more than 200 levels before any
    annotation is looked at, naming none. This reads such a body again with msgspec (which
    goes as deep as Python's recursion limit allows) to name the annotations whose
    metadata is too deep.

    Parameters
    ----------
    body : bytes
        A create, bulk create or update body.

    Returns
    -------
    list of dict
        One entry per annotation whose metadata is too deep, located as validation would
        locate it; empty when the body cannot be read or the depth is elsewhere.
    """
    try:
        data = _json.loads(body)
    except (ValueError, RecursionError):
        return []
    if not isinstance(data, dict):
        return []
    annotations = data.get("annotations")
    if isinstance(annotations, list):
        located = [(["annotations", i], a) for i, a in enumerate(annotations)]
    else:
        located = [([], data)]
    errors = []
    for loc, item in located:
        metadata = item.get("metadata") if isinstance(item, dict) else None
        if not isinstance(metadata, dict):
            continue
        depth = _metadata_depth(metadata)
        if depth > MAX_METADATA_DEPTH:
            error = _too_deep(depth)
            errors.append(
                {
                    "type": error.type,
                    "loc": ["body", *loc, "metadata"],
                    "msg": error.message(),
                    "input": None,
                    "ctx": error.context,
                }
            )
    return errors


def _plain(value: Any) -> Any:
    """Make an error's input or context value JSON-serialisable."""
    if value is None or isinstance(value, str | int | bool):
        return value
    if isinstance(value, float):
        # NaN and Infinity are not JSON; name them instead
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return str(value)

"""The fields of an annotation, as the columns of records and of annotation frames.

Imports nothing but the standard library: the column lists and the form of an id are
shared by the validation (:mod:`.schemas`), the position key (:mod:`.keys`), the client,
the upload and the frames, some of which must not import pandera.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "ANNOTATION_COLUMNS",
    "COORD_COLUMNS",
    "FLOAT_COLUMNS",
    "POSITION_KEY",
    "RECORD_COLUMNS",
    "RECORD_STRING_COLUMNS",
    "SAMPLE_DIM",
    "SAMPLE_ID",
    "SAMPLE_NAME",
    "is_uuid",
]

#: Columns of canonical records, in order: the body fields of the annotation API.
RECORD_COLUMNS: tuple[str, ...] = (
    "property_name",
    "property_value",
    "property_unit",
    "char_source_type",
    "coord_ref_frame",
    "coord_units",
    "coord_x",
    "coord_y",
    "coord_z",
    "data_id",
    "metadata",
)
COORD_COLUMNS: tuple[str, ...] = ("coord_x", "coord_y", "coord_z")
#: Record and annotation columns holding floats (NaN where unset), in this order.
FLOAT_COLUMNS: tuple[str, ...] = ("property_value", *COORD_COLUMNS)
#: Record columns holding text (``None``/NaN where unset).
RECORD_STRING_COLUMNS: tuple[str, ...] = (
    "property_name",
    "property_unit",
    "char_source_type",
    "coord_ref_frame",
    "coord_units",
    "data_id",
)
#: What makes two annotations "the same property at the same position".
POSITION_KEY: tuple[str, ...] = (
    "property_name",
    "coord_ref_frame",
    "coord_units",
    "coord_x",
    "coord_y",
    "coord_z",
)

#: Columns of an annotation frame, in order: the official SDK's, then two more.
ANNOTATION_COLUMNS: tuple[str, ...] = (
    "annotation_id",
    "data_id",
    "char_source_type",
    "property_name",
    "property_value",
    "property_unit",
    "coord_x",
    "coord_y",
    "coord_z",
    "coord_ref_frame",
    "coord_units",
    "metadata",
    "last_updated",
    "physical_sample_id",
    "version",
)

#: The column of annotation frames holding the sample's id, and of frames of several
#: samples holding its name.
SAMPLE_ID = "physical_sample_id"
SAMPLE_NAME = "sample_name"
#: The dimension along which the maps of several samples are stacked.
SAMPLE_DIM = "sample"

_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)


def is_uuid(value: Any) -> bool:
    """Whether ``value`` is a string in the canonical 8-4-4-4-12 hex UUID form (ids of
    samples, projects and annotations)."""
    return isinstance(value, str) and _UUID_RE.fullmatch(value) is not None

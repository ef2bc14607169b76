"""The fields of an annotation, as the columns of records and of annotation frames.

Imports nothing: the column lists are shared by the validation (:mod:`.schemas`), the
position key (:mod:`.keys`), the upload and the frames.
"""

from __future__ import annotations

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

"""Gridded or scattered xarray maps to canonical records, and annotation frames back to maps.

Both directions share one idea of a map: values on spatial dimensions, positions in ``x``,
``y`` (and optionally ``z``) coordinates carrying CF ``units`` attributes.

* :mod:`~atomscale_accessors.maps.structure` reads a map's structure: which coordinates
  hold the positions (:func:`find_coordinates`, :data:`COORD_NAMES`), which variables are
  properties, in which units; nothing is flattened before the structure is known to be
  right.
* :mod:`~atomscale_accessors.maps.flatten` turns a map into records, whole
  (:func:`flatten_map`) or block by block (:func:`iter_flatten_map`), and validates them
  (:func:`validate_map`).
* :mod:`~atomscale_accessors.maps.gridding` puts annotations back on a map
  (:func:`frame_to_map`).

Uploading a map is :func:`atomscale_accessors.map_upload.upload_map`.
"""

from ..records import DEFAULT_COORD_REF_FRAME
from .flatten import flatten_map, iter_flatten_map, validate_map
from .gridding import frame_to_map
from .schema import map_structure_schema
from .structure import COORD_NAMES, find_coordinate, find_coordinates

__all__ = [
    "COORD_NAMES",
    "DEFAULT_COORD_REF_FRAME",
    "find_coordinate",
    "find_coordinates",
    "flatten_map",
    "frame_to_map",
    "iter_flatten_map",
    "map_structure_schema",
    "validate_map",
]

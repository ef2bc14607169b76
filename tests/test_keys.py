"""The one definition of "the same position": its hash and the box of a set of records."""

import numpy as np
import pandas as pd

from atomscale_accessors.keys import (
    bounding_box,
    box_filters,
    position_hashes,
    repeated_positions,
)
from atomscale_accessors.schemas import RECORD_COLUMNS


def records(names, xs, units="mm"):
    n = len(names)
    frame = pd.DataFrame({column: [None] * n for column in RECORD_COLUMNS})
    frame["property_name"] = names
    frame["property_value"] = 1.0
    frame["coord_ref_frame"] = "sample_relative"
    frame["coord_units"] = units
    frame["coord_x"] = xs
    frame["coord_y"] = 0.0
    frame["coord_z"] = np.nan
    return frame


def test_a_position_hashes_alike_in_any_frame():
    # The same position in two frames whose text columns code their values differently
    # (another first value, a categorical with other categories): one hash.
    first = records(["a", "b"], [1.0, 2.0])
    second = records(["b"], [2.0])
    second["property_name"] = pd.Categorical(["b"], categories=["z", "b"])
    assert position_hashes(first)[1] == position_hashes(second)[0]
    assert position_hashes(first)[0] != position_hashes(second)[0]


def test_unset_text_and_signed_zero_hash_alike_and_repeat():
    frame = records(["a", "a", "a"], [0.0, -0.0, 0.0], units=None)
    frame.loc[1, "coord_units"] = np.nan
    assert len(set(position_hashes(frame).tolist())) == 1
    assert repeated_positions(frame).tolist() == [True, True, True]
    frame.loc[2, "coord_units"] = "mm"
    assert repeated_positions(frame).tolist() == [True, True, False]


def test_the_box_of_records_and_of_boxes():
    assert bounding_box(np.array([3.0, -1.0]), np.array([2.0, 5.0])) == (-1.0, 3.0, 2.0, 5.0)
    assert bounding_box(np.array([3.0, np.nan]), np.array([2.0, 5.0])) is None
    assert bounding_box(np.array([]), np.array([])) is None
    boxes = [(0.0, 1.0, 0.0, 1.0), (-2.0, 0.5, 3.0, 4.0)]
    assert box_filters(boxes) == {"x_range": (-2.0, 1.0), "y_range": (0.0, 4.0)}
    assert box_filters([*boxes, None]) == {}
    assert box_filters([]) == {}

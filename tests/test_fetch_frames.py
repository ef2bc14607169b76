"""``fetch`` and an upload's result are one frame type: the same columns and dtypes, sorted
categories; ``fetch`` orders rows as the official SDK does unless asked not to."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import atomscale_accessors
from atomscale_accessors.frames import (
    REPEATED_TEXT_COLUMNS,
    SORT_COLUMNS,
    annotation_frame,
    sorted_categorical,
)
from atomscale_accessors.schemas import ANNOTATION_COLUMNS


def wide_map() -> pd.DataFrame:
    # Columns named so that first appearance (z..., then a...) is not text order, and
    # positions given in no order.
    return pd.DataFrame(
        {
            "x": [3.0, 1.0, 2.0, 1.0, -4.0],
            "y": [0.0, 0.0, 1.0, -1.0, 2.0],
            "zeta": [1.0, 2.0, 3.0, 4.0, 5.0],
            "alpha": [6.0, 7.0, 8.0, 9.0, 10.0],
        },
        index=pd.Index(list("edcba"), name="site"),
    )


def uploaded(client, sample_id) -> pd.DataFrame:
    return wide_map().atomscale.upload(
        sample_id,
        client=client,
        x="x",
        y="y",
        values=["zeta", "alpha"],
        units={"zeta": "nm", "alpha": "ohm/sq"},
        coord_units="mm",
        progress_bar=False,
    )


def sdk_order(frame: pd.DataFrame) -> list[tuple]:
    """The SDK's order, worked out independently: text order of the property name, then
    x, then y, missing values last."""

    def key(row: tuple) -> tuple:
        return tuple((v is None or (isinstance(v, float) and math.isnan(v)), v) for v in row)

    rows = list(zip(*(frame[c].astype(object).tolist() for c in SORT_COLUMNS), strict=True))
    return sorted(rows, key=key)


def test_fetch_and_upload_result_have_one_frame_type(client, sample_id):
    created = uploaded(client, sample_id)
    fetched = atomscale_accessors.fetch(sample_id, client=client)
    assert list(created.columns) == list(fetched.columns) == list(ANNOTATION_COLUMNS)
    assert created.dtypes.to_dict() == fetched.dtypes.to_dict()
    for column in REPEATED_TEXT_COLUMNS:
        categories = fetched[column].cat.categories.tolist()
        assert categories == sorted(categories), column
        assert created[column].cat.categories.tolist() == categories, column
    # One type: they concatenate without falling back to object columns.
    both = pd.concat([created, fetched], ignore_index=True)
    assert both.dtypes.to_dict() == fetched.dtypes.to_dict()
    assert fetched["property_name"].cat.categories.tolist() == ["alpha", "zeta"]


def test_fetch_sorts_rows_as_the_sdk_does(client, sample_id):
    uploaded(client, sample_id)
    fetched = atomscale_accessors.fetch(sample_id, client=client)
    rows = list(zip(*(fetched[c].astype(object).tolist() for c in SORT_COLUMNS), strict=True))
    assert rows == sdk_order(fetched)
    assert fetched.index.equals(pd.RangeIndex(10))


def test_the_upload_result_follows_its_input(client, sample_id):
    created = uploaded(client, sample_id)
    # Input order, per property: the wide map's rows for zeta, then for alpha.
    assert created.index.tolist() == list("edcba") * 2
    assert created["property_value"].tolist() == [*range(1, 6), *range(6, 11)]


def test_fetch_sort_false_keeps_the_order_the_server_answered(client, sample_id, atomscale_server):
    uploaded(client, sample_id)
    answered = [a["id"] for a in client.list_annotations(sample_id)]
    fetched = atomscale_accessors.fetch(sample_id, client=client, sort=False)
    assert fetched["annotation_id"].tolist() == answered
    assert (
        fetched["annotation_id"].tolist()
        != atomscale_accessors.fetch(sample_id, client=client)["annotation_id"].tolist()
    )


def test_missing_coordinates_sort_last_and_ties_keep_their_order(
    client, sample_id, atomscale_server
):
    base = {"property_name": "thickness", "property_value": 1.0}
    bodies = [
        {**base, "property_value": 1.0},  # no position
        {**base, "property_value": 2.0, "coord_x": 5.0, "coord_y": 1.0},
        {**base, "property_value": 3.0, "coord_x": 5.0},  # no y
        {**base, "property_value": 4.0, "coord_x": -5.0, "coord_y": 1.0},
        {**base, "property_value": 5.0},  # no position, after the first
        {**base, "property_name": "Thickness", "property_value": 6.0, "coord_x": 9.0},
    ]
    client.create_annotations(sample_id, bodies)
    fetched = atomscale_accessors.fetch(sample_id, client=client)
    # "T" sorts before "t"; then x, y, with missing values last and ties as answered.
    assert fetched["property_value"].tolist() == [6.0, 4.0, 2.0, 3.0, 1.0, 5.0]


def test_categories_are_sorted_whatever_the_order_answered():
    objects = [
        {"id": f"id-{i}", "property_name": name, "version": version}
        for i, (name, version) in enumerate([("zeta", 2), ("alpha", "10"), ("zeta", "2")])
    ]
    frame = annotation_frame(objects)
    assert frame["property_name"].cat.categories.tolist() == ["alpha", "zeta"]
    assert frame["property_name"].tolist() == ["zeta", "alpha", "zeta"]
    # 2 and "2" are one version; text order puts "10" first.
    assert frame["version"].cat.categories.tolist() == ["10", "2"]
    assert frame["version"].tolist() == ["2", "10", "2"]


def test_sorted_categorical_keeps_missing_values():
    codes = np.array([1, -1, 0, 2, 1])
    result = sorted_categorical(codes, ["b", "a", "c"])
    assert result.categories.tolist() == ["a", "b", "c"]
    assert [v if isinstance(v, str) else None for v in result] == ["a", None, "b", "c", "a"]


@pytest.mark.parametrize("sort", [True, False])
def test_an_empty_sample_gives_an_empty_frame_of_the_same_type(client, sample_id, sort):
    empty = atomscale_accessors.fetch(sample_id, client=client, sort=sort)
    assert list(empty.columns) == list(ANNOTATION_COLUMNS) and len(empty) == 0
    assert empty.index.equals(pd.RangeIndex(0))

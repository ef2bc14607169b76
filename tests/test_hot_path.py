"""The fast paths of an upload give what the general ones give: encoding, answers, results.

These run on the library's own functions with bytes and arrays built here; the end-to-end
behaviour over HTTP is in test_upload.py and the fault matrix.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pandas as pd
import pytest
from conftest import THICKNESS_MAPPING, thickness_frame
from hypothesis import given, settings
from hypothesis import strategies as st

from atomscale_accessors.frame_builder import FrameBuilder, parse_times, text_codes
from atomscale_accessors.frames import column_series
from atomscale_accessors.keys import repeated_positions
from atomscale_accessors.records import to_records
from atomscale_accessors.schemas import POSITION_KEY, compact_records
from atomscale_accessors.upload.answers import Answer, IdSet, expected_answer
from atomscale_accessors.upload.chunks import Chunk, iter_chunks
from atomscale_accessors.upload.encode import EncodedRecords

SAMPLE = "961d9ac7-9321-4d10-b2ab-b6f8710b60e2"


def grid_records(nx: int = 4, ny: int = 3) -> pd.DataFrame:
    xs, ys = np.meshgrid(np.linspace(-1.5, 1.5, nx), np.linspace(0.0, 2.0, ny))
    n = nx * ny
    return pd.DataFrame(
        {
            "property_name": ["thickness"] * n,
            "property_value": np.random.default_rng(3).normal(100, 2, n),
            "property_unit": ["nm"] * n,
            "char_source_type": [None] * n,
            "coord_ref_frame": ["sample_relative"] * n,
            "coord_units": ["mm"] * n,
            "coord_x": xs.ravel(),
            "coord_y": ys.ravel(),
            "coord_z": np.nan,
            "data_id": [None] * n,
            "metadata": [None] * n,
        },
        index=pd.Index([f"p{i}" for i in range(n)], name="site"),
    )


def answer_bytes(records: pd.DataFrame, **changes) -> tuple[bytes, list[str]]:
    """What a server answers to a bulk request of these records (with changes per row)."""
    ids = [str(uuid.uuid4()) for _ in range(len(records))]
    objects = []
    for i, row in enumerate(records.astype(object).to_dict("records")):
        obj = {
            "id": ids[i],
            "physical_sample_id": SAMPLE,
            **{k: (None if isinstance(v, float) and v != v else v) for k, v in row.items()},
            "last_updated": "2026-11-29T10:00:00.123456Z",
            "version": "1",
        }
        obj["annotation_metadata"] = obj.pop("metadata")
        for key, values in changes.items():
            obj[key] = values[i]
        objects.append(obj)
    return json.dumps(objects).encode(), ids


def whole_chunk(records: pd.DataFrame) -> Chunk:
    return Chunk.of(compact_records(records), np.arange(len(records)))


# -- encoding ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["grid", "scattered", "mixed"])
def test_body_sizes_add_up_and_every_float_is_exact(kind):
    records = grid_records(7, 5)
    if kind == "scattered":
        records["coord_x"] = np.random.default_rng(1).normal(size=len(records))
    if kind == "mixed":
        records.loc[records.index[:3], "coord_x"] = [-0.0, 0.0, 0.1 + 0.2]
        records.loc[records.index[3:5], ["coord_x", "coord_y"]] = np.nan
        records.loc[records.index[5], "property_unit"] = "um"
        records["metadata"] = [{"site": "é"} if i == 6 else None for i in range(len(records))]
    encoded = EncodedRecords(records)
    body = encoded.body(slice(None))
    # One row's JSON is exactly its size; the body is the rows, commas and the wrapper.
    assert len(body) == encoded.total + len(records) - 1 + len('{"annotations":[]}')
    assert int(encoded.sizes.sum()) == encoded.total
    for i in (0, 4, len(records) - 1):
        assert len(encoded.body(slice(i, i + 1))) == encoded.sizes[i] + len('{"annotations":[]}')
    sent = json.loads(body)["annotations"]
    for column in ("property_value", "coord_x", "coord_y"):
        back = np.array([np.nan if a.get(column) is None else a[column] for a in sent])
        mine = records[column].to_numpy()
        assert np.array_equal(back, mine, equal_nan=True)
        assert np.array_equal(np.signbit(back), np.signbit(mine))  # -0.0 stays -0.0
    assert [a.get("property_unit") for a in sent] == records["property_unit"].tolist()
    assert [a.get("metadata") for a in sent] == records["metadata"].tolist()


def test_chunks_cut_by_bytes_hold_every_record_once():
    records = grid_records(40, 30)
    chunks = list(iter_chunks([(compact_records(records), np.arange(len(records)))], chunksize=700))
    assert [len(c) for c in chunks] == [700, 500]
    small = list(
        iter_chunks(
            [(compact_records(records), np.arange(len(records)))],
            chunksize=700,
            max_chunk_bytes=128 * 1024,
        )
    )
    assert all(len(c.body()) <= 128 * 1024 for c in small) and len(small) > 2
    assert np.array_equal(np.concatenate([c.positions for c in small]), np.arange(1200))
    assert pd.concat([c.records for c in small]).index.equals(records.index)


# -- answers -------------------------------------------------------------------------------
def test_the_usual_answer_is_read_with_its_time_and_version_as_literals():
    records = grid_records()
    raw, ids = answer_bytes(records)
    answer, guessed = expected_answer(whole_chunk(records), raw)
    assert guessed is True
    assert answer.ids == ids
    assert set(answer.last_updated) == {"2026-11-29T10:00:00.123456Z"}
    assert set(answer.versions) == {"1"}


def test_times_that_differ_are_read_row_by_row():
    records = grid_records()
    times = [f"2026-11-29T10:00:{s:02d}Z" for s in range(len(records))]
    raw, ids = answer_bytes(records, last_updated=times)
    answer, guessed = expected_answer(whole_chunk(records), raw)
    assert guessed is False  # the guess from the first row did not hold
    assert answer.ids == ids and answer.last_updated == times and answer.versions == ["1"] * 12
    answer, guessed = expected_answer(whole_chunk(records), raw, guess_shared=False)
    assert guessed is None and answer.last_updated == times
    # Versions as numbers (one documented example has them): not guessed, read as they are.
    raw, ids = answer_bytes(records, version=[1] * len(records))
    answer, guessed = expected_answer(whole_chunk(records), raw)
    assert guessed is None and answer.ids == ids and answer.versions == [1] * 12


@pytest.mark.parametrize(
    "change",
    [
        "reversed",
        "value_rounded",
        "other_name",
        "x_missing",
        "one_less",
        "not_json",
    ],
)
def test_any_other_answer_goes_to_the_matching_by_content(change):
    records = grid_records()
    raw, _ = answer_bytes(records)
    objects = json.loads(raw)
    if change == "reversed":
        objects.reverse()
    elif change == "value_rounded":
        objects[3]["property_value"] = round(objects[3]["property_value"], 3)
    elif change == "other_name":
        objects[2]["property_name"] = "thickness_nm"
    elif change == "x_missing":
        del objects[1]["coord_x"]
    elif change == "one_less":
        objects.pop()
    raw = b"[{" if change == "not_json" else json.dumps(objects).encode()
    answer, _ = expected_answer(whole_chunk(records), raw)
    assert answer is None


def test_text_key_that_varies_within_a_chunk_is_not_guessed():
    records = grid_records()
    records.loc[records.index[::2], "property_name"] = "sheet_resistance"
    raw, _ = answer_bytes(records)
    assert expected_answer(whole_chunk(records), raw) == (None, None)
    assert len(Answer.decode(raw, "POST /bulk")) == len(records)  # the general path reads it


# -- the result ----------------------------------------------------------------------------
def put(builder: FrameBuilder, positions, ids, *, name="thickness", version="1", labels=None):
    n = len(positions)
    builder.put(
        np.asarray(positions),
        floats={"property_value": np.asarray(positions, dtype=float)},
        texts={
            "property_name": (np.zeros(n, dtype=np.int8), [name]),
            "version": text_codes([version] * n),
        },
        ids=ids,
        times=parse_times(["2026-11-29T10:00:00Z"] * n),
        index=labels if labels is not None else pd.Index([f"r{p}" for p in positions]),
    )


def test_rows_arrive_in_any_order_and_come_out_in_input_order():
    builder = FrameBuilder(SAMPLE)  # no capacity: grows
    ids = {p: str(uuid.UUID(int=p)) for p in range(300)}
    for block in (range(200, 300), range(0, 100), [150, 120, 199]):
        put(builder, list(block), [ids[p] for p in block])
    frame = builder.frame()
    expected = [*range(100), 120, 150, 199, *range(200, 300)]
    assert frame["property_value"].tolist() == [float(p) for p in expected]
    assert frame.index.tolist() == [f"r{p}" for p in expected]
    assert frame["annotation_id"].tolist() == [ids[p] for p in expected]
    assert frame["annotation_id"].dtype == pd.Series(["x"]).dtype
    assert str(frame["last_updated"].dt.tz) == "UTC"
    assert frame["physical_sample_id"].unique().tolist() == [SAMPLE]
    assert np.isnan(frame["coord_x"]).all()
    assert builder.ids_at(np.array([150, 0])) == [ids[150], ids[0]]


def test_ids_of_another_width_and_text_categories():
    builder = FrameBuilder(SAMPLE, capacity=4, index=pd.RangeIndex(4))
    put(builder, [0, 1], ["a" * 36, "b" * 36], name="thickness", version="2")
    put(builder, [3], ["short-id"], name="sheet_resistance", version=2)  # 2 and "2" are one
    frame = builder.frame()
    assert frame.index.tolist() == [0, 1, 3]  # position 2 was never created
    assert frame["annotation_id"].tolist() == ["a" * 36, "b" * 36, "short-id"]
    assert frame["property_name"].cat.categories.tolist() == ["sheet_resistance", "thickness"]
    assert frame["property_name"].tolist() == ["thickness", "thickness", "sheet_resistance"]
    assert frame["version"].cat.categories.tolist() == ["2"]


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-29T11:05:15.460454Z",
        "2026-04-03T14:36:51.973648",
        "2024-01-16T09:30:00Z",
        "2024-01-16T09:30:00+02:00",
        "2024-01-16T09:30:00.5-05:30",
        "2024-01-16T09:30:00.123456789Z",
        "2024-01-16 09:30:00",
    ],
)
def test_times_read_alike_with_or_without_pandas(text):
    by_pandas = column_series("last_updated", [text], pd.RangeIndex(1)).array.asi8[0]
    assert parse_times([text, text])[0] == by_pandas
    assert parse_times([text, "2020-01-01T00:00:00Z"])[0] == by_pandas
    assert parse_times([None])[0] == np.iinfo(np.int64).min  # NaT


# -- the uniqueness rule -------------------------------------------------------------------
coordinate = st.sampled_from([0.0, -0.0, 1.0, 2.5, float("nan")])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", None]), coordinate, coordinate, coordinate),
        max_size=30,
    )
)
def test_repeated_positions_are_what_pandas_calls_duplicated(rows):
    frame = pd.DataFrame(
        {
            "property_name": [r[0] for r in rows],
            "coord_ref_frame": "sample_relative",
            "coord_units": "mm",
            "coord_x": [r[1] for r in rows],
            "coord_y": [r[2] for r in rows],
            "coord_z": [r[3] for r in rows],
        },
        dtype=object,
    ).astype({c: float for c in ("coord_x", "coord_y", "coord_z")})
    expected = frame[list(POSITION_KEY)].duplicated(keep=False).to_numpy()
    assert np.array_equal(repeated_positions(frame), expected)
    assert np.array_equal(repeated_positions(compact_records(frame)), expected)


def test_records_of_a_dataframe_get_the_usual_answer_path():
    records = compact_records(to_records(thickness_frame(25), **THICKNESS_MAPPING))
    chunk = Chunk.of(records, np.arange(len(records)))
    raw, ids = answer_bytes(records)
    answer, _ = expected_answer(chunk, raw)
    assert answer is not None and answer.ids == ids


# -- found in review -----------------------------------------------------------------------
def test_metadata_that_compares_equal_is_still_sent_row_by_row():
    # True == 1 == 1.0 and -0.0 == 0.0 for dicts, but not in JSON.
    records = grid_records(3, 1)
    records["metadata"] = [{"f": True, "v": -0.0}, {"f": 1, "v": 0.0}, {"v": 0.0, "f": 1.0}]
    sent = json.loads(EncodedRecords(records).body(slice(None)))["annotations"]
    assert [json.dumps(a["metadata"]) for a in sent] == [
        '{"f": true, "v": -0.0}',
        '{"f": 1, "v": 0.0}',
        '{"v": 0.0, "f": 1.0}',
    ]
    shared = {"run": 7}
    records["metadata"] = [shared] * 3  # one object on every row (a map's): encoded once
    assert [
        a["metadata"] for a in json.loads(EncodedRecords(records).body(slice(None)))["annotations"]
    ] == [shared] * 3


def test_ids_that_change_width_after_the_columns_grew():
    builder = FrameBuilder(SAMPLE)  # no capacity: the columns grow by doubling
    uuids = [str(uuid.UUID(int=i)) for i in range(4)]
    put(builder, [0, 1, 2, 3], uuids)
    odd = [f"id-{i}" * (1 + i % 3) for i in range(36)]  # several widths
    put(builder, list(range(4, 40)), odd)
    frame = builder.frame()
    assert frame["annotation_id"].tolist() == uuids + odd
    assert builder.ids_at(np.array([1, 5])) == [uuids[1], odd[1]]


def test_repeated_labels_keep_each_rows_metadata():
    # The metadata column joins the frame as a Series on the frame's own labels: with a
    # label given twice, it must still go by position, not be aligned by label.
    meta = np.array([{"run": 1}, None, {"run": 3}], dtype=object)
    for whole in (pd.Index(["a", "a", "b"]), None):
        builder = FrameBuilder(SAMPLE, capacity=3, index=whole)
        builder.put(
            np.arange(3),
            floats={"property_value": np.array([1.0, 2.0, 3.0])},
            texts={},
            ids=[str(uuid.UUID(int=i)) for i in range(3)],
            times=parse_times(["2026-11-29T10:00:00Z"] * 3),
            metadata=meta,
            index=None if whole is not None else pd.Index([7, 7, 7]),
        )
        frame = builder.frame()
        assert frame["metadata"].tolist() == [{"run": 1}, None, {"run": 3}]
        assert frame["property_value"].tolist() == [1.0, 2.0, 3.0]
        assert frame.index.tolist() == (["a", "a", "b"] if whole is not None else [7, 7, 7])


def test_columns_first_set_by_a_later_chunk_and_a_second_frame():
    # coord_z and metadata are allocated only when a row sets them: rows put before
    # that read NaN and None, the columns grow with the rest, and the frame can be made
    # twice (the pieces of its index are joined the first time) with the same result.
    builder = FrameBuilder(SAMPLE)  # no capacity: every column grows by doubling
    ids = [str(uuid.UUID(int=p)) for p in range(3000)]

    def put_rows(block, z, meta):
        n = len(block)
        builder.put(
            np.asarray(block),
            floats={"property_value": np.asarray(block, dtype=float), "coord_z": z(n)},
            texts={},
            ids=[ids[p] for p in block],
            times=parse_times(["2026-11-29T10:00:00Z"] * n),
            metadata=np.array([meta] * n, dtype=object),
            index=pd.Index([f"r{p}" for p in block]),
        )

    put_rows(range(0, 1000), lambda n: np.full(n, np.nan), None)
    put_rows(range(2000, 3000), lambda n: np.full(n, -0.0), {"run": 2})
    put_rows(range(1200, 1500), lambda n: np.full(n, np.nan), None)  # a gap before it
    first = builder.frame()
    expected = [*range(0, 1000), *range(1200, 1500), *range(2000, 3000)]
    assert first.index.tolist() == [f"r{p}" for p in expected]
    assert first["property_value"].tolist() == [float(p) for p in expected]
    z = first["coord_z"].to_numpy()
    assert first["coord_z"].dtype == np.float64
    assert np.isnan(z[:1300]).all() and (np.signbit(z[1300:]) & (z[1300:] == 0)).all()
    assert first["metadata"].tolist() == [None] * 1300 + [{"run": 2}] * 1000
    assert first["last_updated"].dt.tz is not None
    pd.testing.assert_frame_equal(builder.frame(), first)


def test_a_put_without_labels_changes_nothing():
    builder = FrameBuilder(SAMPLE)
    with pytest.raises(ValueError, match="labels"):
        put(builder, [0, 1], ["a", "b"], labels=pd.Index(["only one"]))
    assert len(builder) == 0 and len(builder.frame()) == 0


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, 1, -1, 1024]), max_size=60),
        max_size=40,
    ),
    st.integers(0, 400),
)
def test_id_set_holds_what_a_set_holds(batches, expect):
    # Added or claimed a batch at a time (growing past what it expected, hashes repeated
    # within and across batches, the empty marker 0 among them), it answers as a Python
    # set does; a hash of 0 is held as 1, the one place the two may meet. A claim takes
    # exactly the hashes new to the set and not repeated within the batch.
    held = IdSet(expect=expect)
    reference: set[int] = set()
    for number, batch in enumerate(batches):
        hashes = np.array(batch, dtype=np.int64)
        keys = [h or 1 for h in batch]
        asked = np.concatenate([hashes, np.arange(-3, 3, dtype=np.int64)])
        before = np.array([(h or 1) in reference for h in asked.tolist()], dtype=bool)
        np.testing.assert_array_equal(held.contains(asked), before)
        if number % 2:
            held.add(hashes)
            reference.update(keys)
        else:
            free = [k not in reference and keys.count(k) == 1 for k in keys]
            np.testing.assert_array_equal(held.claim(hashes), np.array(free, dtype=bool))
            reference.update(k for k, f in zip(keys, free, strict=True) if f)
        assert len(held) == len(reference)


def test_id_set_of_many_chunks_keeps_one_table_when_told_what_to_expect():
    # Told how many ids come, it never copies its table: the memory an upload of millions
    # of annotations holds for its claims is one allocation.
    rng = np.random.default_rng(7)
    held = IdSet(expect=50_000)
    table = held._table
    for _ in range(10):
        chunk = rng.integers(-(2**63), 2**63 - 1, size=5_000, dtype=np.int64)
        assert not held.contains(chunk).any()
        held.add(chunk)
    assert held._table is table and len(held) == 50_000

"""Uploading DataFrames to the real local server: results, if_exists, chunking, faults."""

from __future__ import annotations

import logging
import time
import uuid

import msgspec
import numpy as np
import pandas as pd
import pytest
from conftest import THICKNESS_MAPPING, thickness_frame

from atomscale_accessors import Client, RetryPolicy, fetch
from atomscale_accessors.errors import (
    AnnotationExistsError,
    AnnotationValidationError,
    ApiError,
    InvalidIdentifierError,
    SampleNotFoundError,
    UploadError,
)
from atomscale_accessors.records import to_records
from atomscale_accessors.schemas import ANNOTATION_COLUMNS
from atomscale_accessors.upload import send_records, upload_records

FAST = RetryPolicy(max_attempts=4, backoff=0.01, max_wait=0.5, settle=0.0)


@pytest.fixture
def fast_client(atomscale_server) -> Client:
    """A client that retries quickly, so fault tests stay fast."""
    return Client(api_key=atomscale_server.api_key, endpoint=atomscale_server.endpoint, retry=FAST)


def assert_stored_exactly_once(
    server, sample_id: str, df: pd.DataFrame, mapping=THICKNESS_MAPPING
) -> None:
    """Every input row is stored once, with its exact value, and nothing else is stored."""
    stored = pd.DataFrame(server.stored_annotations(sample_id))
    expected = to_records(df, **mapping)
    assert len(stored) == len(expected), f"{len(stored)} stored for {len(expected)} rows"
    key = ["property_name", "coord_x", "coord_y"]
    assert not stored.duplicated(subset=key).any(), "an annotation is stored twice"
    merged = expected.merge(stored, on=key, how="left", suffixes=("", "_stored"))
    np.testing.assert_array_equal(merged["property_value_stored"], merged["property_value"])


def shuffled_frame(n: int = 30, seed: int = 1) -> pd.DataFrame:
    df = thickness_frame(n, seed=seed)
    return df.sample(frac=1.0, random_state=seed)


# -- results -------------------------------------------------------------------------------
def test_upload_then_fetch_is_exact_and_aligned(client, atomscale_server, sample_id):
    df = shuffled_frame(40).assign(operator="ann", lot=[f"L{i % 3}" for i in range(40)])
    df.loc[df.index[0], "thk"] = 0.1 + 0.2  # a float with 17 significant digits
    created = df.atomscale.upload(
        sample_id,
        client=client,
        **THICKNESS_MAPPING,
        char_source_type="ellipsometry",
        metadata=["operator", "lot"],
        chunksize=7,
    )
    assert list(created.columns) == list(ANNOTATION_COLUMNS)
    assert created.index.equals(df.index)
    np.testing.assert_array_equal(created["property_value"].to_numpy(), df["thk"].to_numpy())
    np.testing.assert_array_equal(created["coord_x"].to_numpy(), df["x_mm"].to_numpy())
    assert created["annotation_id"].is_unique
    assert (created["physical_sample_id"] == sample_id).all()
    assert created["metadata"].iloc[3] == {"operator": "ann", "lot": df["lot"].iloc[3]}
    assert str(created["last_updated"].dt.tz) == "UTC"

    stored = fetch(sample_id, client=client).set_index("annotation_id")
    again = stored.loc[created["annotation_id"]]
    for column in ("property_value", "coord_x", "coord_y"):
        np.testing.assert_array_equal(again[column].to_numpy(), created[column].to_numpy())
    assert (again["property_unit"] == "nm").all()
    assert (again["coord_units"] == "mm").all()
    assert (again["char_source_type"] == "ellipsometry").all()
    assert again["metadata"].tolist() == created["metadata"].tolist()
    assert atomscale_server.request_counts["bulk_create"] == 6


def test_dtypes_match_fetch(client, sample_id):
    created = thickness_frame(5).atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING)
    fetched = fetch(sample_id, client=client)
    pd.testing.assert_series_equal(created.dtypes, fetched.dtypes)


def test_wide_frame_gives_one_row_per_row_and_property(client, sample_id):
    df = thickness_frame(6).assign(rs=np.linspace(40.0, 45.0, 6))
    created = df.atomscale.upload(
        sample_id,
        client=client,
        x="x_mm",
        y="y_mm",
        values={"thk": "thickness", "rs": "sheet_resistance"},
        units={"thickness": "nm", "sheet_resistance": "ohm/sq"},
        coord_units="mm",
    )
    assert len(created) == 12
    assert created.index.tolist() == df.index.tolist() * 2
    assert created["property_name"].tolist() == ["thickness"] * 6 + ["sheet_resistance"] * 6
    rs = created[created["property_name"] == "sheet_resistance"]
    np.testing.assert_array_equal(rs["property_value"].to_numpy(), df["rs"].to_numpy())


def test_client_from_environment(env_client, sample_id):
    created = thickness_frame(3).atomscale.upload(sample_id, **THICKNESS_MAPPING)
    assert len(created) == 3


# -- nothing sent for bad input ------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda df: df.assign(thk=np.nan), AnnotationValidationError),
        (lambda df: df.assign(x_mm=np.inf), AnnotationValidationError),
        (lambda df: df.assign(junk=1), AnnotationValidationError),
        (lambda df: df.iloc[:0], AnnotationValidationError),
    ],
)
def test_invalid_input_sends_nothing(client, atomscale_server, sample_id, change, error):
    df = change(thickness_frame(5))
    before = df.copy()
    with pytest.raises(error):
        df.atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING)
    assert atomscale_server.request_count() == 0
    pd.testing.assert_frame_equal(df, before)


@pytest.mark.parametrize("bad", [7, None, b"W01", "", "   "])
def test_a_sample_that_is_no_text_sends_nothing(client, atomscale_server, bad):
    with pytest.raises((InvalidIdentifierError, TypeError)):
        thickness_frame(3).atomscale.upload(bad, client=client, **THICKNESS_MAPPING)
    assert atomscale_server.request_count() == 0


@pytest.mark.parametrize(
    "name", ["../../physical_samples", "x?y=1", "3d5efbf8-7369-4871-bbbf-6140b28c7a0"]
)
def test_text_that_is_no_uuid_is_looked_up_as_a_name(client, atomscale_server, name):
    # Never part of a URL: the samples are listed, the name matches none, nothing is sent.
    with pytest.raises(SampleNotFoundError, match="no sample named"):
        thickness_frame(3).atomscale.upload(name, client=client, **THICKNESS_MAPPING)
    counts = {route: n for route, n in atomscale_server.request_counts.items() if n}
    assert counts == {"list_samples": 1}
    assert atomscale_server.store.list_samples() == []


def test_a_sample_by_name_with_create_sample(client, atomscale_server):
    with pytest.raises(SampleNotFoundError, match="W0421-07"):
        thickness_frame(3).atomscale.upload("W0421-07", client=client, **THICKNESS_MAPPING)
    created = thickness_frame(3).atomscale.upload(
        " w0421-07", client=client, create_sample=True, **THICKNESS_MAPPING
    )
    (sample,) = atomscale_server.store.list_samples()
    assert sample["name"] == "w0421-07"  # created as given, stripped
    assert set(created["physical_sample_id"]) == {sample["id"]}
    again = thickness_frame(3).atomscale.upload(
        "W0421-07", client=client, if_exists="skip", **THICKNESS_MAPPING
    )
    assert len(again) == 0 and atomscale_server.annotation_count(sample["id"]) == 3


@pytest.mark.parametrize(
    "options",
    [{"if_exists": "replace"}, {"chunksize": 0}, {"max_workers": -1}, {"chunksize": 2.5}],
)
def test_bad_options_send_nothing(client, atomscale_server, sample_id, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        thickness_frame(3).atomscale.upload(
            sample_id, client=client, **THICKNESS_MAPPING, **options
        )
    assert atomscale_server.request_count() == 0


def test_dry_run_sends_nothing_and_numbers_chunks(client, atomscale_server, sample_id):
    out = thickness_frame(10).atomscale.upload(
        sample_id, client=client, **THICKNESS_MAPPING, dry_run=True, chunksize=4
    )
    assert out["chunk"].tolist() == [0] * 4 + [1] * 4 + [2] * 2
    assert atomscale_server.request_count() == 0


# -- if_exists ------------------------------------------------------------------------------
def test_same_upload_twice_creates_nothing_twice(client, atomscale_server, sample_id):
    df = thickness_frame(8)
    df.atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING)
    bulk = atomscale_server.request_counts["bulk_create"]
    with pytest.raises(AnnotationExistsError, match="8 records are already stored") as info:
        df.atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING)
    assert info.value.existing.index.tolist() == df.index.tolist()
    assert atomscale_server.request_counts["bulk_create"] == bulk
    assert_stored_exactly_once(atomscale_server, sample_id, df)


def test_skip_sends_only_new_rows(client, atomscale_server, sample_id):
    df = thickness_frame(10)
    df.iloc[:6].atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING)
    created = df.atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING, if_exists="skip")
    assert created.index.tolist() == df.index[6:].tolist()
    assert_stored_exactly_once(atomscale_server, sample_id, df)


def test_append_stores_again(client, atomscale_server, sample_id):
    df = thickness_frame(4)
    df.atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING)
    df.atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING, if_exists="append")
    assert atomscale_server.annotation_count(sample_id) == 8


def test_update_patches_changed_rows_and_creates_the_rest(client, atomscale_server, sample_id):
    df = thickness_frame(6)
    first = df.iloc[:4].atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING)
    changed = df.copy()
    changed.loc[df.index[:2], "thk"] += 5.0
    atomscale_server.reset_counters()
    out = changed.atomscale.upload(
        sample_id, client=client, **THICKNESS_MAPPING, if_exists="update"
    )
    assert out.index.tolist() == df.index.tolist()
    np.testing.assert_array_equal(out["property_value"].to_numpy(), changed["thk"].to_numpy())
    assert atomscale_server.request_counts["update_annotation"] == 2  # unchanged rows untouched
    assert out["annotation_id"].iloc[:4].tolist() == first["annotation_id"].tolist()
    assert out["version"].iloc[0] != first["version"].iloc[0]
    assert_stored_exactly_once(atomscale_server, sample_id, changed)


# -- chunking -------------------------------------------------------------------------------
def test_byte_cap_splits_requests(client, atomscale_server, sample_id):
    df = thickness_frame(300).assign(note=["y" * 1000] * 300)
    records = to_records(df, **THICKNESS_MAPPING, metadata=["note"])
    upload_records(records, sample_id, client=client, max_chunk_bytes=128 * 1024, chunksize=1000)
    # each record is ~1.2 KB, so 300 of them need three 128 KiB requests
    assert atomscale_server.request_counts["bulk_create"] == 3
    assert_stored_exactly_once(atomscale_server, sample_id, df.drop(columns="note"))


# -- faults ---------------------------------------------------------------------------------
FAULTS = {
    "503": dict(kind="error_before_commit", status=503, times=2),
    "500 before commit": dict(kind="error_before_commit", status=500),
    "502 before commit": dict(kind="error_before_commit", status=502),
    "504 before commit": dict(kind="error_before_commit", status=504),
    "500 after commit": dict(kind="error_after_commit", status=500),
    "drop after commit": dict(kind="drop_after_commit"),
    "drop before commit": dict(kind="drop_before_commit"),
}


@pytest.mark.parametrize("max_workers", [1, 4])
@pytest.mark.parametrize("after", [0, 2, 4], ids=["first", "middle", "last"])
@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
def test_fault_completes_exactly_once(
    fast_client, atomscale_server, sample_id, fault, after, max_workers
):
    options = dict(FAULTS[fault])
    atomscale_server.inject(options.pop("kind"), route="bulk_create", after=after, **options)
    df = shuffled_frame(25)
    created = df.atomscale.upload(
        sample_id, client=fast_client, **THICKNESS_MAPPING, chunksize=5, max_workers=max_workers
    )
    assert created.index.equals(df.index)
    np.testing.assert_array_equal(created["property_value"].to_numpy(), df["thk"].to_numpy())
    assert created["annotation_id"].is_unique
    assert_stored_exactly_once(atomscale_server, sample_id, df)
    assert atomscale_server.faults.pending() == []  # the fault did fire


RETRY_AFTER = 1  # whole seconds, all the header can say


@pytest.mark.parametrize("max_workers", [1, 4])
# Where the 429 hits is covered by the fault matrix; here, that the wait is the server's.
@pytest.mark.parametrize("after", [2], ids=["middle"])
@pytest.mark.parametrize(
    "retry_after", [RETRY_AFTER, None], ids=["429 with Retry-After", "429 without Retry-After"]
)
def test_429_waits_as_long_as_the_server_asks(
    atomscale_server, sample_id, retry_after, after, max_workers
):
    # A tiny backoff and room for Retry-After: only the header can make the upload wait.
    policy = RetryPolicy(max_attempts=4, backoff=0.01, max_wait=5.0, settle=0.0)
    client = Client(
        api_key=atomscale_server.api_key, endpoint=atomscale_server.endpoint, retry=policy
    )
    df = shuffled_frame(25)
    upload = dict(client=client, **THICKNESS_MAPPING, chunksize=5, max_workers=max_workers)
    df.atomscale.upload(sample_id, **upload, dry_run=True)  # validation warmed up, not timed
    atomscale_server.inject(
        "rate_limited", route="bulk_create", after=after, times=2, retry_after=retry_after
    )

    started = time.perf_counter()
    created = df.atomscale.upload(sample_id, **upload)
    elapsed = time.perf_counter() - started

    if retry_after is None:
        assert elapsed < RETRY_AFTER, f"{elapsed:.2f} s with no wait asked for"
    else:
        # Each 429 in turn with one worker; several workers may wait out two side by side.
        least = retry_after * (2 if max_workers == 1 else 1)
        assert elapsed >= least, f"{elapsed:.2f} s: the upload did not wait {least} s as asked"
    assert created.index.equals(df.index)
    np.testing.assert_array_equal(created["property_value"].to_numpy(), df["thk"].to_numpy())
    assert created["annotation_id"].is_unique
    assert_stored_exactly_once(atomscale_server, sample_id, df)
    assert atomscale_server.faults.pending() == []  # both 429s were answered


def test_413_splits_chunks(fast_client, atomscale_server, sample_id):
    atomscale_server.set_limits(max_bulk_annotations=3)
    df = thickness_frame(20)
    created = df.atomscale.upload(sample_id, client=fast_client, **THICKNESS_MAPPING, chunksize=10)
    assert created.index.equals(df.index)
    assert_stored_exactly_once(atomscale_server, sample_id, df)


def test_timeout_waits_for_the_late_commit(atomscale_server, sample_id):
    policy = RetryPolicy(max_attempts=4, backoff=0.01, max_wait=5.0)  # settle: default
    client = Client(
        api_key=atomscale_server.api_key,
        endpoint=atomscale_server.endpoint,
        timeout=(5.0, 0.4),
        retry=policy,
    )
    # The second chunk is stored 0.6 s after it arrived, 0.2 s after the client gave up:
    # an upload that lists what landed without waiting finds nothing, and sends it again.
    atomscale_server.inject("latency_before_commit", seconds=0.6, route="bulk_create", after=1)
    df = thickness_frame(15)
    created = df.atomscale.upload(
        sample_id, client=client, **THICKNESS_MAPPING, chunksize=5, max_workers=1
    )
    time.sleep(0.6)  # a commit still under way has landed
    stored = atomscale_server.stored_annotations(sample_id)
    assert len(stored) == 15, f"{len(stored)} stored for 15 rows"
    assert_stored_exactly_once(atomscale_server, sample_id, df)
    assert created.index.equals(df.index)
    assert created["annotation_id"].is_unique
    assert set(created["annotation_id"]) == {obj["id"] for obj in stored}


def test_retries_exhausted_then_skip_completes(fast_client, atomscale_server, sample_id):
    atomscale_server.inject(
        "error_before_commit", status=503, route="bulk_create", after=2, times=50
    )
    df = thickness_frame(30)
    with pytest.raises(UploadError) as info:
        df.atomscale.upload(
            sample_id, client=fast_client, **THICKNESS_MAPPING, chunksize=5, max_workers=1
        )
    err = info.value
    assert isinstance(err.cause, ApiError)
    assert err.cause.status_code == 503
    assert len(err.created) == 10
    assert len(err.created) + len(err.not_created) == 30
    assert set(err.created.index).isdisjoint(err.not_created.index)
    assert atomscale_server.annotation_count(sample_id) == 10
    atomscale_server.clear_faults()
    rest = df.atomscale.upload(sample_id, client=fast_client, **THICKNESS_MAPPING, if_exists="skip")
    assert sorted(rest.index) == sorted(err.not_created.index)
    assert_stored_exactly_once(atomscale_server, sample_id, df)


def test_unknown_fate_then_skip_completes(fast_client, atomscale_server, sample_id):
    # The bulk request commits but its answer is lost, and the sample cannot be listed:
    # the upload cannot know what landed, says so, and a re-run settles it.
    atomscale_server.inject("drop_after_commit", route="bulk_create")
    atomscale_server.inject(
        "error_before_commit", status=500, route="list_annotations", after=1, times=50
    )
    df = thickness_frame(10)
    with pytest.raises(UploadError) as info:
        df.atomscale.upload(
            sample_id, client=fast_client, **THICKNESS_MAPPING, chunksize=5, max_workers=1
        )
    assert len(info.value.unknown) == 5
    assert "may or may not" in str(info.value)
    atomscale_server.clear_faults()
    df.atomscale.upload(sample_id, client=fast_client, **THICKNESS_MAPPING, if_exists="skip")
    assert_stored_exactly_once(atomscale_server, sample_id, df)


def test_server_rejection_is_an_upload_error(fast_client, atomscale_server, sample_id):
    records = to_records(thickness_frame(4), **THICKNESS_MAPPING)
    records["coord_ref_frame"] = "wafer"  # slipped past validation on purpose
    with pytest.raises(UploadError) as info:
        send_records(records, sample_id, client=fast_client)
    assert info.value.cause.status_code == 422
    assert len(info.value.not_created) == 4
    assert len(info.value.created) == 0


def test_wrong_key_fails_before_sending_and_hides_the_key(atomscale_server, sample_id, caplog):
    caplog.set_level(logging.DEBUG)
    client = Client(api_key="not-the-key-abcdef", endpoint=atomscale_server.endpoint)
    with pytest.raises(ApiError) as info:
        thickness_frame(4).atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING)
    assert info.value.status_code == 401
    assert atomscale_server.request_counts["bulk_create"] == 0
    assert "not-the-key" not in str(info.value) + caplog.text


def test_progress_callback(client, sample_id):
    seen = []
    thickness_frame(12).atomscale.upload(
        sample_id,
        client=client,
        **THICKNESS_MAPPING,
        chunksize=5,
        max_workers=1,
        progress_bar=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(5, 12), (10, 12), (12, 12)]


def test_answers_are_matched_by_content_not_position():
    from atomscale_accessors.frames import AnnotationObject
    from atomscale_accessors.keys import match
    from atomscale_accessors.upload.answers import Answer
    from atomscale_accessors.upload.columns import Columns

    records = to_records(thickness_frame(6), **THICKNESS_MAPPING)
    objects = [
        {**row, "id": str(uuid.uuid4()), "last_updated": "2026-01-01T00:00:00Z", "version": "1"}
        for row in records.astype(object).where(records.notna(), None).to_dict("records")
    ]
    objects.reverse()
    objects[0]["property_value"] += 1e-12  # the server stored something else for this one
    stored = msgspec.convert(objects, list[AnnotationObject])
    paired, used = match(Columns.of(records), Answer.from_objects(stored))
    assert paired.tolist() == [5, 4, 3, 2, 1, -1]
    assert used.tolist() == [False, True, True, True, True, True]


def test_non_ascii_metadata_and_text_travel_intact(client, sample_id):
    df = thickness_frame(6).assign(operator=["Jürgen", "Åsa", "µ-lab", "ann", "Bør", "李"])
    created = df.atomscale.upload(
        sample_id,
        client=client,
        **THICKNESS_MAPPING,
        metadata=["operator"],
        chunksize=4,
        char_source_type="ellipsométrie",
    )
    assert [m["operator"] for m in created["metadata"]] == df["operator"].tolist()
    stored = (
        fetch(sample_id, client=client).set_index("annotation_id").loc[created["annotation_id"]]
    )
    assert [m["operator"] for m in stored["metadata"]] == df["operator"].tolist()
    assert set(stored["char_source_type"]) == {"ellipsométrie"}


def test_metadata_that_would_not_survive_json_is_refused_before_sending(
    client, atomscale_server, sample_id
):
    df = thickness_frame(3).assign(meta=[{"a": 1}, {1: "int key"}, {"t": (1, 2)}])
    with pytest.raises(AnnotationValidationError, match="json_object") as info:
        df.atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING, metadata="meta")
    assert sorted(info.value.failure_cases["index"]) == ["site-001", "site-002"]
    assert atomscale_server.request_count() == 0


def test_repeated_positions_pair_one_to_one_with_skip(fast_client, atomscale_server, sample_id):
    df = pd.DataFrame(
        {"x": [0.0, 0.0, 1.0, 1.0], "y": 0.0, "thk": [1.0, 1.1, 2.0, 2.1]}, index=list("abcd")
    )
    mapping = {
        "value": "thk",
        "property_name": "thickness",
        "property_unit": "nm",
        "coord_units": "mm",
    }
    atomscale_server.inject(
        "error_before_commit", status=503, route="bulk_create", after=1, times=50
    )
    with pytest.raises(UploadError) as info:
        df.atomscale.upload(
            sample_id,
            client=fast_client,
            **mapping,
            allow_duplicates=True,
            chunksize=1,
            max_workers=1,
        )
    assert info.value.created.index.tolist() == ["a"]
    assert info.value.not_created.index.tolist() == ["b", "c", "d"]
    atomscale_server.clear_faults()
    rest = df.atomscale.upload(
        sample_id, client=fast_client, **mapping, allow_duplicates=True, if_exists="skip"
    )
    assert rest.index.tolist() == ["b", "c", "d"]
    stored = sorted(a["property_value"] for a in atomscale_server.stored_annotations(sample_id))
    assert stored == [1.0, 1.1, 2.0, 2.1]


def test_failed_update_is_reported_as_not_updated(client, atomscale_server, sample_id):
    df = thickness_frame(4)
    df.atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING)
    new = df.assign(thk=df["thk"] + 1.0)
    atomscale_server.inject("error_before_commit", status=400, route="update_annotation", after=1)
    with pytest.raises(UploadError, match="if_exists='update'") as info:
        new.atomscale.upload(
            sample_id, client=client, **THICKNESS_MAPPING, if_exists="update", max_workers=1
        )
    assert len(info.value.not_updated) == 1
    assert len(info.value.not_created) == 0
    atomscale_server.clear_faults()
    new.atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING, if_exists="update")
    assert_stored_exactly_once(atomscale_server, sample_id, new)


def test_413_is_learned_once_not_per_chunk(fast_client, atomscale_server, sample_id):
    atomscale_server.set_limits(max_bulk_annotations=4)
    df = thickness_frame(40)
    df.atomscale.upload(
        sample_id, client=fast_client, **THICKNESS_MAPPING, chunksize=10, max_workers=1
    )
    # The first chunk of 10 is refused, then its halves of 5 (three 413s in all), and its
    # pieces of 2 and 3 land: the limit learned is 2, so the other 30 rows go as 15
    # requests that are never refused. Relearning per chunk would cost 3 more per chunk.
    assert atomscale_server.request_counts["bulk_create"] == 3 + 4 + 15
    assert_stored_exactly_once(atomscale_server, sample_id, df)


def test_plain_http_never_goes_through_an_environment_proxy(
    atomscale_server, sample_id, monkeypatch
):
    import socket

    with socket.socket() as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen()
        trap.settimeout(0.2)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{trap.getsockname()[1]}")
        monkeypatch.setenv("NO_PROXY", "")
        client = Client(api_key=atomscale_server.api_key, endpoint=atomscale_server.endpoint)
        assert (
            len(thickness_frame(2).atomscale.upload(sample_id, client=client, **THICKNESS_MAPPING))
            == 2
        )
        with pytest.raises(TimeoutError):
            trap.accept()  # nothing connected to the proxy


def test_results_and_fetches_match_the_annotation_frame_model(client, sample_id):
    from atomscale_accessors.schemas import AnnotationFrameModel

    created = thickness_frame(12).atomscale.upload(
        sample_id, client=client, **THICKNESS_MAPPING, chunksize=5, metadata={"run": 1}
    )
    AnnotationFrameModel.validate(created)
    AnnotationFrameModel.validate(fetch(sample_id, client=client))
    AnnotationFrameModel.validate(fetch(sample_id, client=client, property_name="none"))


def test_answers_in_another_order_are_paired_by_content(client, atomscale_server, sample_id):
    df = shuffled_frame(30)
    atomscale_server.faults.reverse_bulk_answers = True
    try:
        created = df.atomscale.upload(
            sample_id, client=client, chunksize=7, progress_bar=False, **THICKNESS_MAPPING
        )
    finally:
        atomscale_server.faults.reverse_bulk_answers = False
    assert created.index.equals(df.index)
    stored = {a["id"]: a for a in atomscale_server.stored_annotations(sample_id)}
    assert len(stored) == len(df) == created["annotation_id"].nunique()
    for row in created.itertuples():
        annotation = stored[row.annotation_id]
        assert (annotation["coord_x"], annotation["coord_y"]) == (row.coord_x, row.coord_y)
        assert annotation["property_value"] == row.property_value


def test_the_old_option_names_still_work_with_a_warning(client, atomscale_server, sample_id):
    with pytest.warns(FutureWarning, match=r"chunk_size= is now chunksize=") as seen:
        planned = thickness_frame(9).atomscale.upload(
            sample_id,
            client=client,
            chunk_size=4,
            progress=False,
            dry_run=True,
            **THICKNESS_MAPPING,
        )
    assert planned["chunk"].nunique() == 3
    assert any("progress= is now progress_bar=" in str(w.message) for w in seen)
    assert all(w.filename == __file__ for w in seen)  # pointing at the caller's line
    with pytest.raises(TypeError, match="one option"):
        thickness_frame(3).atomscale.upload(
            sample_id, client=client, chunk_size=4, chunksize=4, **THICKNESS_MAPPING
        )

"""The dask DataFrame accessor: validation over all partitions, and exactly-once uploads
on a local cluster, also when a task runs twice or its worker dies mid-upload.

The worker processes reach the local server of the test process over loopback.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# The module's tests share one cluster of two worker processes (a fixture of the module):
# on one pytest-xdist worker, not one cluster started on each.
pytestmark = pytest.mark.xdist_group("dask-accessor")

dask = pytest.importorskip("dask")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")

from conftest import HAS_SERVER, NO_SERVER, THICKNESS_MAPPING, thickness_frame  # noqa: E402

if not HAS_SERVER:
    pytest.skip(NO_SERVER, allow_module_level=True)


import atomscale_accessors  # noqa: E402
from atomscale_accessors import Client  # noqa: E402
from atomscale_accessors.errors import (  # noqa: E402
    AnnotationExistsError,
    AnnotationValidationError,
    ApiError,
    AtomscaleWarning,
    UploadError,
)
from atomscale_accessors.keys import position_hashes  # noqa: E402
from atomscale_accessors.server import LocalServer  # noqa: E402

N = 48  # rows
PARTS = 4
CHUNK = 5  # records per request: several requests per partition


@pytest.fixture(scope="module")
def server():
    srv = LocalServer()
    with srv:
        yield srv
    srv.close()


CLUSTER_CLOSE_SECONDS = 20


@pytest.fixture(scope="module")
def cluster_client():
    """Two single-threaded worker processes; the scheduler is chosen per test."""
    with local_cluster() as client:
        yield client


@contextlib.contextmanager
def local_cluster() -> Iterator[distributed.Client]:
    """A client of a new cluster of two single-threaded worker processes."""
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=logging.CRITICAL,
    )
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        # Once a worker was killed with SIGKILL and restarted by its nanny, distributed
        # 2024 (the declared floor) can wait forever for that nanny to close, with every
        # worker process already gone; newer releases close at once.
        with contextlib.suppress(TimeoutError):
            cluster.close(timeout=CLUSTER_CLOSE_SECONDS)


@pytest.fixture
def on_cluster(cluster_client):
    with dask.config.set(scheduler=cluster_client):
        yield cluster_client


@pytest.fixture
def api(server) -> Client:
    return Client(api_key=server.api_key, endpoint=server.endpoint)


@pytest.fixture
def sid(server, request) -> str:
    server.clear_faults()
    server.reset_counters()
    return server.create_sample(request.node.name)


def frame(n: int = N) -> pd.DataFrame:
    return thickness_frame(n)


def dask_frame(df: pd.DataFrame | None = None, parts: int = PARTS) -> dd.DataFrame:
    return dd.from_pandas(frame() if df is None else df, npartitions=parts, sort=False)


def assert_exactly_once(server: LocalServer, sid: str, created: pd.DataFrame, df: pd.DataFrame):
    """One stored annotation per input row, and the result is what the server holds."""
    assert list(created.index) == list(df.index)
    np.testing.assert_array_equal(created["property_value"].to_numpy(), df["thk"].to_numpy())
    np.testing.assert_array_equal(created["coord_x"].to_numpy(), df["x_mm"].to_numpy())
    assert server.annotation_count(sid) == len(df)
    assert created["annotation_id"].is_unique
    stored = atomscale_accessors.fetch(
        sid, client=Client(api_key=server.api_key, endpoint=server.endpoint)
    )
    mine = created.sort_values("annotation_id").reset_index(drop=True)
    theirs = stored.sort_values("annotation_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, theirs, check_categorical=False)


# -- lazy records and validation ---------------------------------------------------------
def test_to_annotations_is_lazy_and_equals_the_pandas_records():
    df = frame()
    records = dask_frame(df).atomscale.to_annotations(**THICKNESS_MAPPING)
    assert isinstance(records, dd.DataFrame)
    assert records.npartitions == PARTS
    expected = df.atomscale.to_annotations(**THICKNESS_MAPPING)
    # dask keeps text labels in its own string dtype
    pd.testing.assert_frame_equal(records.compute(), expected, check_index_type=False)


def test_wide_input_repeats_labels_per_property():
    df = frame(12).assign(sr=np.linspace(10.0, 20.0, 12))
    mapping = {"x": "x_mm", "y": "y_mm", "coord_units": "mm"}
    values = {"values": ["thk", "sr"], "units": {"thk": "nm", "sr": "ohm/sq"}}
    records = dask_frame(df, parts=3).atomscale.to_annotations(**mapping, **values).compute()
    assert len(records) == 24
    assert records.index.value_counts().eq(2).all()


def test_unknown_mapping_option_is_a_type_error():
    with pytest.raises(TypeError, match="unexpected mapping options"):
        dask_frame().atomscale.to_annotations(colour="red")


def test_validate_reports_the_failures_of_every_partition():
    df = frame()
    df.iloc[[1, 25, 47], df.columns.get_loc("thk")] = np.nan  # partitions 0, 2 and 3
    with pytest.raises(AnnotationValidationError) as info:
        dask_frame(df).atomscale.validate(**THICKNESS_MAPPING)
    cases = info.value.failure_cases
    assert sorted(cases["index"]) == ["site-001", "site-025", "site-047"]
    assert set(cases["check"]) == {"not_nullable"}
    assert str(info.value).startswith(f"3 of {N} records failed validation")


def test_validate_caps_the_message_and_keeps_every_case():
    df = frame(400)
    df["thk"] = np.nan
    with pytest.raises(AnnotationValidationError) as info:
        dask_frame(df, parts=5).atomscale.validate(**THICKNESS_MAPPING)
    assert len(info.value.failure_cases) == 400
    assert len(str(info.value).splitlines()) < 20


def test_a_missing_column_is_reported_once_not_per_partition():
    mapping = dict(THICKNESS_MAPPING, value="no_such_column")
    with pytest.raises(AnnotationValidationError) as info:
        dask_frame().atomscale.validate(**mapping)
    cases = info.value.failure_cases
    assert (cases["column"] == "no_such_column").sum() == 1


def test_validate_returns_the_validated_records_lazily():
    df = frame()
    df.iloc[3, df.columns.get_loc("thk")] = np.nan
    with pytest.warns(AtomscaleWarning, match="left out 1 record"):  # on the workers
        records = dask_frame(df).atomscale.validate(dropna=True, **THICKNESS_MAPPING)
    assert isinstance(records, dd.DataFrame)
    with pytest.warns(AtomscaleWarning, match="left out 1 record"):  # computed again
        computed = records.compute()
    assert len(computed) == N - 1
    assert "site-003" not in computed.index


def test_a_position_in_two_partitions_is_refused():
    df = frame()
    df.iloc[40, :2] = df.iloc[2, :2].to_numpy()  # same x and y in partitions 0 and 3
    with pytest.raises(AnnotationValidationError) as info:
        dask_frame(df).atomscale.validate(**THICKNESS_MAPPING)
    cases = info.value.failure_cases
    assert sorted(cases["index"]) == ["site-002", "site-040"]
    assert set(cases["check"]) == {"unique_position"}
    # Repeats are allowed, but not split between partitions: reruns could not tell them apart.
    with pytest.raises(AnnotationValidationError, match="shuffle") as info:
        dask_frame(df).atomscale.validate(allow_duplicates=True, **THICKNESS_MAPPING)
    assert set(info.value.failure_cases["check"]) == {"same_partition"}


def test_a_repeat_within_one_partition_is_allowed_when_asked():
    df = frame()
    df.iloc[3, :2] = df.iloc[2, :2].to_numpy()  # both in partition 0
    records = dask_frame(df).atomscale.validate(allow_duplicates=True, **THICKNESS_MAPPING)
    assert len(records.compute()) == N


def test_position_hashes_treat_equal_positions_alike():
    records = frame(3).atomscale.to_annotations(**THICKNESS_MAPPING)
    records["coord_x"] = [0.0, -0.0, 1.0]
    records["coord_z"] = [np.nan, float("nan"), np.nan]
    records["coord_units"] = ["mm", "mm", None]
    hashes = position_hashes(records)
    assert hashes[0] == hashes[1]
    assert hashes[1] != hashes[2]


# -- uploads on a local cluster ----------------------------------------------------------
def test_upload_on_a_local_cluster(on_cluster, server, api, sid):
    df = frame()
    created = dask_frame(df).atomscale.upload(
        sid, client=api, chunksize=CHUNK, max_workers=2, **THICKNESS_MAPPING
    )
    assert_exactly_once(server, sid, created, df)
    assert isinstance(created["property_name"].dtype, pd.CategoricalDtype)


def test_upload_with_the_default_scheduler(server, api, sid):
    df = frame()
    with dask.config.set(scheduler="threads"):
        created = dask_frame(df).atomscale.upload(
            sid, client=api, chunksize=CHUNK, **THICKNESS_MAPPING
        )
    assert_exactly_once(server, sid, created, df)


def test_invalid_partition_sends_nothing(on_cluster, server, api, sid):
    df = frame()
    df.iloc[45, df.columns.get_loc("thk")] = np.inf  # last partition only
    with pytest.raises(AnnotationValidationError) as info:
        dask_frame(df).atomscale.upload(sid, client=api, **THICKNESS_MAPPING)
    assert list(info.value.failure_cases["index"]) == ["site-045"]
    assert server.request_count("bulk_create") == 0
    assert server.annotation_count(sid) == 0


def test_if_exists_fail_refuses_stored_records_before_sending(on_cluster, server, api, sid):
    df = frame()
    df.iloc[30:31].atomscale.upload(sid, client=api, progress_bar=False, **THICKNESS_MAPPING)
    server.reset_counters()
    with pytest.raises(AnnotationExistsError) as info:
        dask_frame(df).atomscale.upload(sid, client=api, **THICKNESS_MAPPING)
    assert list(info.value.existing.index) == ["site-030"]
    assert server.request_count("bulk_create") == 0
    assert server.annotation_count(sid) == 1


@pytest.mark.parametrize(("if_exists", "stored"), [("skip", N), ("append", N + 6)])
def test_if_exists_with_some_records_stored_before(on_cluster, server, api, sid, if_exists, stored):
    df = frame()
    before = df.iloc[10:16].atomscale.upload(
        sid, client=api, progress_bar=False, **THICKNESS_MAPPING
    )
    created = dask_frame(df).atomscale.upload(
        sid, client=api, if_exists=if_exists, chunksize=CHUNK, **THICKNESS_MAPPING
    )
    assert server.annotation_count(sid) == stored
    assert set(created["annotation_id"]).isdisjoint(before["annotation_id"])
    expected = df.drop(df.index[10:16]) if if_exists == "skip" else df
    assert list(created.index) == list(expected.index)


def test_update_changes_stored_values_and_creates_the_rest(on_cluster, server, api, sid):
    df = frame()
    before = df.iloc[:20].atomscale.upload(sid, client=api, progress_bar=False, **THICKNESS_MAPPING)
    changed = df.assign(thk=df["thk"] + 1.0)
    created = dask_frame(changed).atomscale.upload(
        sid, client=api, if_exists="update", chunksize=CHUNK, **THICKNESS_MAPPING
    )
    assert server.annotation_count(sid) == N
    assert list(created["annotation_id"][:20]) == list(before["annotation_id"])
    np.testing.assert_array_equal(created["property_value"], changed["thk"])


def test_a_failed_partition_is_accounted_for(on_cluster, server, api, sid):
    df = frame()
    # The third bulk request anywhere is refused for good: one partition stops part way.
    server.inject("error_before_commit", route="bulk", status=400, after=2)
    with pytest.raises(UploadError) as info:
        dask_frame(df).atomscale.upload(
            sid, client=api, chunksize=CHUNK, max_workers=1, **THICKNESS_MAPPING
        )
    exc = info.value
    assert isinstance(exc.cause, ApiError)
    assert exc.cause.status_code == 400
    assert len(exc.created) + len(exc.not_created) == N
    assert len(exc.not_created) >= 1  # the refused request may be a short last chunk
    assert server.annotation_count(sid) == len(exc.created)
    assert sorted([*exc.created.index, *exc.not_created.index]) == sorted(df.index)
    # A re-run with skip completes it, exactly once.
    rest = dask_frame(df).atomscale.upload(
        sid, client=api, if_exists="skip", chunksize=CHUNK, **THICKNESS_MAPPING
    )
    assert sorted(rest.index) == sorted(exc.not_created.index)
    assert server.annotation_count(sid) == N


# -- one upload, fed a partition at a time ------------------------------------------------
class RecordingClient(Client):
    """Notes each bulk request in a shared list of events."""

    def __init__(self, *args, events: list, **kwargs):
        super().__init__(*args, **kwargs)
        self.events = events

    def request(self, method, path, **kwargs):
        if method == "POST" and path.endswith("/bulk"):
            self.events.append("POST")
        return super().request(method, path, **kwargs)


def test_partitions_stream_through_one_upload(server, sid):
    events: list[str] = []

    def noted(part: pd.DataFrame) -> pd.DataFrame:
        events.append(f"read {part.index[0]}")
        return part

    df = frame()
    ddf = dask_frame(df).map_partitions(noted, meta=df.iloc[:0])
    client = RecordingClient(api_key=server.api_key, endpoint=server.endpoint, events=events)
    with dask.config.set(scheduler="synchronous"):
        created = ddf.atomscale.upload(
            sid, client=client, chunksize=CHUNK, max_workers=1, **THICKNESS_MAPPING
        )
    assert server.request_count("list_annotations") == 1  # one listing for the whole frame
    assert_exactly_once(server, sid, created, df)
    reads = [i for i, event in enumerate(events) if event.startswith("read")]
    assert len(reads) == 2 * PARTS  # validated, then read again to be sent
    # The second pass reads a partition only when the upload wants more records: the last
    # partition is read after the first requests were sent, not all of them up front.
    assert events.index("POST") < reads[-1]


def test_dropna_drops_the_same_rows_in_both_passes(server, api, sid):
    df = frame()
    df.iloc[[3, 30], df.columns.get_loc("thk")] = np.nan
    with pytest.warns(AtomscaleWarning, match="left out 1 record"):  # one per partition
        created = dask_frame(df).atomscale.upload(sid, client=api, dropna=True, **THICKNESS_MAPPING)
    kept = df.drop(df.index[[3, 30]])
    assert list(created.index) == list(kept.index)
    assert server.annotation_count(sid) == N - 2


def test_the_listing_is_bounded_by_the_frames_names_and_box(server, api, sid):
    df = frame()
    elsewhere = df.assign(x_mm=df["x_mm"] + 1_000.0).iloc[:5]
    elsewhere.atomscale.upload(sid, client=api, progress_bar=False, **THICKNESS_MAPPING)
    # Stored far outside the frame's box: not listed, so "fail" finds nothing to refuse.
    created = dask_frame(df).atomscale.upload(sid, client=api, **THICKNESS_MAPPING)
    assert len(created) == N and server.annotation_count(sid) == N + 5


def test_the_upload_takes_every_upload_option(server, api, sid):
    df = frame()
    plan = dask_frame(df).atomscale.upload(
        sid,
        client=api,
        dry_run=True,
        chunksize=CHUNK,
        max_chunk_bytes=2**17,
        progress_bar=False,
        **THICKNESS_MAPPING,
    )
    assert plan["chunk"].nunique() == PARTS * -(-(N // PARTS) // CHUNK)  # chunks per partition
    assert server.request_count() == 0
    with pytest.raises(ValueError, match="max_chunk_bytes must be at least"):
        dask_frame(df).atomscale.upload(sid, client=api, max_chunk_bytes=10, **THICKNESS_MAPPING)


# -- exactly once when a worker dies -------------------------------------------------------
def _dies_once(marker: str, calls: str):
    """A partition function that kills its worker process the first time a partition is
    read in the upload's pass (after every partition was read once to be validated)."""

    def read(part: pd.DataFrame) -> pd.DataFrame:
        Path(calls, f"{os.getpid()}-{id(part)}-{len(os.listdir(calls))}").touch()
        if len(os.listdir(calls)) > PARTS + 1 and not os.path.exists(marker):
            Path(marker).touch()
            os._exit(1)  # the worker dies while its task is running
        return part

    return read


def test_a_worker_killed_mid_upload_leaves_every_row_stored_once(
    on_cluster, server, api, sid, tmp_path: Path
):
    df = frame()
    marker, calls = tmp_path / "died", tmp_path / "calls"
    calls.mkdir()
    ddf = dask_frame(df).map_partitions(_dies_once(str(marker), str(calls)), meta=df.iloc[:0])
    workers_before = set(on_cluster.run(os.getpid).values())
    created = ddf.atomscale.upload(
        sid, client=api, chunksize=CHUNK, max_workers=1, **THICKNESS_MAPPING
    )
    assert marker.exists()
    assert set(on_cluster.run(os.getpid).values()) != workers_before  # a worker died
    assert_exactly_once(server, sid, created, df)
    # Nothing was sent twice: one request per chunk of the whole frame.
    assert server.request_count("bulk_create") == PARTS * -(-(N // PARTS) // CHUNK)

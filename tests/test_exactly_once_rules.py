"""The exactly-once rules of an upload, seen from the user's side, over real HTTP.

Each test pins one rule that a planted bug once broke without the rest of the suite
noticing: what is stored on the server afterwards, what the call returns, how many
requests of each kind the server saw, and how long the client waited. Only public API is
used (the accessor, ``upload_records``, ``fetch``, ``Client``, ``RetryPolicy``) and the
local server's fixture, so the tests hold across refactors of the upload engine.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pandas as pd
import pytest
from conftest import HAS_SERVER, NO_SERVER

if not HAS_SERVER:
    pytest.skip(NO_SERVER, allow_module_level=True)

import atomscale_accessors
from atomscale_accessors import Client, RetryPolicy, fetch
from atomscale_accessors.server import faults as server_faults

# Retries fast, and never waits for a late commit unless a test asks for it.
FAST = RetryPolicy(max_attempts=4, backoff=0.01, max_wait=5.0, settle=0.0)
THICKNESS = {
    "x": "x",
    "y": "y",
    "value": "thk",
    "property_name": "thickness",
    "property_unit": "nm",
    "coord_units": "mm",
}


def make_client(server, *, retry: RetryPolicy = FAST, timeout=(5.0, 30.0)) -> Client:
    return Client(api_key=server.api_key, endpoint=server.endpoint, retry=retry, timeout=timeout)


@pytest.fixture
def fast_client(atomscale_server) -> Client:
    return make_client(atomscale_server)


def stored_frame(server, sample_id: str) -> pd.DataFrame:
    return pd.DataFrame(server.stored_annotations(sample_id))


def counts_by(stored: pd.DataFrame, *columns: str) -> pd.Series:
    return stored.groupby(list(columns), dropna=False).size()


def thickness_grid(xs, ys, *, offset: float = 100.0) -> pd.DataFrame:
    """One thickness reading at each (x, y) of a grid, values all distinct."""
    x, y = np.meshgrid(np.asarray(xs, float), np.asarray(ys, float))
    x, y = x.ravel(), y.ravel()
    return pd.DataFrame({"x": x, "y": y, "thk": offset + np.arange(len(x)) * 0.5})


# -- 1. "the same position" includes the property name ----------------------------------
@pytest.mark.parametrize(
    "columns", [["thk", "rs"], ["rs", "thk"]], ids=["thickness-first", "sheet-resistance-first"]
)
def test_skip_with_wide_frame_sends_only_the_properties_not_stored(
    atomscale_server, fast_client, sample_id, columns
):
    positions = thickness_grid([0.0, 5.0, 10.0], [0.0, 5.0])  # 6 positions
    positions.atomscale.upload(sample_id, client=fast_client, **THICKNESS)
    wide = positions.assign(rs=50.0 + np.arange(len(positions)))

    created = wide.atomscale.upload(
        sample_id,
        client=fast_client,
        if_exists="skip",
        x="x",
        y="y",
        values={c: {"thk": "thickness", "rs": "sheet_resistance"}[c] for c in columns},
        units={"thickness": "nm", "sheet_resistance": "ohm/sq"},
        coord_units="mm",
    )

    stored = stored_frame(atomscale_server, sample_id)
    assert len(stored) == 12
    per_position = counts_by(stored, "coord_x", "coord_y", "property_name").unstack()
    assert list(per_position.columns) == ["sheet_resistance", "thickness"]
    assert len(per_position) == 6
    assert (per_position == 1).all().all(), per_position
    # What the call created is exactly the sheet resistance, at every position.
    assert len(created) == 6
    assert set(created["property_name"]) == {"sheet_resistance"}
    rs = stored[stored["property_name"] == "sheet_resistance"].sort_values(["coord_y", "coord_x"])
    np.testing.assert_array_equal(
        np.sort(rs["property_value"].to_numpy()), np.sort(wide["rs"].to_numpy())
    )


# -- 2. "the same position" includes z --------------------------------------------------
def test_skip_tells_apart_positions_that_differ_only_in_z(atomscale_server, fast_client, sample_id):
    layer = thickness_grid([0.0, 5.0, 10.0], [0.0])
    top = layer.assign(z=1.0)
    top.atomscale.upload(sample_id, client=fast_client, z="z", **THICKNESS)
    both = pd.concat([layer.assign(z=0.0, thk=layer["thk"] + 10.0), top], ignore_index=True)

    created = both.atomscale.upload(
        sample_id, client=fast_client, if_exists="skip", z="z", **THICKNESS
    )

    stored = stored_frame(atomscale_server, sample_id)
    assert len(stored) == 6
    per_position = counts_by(stored, "coord_x", "coord_y", "coord_z")
    assert len(per_position) == 6 and (per_position == 1).all(), per_position
    assert sorted(created["coord_z"].tolist()) == [0.0, 0.0, 0.0]
    bottom = stored[stored["coord_z"] == 0.0].sort_values("coord_x")
    np.testing.assert_array_equal(bottom["property_value"].to_numpy(), layer["thk"] + 10.0)


# -- 3. the server's Retry-After is honoured ---------------------------------------------
def test_retry_policy_waits_what_retry_after_asks_for():
    policy = RetryPolicy(max_attempts=4, backoff=0.01, max_wait=5.0)
    assert policy.wait(1, 1) == pytest.approx(1.0)
    assert policy.wait(3, 2.0) == pytest.approx(2.0)
    assert policy.wait(1, 0) == 0.0
    # Without the header: the backoff, doubling; and any wait is capped by max_wait.
    assert policy.wait(1, None) == pytest.approx(0.01)
    assert policy.wait(2) == pytest.approx(0.02)
    assert RetryPolicy(backoff=0.01, max_wait=0.5).wait(1, 10) == pytest.approx(0.5)


def test_upload_after_429_waits_the_retry_after_seconds(atomscale_server, fast_client, sample_id):
    df = thickness_grid([0.0, 5.0], [0.0])
    atomscale_server.inject("rate_limited", route="bulk_create", retry_after=1)
    started = time.perf_counter()
    created = df.atomscale.upload(sample_id, client=fast_client, **THICKNESS)
    elapsed = time.perf_counter() - started
    assert elapsed >= 0.95, f"resent after {elapsed:.2f} s, the server asked for 1 s"
    assert len(created) == 2
    assert atomscale_server.request_count("bulk_create") == 2
    assert len(stored_frame(atomscale_server, sample_id)) == 2


def test_upload_after_429_without_retry_after_uses_the_short_backoff(
    atomscale_server, fast_client, sample_id, caplog
):
    df = thickness_grid([0.0, 5.0], [0.0])
    atomscale_server.inject("rate_limited", route="bulk_create")
    caplog.set_level(logging.INFO, logger="atomscale_accessors")
    created = df.atomscale.upload(sample_id, client=fast_client, **THICKNESS)
    # The wait taken is the policy's first backoff (the log says it; a clock would also
    # count the machine's load).
    waits = [r.args[0] for r in caplog.records if r.msg.startswith("retrying in")]
    assert waits == [fast_client.retry.wait(1)]
    assert len(created) == 2
    assert atomscale_server.request_count("bulk_create") == 2


# -- 4. a check after a failure never takes annotations stored before -------------------
@pytest.mark.parametrize(
    ("fault", "requests"),
    [
        pytest.param("error_before_commit", 3, id="before-commit-resent"),
        pytest.param("error_after_commit", 2, id="after-commit-claimed"),
    ],
)
def test_append_after_a_500_takes_only_new_annotations(
    atomscale_server, fast_client, sample_id, fault, requests
):
    df = thickness_grid([0.0, 5.0, 10.0], [0.0, 5.0])
    first = df.atomscale.upload(sample_id, client=fast_client, **THICKNESS)
    # 500 is ambiguous: the client lists the sample and finds identical records there,
    # but those stored before this upload are not its own.
    atomscale_server.inject(fault, status=500, route="bulk_create")

    second = df.atomscale.upload(sample_id, client=fast_client, if_exists="append", **THICKNESS)

    stored = stored_frame(atomscale_server, sample_id)
    assert len(stored) == 12
    assert (counts_by(stored, "coord_x", "coord_y") == 2).all()
    assert len(second) == 6 and second["annotation_id"].is_unique
    assert set(second["annotation_id"]).isdisjoint(first["annotation_id"])
    assert set(second["annotation_id"]) | set(first["annotation_id"]) == set(stored["id"])
    # first upload, then the failed request, and only before a commit one resent
    assert atomscale_server.request_count("bulk_create") == requests


# -- 5. a late commit is waited for before the check ------------------------------------
def test_504_after_commit_waits_to_settle_then_keeps_what_landed(atomscale_server, sample_id):
    client = make_client(
        atomscale_server, retry=RetryPolicy(max_attempts=4, backoff=0.01, max_wait=5.0, settle=0.6)
    )
    df = thickness_grid([0.0, 5.0, 10.0], [0.0, 5.0])
    atomscale_server.inject("error_after_commit", status=504, route="bulk_create")
    started = time.perf_counter()
    created = df.atomscale.upload(sample_id, client=client, **THICKNESS)
    elapsed = time.perf_counter() - started

    assert elapsed >= 0.55, f"listed {elapsed:.2f} s after a 504, before the commit could settle"
    stored = stored_frame(atomscale_server, sample_id)
    assert len(stored) == 6
    assert set(created["annotation_id"]) == set(stored["id"])
    assert atomscale_server.request_count("bulk_create") == 1  # nothing resent


def test_504_waits_by_default_for_twice_the_read_timeout(atomscale_server, sample_id):
    client = make_client(
        atomscale_server,
        retry=RetryPolicy(max_attempts=4, backoff=0.01, max_wait=5.0),  # settle: default
        timeout=(5.0, 0.3),
    )
    df = thickness_grid([0.0, 5.0], [0.0])
    atomscale_server.inject("error_after_commit", status=504, route="bulk_create")
    started = time.perf_counter()
    created = df.atomscale.upload(sample_id, client=client, **THICKNESS)
    assert time.perf_counter() - started >= 0.55
    assert len(created) == 2
    assert len(stored_frame(atomscale_server, sample_id)) == 2


def test_read_timeout_waits_to_settle_before_resending(atomscale_server, sample_id):
    # The answer comes after the client's read timeout (the local server drops the
    # request then, before storing): the client must wait ``settle`` before it lists.
    client = make_client(
        atomscale_server,
        retry=RetryPolicy(max_attempts=4, backoff=0.01, max_wait=5.0, settle=0.6),
        timeout=(5.0, 0.2),
    )
    df = thickness_grid([0.0, 5.0], [0.0])
    atomscale_server.inject("latency", route="bulk_create", seconds=0.5)
    started = time.perf_counter()
    created = df.atomscale.upload(sample_id, client=client, **THICKNESS)
    elapsed = time.perf_counter() - started
    assert elapsed >= 0.2 + 0.55, f"listed {elapsed:.2f} s after sending, without settling"
    stored = stored_frame(atomscale_server, sample_id)
    assert len(stored) == 2
    assert set(created["annotation_id"]) == set(stored["id"])


def needs_fault(kind: str):
    return pytest.mark.skipif(
        kind not in server_faults.FAULT_KINDS,
        reason=f"the local server has no {kind!r} fault yet (another engineer is adding "
        "commit latencies: a commit that lands after the client timed out)",
    )


@needs_fault("latency_before_commit")
@pytest.mark.parametrize("settle", [1.0, None], ids=["settle-given", "settle-default"])
def test_commit_landing_after_read_timeout_is_found_not_doubled(
    atomscale_server, sample_id, settle
):
    # The server stores the request 0.35 s after it arrived; the client gave up after
    # 0.2 s. Listing at once would miss it and the resend would store everything twice.
    client = make_client(
        atomscale_server,
        retry=RetryPolicy(max_attempts=4, backoff=0.01, max_wait=5.0, settle=settle),
        timeout=(5.0, 0.2),  # default settle: twice the read timeout
    )
    df = thickness_grid([0.0, 5.0, 10.0], [0.0, 5.0])
    atomscale_server.inject("latency_before_commit", route="bulk_create", seconds=0.35)
    created = df.atomscale.upload(sample_id, client=client, **THICKNESS)
    time.sleep(0.4)  # anything still on its way has landed
    stored = stored_frame(atomscale_server, sample_id)
    assert len(stored) == 6, f"{len(stored)} stored for 6 records"
    assert set(created["annotation_id"]) == set(stored["id"])
    assert atomscale_server.request_count("bulk_create") == 1  # nothing resent


@needs_fault("latency_after_commit")
def test_commit_before_read_timeout_is_kept_not_resent(atomscale_server, sample_id):
    client = make_client(atomscale_server, timeout=(5.0, 0.2))
    df = thickness_grid([0.0, 5.0, 10.0], [0.0, 5.0])
    atomscale_server.inject("latency_after_commit", route="bulk_create", seconds=0.5)
    created = df.atomscale.upload(sample_id, client=client, **THICKNESS)
    time.sleep(0.4)
    stored = stored_frame(atomscale_server, sample_id)
    assert len(stored) == 6
    assert set(created["annotation_id"]) == set(stored["id"])
    assert atomscale_server.request_count("bulk_create") == 1


# -- 6. the listing box covers every record, on samples taller than wide ---------------
TALL = dict(xs=[0.0, 1.0], ys=[0.0, 10.0, 20.0])  # x spans 1 mm, y spans 20 mm


def test_skip_rerun_on_a_tall_sample_sends_nothing_again(atomscale_server, fast_client, sample_id):
    df = thickness_grid(TALL["xs"], TALL["ys"])
    first = df.atomscale.upload(sample_id, client=fast_client, **THICKNESS)
    assert atomscale_server.request_count("bulk_create") == 1

    again = df.atomscale.upload(sample_id, client=fast_client, if_exists="skip", **THICKNESS)

    assert len(stored_frame(atomscale_server, sample_id)) == 6
    assert len(again) == 0
    assert atomscale_server.request_count("bulk_create") == 1
    with pytest.raises(atomscale_accessors.errors.AnnotationExistsError) as info:
        df.atomscale.upload(sample_id, client=fast_client, **THICKNESS)
    assert len(info.value.existing) == 6
    assert set(first["annotation_id"]) == set(stored_frame(atomscale_server, sample_id)["id"])


def test_skip_rerun_on_a_wide_sample_sends_nothing_again(atomscale_server, fast_client, sample_id):
    df = thickness_grid(TALL["ys"], TALL["xs"])  # the transpose: wider than tall
    df.atomscale.upload(sample_id, client=fast_client, **THICKNESS)
    again = df.atomscale.upload(sample_id, client=fast_client, if_exists="skip", **THICKNESS)
    assert len(again) == 0
    assert len(stored_frame(atomscale_server, sample_id)) == 6


@pytest.mark.parametrize("status", [500, 502])
def test_check_after_failure_on_a_tall_sample_finds_every_record(
    atomscale_server, fast_client, sample_id, status
):
    df = thickness_grid(TALL["xs"], TALL["ys"])
    atomscale_server.inject("error_after_commit", status=status, route="bulk_create")
    created = df.atomscale.upload(sample_id, client=fast_client, **THICKNESS)
    stored = stored_frame(atomscale_server, sample_id)
    assert len(stored) == 6
    assert set(created["annotation_id"]) == set(stored["id"])
    assert atomscale_server.request_count("bulk_create") == 1


# -- 7. every request body fits max_chunk_bytes, separators and envelope included ------
CAP = 128 * 1024  # the smallest max_chunk_bytes allowed
ENVELOPE = len('{"annotations":[]}')
PAD = "pad"


def record_bytes(row: dict) -> int:
    """Bytes of one annotation's compact JSON as sent (ASCII, shortest float text)."""
    body = {
        "property_name": "thickness",
        "property_value": row["thk"],
        "property_unit": "nm",
        "coord_ref_frame": "sample_relative",
        "coord_units": "mm",
        "coord_x": row["x"],
        "coord_y": row["y"],
        "metadata": {PAD: row[PAD]},
    }
    return len(json.dumps(body, separators=(",", ":")))


def body_bytes(rows: pd.DataFrame) -> int:
    sizes = [record_bytes(r) for r in rows.to_dict("records")]
    return ENVELOPE + sum(sizes) + len(sizes) - 1


def padded_records(groups: list[int], per_group: int = 3) -> pd.DataFrame:
    """Groups of ``per_group`` records whose JSON texts sum to the given byte counts."""
    n = len(groups) * per_group
    df = pd.DataFrame({"x": np.arange(n, dtype=float), "y": 0.0, "thk": 100.0 + np.arange(n)})
    df[PAD] = ""
    for g, target in enumerate(groups):
        rows = list(range(g * per_group, (g + 1) * per_group))
        bare = [record_bytes(r) for r in df.iloc[rows].to_dict("records")]
        extra = target - sum(bare)
        share = [extra // per_group] * per_group
        share[-1] += extra - sum(share)
        for row, k in zip(rows, share, strict=True):
            df.at[row, PAD] = "x" * k
    return df


UPLOAD_PADDED = dict(
    x="x", y="y", value="thk", property_name="thickness", property_unit="nm", coord_units="mm"
)


def upload_padded(df: pd.DataFrame, sample_id: str, client: Client, **options) -> pd.DataFrame:
    frame = df.assign(meta=[{PAD: p} for p in df[PAD]]).drop(columns=[PAD])
    return frame.atomscale.upload(
        sample_id, client=client, metadata="meta", max_chunk_bytes=CAP, **UPLOAD_PADDED, **options
    )


def test_record_size_helper_matches_the_bytes_sent(atomscale_server, fast_client, sample_id):
    # The server refuses a body one byte over its limit: this pins body_bytes() exactly.
    df = padded_records([60_000], per_group=1)
    size = body_bytes(df)
    atomscale_server.set_limits(max_body_bytes=size - 1)
    with pytest.raises(atomscale_accessors.errors.UploadError):
        upload_padded(df, sample_id, fast_client)
    assert len(stored_frame(atomscale_server, sample_id)) == 0
    atomscale_server.set_limits(max_body_bytes=size)
    upload_padded(df, sample_id, fast_client)
    assert len(stored_frame(atomscale_server, sample_id)) == 1


@pytest.mark.parametrize(
    "slack",
    [
        # One byte over: fits when either the commas or the envelope are left out.
        pytest.param(ENVELOPE + 2 - 1, id="one-byte-over"),
        pytest.param(3, id="over-by-the-envelope"),  # fits when the envelope is left out
        pytest.param(ENVELOPE + 2, id="fits-exactly"),
    ],
)
@pytest.mark.parametrize("groups", [1, 2], ids=["one-group", "two-groups"])
def test_every_bulk_body_fits_max_chunk_bytes(
    atomscale_server, fast_client, sample_id, slack, groups
):
    # Three records whose JSON sums to CAP - slack: with the envelope and the two commas
    # a body of all three is CAP - slack + ENVELOPE + 2 bytes.
    df = padded_records([CAP - slack] * groups)
    assert all(record_bytes(r) < 65_536 for r in df.to_dict("records"))

    planned = upload_padded(df, sample_id, fast_client, dry_run=True)
    for _, rows in planned.groupby("chunk"):
        size = body_bytes(df.loc[rows.index])
        assert size <= CAP, f"chunk {rows['chunk'].iloc[0]} has a {size}-byte body"
    assert sorted(planned.index) == list(df.index)

    atomscale_server.set_limits(max_body_bytes=CAP)  # 413 beyond
    created = upload_padded(df, sample_id, fast_client)
    # A 413 would have made the client split and resend: one request per planned chunk.
    assert atomscale_server.request_count("bulk_create") == planned["chunk"].nunique()
    stored = stored_frame(atomscale_server, sample_id)
    assert len(stored) == len(df) == len(created)
    assert (counts_by(stored, "coord_x") == 1).all()
    if slack == ENVELOPE + 2 and groups == 1:
        assert planned["chunk"].nunique() == 1  # an exact fit is one request


# -- 8. update PATCHes only what changed -------------------------------------------------
def test_update_with_unchanged_metadata_sends_no_patch(atomscale_server, fast_client, sample_id):
    df = thickness_grid([0.0, 5.0, 10.0], [0.0, 5.0]).assign(
        operator="ann", lot=[f"L{i}" for i in range(6)]
    )
    options = dict(client=fast_client, metadata=["operator", "lot"], **THICKNESS)
    first = df.atomscale.upload(sample_id, **options)
    atomscale_server.reset_counters()

    again = df.atomscale.upload(sample_id, if_exists="update", **options)

    assert atomscale_server.request_count("update_annotation") == 0
    assert atomscale_server.request_count("bulk_create") == 0
    assert set(again["annotation_id"]) == set(first["annotation_id"])
    assert again["metadata"].tolist() == first["metadata"].tolist()


def test_update_patches_exactly_the_rows_whose_metadata_changed(
    atomscale_server, fast_client, sample_id
):
    df = thickness_grid([0.0, 5.0, 10.0], [0.0, 5.0]).assign(operator="ann")
    options = dict(client=fast_client, metadata=["operator"], **THICKNESS)
    df.atomscale.upload(sample_id, **options)
    atomscale_server.reset_counters()
    changed = df.assign(operator=["ann", "bob", "ann", "ann", "bob", "ann"])

    changed.atomscale.upload(sample_id, if_exists="update", **options)

    assert atomscale_server.request_count("update_annotation") == 2
    stored = fetch(sample_id, client=fast_client)
    assert sorted(m["operator"] for m in stored["metadata"]) == ["ann"] * 4 + ["bob"] * 2
    assert len(stored) == 6

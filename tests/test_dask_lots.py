"""Many samples in one dask DataFrame, each uploaded by a task on the workers of a local
cluster of processes, over real HTTP to the local server of the test process: exactly
once, also when a worker dies mid-upload and dask runs its task again."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

# The module's tests share one cluster of two worker processes (a fixture of the module):
# on one pytest-xdist worker, not one cluster started on each.
pytestmark = pytest.mark.xdist_group("dask-lots")

dask = pytest.importorskip("dask")
dd = pytest.importorskip("dask.dataframe")
distributed = pytest.importorskip("distributed")
xr = pytest.importorskip("xarray")

import test_dask_accessor  # noqa: E402
from conftest import THICKNESS_MAPPING, thickness_frame  # noqa: E402

from atomscale_accessors import Client, fetch  # noqa: E402
from atomscale_accessors.dask_lots import _shuffled  # noqa: E402
from atomscale_accessors.datasets import wafer_thickness_map  # noqa: E402
from atomscale_accessors.errors import (  # noqa: E402
    AnnotationValidationError,
    SampleNotFoundError,
)
from atomscale_accessors.lots import LotUploadError  # noqa: E402
from atomscale_accessors.server import LocalServer  # noqa: E402

SITES = 12
PARTS = 3
CHUNK = 4  # records per request: three requests per sample
# The columns of the summary, one row per sample.
SUMMARY = ["sample", "physical_sample_id", "records", "created", "existing"]

# The fixtures of the one-sample tests: a module's local server, its client, and a cluster
# of two worker processes.
server = test_dask_accessor.server
api = test_dask_accessor.api
cluster_client = test_dask_accessor.cluster_client


@pytest.fixture
def on_cluster(cluster_client, server):
    """The module's cluster as the active scheduler, and the server's counters at zero."""
    server.clear_faults()
    server.reset_counters()
    with dask.config.set(scheduler=cluster_client):
        yield cluster_client


@pytest.fixture
def names(request) -> list[str]:
    """Five wafer names of this test alone (the server is shared by the module)."""
    return [f"{request.node.name[:40]}-W{i}" for i in range(1, 6)]


def lot(wafers: list[str], sites: int = SITES) -> pd.DataFrame:
    """``sites`` thickness points per wafer, rows interleaved by site (every partition
    holds every wafer until the shuffle), each label's positions apart from the others'."""
    parts = [
        thickness_frame(sites, seed=i)
        .assign(wafer=name, x_mm=lambda f, i=i: f["x_mm"] + 500.0 * i)
        .reset_index(drop=True)
        for i, name in enumerate(wafers)
    ]
    whole = pd.concat(parts, keys=range(len(parts))).swaplevel().sort_index(kind="stable")
    whole.index = pd.Index([f"row-{i}" for i in range(len(whole))], name="row")
    return whole


def dask_lot(table: pd.DataFrame) -> dd.DataFrame:
    return dd.from_pandas(table, npartitions=PARTS, sort=False)


def stored(server: LocalServer, summary: pd.DataFrame) -> list[int]:
    return [server.annotation_count(sid) for sid in summary["physical_sample_id"]]


def test_a_lot_goes_to_its_samples_once_each(on_cluster, server, api, names):
    first = server.create_sample(names[0])
    # The first sample spelled three ways (its rows at other positions each time).
    table = lot([names[0], f"  {names[0].upper()} ", first.upper(), *names[1:]])
    summary = dask_lot(table).atomscale.upload(
        sample_column="wafer", client=api, create_sample=True, **THICKNESS_MAPPING
    )
    assert list(summary.columns) == SUMMARY
    assert summary["sample"].tolist() == names  # first spellings, sorted
    ids = {s["name"]: s["id"] for s in server.store.list_samples()}
    assert summary["physical_sample_id"].tolist() == [ids[name] for name in names]
    assert summary["physical_sample_id"][0] == first
    assert summary["records"].tolist() == [3 * SITES] + [SITES] * 4
    assert summary["created"].tolist() == summary["records"].tolist()
    assert summary["existing"].tolist() == [0] * 5
    assert stored(server, summary) == summary["records"].tolist()
    # One listing of the samples, four created, one request per sample (one chunk each).
    assert server.request_count("list_samples") == 1
    assert server.request_count("create_sample") == 4
    assert server.request_count("bulk_create") == 5
    values = {
        (a["coord_x"], a["coord_y"]): a["property_value"] for a in server.stored_annotations(first)
    }
    mine = table[table["wafer"].str.strip().str.lower().isin([names[0].lower(), first])]
    positions = zip(mine["x_mm"], mine["y_mm"], strict=True)
    assert values == dict(zip(positions, mine["thk"], strict=True))


def test_unknown_names_are_reported_at_once_and_nothing_is_sent(on_cluster, server, api, names):
    server.create_sample(names[0])
    table = lot([names[0], names[0] + "x", names[1]])
    before = len(server.store.list_samples())
    with pytest.raises(SampleNotFoundError) as info:
        dask_lot(table).atomscale.upload(sample_column="wafer", client=api, **THICKNESS_MAPPING)
    message = str(info.value)
    assert "2 sample names match no sample" in message
    assert repr(names[0] + "x") in message and repr(names[1]) in message
    assert server.request_count("bulk_create") == server.request_count("list_annotations") == 0
    assert len(server.store.list_samples()) == before


def test_invalid_rows_of_two_partitions_are_reported_together(on_cluster, server, api, names):
    table = lot(names)
    bad = {"row-0": "finite", "row-6": "not_nullable", "row-2": "sample_given"}
    table.loc["row-0", "thk"] = np.inf
    table.loc["row-6", "thk"] = np.nan
    table.loc["row-2", "wafer"] = "   "  # names no sample
    with pytest.raises(AnnotationValidationError) as info:
        dask_lot(table).atomscale.upload(
            sample_column="wafer", client=api, create_sample=True, **THICKNESS_MAPPING
        )
    cases = info.value.failure_cases
    assert dict(zip(cases["index"], cases["check"], strict=True)) == bad
    assert str(info.value).startswith(f"3 of {len(table)} records failed validation")
    # The bad rows are in different partitions of what the workers checked.
    targets = {key: key for key in table["wafer"].str.strip().str.lower()}
    shuffled = _shuffled(dask_lot(table), "wafer", targets)
    parts = dask.compute(*shuffled.to_delayed())
    assert len([part for part in parts if set(part.index) & set(bad)]) >= 2
    assert server.request_count("bulk_create") == server.request_count("create_sample") == 0
    assert not {s["name"] for s in server.store.list_samples()} & set(names)


def test_a_repeated_position_within_a_sample_is_refused(on_cluster, server, api, names):
    table = lot(names[:2])
    table.loc["row-0", ["x_mm", "y_mm"]] = table.loc["row-2", ["x_mm", "y_mm"]].to_numpy()
    with pytest.raises(AnnotationValidationError) as info:
        dask_lot(table).atomscale.upload(
            sample_column="wafer", client=api, create_sample=True, **THICKNESS_MAPPING
        )
    assert sorted(info.value.failure_cases["index"]) == ["row-0", "row-2"]
    # The other sample has rows at the same positions: no repeat across samples.
    assert server.request_count("create_sample") == 0


def test_append_is_refused_before_anything_is_read_or_sent(server, api, names):
    server.reset_counters()
    with pytest.raises(ValueError, match="append") as info:
        dask_lot(lot(names[:2])).atomscale.upload(
            sample_column="wafer", client=api, if_exists="append", **THICKNESS_MAPPING
        )
    assert "dask runs a task again" in str(info.value)
    assert server.request_count() == 0


def test_a_sample_holding_its_records_fails_alone_and_skip_completes(
    on_cluster, server, api, names
):
    ids = [server.create_sample(name) for name in names[:3]]
    table = lot(names[:3])
    mine = table[table["wafer"] == names[1]].drop(columns="wafer")
    mine.iloc[:5].atomscale.upload(ids[1], client=api, progress_bar=False, **THICKNESS_MAPPING)
    with pytest.raises(LotUploadError) as info:
        dask_lot(table).atomscale.upload(sample_column="wafer", client=api, **THICKNESS_MAPPING)
    error = info.value
    assert set(error.errors) == {ids[1]}
    assert type(error.errors[ids[1]]).__name__ == "AnnotationExistsError"
    assert len(error.errors[ids[1]].existing) == 0  # summaries only: no annotations
    row = error.samples.loc[ids[1]]
    assert (row["records"], row["created"], row["existing"]) == (SITES, 0, 5)
    assert [server.annotation_count(i) for i in ids] == [SITES, 5, SITES]
    assert server.api_key not in str(error) and server.api_key.encode() not in pickle.dumps(error)
    again = dask_lot(table).atomscale.upload(
        sample_column="wafer", client=api, if_exists="skip", **THICKNESS_MAPPING
    )
    assert again["created"].tolist() == [0, SITES - 5, 0]
    assert again["existing"].tolist() == [SITES, 5, SITES]
    assert [server.annotation_count(i) for i in ids] == [SITES] * 3


def test_samples_that_stop_part_way_are_accounted_and_a_rerun_completes(
    on_cluster, server, api, names
):
    ids = [server.create_sample(name) for name in names[:4]]
    table = lot(names[:4])
    # The fifth bulk request is refused for good: its sample stops part way.
    server.inject("error_before_commit", route="bulk", status=400, after=4)
    with pytest.raises(LotUploadError) as info:
        dask_lot(table).atomscale.upload(
            sample_column="wafer", client=api, chunksize=CHUNK, max_workers=1, **THICKNESS_MAPPING
        )
    samples = info.value.samples
    failed = samples[samples["error"] != ""]
    assert len(failed) == 1 and set(info.value.errors) == set(failed.index)
    assert (failed["not_created"] > 0).all()
    assert (samples["created"] + samples["not_created"] + samples["unknown"] == SITES).all()
    assert [server.annotation_count(i) for i in samples.index] == samples["created"].tolist()
    assert "re-run with if_exists='skip'" in str(info.value)
    server.clear_faults()
    again = dask_lot(table).atomscale.upload(
        sample_column="wafer", client=api, if_exists="skip", chunksize=CHUNK, **THICKNESS_MAPPING
    )
    again = again.set_index("physical_sample_id").loc[samples.index]
    assert again["created"].tolist() == samples["not_created"].tolist()
    assert again["existing"].tolist() == samples["created"].tolist()
    assert [server.annotation_count(i) for i in ids] == [SITES] * 4


def _dying_client(server: LocalServer, folder: str, after: int) -> Client:
    """A client whose worker process dies right after its ``after``-th committed bulk
    request (counted over all processes), once."""

    class DyingClient(Client):  # defined here so that it is pickled by value
        def request(self, method, path, **kwargs):
            response = super().request(method, path, **kwargs)
            if method == "POST" and path.endswith("/bulk"):
                Path(folder, f"{os.getpid()}-{len(os.listdir(folder))}").touch()
                if len(os.listdir(folder)) >= after:
                    died = Path(folder).parent / "died"
                    try:  # made by one process only: two workers may get here at once
                        os.close(os.open(died, os.O_CREAT | os.O_EXCL))
                    except FileExistsError:
                        return response
                    os._exit(1)  # the worker dies while its task is running
            return response

    return DyingClient(api_key=server.api_key, endpoint=server.endpoint)


def test_a_worker_killed_mid_upload_leaves_every_sample_stored_once(
    on_cluster, server, names, tmp_path: Path
):
    (tmp_path / "posts").mkdir()
    client = _dying_client(server, str(tmp_path / "posts"), after=4)
    table = lot(names)
    workers_before = set(on_cluster.run(os.getpid).values())
    summary = dask_lot(table).atomscale.upload(
        sample_column="wafer",
        client=client,
        create_sample=True,
        chunksize=CHUNK,
        max_workers=1,
        **THICKNESS_MAPPING,
    )
    assert (tmp_path / "died").exists()
    assert set(on_cluster.run(os.getpid).values()) != workers_before  # a worker died
    assert summary["created"].tolist() == [SITES] * 5
    assert stored(server, summary) == [SITES] * 5
    for sid in summary["physical_sample_id"]:
        xs = [(a["coord_x"], a["coord_y"]) for a in server.stored_annotations(sid)]
        assert len(set(xs)) == len(xs) == SITES  # no position twice
    # Nothing was sent twice: the re-run sent only what the lost run had not.
    assert server.request_count("bulk_create") == 5 * SITES // CHUNK


def test_a_dry_run_validates_and_sends_nothing(on_cluster, server, api, names):
    table = lot(names[:2])
    plan = dask_lot(table).atomscale.upload(
        sample_column="wafer", client=api, dry_run=True, chunksize=CHUNK, **THICKNESS_MAPPING
    )
    assert sorted(plan.index) == sorted(table.index)
    assert (plan["sample"].to_numpy() == table.loc[plan.index, "wafer"].to_numpy()).all()
    assert plan.groupby("sample")["chunk"].nunique().tolist() == [SITES // CHUNK] * 2
    assert server.request_count() == 0


def test_one_sample_by_name_is_created_after_validation(on_cluster, server, api, names):
    table = lot(names[:1]).drop(columns="wafer")
    bad = table.assign(thk=np.nan)
    with pytest.raises(AnnotationValidationError):
        dask_lot(bad).atomscale.upload(
            names[0], client=api, create_sample=True, **THICKNESS_MAPPING
        )
    assert server.request_count("create_sample") == 0
    created = dask_lot(table).atomscale.upload(
        names[0], client=api, create_sample=True, **THICKNESS_MAPPING
    )
    sid = {s["name"]: s["id"] for s in server.store.list_samples()}[names[0]]
    assert set(created["physical_sample_id"]) == {sid}
    assert server.annotation_count(sid) == SITES


def test_update_overwrites_what_was_stored_and_creates_the_rest(on_cluster, server, api, names):
    ids = [server.create_sample(name) for name in names[:2]]
    table = lot(names[:2])
    first = table[table["wafer"] == names[0]].drop(columns="wafer")
    first.iloc[:4].atomscale.upload(ids[0], client=api, progress_bar=False, **THICKNESS_MAPPING)
    changed = table.assign(thk=table["thk"] + 1.0)
    summary = dask_lot(changed).atomscale.upload(
        sample_column="wafer", client=api, if_exists="update", **THICKNESS_MAPPING
    )
    assert summary["existing"].tolist() == [4, 0]
    assert summary["created"].tolist() == [SITES - 4, SITES]
    assert [server.annotation_count(i) for i in ids] == [SITES, SITES]
    values = sorted(a["property_value"] for a in server.stored_annotations(ids[0]))
    assert values == sorted(changed.loc[changed["wafer"] == names[0], "thk"])


def test_a_frame_whose_rows_name_no_sample_is_refused(server, api):
    table = lot(["x"]).assign(wafer=None)
    server.reset_counters()
    with pytest.raises(AnnotationValidationError, match="no row names a sample"):
        dask_lot(table).atomscale.upload(sample_column="wafer", client=api, **THICKNESS_MAPPING)
    assert server.request_count() == 0


# -- a dask-backed stack of maps: a task per sample --------------------------------------------
def map_stack(wafers: list[str], n: int = 7) -> xr.Dataset:
    """One thickness map per wafer along ``wafer``, dask-backed (two blocks per map)."""
    maps = [wafer_thickness_map(n=n, seed=i) for i in range(len(wafers))]
    return xr.concat(maps, dim=pd.Index(wafers, name="wafer")).chunk({"wafer": 1, "y": 4})


def test_a_stack_of_maps_goes_to_its_samples_in_tasks(on_cluster, server, names, tmp_path: Path):
    first = server.create_sample(names[0])
    (tmp_path / "posts").mkdir()
    recording = _dying_client(server, str(tmp_path / "posts"), after=10**9)  # never dies
    stack = map_stack([names[0].lower(), *names[1:3]])
    summary = stack.atomscale.upload(sample_dim="wafer", client=recording, create_sample=True)
    points = int(stack["thickness"][0].notnull().sum())
    assert list(summary.columns) == SUMMARY
    assert summary["sample"].tolist() == sorted(stack["wafer"].values.tolist())
    assert summary["records"].tolist() == summary["created"].tolist() == [points] * 3
    ids = dict(zip(summary["sample"], summary["physical_sample_id"], strict=True))
    assert ids[names[0].lower()] == first
    for label in stack["wafer"].values:
        back = fetch(ids[label], client=recording).atomscale.to_xarray()
        xr.testing.assert_equal(back, stack.sel(wafer=label, drop=True).compute())
    # Every bulk request came from a worker process, none from this one.
    senders = {int(name.split("-")[0]) for name in os.listdir(tmp_path / "posts")}
    assert len(os.listdir(tmp_path / "posts")) == server.request_count("bulk_create") == 3
    assert senders <= set(on_cluster.run(os.getpid).values()) and os.getpid() not in senders


def test_a_stack_is_checked_on_the_workers_before_anything_is_sent(on_cluster, server, api, names):
    stack = map_stack(names[:3]).load()
    stack["thickness"][1, 2, 3] = np.inf
    stack["thickness"][2, 3, 3] = -np.inf
    stack = stack.chunk({"wafer": 1, "y": 4})
    with pytest.raises(AnnotationValidationError) as info:
        stack.atomscale.upload(sample_dim="wafer", client=api, create_sample=True)
    assert "2 of 3 maps along 'wafer' are invalid" in str(info.value)
    assert set(info.value.failure_cases["sample"]) == set(names[1:3])
    assert server.request_count("bulk_create") == 0
    assert not {s["name"] for s in server.store.list_samples()} & set(names[:3])
    with pytest.raises(ValueError, match=r"append.*dask-backed stack"):
        stack.atomscale.upload(sample_dim="wafer", client=api, if_exists="append")


@pytest.fixture
def own_cluster(server):
    """A cluster of this test alone, as the active scheduler: after one worker was killed
    in the module's cluster, the nanny of distributed 2026.8 can fail to restart a second
    one ("cannot pickle '_asyncio.Future'"), leaving no worker at all."""
    server.clear_faults()
    server.reset_counters()
    with test_dask_accessor.local_cluster() as client, dask.config.set(scheduler=client):
        yield client


def test_a_worker_killed_mid_stack_upload_leaves_every_map_stored_once(
    own_cluster, server, names, tmp_path: Path
):
    (tmp_path / "posts").mkdir()
    client = _dying_client(server, str(tmp_path / "posts"), after=4)
    stack = map_stack(names[:3])
    points = int(stack["thickness"][0].notnull().sum())
    per_map = -(-points // CHUNK)
    workers_before = set(own_cluster.run(os.getpid).values())
    summary = stack.atomscale.upload(
        sample_dim="wafer", client=client, create_sample=True, chunksize=CHUNK, max_workers=1
    )
    assert (tmp_path / "died").exists()
    assert set(own_cluster.run(os.getpid).values()) != workers_before
    assert summary["created"].tolist() == [points] * 3
    for sid in summary["physical_sample_id"]:
        xs = [(a["coord_x"], a["coord_y"]) for a in server.stored_annotations(sid)]
        assert len(set(xs)) == len(xs) == points
    assert server.request_count("bulk_create") == 3 * per_map

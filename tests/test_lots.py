"""Many samples in one call: a table whose column names each row's sample, over real HTTP."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from atomscale_accessors import Client, RetryPolicy
from atomscale_accessors.errors import (
    AnnotationValidationError,
    SampleNotFoundError,
)
from atomscale_accessors.lots import LotUploadError
from tests.conftest import THICKNESS_MAPPING, thickness_frame
from tests.fault_proxy import FaultProxy

FAST = RetryPolicy(backoff=0.01, max_wait=0.2, settle=0.05, give_up_after=2.0)
SITES = 9


def lot(wafers: list[str], sites: int = SITES, *, apart: bool = False) -> pd.DataFrame:
    """One table of ``sites`` thickness points per wafer (at the same positions, or with
    ``apart`` at other ones), rows interleaved by site."""
    parts = [
        thickness_frame(sites, seed=i)
        .assign(wafer=name, x_mm=lambda f, i=i: f["x_mm"] + (500.0 * i if apart else 0.0))
        .reset_index(drop=True)
        for i, name in enumerate(wafers)
    ]
    whole = pd.concat(parts, keys=range(len(parts))).swaplevel().sort_index(kind="stable")
    whole.index = pd.Index([f"row-{i}" for i in range(len(whole))], name="row")
    return whole


def test_each_row_goes_to_the_sample_its_column_names(atomscale_server, client):
    w1 = atomscale_server.create_sample("W01")
    # One sample named three ways (its positions apart), and one new sample.
    table = lot(["W01", " w01 ", "W02", w1.upper()], apart=True)
    created = table.atomscale.upload(
        sample_column="wafer", client=client, create_sample=True, **THICKNESS_MAPPING
    )
    assert list(created.index) == list(table.index)  # aligned to the input rows
    w2 = {s["name"]: s["id"] for s in atomscale_server.store.list_samples()}["W02"]
    expected = np.where(table["wafer"] == "W02", w2, w1)
    assert created["physical_sample_id"].tolist() == expected.tolist()
    assert created["property_value"].tolist() == table["thk"].tolist()
    assert atomscale_server.annotation_count(w1) == 3 * SITES
    assert atomscale_server.annotation_count(w2) == SITES


def test_a_position_repeated_within_a_sample_fails_across_samples_it_does_not(
    atomscale_server, client
):
    table = lot(["A", "B"])
    twice = pd.concat([table, table[table["wafer"] == "A"].iloc[:1].rename(lambda r: r + "x")])
    twice.loc[twice.index[0], "thk"] = np.inf  # and a bad value, reported in the same error
    with pytest.raises(AnnotationValidationError) as info:
        twice.atomscale.upload(
            sample_column="wafer", client=client, create_sample=True, **THICKNESS_MAPPING
        )
    cases = info.value.failure_cases
    assert set(cases["check"]) == {"unique_position", "finite"}
    # The row repeated within sample A, and its original; B's rows at the same positions
    # are no repeats.
    repeated = set(cases.loc[cases["check"] == "unique_position", "index"])
    assert repeated == {twice.index[-1], twice[twice["wafer"] == "A"].index[0]}
    assert atomscale_server.request_count() == 0  # nothing sent, nothing created
    assert atomscale_server.store.list_samples() == []


def test_every_unknown_name_is_reported_before_anything_is_sent(atomscale_server, client):
    atomscale_server.create_sample("W0421-07")
    table = lot(["W0421-07", "W0421-7", "W9999"])
    with pytest.raises(SampleNotFoundError) as info:
        table.atomscale.upload(sample_column="wafer", client=client, **THICKNESS_MAPPING)
    message = str(info.value)
    assert "'W0421-7'" in message and "'W9999'" in message and "2 sample names" in message
    assert "W0421-07" in message  # suggested for the typo
    assert atomscale_server.annotation_count() == 0
    assert len(atomscale_server.store.list_samples()) == 1


def test_rows_without_a_sample_are_refused(atomscale_server, client):
    table = lot(["A", "B"])
    table.loc[table.index[[2, 5]], "wafer"] = [None, "  "]
    with pytest.raises(AnnotationValidationError, match="2 of 18 rows name no sample"):
        table.atomscale.upload(sample_column="wafer", client=client, **THICKNESS_MAPPING)
    assert atomscale_server.request_count() == 0


# 3 workers for 3 samples: each sample sends from its lot thread; 6: each has a pool of 2.
@pytest.mark.parametrize("max_workers", [3, 6])
def test_one_failing_sample_does_not_stop_the_others_and_a_rerun_completes(
    atomscale_server, max_workers
):
    ids = {name: atomscale_server.create_sample(name) for name in ("A", "B", "C")}
    table = lot(list(ids), sites=12)
    with FaultProxy(atomscale_server.endpoint) as proxy:
        # Every bulk request of sample B fails before it reaches the server.
        proxy.add(
            "answer", method="POST", path=f"{ids['B']}/annotations/bulk", status=503, times=100
        )
        client = Client(api_key=atomscale_server.api_key, endpoint=proxy.endpoint, retry=FAST)
        with pytest.raises(LotUploadError) as info:
            table.atomscale.upload(
                sample_column="wafer",
                client=client,
                chunksize=5,
                max_workers=max_workers,
                **THICKNESS_MAPPING,
            )
    error = info.value
    assert set(error.errors) == {ids["B"]}
    assert error.samples.loc[ids["B"], "created"] == 0
    assert (
        error.samples.loc[ids["A"], "created"] == 12 and error.samples.loc[ids["A"], "error"] == ""
    )
    assert len(error.created) == 24 and set(error.created["physical_sample_id"]) == {
        ids["A"],
        ids["C"],
    }
    assert len(error.not_created) == 12 and set(error.not_created["physical_sample_id"]) == {
        ids["B"]
    }
    assert "1 of 3 samples did not complete" in str(error) and "B" in str(error)
    assert atomscale_server.annotation_count(ids["B"]) == 0
    # The same call again, skipping what is stored, completes the lot exactly once.
    direct = Client(api_key=atomscale_server.api_key, endpoint=atomscale_server.endpoint)
    again = table.atomscale.upload(
        sample_column="wafer", client=direct, if_exists="skip", **THICKNESS_MAPPING
    )
    assert set(again["physical_sample_id"]) == {ids["B"]} and len(again) == 12
    assert [atomscale_server.annotation_count(i) for i in ids.values()] == [12, 12, 12]


def test_a_sample_holding_the_data_fails_alone(atomscale_server, client):
    ids = {name: atomscale_server.create_sample(name) for name in ("A", "B")}
    table = lot(list(ids))
    table[table["wafer"] == "A"].drop(columns="wafer").atomscale.upload(
        ids["A"], client=client, **THICKNESS_MAPPING
    )
    with pytest.raises(LotUploadError) as info:
        table.atomscale.upload(sample_column="wafer", client=client, **THICKNESS_MAPPING)
    assert set(info.value.errors) == {ids["A"]}
    assert type(info.value.errors[ids["A"]]).__name__ == "AnnotationExistsError"
    assert atomscale_server.annotation_count(ids["B"]) == SITES
    assert atomscale_server.annotation_count(ids["A"]) == SITES


def test_a_dry_run_says_where_each_record_would_go_and_sends_nothing(atomscale_server, client):
    table = lot(["A", "B"])
    planned = table.atomscale.upload(
        sample_column="wafer", client=client, dry_run=True, chunksize=4, **THICKNESS_MAPPING
    )
    assert planned.groupby("sample")["chunk"].nunique().to_dict() == {"A": 3, "B": 3}
    assert atomscale_server.request_count() == 0


def test_a_sample_or_a_sample_column_not_both(client):
    table = lot(["A"])
    with pytest.raises(TypeError, match="one of them"):
        table.atomscale.upload("A", sample_column="wafer", client=client, **THICKNESS_MAPPING)
    with pytest.raises(TypeError, match="one of them"):
        table.atomscale.upload(client=client, **THICKNESS_MAPPING)


def test_the_command_line_uploads_a_lot(atomscale_server, tmp_path, capsys, monkeypatch):
    from atomscale_accessors.cli import main

    monkeypatch.setenv("AS_API_KEY", atomscale_server.api_key)
    monkeypatch.setenv("AS_API_ENDPOINT", atomscale_server.endpoint)
    project = atomscale_server.create_project("lot-17")
    path = tmp_path / "lot.csv"
    lot(["W01", "W02"]).to_csv(path, index=False)
    args = ["upload", str(path), "--sample-column", "wafer", "--no-progress", "--x", "x_mm"]
    args += ["--y", "y_mm", "--value", "thk", "--property-name", "thickness"]
    args += ["--property-unit", "nm", "--coord-units", "mm", "--project", "lot-17"]
    assert main(args) == 1  # unknown names, nothing created
    assert "2 sample names match no sample" in capsys.readouterr().err
    assert main([*args, "--create-samples"]) == 0
    out = capsys.readouterr().out
    assert f"{2 * SITES} annotations created" in out
    in_project = [s for s in atomscale_server.store.list_samples() if s["projects"]]
    assert sorted(s["name"] for s in in_project) == ["W01", "W02"]
    assert all(s["projects"][0]["id"] == project for s in in_project)


def test_a_lot_comes_back_by_names_or_by_project_and_stacks_exactly(atomscale_server, client):
    import xarray as xr

    from atomscale_accessors import fetch
    from atomscale_accessors.datasets import wafer_thickness_map

    atomscale_server.create_project("Lot 0421")
    maps = [wafer_thickness_map(n=9, seed=i) for i in range(3)]
    stack = xr.concat(maps, dim=pd.Index(["W03", "W01", "W02"], name="wafer"))
    stack.atomscale.upload(
        sample_dim="wafer",
        client=client,
        create_sample=True,
        project="Lot 0421",
        progress_bar=False,
    )
    atomscale_server.create_sample("W99")  # in no project
    by_project = fetch(project="lot 0421", client=client)
    by_names = fetch(["w02", "W01 ", "W03"], client=client)
    pd.testing.assert_frame_equal(by_project, by_names)
    assert list(pd.unique(by_names["sample_name"])) == ["W01", "W02", "W03"]
    ids = {s["name"]: s["id"] for s in atomscale_server.store.list_samples()}
    assert list(pd.unique(by_names["physical_sample_id"])) == [
        ids[n] for n in ("W01", "W02", "W03")
    ]
    back = by_names.atomscale.to_xarray()
    assert list(back["sample"].values) == ["W01", "W02", "W03"]
    assert list(back["physical_sample_id"].values) == [ids[n] for n in ("W01", "W02", "W03")]
    expected = stack.rename(wafer="sample").sortby("sample")
    xr.testing.assert_equal(back.drop_vars("physical_sample_id"), expected)
    with pytest.raises(SampleNotFoundError, match="W04"):
        fetch(["W01", "W04"], client=client)


def test_the_command_line_fetches_a_lot(atomscale_server, client, tmp_path, capsys, monkeypatch):
    from atomscale_accessors.cli import main

    monkeypatch.setenv("AS_API_KEY", atomscale_server.api_key)
    monkeypatch.setenv("AS_API_ENDPOINT", atomscale_server.endpoint)
    atomscale_server.create_project("lot-9")
    lot(["A", "B"]).atomscale.upload(
        sample_column="wafer",
        client=client,
        create_sample=True,
        project="lot-9",
        **THICKNESS_MAPPING,
    )
    out = tmp_path / "lot.csv"
    assert main(["fetch", "--project", "lot-9", "-o", str(out)]) == 0
    stored = pd.read_csv(out)
    assert stored.groupby("sample_name").size().to_dict() == {"A": SITES, "B": SITES}
    assert main(["fetch", "--sample", "a", "--sample", "B"]) == 0
    assert f"{2 * SITES} annotations of 2 samples" in capsys.readouterr().out
    assert main(["fetch"]) == 2
    assert "--sample" in capsys.readouterr().err

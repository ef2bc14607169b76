"""``atomscale-accessors samples`` and ``projects``, through ``main()`` against a real server."""

from __future__ import annotations

import argparse
import re

import pytest

from atomscale_accessors import resolve_sample
from atomscale_accessors.cli import EXIT_API, EXIT_INVALID, EXIT_OK, EXIT_USAGE, main
from atomscale_accessors.cli.exits import explain
from atomscale_accessors.errors import SampleNotFoundError

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@pytest.fixture
def run(capsys, atomscale_server, env_client):
    """Run the command line in-process with the server in the environment."""

    def runner(*argv: str) -> tuple[int, str, str]:
        status = main(list(argv))
        out, err = capsys.readouterr()
        assert atomscale_server.api_key not in out + err
        return status, out, err

    return runner


def test_create_prints_the_id_and_keeps_an_existing_sample(run, atomscale_server):
    status, out, err = run("samples", "create", "W0421-07")
    assert status == EXIT_OK
    sample_id = out.strip()
    assert UUID.match(sample_id)
    assert "created sample 'W0421-07'" in err
    status, out, err = run("samples", "create", " w0421-07 ")
    assert (status, out.strip()) == (EXIT_OK, sample_id)
    assert "already exists" in err
    assert [s["id"] for s in atomscale_server.store.list_samples()] == [sample_id]


def test_create_in_a_project(run, atomscale_server):
    srv = atomscale_server
    lot = srv.create_project("Lot A")
    outside = srv.create_sample("W-2")
    status, out, err = run("samples", "create", "W-1", "--project", "lot a")
    assert status == EXIT_OK and "created sample 'W-1' in project 'lot a'" in err
    status, out, err = run("samples", "create", "W-2", "--project", lot)
    assert (status, out.strip()) == (EXIT_OK, outside)
    assert "already exists; added in project" in err
    assert sorted(s["name"] for s in srv.store.project_samples(lot)) == ["W-1", "W-2"]


def test_list_samples_and_projects(run, atomscale_server):
    srv = atomscale_server
    assert run("samples", "list")[1].strip() == "no samples"
    assert run("projects", "list")[1].startswith("no projects")
    lot = srv.create_project("Lot A")
    srv.create_project("Calibration")
    for name in ("W-2", "W-1", "Z-9"):
        srv.create_sample(name)
    run("samples", "create", "W-3", "--project", "Lot A")

    status, out, _ = run("samples", "list")
    assert status == EXIT_OK
    names = [line.split()[0] for line in out.splitlines()[2:-1]]
    assert names == ["W-1", "W-2", "W-3", "Z-9"]
    assert "Lot A" in out.splitlines()[4]
    assert out.splitlines()[-1] == "4 samples"

    status, out, _ = run("samples", "list", "--project", "LOT A")
    assert status == EXIT_OK
    assert [line.split()[0] for line in out.splitlines()[2:-1]] == ["W-3"]
    assert out.splitlines()[-1] == "1 sample in project 'LOT A'"

    status, out, _ = run("projects", "list")
    assert status == EXIT_OK
    assert out.splitlines()[2].startswith("Calibration ")  # sorted by name
    assert re.search(rf"^Lot A +{lot} +1 +\d{{4}}-", out, re.MULTILINE)


def test_errors_and_their_exit_codes(run, atomscale_server):
    srv = atomscale_server
    srv.create_project("Lot A")
    status, _, err = run("samples", "list", "--project", "Lot B")
    assert status == EXIT_INVALID
    assert "no project named 'Lot B'; did you mean 'Lot A'?" in err
    srv.create_sample("W-1")
    srv.create_sample("w-1")
    status, _, err = run("samples", "create", "W-1")
    assert status == EXIT_INVALID and "2 samples match 'W-1'" in err
    status, _, err = run("samples", "create", "   ")
    assert status == EXIT_USAGE and "must not be empty" in err
    with pytest.raises(SystemExit) as usage:
        main(["samples"])
    assert usage.value.code == EXIT_USAGE
    assert len(srv.store.list_samples()) == 2


def test_no_key_is_a_configuration_error(capsys, monkeypatch):
    for name in ("AS_API_KEY", "ATOMSCALE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert main(["projects", "list", "--endpoint", "http://127.0.0.1:9/"]) == EXIT_API
    assert "no Atomscale API key" in capsys.readouterr().err


def test_an_unknown_sample_is_explained_with_the_command_to_create_it(atomscale_server, client):
    atomscale_server.create_project("Lot A")
    atomscale_server.create_sample("W 07")
    with pytest.raises(SampleNotFoundError) as raised:
        resolve_sample("W 7", project="Lot A", client=client)
    args = argparse.Namespace(command="upload", api_key=None, endpoint=None)
    code, message = explain(raised.value, args)
    assert code == EXIT_INVALID
    assert "create=True" not in message
    assert message.endswith(
        "(create it with: atomscale-accessors samples create 'W 7' --project 'Lot A')"
    )


def test_help_lists_the_new_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "samples" in out and "projects" in out
    assert "no sample or project of that name" in out

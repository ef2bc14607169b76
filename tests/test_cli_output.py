"""What the command line shows while it works: the upload's header before its progress bar
(on a real pseudo-terminal), and a dry run comparing the file with what the sample holds."""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import THICKNESS_MAPPING, thickness_frame

from atomscale_accessors.cli import EXIT_OK, main

pty = pytest.importorskip("pty", reason="needs pseudo-terminals (POSIX)")
fcntl = pytest.importorskip("fcntl")
termios = pytest.importorskip("termios")

# The command line's options for the mapping the library tests use.
MAPPING = [
    part
    for field, value in THICKNESS_MAPPING.items()
    for part in (f"--{field.replace('_', '-')}", value)
]


@pytest.fixture
def points_csv(tmp_path: Path) -> Path:
    """30 points in a CSV file, with the columns of ``thickness_frame``."""
    thickness_frame(30).to_csv(tmp_path / "points.csv", index=False)
    return tmp_path / "points.csv"


def _on_a_terminal(argv: list[str], env: dict[str, str], timeout: float = 110) -> tuple[int, str]:
    """Run a command with stdout and stderr on one pseudo-terminal, as in a shell; return
    its exit status and everything it wrote, in the order it wrote it."""
    leader, follower = pty.openpty()
    # A new pseudo-terminal is 0 columns wide; a terminal window is not (tqdm draws nothing
    # in no columns).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    written = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], deadline - time.monotonic())
            if not ready:
                break
            try:
                data = os.read(leader, 65536)
            except OSError:  # the command closed the terminal
                break
            if not data:
                break
            written.append(data)
    finally:
        os.close(leader)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
    return process.returncode, b"".join(written).decode(errors="replace")


@pytest.mark.timeout(120)
def test_upload_header_comes_before_the_progress_bar(
    env_client, atomscale_server, sample_id, points_csv
):
    argv = [sys.executable, "-m", "atomscale_accessors", "upload", str(points_csv)]
    env = dict(os.environ)  # with the server's key and endpoint, from env_client
    status, shown = _on_a_terminal([*argv, "--sample", sample_id, *MAPPING], env)
    assert status == EXIT_OK, shown
    assert atomscale_server.annotation_count(sample_id) == 30
    header = shown.index(f"-> sample {sample_id} at {atomscale_server.endpoint}")
    bar = shown.index("upload:")  # tqdm's bar: "upload:  0%|..."
    assert header < bar
    assert "annotation/s" in shown  # the bar has a rate
    assert shown.index("30 annotations created") > bar
    assert atomscale_server.api_key not in shown


def test_dry_run_counts_what_the_sample_holds(
    env_client, atomscale_server, sample_id, points_csv, capsys
):
    argv = ["upload", str(points_csv), "--sample", sample_id, *MAPPING, "--dry-run"]
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    assert "none of the 30 records is stored on sample" in out

    # Store 12 of the 30 points, then ask again.
    thickness_frame(30).iloc[:12].atomscale.upload(
        sample_id, progress_bar=False, **THICKNESS_MAPPING
    )
    requests_before = atomscale_server.request_count("bulk")
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    assert "12 of the 30 records are stored already" in out
    assert "the upload would be refused (--if-exists skip sends only the new ones)" in out
    assert main([*argv, "--if-exists", "append"]) == EXIT_OK
    assert "--if-exists append would store them a second time" in capsys.readouterr().out
    assert atomscale_server.request_count("bulk") == requests_before  # nothing sent
    assert atomscale_server.annotation_count(sample_id) == 12


def test_dry_run_without_a_key_or_a_server_still_succeeds(points_csv, capsys, monkeypatch):
    for name in ("AS_API_KEY", "ATOMSCALE_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    sample = "a1b2c3d4-5678-90ab-cdef-1234567890ab"
    argv = ["upload", str(points_csv), "--sample", sample, *MAPPING, "--dry-run"]
    assert main(argv) == EXIT_OK
    assert "not compared with what the sample holds: no API key" in capsys.readouterr().out

    with socket.socket() as spare:  # a port where nothing listens
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    monkeypatch.setenv("AS_API_KEY", "not-a-real-key-0123456789")
    monkeypatch.setenv("AS_API_ENDPOINT", f"http://127.0.0.1:{port}/")
    assert main([*argv, "--max-attempts", "1"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "not compared with what the sample holds" in out and f":{port}/" in out
    assert "not-a-real-key-0123456789" not in out


def test_rows_left_out_by_dropna_are_a_note_on_stderr(points_csv, capsys):
    frame = thickness_frame(30)
    frame.iloc[[4, 9], frame.columns.get_loc("thk")] = float("nan")
    frame.to_csv(points_csv, index=False)
    assert main(["validate", str(points_csv), *MAPPING, "--dropna"]) == EXIT_OK
    out, err = capsys.readouterr()
    # CSV rows are named by their line in the file: the header is line 1.
    assert "note: dropna=True left out 2 records without a value (rows [6, 11])" in err
    assert "Warning" not in err and ".py:" not in err  # a note, not a Python warning
    assert "28 records" in out

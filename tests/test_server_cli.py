"""``atomscale-accessors serve``: the parser, and the server it runs in another process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from conftest import needs_server

from atomscale_accessors.cli import build_parser, main


def test_serve_defaults_bind_loopback():
    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1"
    assert args.port == 8000
    assert args.db is None
    assert args.api_key is None
    assert args.max_bulk_annotations == 50_000
    assert args.handler.__name__ == "cmd_serve"


def test_serve_options():
    args = build_parser().parse_args(
        ["serve", "--port", "0", "--db", "x.sqlite", "--api-key", "k", "--max-body-bytes", "none"]
    )
    assert (args.port, args.db, args.api_key, args.max_body_bytes) == (0, "x.sqlite", "k", None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--port", "70000"])


def test_no_subcommand_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "serve" in capsys.readouterr().err


def _start(*args: str) -> tuple[subprocess.Popen[str], list[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "atomscale_accessors", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    # the endpoint, a generated key, the environment to set, how to create a sample
    expected = 3 if "--api-key" in args else 4
    lines: list[str] = []
    while len(lines) < expected:
        line = process.stdout.readline()
        if not line:  # the process ended
            break
        lines.append(line)
    return process, lines


def _stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    try:
        _, err = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        _, err = process.communicate()
    return process.returncode, err


def _follow_the_printed_lines(lines: list[str], endpoint: str, key: str) -> None:
    """Set the environment the first line names, run the command the second names."""
    exports = re.search(r"export (.+)$", lines[0]).group(1).split()
    env = dict(item.split("=", 1) for item in exports)
    assert env == {"AS_API_ENDPOINT": endpoint, "AS_API_KEY": key}
    command = re.search(r"atomscale-accessors (samples create \S+)$", lines[1]).group(1)
    done = subprocess.run(
        [sys.executable, "-m", "atomscale_accessors", *command.split()],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"[0-9a-f-]{36}\n", done.stdout)
    assert "created sample" in done.stderr


@needs_server
@pytest.mark.timeout(120)
def test_python_m_serve_prints_endpoint_and_generated_key_once(tmp_path: Path):
    process, lines = _start("--db", str(tmp_path / "cli.sqlite"))
    try:
        endpoint = re.search(r"(http://127\.0\.0\.1:\d+/)", lines[0]).group(1)
        key = re.search(r"API key \(generated for this run\): (\S+)", lines[1]).group(1)
        _follow_the_printed_lines(lines[2:], endpoint, key)
        created = requests.post(
            f"{endpoint}physical_samples/",
            json={"name": "w"},
            headers={"X-API-KEY": key},
            timeout=30,
        )
        refused = requests.get(f"{endpoint}physical_samples/", timeout=30)
    finally:
        status, err = _stop(process)
    assert created.status_code == 200, created.text
    assert refused.status_code == 401
    assert status == 0
    assert "Traceback" not in err
    assert key not in err  # the access log shows paths, never the key
    assert (tmp_path / "cli.sqlite").exists()


@needs_server
@pytest.mark.timeout(120)
def test_a_given_key_is_not_printed():
    process, lines = _start("--api-key", "my-secret-key", "--no-access-log")
    try:
        endpoint = re.search(r"(http://\S+/)", lines[0]).group(1)
        answer = requests.get(
            f"{endpoint}physical_samples/", headers={"X-API-KEY": "my-secret-key"}, timeout=30
        )
    finally:
        _, err = _stop(process)
    assert answer.status_code == 200
    assert answer.json() == []
    assert "my-secret-key" not in "".join(lines) + err
    assert "AS_API_KEY=<the key given with --api-key>" in lines[1]


@needs_server
def test_generated_keys_can_follow_api_key_on_a_command_line():
    # About one URL-safe token in 64 starts with "-", and argparse takes such a value of
    # --api-key for an option ("expected one argument"). A generated key never does.
    from atomscale_accessors.server.local import new_api_key

    keys = [new_api_key() for _ in range(2000)]
    assert not [key for key in keys if key.startswith("-")]
    assert len(set(keys)) == len(keys) and {len(key) for key in keys} == {43}
    parsed = build_parser().parse_args(["fetch", "--sample", "W1", "--api-key", keys[0]])
    assert parsed.api_key == keys[0]

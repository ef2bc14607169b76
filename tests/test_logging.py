"""Logging and warnings: each module logs on a logger of its own name under the package's,
which has a NullHandler; what a user must see (rows left out by ``dropna``) is a warning of
the package's own class, pointing at the user's line."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import THICKNESS_MAPPING, thickness_frame

import atomscale_accessors
from atomscale_accessors.errors import AtomscaleWarning

PACKAGE = "atomscale_accessors"


def _modules() -> list:
    modules = []
    for info in pkgutil.walk_packages(atomscale_accessors.__path__, f"{PACKAGE}."):
        if info.name.endswith(".__main__"):  # runs the command line
            continue
        try:
            modules.append(importlib.import_module(info.name))
        except ImportError:  # an extra that is not installed (fastapi, matplotlib, dask)
            continue
    return modules


def test_every_module_logs_on_its_own_logger_under_the_package():
    seen = 0
    for module in _modules():
        for value in vars(module).values():
            if isinstance(value, logging.Logger) and value.name.startswith(PACKAGE):
                assert value.name == module.__name__, module.__name__
                seen += 1
    assert seen >= 10  # the upload, retry, maps and validation modules log


def test_the_package_logger_has_a_null_handler():
    handlers = logging.getLogger(PACKAGE).handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_an_unconfigured_application_sees_no_log_lines():
    # Without the NullHandler, Python's last-resort handler prints warnings on stderr.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import logging, atomscale_accessors\n"
            "logging.getLogger('atomscale_accessors.upload.send').warning('chunk 3 failed')",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "chunk 3 failed" not in done.stderr


def test_dropna_warns_with_the_count_and_the_rows_at_the_callers_line():
    df = thickness_frame(8)
    df.loc[["site-001", "site-005"], "thk"] = np.nan
    with pytest.warns(AtomscaleWarning, match="dropna=True left out 2 records without a value"):
        records = df.atomscale.validate(dropna=True, **THICKNESS_MAPPING)
    assert len(records) == 6


def test_dropna_warning_points_at_the_users_line_and_names_few_rows():
    df = thickness_frame(40)
    df.iloc[:30, df.columns.get_loc("thk")] = np.nan
    with pytest.warns(AtomscaleWarning) as caught:
        df.atomscale.validate(dropna=True, **THICKNESS_MAPPING)
    (warning,) = caught.list
    assert warning.filename == __file__
    message = str(warning.message)
    assert "left out 30 records" in message and "'site-000'" in message
    assert "'site-029'" not in message and "(30 in all)" in message  # capped


def test_dropna_upload_warns_once_and_sends_the_rest(client, sample_id):
    df = thickness_frame(10)
    df.loc["site-004", "thk"] = np.nan
    with pytest.warns(AtomscaleWarning, match="left out 1 record without a value") as caught:
        created = df.atomscale.upload(
            sample_id, client=client, dropna=True, progress_bar=False, **THICKNESS_MAPPING
        )
    assert len([w for w in caught.list if issubclass(w.category, AtomscaleWarning)]) == 1
    assert len(created) == 9 and "site-004" not in created.index


def test_no_warning_without_dropped_rows():
    with warnings.catch_warnings():
        warnings.simplefilter("error", AtomscaleWarning)
        thickness_frame(5).atomscale.validate(dropna=True, **THICKNESS_MAPPING)

"""The demo: the whole story on its own local server, as a function and as a command."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_server

from atomscale_accessors.cli import build_parser
from atomscale_accessors.datasets import wafer_thickness_map
from atomscale_accessors.demo import run_demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROOT = Path(__file__).resolve().parents[1]
GRID_POINTS = 101  # the in-process demo's map: 7,845 cells


@needs_server
def test_run_demo_counts_checks_and_pictures(tmp_path: Path, monkeypatch):
    # A smaller map than the command's (test_python_m_demo runs that), written into the
    # current folder, the default.
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    result = run_demo(progress_bar=False, echo=lines.append, grid_points=GRID_POINTS)

    n_cells = int(wafer_thickness_map(n=GRID_POINTS).thickness.notnull().sum())
    thickness, sheet = result.maps
    assert (thickness.property_name, thickness.unit) == ("thickness", "nm")
    assert thickness.points_sent == thickness.created == thickness.fetched == n_cells > 5_000
    assert (sheet.property_name, sheet.unit) == ("sheet_resistance", "ohm/sq")
    assert sheet.points_sent == sheet.created == sheet.fetched == 49
    assert thickness.round_trip_exact and sheet.round_trip_exact
    assert result.rerun_refused
    assert result.rerun_existing == n_cells
    assert result.stored == n_cells + 49  # the refused re-run doubled nothing
    assert result.ok

    assert result.pictures == (tmp_path / "wafer_thickness.png", tmp_path / "sheet_resistance.png")
    for path in result.pictures:
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert thickness.picture == result.pictures[0]
    assert result.picture_note is None

    lot = result.lot
    assert (lot.wafers, lot.points, lot.created, lot.fetched) == (25, 25 * 49, 25 * 49, 25 * 49)
    assert lot.round_trip_exact
    assert len(lot.uniformity) == 25 and (lot.uniformity["sites"] == 49).all()
    assert lot.uniformity["sigma_pct"].between(0.5, 5.0).all()
    assert lot.picture == tmp_path / "lot_sheet_resistance.png"
    assert lot.picture.read_bytes()[:8] == PNG_MAGIC

    summary = result.summary()
    assert "W0421-25" in summary and "1-sigma %" in summary and "fetched back by project" in summary
    assert "points sent" in summary and "created" in summary and "upload s" in summary
    assert f"{n_cells:,}" in summary
    assert "refused" in summary
    assert any("local server at http://127.0.0.1:" in line for line in lines)
    # A demo run in a clone leaves git status clean.
    ignored = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
    assert {path.name for path in (*result.pictures, lot.picture)} <= set(ignored)


@needs_server
def test_run_demo_without_matplotlib_skips_the_picture(tmp_path: Path, monkeypatch):
    # matplotlib unimportable, whether or not an earlier test imported it.
    loaded = [m for m in sys.modules if m.startswith("matplotlib.")]
    for name in ["matplotlib", *loaded]:
        monkeypatch.setitem(sys.modules, name, None)
    result = run_demo(tmp_path, progress_bar=False, grid_points=31)
    assert result.ok
    assert result.pictures == ()
    assert result.maps[0].picture is None
    assert 'pip install "atomscale-accessors[plot]"' in result.picture_note
    assert "picture skipped" in result.summary()
    assert not list(tmp_path.iterdir())


@needs_server
@pytest.mark.timeout(120)
def test_python_m_demo(tmp_path: Path):
    done = subprocess.run(
        [sys.executable, "-m", "atomscale_accessors", "demo", "--out", str(tmp_path / "pics")],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "points sent" in done.stdout
    assert "exact" in done.stdout
    assert "all checks passed" in done.stdout
    if importlib.util.find_spec("matplotlib") is not None:
        for name in ("wafer_thickness.png", "sheet_resistance.png"):
            assert (tmp_path / "pics" / name).read_bytes()[:8] == PNG_MAGIC
    else:
        assert 'pip install "atomscale-accessors[plot]"' in done.stdout


@pytest.mark.parametrize("option", ["--out", "--output", "-o"])
def test_demo_out_option_and_its_default(option):
    parser = build_parser()
    assert parser.parse_args(["demo", option, "pictures"]).output == "pictures"
    assert parser.parse_args(["demo"]).output == "."

"""The whole story on a local server: ``atomscale-accessors demo``.

:func:`run_demo` starts the project's local Atomscale-compatible server on a SQLite file in
a temporary directory, creates a sample, validates and uploads a 300 mm wafer thickness map
and a 49-point sheet resistance map, fetches them back, puts the thickness map back on its
grid and checks that it equals the input bit for bit, shows that running the same upload
again is refused, and draws the fetched maps. It needs the ``server`` extra; the pictures
need the ``plot`` extra and are skipped (with a note) without it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from .client import Client
from .datasets import sheet_resistance_map, wafer_thickness_map
from .demo_lot import LOT_PROJECT, LotResult, run_lot
from .errors import AnnotationExistsError
from .frames import fetch
from .maps import frame_to_map

if TYPE_CHECKING:
    from .server import LocalServer

__all__ = ["DEMO_GRID_POINTS", "DemoResult", "MapResult", "format_table", "run_demo"]

#: Grid points along x and along y of the demo's thickness map: a 1.5 mm pitch on a
#: 300 mm wafer, 31,417 measured points.
DEMO_GRID_POINTS = 201
_PLOT_EXTRA = 'pip install "atomscale-accessors[plot]"'
_SERVER_EXTRA = 'pip install "atomscale-accessors[server]"'
_SAMPLE_NAME = "demo wafer W01 (300 mm)"

Echo = Callable[[str], None]


@dataclass(frozen=True)
class MapResult:
    """What happened to one map in the demo.

    Attributes
    ----------
    name : str
        What the map is, e.g. ``"wafer thickness"``.
    property_name, unit : str
        The property and its unit.
    points_sent : int
        Records validated and sent (one per measured point).
    created : int
        Annotations the server created.
    seconds : float
        Time of the upload (validation included), in seconds.
    fetched : int
        Annotations of the property fetched back.
    round_trip_exact : bool
        The fetched map equals the input: same positions, values equal bit for bit, NaN
        where the input has NaN.
    picture : pathlib.Path or None
        The PNG written, if any.
    """

    name: str
    property_name: str
    unit: str
    points_sent: int
    created: int
    seconds: float
    fetched: int
    round_trip_exact: bool
    picture: Path | None = None


@dataclass(frozen=True)
class DemoResult:
    """The outcome of :func:`run_demo`.

    Attributes
    ----------
    maps : tuple of MapResult
        The thickness map, then the sheet resistance map.
    sample_id : str
        The sample created on the (now stopped) local server.
    rerun_refused : bool
        Running the thickness upload again with the default ``if_exists="fail"`` raised
        :class:`~atomscale_accessors.errors.AnnotationExistsError` and sent nothing.
    rerun_existing : int
        Stored annotations that the refused re-run found at its positions.
    stored : int
        Annotations on the sample at the end (the sum of ``created`` when nothing doubled).
    pictures : tuple of pathlib.Path
        The PNG files written.
    picture_note : str or None
        Why no picture was drawn, when none was.
    seconds : float
        Wall time of the whole demo.
    lot : LotResult, optional
        The lot of 25 wafers uploaded in one call (see :mod:`atomscale_accessors.demo_lot`).
    """

    maps: tuple[MapResult, ...]
    sample_id: str
    rerun_refused: bool
    rerun_existing: int
    stored: int
    pictures: tuple[Path, ...] = field(default_factory=tuple)
    picture_note: str | None = None
    seconds: float = 0.0
    lot: LotResult | None = None

    @property
    def ok(self) -> bool:
        """Every check passed: exact round trips, the re-run refused, nothing doubled."""
        lot = self.lot
        return (
            all(m.round_trip_exact and m.created == m.points_sent for m in self.maps)
            and self.rerun_refused
            and self.stored == sum(m.created for m in self.maps)
            and (lot is None or (lot.round_trip_exact and lot.created == lot.points))
        )

    def table(self) -> str:
        """One line per map: points sent, created, upload seconds, round trip."""
        header = ("map", "property", "unit", "points sent", "created", "upload s", "round trip")
        rows = [
            (
                m.name,
                m.property_name,
                m.unit,
                f"{m.points_sent:,}",
                f"{m.created:,}",
                f"{m.seconds:.2f}",
                "exact" if m.round_trip_exact else "DIFFERS",
            )
            for m in self.maps
        ]
        return format_table(header, rows, right={3, 4, 5})

    def lot_summary(self) -> str:
        """The lot: what went where, and each wafer's uniformity (empty without a lot)."""
        return "\n".join(_lot_lines(self.lot)) if self.lot is not None else ""

    def summary(self) -> str:
        """The table, then the checks, the pictures and the total time."""
        lines = [self.table(), ""]
        if self.rerun_refused:
            lines.append(
                f"re-run with if_exists='fail': refused, {self.rerun_existing:,} annotations "
                "already stored, nothing sent"
            )
        else:
            lines.append("re-run with if_exists='fail': NOT refused")
        lines.append(f"annotations stored on the sample: {self.stored:,}")
        if self.lot is not None:
            lines += ["", self.lot_summary()]
        for path in self.pictures:
            lines.append(f"picture: {path}")
        if self.picture_note:
            lines.append(f"picture skipped: {self.picture_note}")
        lines.append(f"total time: {self.seconds:.1f} s")
        return "\n".join(lines)


def _lot_lines(lot: LotResult) -> list[str]:
    """The lot's summary: what went where, then its wafers' uniformity."""
    check = "exact" if lot.round_trip_exact else "DIFFERS"
    table = lot.uniformity
    rows = [
        (str(r.sample_name), f"{r.sites}", f"{r.mean:.2f}", f"{r.sigma_pct:.2f}", f"{r.range:.2f}")
        for r in table.itertuples()
    ]
    header = ("wafer", "sites", "mean ohm/sq", "1-sigma %", "range ohm/sq")
    lines = [
        f"lot {LOT_PROJECT!r}: {lot.points:,} sites of {lot.wafers} wafers sent in one call, "
        f"{lot.created:,} created in {lot.seconds:.2f} s, {lot.fetched:,} fetched back by "
        f"project, round trip {check}",
        format_table(header, rows, right={1, 2, 3, 4}),
    ]
    if lot.picture is not None:
        lines.append(f"picture: {lot.picture}")
    return lines


def run_demo(
    output_dir: str | Path | None = None,
    *,
    progress_bar: bool | Callable[[int, int | None], None] | None = None,
    echo: Echo | None = None,
    grid_points: int = DEMO_GRID_POINTS,
) -> DemoResult:
    """Run the whole story on a local server and return what happened.

    Parameters
    ----------
    output_dir : str or pathlib.Path, optional
        Where the pictures go (``wafer_thickness.png``, ``sheet_resistance.png``);
        default the current directory. Created when missing.
    progress_bar : bool or callable, optional
        The uploads' progress bar, as in
        :func:`~atomscale_accessors.upload.upload_records`: ``None`` shows one on a
        terminal, ``False`` never.
    echo : callable, optional
        Called with one line of text per step (the command line passes ``print``);
        default silent.
    grid_points : int, default 201
        Grid points along each axis of the thickness map.

    Returns
    -------
    DemoResult
        Counts, timings, the checks and the pictures; ``result.summary()`` is the table
        the command line prints.

    Raises
    ------
    ImportError
        When the ``server`` extra (fastapi, uvicorn) is not installed.
    """
    started = time.perf_counter()
    say: Echo = echo if echo is not None else _silent
    out = Path.cwd() if output_dir is None else Path(output_dir)
    try:
        from .server import LocalServer
    except ImportError as exc:
        raise ImportError(
            f"the demo runs the local server, which needs the server extra: {_SERVER_EXTRA}"
        ) from exc

    maps = [
        _DemoMap(
            "wafer thickness",
            wafer_thickness_map(n=grid_points),
            f"{grid_points} x {grid_points} grid over a 300 mm wafer",
            "wafer_thickness.png",
        ),
        _DemoMap(
            "sheet resistance",
            sheet_resistance_map(),
            "49-site four-point-probe pattern",
            "sheet_resistance.png",
        ),
    ]
    with tempfile.TemporaryDirectory(prefix="atomscale-demo-") as tmp:
        server = LocalServer(db_path=Path(tmp) / "demo.sqlite")
        try:
            with server:
                story = _tell(server, maps, progress_bar, say)
                client = Client(api_key=server.api_key, endpoint=server.endpoint)
                lot = run_lot(client, server.create_project, out, progress_bar, say)
        finally:
            server.close()

    pictures, note = _draw_pictures(
        [(grid, out / m.picture) for (_, grid), m in zip(story.maps, maps, strict=True)], say
    )
    return DemoResult(
        maps=tuple(
            MapResult(**fields, picture=picture)
            for (fields, _), picture in zip(story.maps, pictures, strict=True)
        ),
        sample_id=story.sample_id,
        rerun_refused=story.rerun_refused,
        rerun_existing=story.rerun_existing,
        stored=story.stored,
        pictures=tuple(p for p in pictures if p is not None),
        picture_note=note,
        seconds=time.perf_counter() - started,
        lot=lot,
    )


class _DemoMap(NamedTuple):
    """A map of the demo: its name, the data, how it was measured, its picture's file name."""

    name: str
    data: xr.Dataset
    what: str
    picture: str


@dataclass(frozen=True)
class _Story:
    """What happened on the server: per map the fields of its MapResult and the fetched map."""

    sample_id: str
    maps: list[tuple[dict[str, Any], xr.Dataset]]
    rerun_refused: bool
    rerun_existing: int
    stored: int


def _tell(server: LocalServer, maps: list[_DemoMap], progress: Any, say: Echo) -> _Story:
    """On a running server: a new sample, each map through :func:`_run_map`, the refused
    re-run of the first map, and the count of what is stored at the end."""
    say(f"local server at {server.endpoint} (SQLite database in a temporary directory)")
    client = Client(api_key=server.api_key, endpoint=server.endpoint)
    sample_id = client.create_sample(_SAMPLE_NAME)["id"]
    say(f"new sample {_SAMPLE_NAME!r}: {sample_id}")
    done = [_run_map(m.name, m.data, sample_id, client, progress, say, m.what) for m in maps]
    refused, existing = _rerun(maps[0].data, maps[0].name, sample_id, client, say)
    stored = len(fetch(sample_id, client=client))
    say(f"annotations stored on the sample: {stored:,}")
    return _Story(sample_id, done, refused, existing, stored)


def _rerun(
    ds: xr.Dataset, name: str, sample_id: str, client: Client, say: Echo
) -> tuple[bool, int]:
    """Upload a map again with the default ``if_exists="fail"``: whether it was refused,
    and how many stored annotations the refusal found."""
    try:
        ds.atomscale.upload(sample_id, client=client, progress_bar=False)
    except AnnotationExistsError as exc:
        say(
            f"re-running the {name} upload (if_exists='fail'): refused, "
            f"{len(exc.existing):,} annotations already there, nothing sent"
        )
        return True, len(exc.existing)
    return False, 0


def _draw_pictures(
    drawings: list[tuple[xr.Dataset, Path]], say: Echo
) -> tuple[list[Path | None], str | None]:
    """A PNG of each fetched map at its path; or, without matplotlib, none and the reason."""
    try:
        pictures: list[Path | None] = [_draw(grid, path) for grid, path in drawings]
    except ImportError:
        note = f"matplotlib is not installed; to get it: {_PLOT_EXTRA}"
        say(f"picture skipped: {note}")
        return [None] * len(drawings), note
    say(f"pictures of the fetched maps: {', '.join(str(p) for p in pictures)}")
    return pictures, None


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], right: Collection[int] = ()
) -> str:
    """A plain text table: a header, a rule, the rows; columns in ``right`` right-aligned.

    Parameters
    ----------
    header : sequence of str
        The column titles.
    rows : sequence of sequence of str
        The cells, one sequence per row, as many as there are titles.
    right : collection of int, optional
        Positions of the columns aligned right (numbers); the others are aligned left.

    Returns
    -------
    str
        The lines of the table, without trailing spaces or a final newline.
    """
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _silent(_: str) -> None:
    return None


def _run_map(
    name: str,
    ds: xr.Dataset,
    sample_id: str,
    client: Client,
    progress: Any,
    say: Echo,
    what: str,
) -> tuple[dict[str, Any], xr.Dataset]:
    """Validate, upload, fetch and compare one map.

    Returns the fields of its :class:`MapResult` and the fetched map.
    """
    records = ds.atomscale.validate()
    (prop,) = records["property_name"].unique().tolist()
    (unit,) = records["property_unit"].unique().tolist()
    say(f"{name} map ({what}): {len(records):,} points in {unit}, valid")

    started = time.perf_counter()
    created = ds.atomscale.upload(sample_id, client=client, progress_bar=progress)
    seconds = time.perf_counter() - started
    say(f"uploaded {len(created):,} {prop} annotations in {seconds:.2f} s")

    frame = fetch(sample_id, client=client, property_name=prop)
    grid = frame_to_map(frame)  # what frame.atomscale.to_xarray() calls
    exact = _same_map(ds, grid, prop)
    say(
        f"fetched {len(frame):,} {prop} annotations; back on the map: "
        + ("equal to the input (values bit for bit, NaN where NaN)" if exact else "DIFFERENT")
    )
    return {
        "name": name,
        "property_name": prop,
        "unit": unit,
        "points_sent": len(records),
        "created": len(created),
        "seconds": seconds,
        "fetched": len(frame),
        "round_trip_exact": exact,
    }, grid


def _same_map(original: xr.Dataset, back: xr.Dataset, name: str) -> bool:
    """Whether a fetched map holds exactly the input: same positions, bit-equal values."""
    if name not in back:
        return False
    a, b = original[name], back[name]
    if a.ndim == 2 and b.ndim == 2:
        # A grid: same axes, then the same values cell by cell, NaN in the same cells.
        return (
            a.dims == b.dims
            and all(np.array_equal(original[d].values, back[d].values) for d in a.dims)
            and np.array_equal(a.values, b.values, equal_nan=True)
            and np.array_equal(
                a.values.view(np.uint64)[~np.isnan(a.values)],
                b.values.view(np.uint64)[~np.isnan(b.values)],
            )
        )
    # Points: the server may answer in any order, so compare position by position.
    left = _points(original, name)
    right = _points(back, name)
    if len(left) != len(right):
        return False
    merged = left.merge(right, on=["x", "y"], how="outer", suffixes=("_in", "_back"))
    return bool(
        merged.notna().all().all()
        and np.array_equal(
            merged["value_in"].to_numpy().view(np.uint64),
            merged["value_back"].to_numpy().view(np.uint64),
        )
    )


def _points(ds: xr.Dataset, name: str) -> pd.DataFrame:
    var = ds[name]
    return pd.DataFrame(
        {
            "x": np.broadcast_to(ds["x"].values, var.shape).ravel(),
            "y": np.broadcast_to(ds["y"].values, var.shape).ravel(),
            "value": var.values.ravel(),
        }
    ).dropna(subset=["value"])


def _draw(data: xr.Dataset, path: Path) -> Path:
    """Draw a fetched map to a PNG on a figure outside pyplot (no display needed)."""
    from .plotting import new_axes

    ax = data.atomscale.plot(ax=new_axes())
    path.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(path, dpi=120)
    return path

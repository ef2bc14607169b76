"""The demo's lot: 25 wafers of 49 sheet resistance sites, uploaded in one call.

One table with a ``wafer`` column goes to 25 samples of a project (created on the way),
comes back by project, and is summarised wafer by wafer: the mean, the one-sigma
non-uniformity and the range that a process engineer reads off a lot, and a 5 x 5 figure
of small multiples on one colour scale.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .datasets import sheet_resistance_map
from .failures import plural
from .fields import SAMPLE_NAME
from .frames import fetch

__all__ = ["LOT_PROJECT", "LotResult", "lot_table", "run_lot", "uniformity"]

LOT_PROJECT = "Lot 0421"
LOT_WAFERS = 25
LOT_PICTURE = "lot_sheet_resistance.png"
_MAPPING = {
    "x": "x_mm",
    "y": "y_mm",
    "value": "rs",
    "property_name": "sheet_resistance",
    "property_unit": "ohm/sq",
    "coord_units": "mm",
    "char_source_type": "four_point_probe",
}


@dataclass(frozen=True)
class LotResult:
    """What happened to the lot.

    Attributes
    ----------
    wafers, points, created, fetched : int
        Samples, rows sent, annotations created, annotations fetched back by project.
    seconds : float
        Time of the upload of the whole lot (validation included).
    round_trip_exact : bool
        Every value came back bit for bit, at its wafer and position.
    uniformity : pandas.DataFrame
        One row per wafer (see :func:`uniformity`).
    picture : pathlib.Path or None
        The small multiples, when drawn.
    """

    wafers: int
    points: int
    created: int
    seconds: float
    fetched: int
    round_trip_exact: bool
    uniformity: pd.DataFrame
    picture: Path | None = None


def lot_table(wafers: int = LOT_WAFERS) -> pd.DataFrame:
    """The lot as a lab keeps it: one row per site, a ``wafer`` column, x/y in mm, ``rs``."""
    parts = []
    for i in range(wafers):
        site = sheet_resistance_map(seed=i, mean_ohm_sq=48.0 + 0.25 * i)
        parts.append(
            pd.DataFrame(
                {
                    "wafer": f"W0421-{i + 1:02d}",
                    "x_mm": site["x"].values,
                    "y_mm": site["y"].values,
                    "rs": site["sheet_resistance"].values,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def uniformity(frame: pd.DataFrame, by: str = SAMPLE_NAME) -> pd.DataFrame:
    """Per sample: sites, mean, one-sigma non-uniformity (% of the mean) and range.

    Examples
    --------
    >>> import pandas as pd
    >>> from atomscale_accessors.demo_lot import uniformity
    >>> frame = pd.DataFrame({"sample_name": ["A"] * 3, "property_value": [9.0, 10.0, 11.0]})
    >>> uniformity(frame).round(2).to_dict("records")
    [{'sample_name': 'A', 'sites': 3, 'mean': 10.0, 'sigma_pct': 10.0, 'range': 2.0}]
    """
    values = frame.groupby(by, observed=True, sort=True)["property_value"]
    table = pd.DataFrame(
        {
            "sites": values.size(),
            "mean": values.mean(),
            "sigma_pct": 100.0 * values.std(ddof=1) / values.mean(),
            "range": values.max() - values.min(),
        }
    )
    return table.reset_index()


def run_lot(
    client: Any,
    create_project: Callable[[str], str],
    out: Path,
    progress: Any,
    say: Callable[[str], None],
) -> LotResult:
    """Upload the lot in one call to a new project, fetch it back by project, summarise it
    and draw it."""
    create_project(LOT_PROJECT)
    table = lot_table()
    started = time.perf_counter()
    created = table.atomscale.upload(
        sample_column="wafer",
        client=client,
        create_sample=True,
        project=LOT_PROJECT,
        progress_bar=progress,
        **_MAPPING,
    )
    seconds = time.perf_counter() - started
    wafers = table["wafer"].nunique()
    say(
        f"lot: {plural(len(table), 'site')} of {plural(wafers, 'wafer')} uploaded in one call "
        f"to project {LOT_PROJECT!r} in {seconds:.2f} s"
    )
    stored = fetch(project=LOT_PROJECT, client=client)
    say(f"lot: {plural(len(stored), 'annotation')} fetched back by project")
    return LotResult(
        wafers=wafers,
        points=len(table),
        created=len(created),
        seconds=seconds,
        fetched=len(stored),
        round_trip_exact=_same_lot(table, stored),
        uniformity=uniformity(stored),
        picture=_draw_lot(stored, out / LOT_PICTURE, say),
    )


def _same_lot(table: pd.DataFrame, stored: pd.DataFrame) -> bool:
    """Every site came back with its value, bit for bit, on its wafer."""
    sent = table.rename(columns={"wafer": SAMPLE_NAME, "x_mm": "coord_x", "y_mm": "coord_y"})
    back = stored.assign(**{SAMPLE_NAME: stored[SAMPLE_NAME].astype(str)})
    joined = sent.merge(back, on=[SAMPLE_NAME, "coord_x", "coord_y"], how="outer")
    return len(joined) == len(sent) == len(stored) and bool(
        np.array_equal(joined["rs"].to_numpy(), joined["property_value"].to_numpy())
    )


def _draw_lot(stored: pd.DataFrame, path: Path, say: Callable[[str], None]) -> Path | None:
    from .plotting import plot_annotations  # what stored.atomscale.plot() calls

    try:
        axes = plot_annotations(stored)
    except ImportError:
        return None
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    figure = (axes.ravel()[0] if isinstance(axes, np.ndarray) else axes).figure
    assert isinstance(figure, Figure)  # the small multiples make a figure of their own
    figure.suptitle(f"{LOT_PROJECT}: sheet resistance, one colour scale")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    say(f"lot: small multiples in {path}")
    return path

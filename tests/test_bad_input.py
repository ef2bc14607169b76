"""The bad-input battery: malformed DataFrames, Datasets, DataArrays, ids and files.

Every malformed input must be refused with a typed error (a subclass of
:class:`~atomscale_accessors.errors.AtomscaleError`, and of ``ValueError`` since these are
value problems) that names the problem and where it is, before any request reaches the
server, and without touching the input object.

Each case builds its input twice: once to hand to the library, once as the reference it
is compared with afterwards, so that even a change inside a metadata dict shows.
"""

from __future__ import annotations

import datetime
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import THICKNESS_MAPPING, module_server

import atomscale_accessors
from atomscale_accessors import Client, fetch
from atomscale_accessors.errors import (
    AnnotationValidationError,
    AtomscaleError,
    InvalidIdentifierError,
    MapStructureError,
    SampleNotFoundError,
)

if TYPE_CHECKING:
    from atomscale_accessors.server import LocalServer

LABELS = pd.Index([f"p{i}" for i in range(5)], name="point_id")
MAPPING = THICKNESS_MAPPING
GOOD_UUID = "0b0e6b1c-3f4e-4a53-9d55-4c1f3f0f7a10"
# Any one of these says that a text is too long.
TOO_LONG = ("1024", "too long", "longer than", "length")


@dataclass(frozen=True)
class Bad:
    """One malformed input and what its error must say.

    Attributes
    ----------
    build : callable
        Makes the input (called twice: the object under test and its reference copy).
    options : dict
        Mapping options for ``upload``/``validate``; ``None`` values remove a default.
    error : type
        The error expected.
    says : tuple of str or tuple of tuples
        Fragments the message must contain (the problem and where it is); a tuple stands
        for "any one of these".
    where : tuple of (label, column)
        Rows of ``failure_cases`` expected (``label`` ``...`` for any); column matched as a
        substring of the reported column.
    """

    build: Callable[[], Any]
    options: dict[str, Any] = field(default_factory=dict)
    error: type[Exception] = AnnotationValidationError
    says: tuple[str | tuple[str, ...], ...] = ()
    where: tuple[tuple[Any, str], ...] = ()


# -- DataFrames -------------------------------------------------------------------------------
def frame(**columns: Any) -> pd.DataFrame:
    """Five thickness points with the user's own labels; ``columns`` replace or add columns."""
    data: dict[str, Any] = {
        "x_mm": [0.0, 5.0, 10.0, 15.0, 20.0],
        "y_mm": [0.0, 0.0, 0.0, 5.0, 5.0],
        "thk": [101.5, 99.0, 98.25, 100.0, 102.0],
    }
    data.update(columns)
    # object columns: pandas 3's text dtype cannot even hold some of the bad values
    return pd.DataFrame(
        {k: _column(v) for k, v in data.items() if v is not None}, index=LABELS.copy()
    )


def _column(values: Any) -> Any:
    if isinstance(values, list) and any(isinstance(v, str) for v in values):
        return pd.Series(values, index=LABELS.copy(), dtype=object)
    return values


def put(values: list[Any], at: int, value: Any) -> list[Any]:
    out = list(values)
    out[at] = value
    return out


THK = [101.5, 99.0, 98.25, 100.0, 102.0]
XS = [0.0, 5.0, 10.0, 15.0, 20.0]
YS = [0.0, 0.0, 0.0, 5.0, 5.0]

FRAME_CASES: dict[str, Bad] = {
    # wrong types
    "value-text": Bad(
        lambda: frame(thk=pd.Series(put(THK, 2, "98.25 nm"), index=LABELS, dtype=object)),
        says=("thk", "'p2'", "not numbers"),
        where=(("p2", "thk"),),
    ),
    "value-bool": Bad(
        lambda: frame(thk=[True, False, True, True, False]),
        says=("thk", "booleans"),
        where=(("p0", "thk"),),
    ),
    "value-complex": Bad(
        lambda: frame(thk=np.array(THK, dtype=complex)), says=("thk", "complex128")
    ),
    "value-datetime": Bad(
        lambda: frame(thk=pd.date_range("2026-01-01", periods=5)), says=("thk", "datetime64")
    ),
    "value-text-missing-and-infinite-at-once": Bad(
        lambda: frame(
            thk=pd.Series([101.5, "n/a", np.nan, np.inf, 99.0], index=LABELS, dtype=object)
        ),
        says=("'p1'", "not numbers", "not_nullable", "finite", "3 of 5 records"),
        where=(("p1", "thk"), ("p2", "property_value"), ("p3", "property_value")),
    ),
    "canonical-columns-without-property-name": Bad(
        lambda: pd.DataFrame({"property_value": THK, "x": XS, "y": YS}, index=LABELS.copy()),
        options={"x": None, "y": None, "value": None, "property_name": None},
        says=("property_name",),
        where=((None, "property_name"),),
    ),
    "value-object-array-mixed": Bad(
        lambda: frame(thk=pd.Series([101.5, "99", None, 100.0, b"1"], index=LABELS, dtype=object)),
        says=("thk", "'p1'"),
        where=(("p1", "thk"),),
    ),
    "value-object-array-of-arrays": Bad(
        lambda: frame(thk=pd.Series([np.ones(2)] * 5, index=LABELS, dtype=object)),
        says=("thk",),
        where=(("p0", "thk"),),
    ),
    "value-int-beyond-2**53": Bad(
        lambda: frame(thk=[2**53 + 1, 1, 2, 3, 4]),
        says=("thk", "2**53", "'p0'"),
        where=(("p0", "thk"),),
    ),
    "x-text": Bad(
        lambda: frame(x_mm=pd.Series(put(XS, 4, "20mm"), index=LABELS, dtype=object)),
        says=("x_mm", "'p4'"),
        where=(("p4", "x_mm"),),
    ),
    # NaN and inf in values and coordinates
    "value-nan": Bad(
        lambda: frame(thk=put(THK, 1, np.nan)),
        says=("property_value", "'p1'", "not_nullable"),
        where=(("p1", "property_value"),),
    ),
    "value-inf": Bad(
        lambda: frame(thk=put(THK, 3, np.inf)),
        says=("property_value", "'p3'", "finite"),
        where=(("p3", "property_value"),),
    ),
    "value-minus-inf": Bad(
        lambda: frame(thk=put(THK, 0, -np.inf)),
        says=("property_value", "'p0'", "finite"),
        where=(("p0", "property_value"),),
    ),
    "x-nan": Bad(
        lambda: frame(x_mm=put(XS, 2, np.nan)),
        says=("coord_x", "'p2'"),
        where=(("p2", "coord_x"),),
    ),
    "x-inf": Bad(
        lambda: frame(x_mm=put(XS, 4, np.inf)),
        says=("coord_x", "'p4'", "finite"),
        where=(("p4", "coord_x"),),
    ),
    "y-minus-inf": Bad(
        lambda: frame(y_mm=put(YS, 1, -np.inf)),
        says=("coord_y", "'p1'", "finite"),
        where=(("p1", "coord_y"),),
    ),
    # empty frames, missing and unknown columns
    "no-rows": Bad(lambda: frame().iloc[:0], says=(("no records", "no rows", "empty"),)),
    "no-columns": Bad(lambda: pd.DataFrame(index=LABELS.copy()), says=("x_mm", "y_mm", "thk")),
    "no-value-column": Bad(
        lambda: frame(thk=None), says=("thk", "no column"), where=((None, "thk"),)
    ),
    "no-y-column": Bad(
        lambda: frame(y_mm=None), says=("y_mm", "no column"), where=((None, "y_mm"),)
    ),
    "unknown-column": Bad(
        lambda: frame(operator=["ann"] * 5),
        says=("operator", "unknown"),
        where=((None, "operator"),),
    ),
    "duplicate-column-names": Bad(
        lambda: pd.concat([frame(), frame()[["thk"]]], axis=1),
        says=("thk", "more than once"),
    ),
    # reference frame, ids
    "coord-ref-frame-constant": Bad(
        lambda: frame(),
        {"coord_ref_frame": "wafer_centre"},
        says=("coord_ref_frame", "wafer_centre", "'p0'"),
        where=(("p0", "coord_ref_frame"),),
    ),
    "coord-ref-frame-column": Bad(
        lambda: frame(frm=["sample_relative", "sample_relative", "Sample_Relative", None, "x"]),
        {"coord_ref_frame": "frm"},
        says=("coord_ref_frame", "'p2'", "Sample_Relative"),
        where=(("p2", "coord_ref_frame"), ("p3", "coord_ref_frame"), ("p4", "coord_ref_frame")),
    ),
    "data-id-not-uuid": Bad(
        lambda: frame(),
        {"data_id": "run-42"},
        says=("data_id", "run-42", "uuid"),
        where=(("p0", "data_id"),),
    ),
    "data-id-path-chars": Bad(
        lambda: frame(
            did=[GOOD_UUID, "../../physical_samples", f"{GOOD_UUID}?x=1", f"{GOOD_UUID}#f", None]
        ),
        {"data_id": "did"},
        says=("data_id", "'p1'", "../../physical_samples"),
        where=(("p1", "data_id"), ("p2", "data_id"), ("p3", "data_id")),
    ),
    "data-id-trailing-newline": Bad(
        lambda: frame(did=[GOOD_UUID, GOOD_UUID + "\n", GOOD_UUID, GOOD_UUID, GOOD_UUID]),
        {"data_id": "did"},
        says=("data_id", "'p1'"),
        where=(("p1", "data_id"),),
    ),
    # metadata that JSON cannot carry
    "metadata-set": Bad(
        lambda: frame(meta=[{"tags": {"a", "b"}}, None, None, None, None]),
        {"metadata": "meta"},
        says=("metadata", "'p0'", "json_object"),
        where=(("p0", "metadata"),),
    ),
    "metadata-datetime": Bad(
        lambda: frame(meta=[None, None, {"when": datetime.date(2026, 1, 1)}, None, None]),
        {"metadata": "meta"},
        says=("metadata", "'p2'"),
        where=(("p2", "metadata"),),
    ),
    "metadata-nan": Bad(
        lambda: frame(meta=[None, {"offset": math.nan}, None, None, None]),
        {"metadata": "meta"},
        says=("metadata", "'p1'"),
        where=(("p1", "metadata"),),
    ),
    "metadata-not-a-dict": Bad(
        lambda: frame(meta=[None, None, None, ["a", 1], None]),
        {"metadata": "meta"},
        says=("metadata", "'p3'"),
        where=(("p3", "metadata"),),
    ),
    "metadata-constant-unserialisable": Bad(
        lambda: frame(),
        {"metadata": {"recipe": b"\xffB12"}},
        says=("metadata", "json_object"),
        where=(("p0", "metadata"),),
    ),
    "metadata-huge": Bad(
        lambda: frame(meta=[None, None, None, None, {"log": "x" * 100_000}]),
        {"metadata": "meta"},
        says=("metadata", "'p4'"),
        where=(("p4", "metadata"),),
    ),
    # units
    "no-unit": Bad(
        lambda: frame(),
        {"property_unit": None},
        says=("no unit", "thickness"),
        where=(("p0", "thk"),),
    ),
    "no-coord-units": Bad(
        lambda: frame(),
        {"coord_units": None},
        says=("coord_units",),
        where=(("p0", "coord_units"),),
    ),
    "mixed-units-of-one-property": Bad(
        lambda: frame(unit=["nm", "nm", "um", "nm", "Å"]),
        {"property_unit": "unit"},
        says=("thickness", "nm", "um"),
    ),
    # duplicate points
    "duplicate-points": Bad(
        lambda: frame(x_mm=put(XS, 3, 0.0), y_mm=put(YS, 3, 0.0)),
        says=("'p0'", "'p3'", "unique_position"),
        where=(("p0", "coord_x"), ("p3", "coord_x")),
    ),
    # text: huge, empty, not text, not Unicode
    "property-name-huge": Bad(
        lambda: frame(),
        {"property_name": "t" * 100_000},
        says=("property_name", TOO_LONG),
        where=(("p0", "property_name"),),
    ),
    "char-source-type-huge": Bad(
        lambda: frame(tech=["ellipsometry", "x" * 5000, "ellipsometry", None, None]),
        {"char_source_type": "tech"},
        says=("char_source_type", "'p1'", TOO_LONG),
        where=(("p1", "char_source_type"),),
    ),
    "property-name-empty": Bad(
        lambda: frame(),
        {"property_name": ""},
        says=("property_name",),
        where=(("p0", "property_name"),),
    ),
    "property-name-missing-in-column": Bad(
        lambda: frame(prop=["thickness", None, "thickness", "thickness", "thickness"]),
        {"property_name": "prop"},
        says=("property_name", "'p1'"),
        where=(("p1", "property_name"),),
    ),
    "unit-bytes-not-utf8": Bad(
        lambda: frame(unit=[b"nm", b"\xff\xfe", b"nm", b"nm", b"nm"]),
        {"property_unit": "unit"},
        says=("unit", "text"),
        where=(("p1", "unit"),),
    ),
    "char-source-type-bytes": Bad(
        lambda: frame(tech=["xrd", b"ellipsometry", "xrd", "xrd", "xrd"]),
        {"char_source_type": "tech"},
        says=("tech", "'p1'"),
        where=(("p1", "tech"),),
    ),
    "property-name-lone-surrogate": Bad(
        # What Python makes of undecodable bytes with errors="surrogateescape".
        lambda: frame(),
        {"property_name": "thick\udcffness"},
        says=("property_name",),
        where=(("p0", "property_name"),),
    ),
    "char-source-type-lone-surrogate": Bad(
        lambda: frame(tech=["xrd", "xrd", "\udce9llipsometry", "xrd", "xrd"]),
        {"char_source_type": "tech"},
        says=("char_source_type", "'p2'"),
        where=(("p2", "char_source_type"),),
    ),
}


# -- Datasets and DataArrays ------------------------------------------------------------------
def grid(
    values: Any = None,
    *,
    x: Any = None,
    y: Any = None,
    units: Any = "nm",
    x_units: Any = "mm",
    y_units: Any = "mm",
    attrs: dict[str, Any] | None = None,
) -> xr.Dataset:
    """A 3 x 4 thickness map; every part can be replaced."""
    data = np.arange(12.0).reshape(3, 4) + 100.0 if values is None else values
    var_attrs = {} if units is None else {"units": units}
    return xr.Dataset(
        {"thickness": (("y", "x"), data, var_attrs)},
        coords={
            "x": (
                "x",
                np.array([0.0, 5.0, 10.0, 15.0]) if x is None else x,
                {} if x_units is None else {"units": x_units},
            ),
            "y": (
                "y",
                np.array([0.0, 5.0, 10.0]) if y is None else y,
                {} if y_units is None else {"units": y_units},
            ),
        },
        attrs=attrs or {},
    )


def cells(value: Any, at: tuple[int, int] = (1, 2), dtype: Any = "float64") -> np.ndarray:
    data = (np.arange(12.0).reshape(3, 4) + 100.0).astype(dtype)
    data[at] = value
    return data


def scattered(x: list[float], y: list[float]) -> xr.Dataset:
    n = len(x)
    return xr.Dataset(
        {"sheet_resistance": ("point", np.linspace(40.0, 45.0, n), {"units": "ohm/sq"})},
        coords={"x": ("point", x, {"units": "mm"}), "y": ("point", y, {"units": "mm"})},
    )


def with_dim(dim_first: bool = True) -> xr.Dataset:
    data = np.ones((2, 3, 4))
    return xr.Dataset(
        {"thickness": (("wavelength", "y", "x"), data, {"units": "nm"})},
        coords={
            "wavelength": [450.0, 633.0],
            "x": ("x", [0.0, 5.0, 10.0, 15.0], {"units": "mm"}),
            "y": ("y", [0.0, 5.0, 10.0], {"units": "mm"}),
        },
    )


MAP_CASES: dict[str, Bad] = {
    "value-inf": Bad(
        lambda: grid(cells(np.inf)),
        says=("property_value", "finite", "(5.0, 10.0)"),
        where=(((5.0, 10.0), "property_value"),),
    ),
    "value-minus-inf": Bad(
        lambda: grid(cells(-np.inf, (2, 3))),
        says=("property_value", "(10.0, 15.0)"),
        where=(((10.0, 15.0), "property_value"),),
    ),
    "x-nan": Bad(
        lambda: grid(x=np.array([0.0, np.nan, 10.0, 15.0])),
        error=MapStructureError,
        says=("'x'", "non-finite", "nan"),
        where=(((0.0, math.nan), "x"),),
    ),
    "y-inf": Bad(
        lambda: grid(y=np.array([0.0, 5.0, np.inf])),
        error=MapStructureError,
        says=("'y'", "non-finite", "inf"),
    ),
    "values-text": Bad(
        lambda: grid(np.full((3, 4), "101.5")),
        error=MapStructureError,
        says=("'thickness'", "not real numbers"),
        where=((None, "thickness"),),
    ),
    "values-object-array": Bad(
        lambda: grid(np.array([[1.0, None, 2.0, 3.0]] * 3, dtype=object)),
        error=MapStructureError,
        says=("'thickness'", "object"),
        where=((None, "thickness"),),
    ),
    "values-bool": Bad(
        lambda: grid(np.ones((3, 4), dtype=bool)),
        error=MapStructureError,
        says=("'thickness'", "bool"),
    ),
    "values-complex": Bad(
        lambda: grid(np.ones((3, 4), dtype=complex)),
        error=MapStructureError,
        says=("'thickness'", "complex"),
    ),
    "values-int-beyond-2**53": Bad(
        lambda: grid(cells(2**60, (0, 1), dtype="int64")),
        says=("'thickness'", "2**53", "(0.0, 5.0)"),
        where=(((0.0, 5.0), "thickness"),),
    ),
    "no-units": Bad(
        lambda: grid(units=None),
        error=MapStructureError,
        says=("'thickness'", "no units"),
        where=((None, "thickness"),),
    ),
    "no-coordinate-units": Bad(
        lambda: grid(x_units=None, y_units=None),
        error=MapStructureError,
        says=("'x'", "'y'", "no units"),
        where=((None, "x"), (None, "y")),
    ),
    "mixed-coordinate-units": Bad(
        lambda: grid(y_units="kg"),
        error=MapStructureError,
        says=("'y'", "kg", "mm"),
        where=((None, "y"),),
    ),
    "unknown-coordinate-unit": Bad(
        lambda: grid(y_units="furlongs_per_fortnight_squared"),
        error=MapStructureError,
        says=("'y'", "furlongs_per_fortnight_squared"),
    ),
    "units-not-text": Bad(
        lambda: grid(units=5), error=MapStructureError, says=("'thickness'", "not a unit")
    ),
    "units-bytes-not-utf8": Bad(
        lambda: grid(units=b"\xffnm"), error=MapStructureError, says=("'thickness'", "not a unit")
    ),
    "extra-dimension": Bad(
        with_dim,
        error=MapStructureError,
        says=("'thickness'", "'wavelength'", "extra_dims"),
        where=((None, "thickness"),),
    ),
    "every-cell-nan": Bad(
        lambda: grid(np.full((3, 4), np.nan)),
        error=MapStructureError,
        says=("'thickness'", "NaN"),
        where=((None, "thickness"),),
    ),
    "zero-size": Bad(
        lambda: grid(np.ones((3, 0)), x=np.array([], dtype=float)),
        error=MapStructureError,
        says=("'thickness'",),
    ),
    "duplicate-x": Bad(
        lambda: grid(x=np.array([0.0, 5.0, 5.0, 15.0])),
        error=MapStructureError,
        says=("'x'", "5.0", "one position"),
        where=((None, "x"),),
    ),
    "duplicate-scattered-points": Bad(
        lambda: scattered([0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 1.0]),
        error=MapStructureError,
        says=("share a position", "[0, 2]"),
    ),
    "no-x-coordinate": Bad(
        lambda: grid().drop_vars("x"),
        error=MapStructureError,
        says=("no x coordinate",),
        where=((None, "x"),),
    ),
    "empty-dataset": Bad(
        xr.Dataset, error=MapStructureError, says=("no x coordinate", "no y coordinate")
    ),
    "datetime-coordinate": Bad(
        lambda: grid(x=pd.date_range("2026-01-01", periods=4).to_numpy(), x_units=None),
        error=MapStructureError,
        says=("'x'", "datetime64"),
    ),
    "text-coordinate": Bad(
        lambda: grid(x=np.array(["a", "b", "c", "d"])),
        error=MapStructureError,
        says=("'x'", "not real numbers"),
    ),
    "coord-ref-frame-attribute": Bad(
        lambda: grid(attrs={"coord_ref_frame": "stage"}),
        says=("coord_ref_frame", "stage"),
        where=(((0.0, 0.0), "coord_ref_frame"),),
    ),
    "data-id-path-chars": Bad(
        lambda: grid(attrs={"data_id": "../../annotations?x=1"}),
        says=("data_id", "../../annotations?x=1"),
        where=(((0.0, 0.0), "data_id"),),
    ),
    "metadata-unserialisable": Bad(
        lambda: grid(),
        {"metadata": {"measured": datetime.datetime(2026, 1, 1, 12, 0)}},
        says=("metadata", "json_object"),
        where=(((0.0, 0.0), "metadata"),),
    ),
    "char-source-type-huge": Bad(
        lambda: grid(attrs={"char_source_type": "e" * 10_000}),
        says=("char_source_type", TOO_LONG),
        where=(((0.0, 0.0), "char_source_type"),),
    ),
    "char-source-type-bytes": Bad(
        lambda: grid(attrs={"char_source_type": b"\xe9llipsometry"}),
        says=("char_source_type",),
        where=(((0.0, 0.0), "char_source_type"),),
    ),
    "char-source-type-lone-surrogate": Bad(
        lambda: grid(attrs={"char_source_type": "\udce9llipsometry"}),
        says=("char_source_type",),
        where=(((0.0, 0.0), "char_source_type"),),
    ),
    "dask-inf-in-the-last-block": Bad(
        lambda: grid(cells(np.inf, (2, 3))).chunk({"x": 2, "y": 2}),
        says=("property_value", "finite", "(10.0, 15.0)"),
        where=(((10.0, 15.0), "property_value"),),
    ),
    "dask-every-cell-nan": Bad(
        lambda: grid(np.full((3, 4), np.nan)).chunk({"x": 2}),
        error=MapStructureError,
        says=("'thickness'", "NaN"),
    ),
}

ARRAY_CASES: dict[str, Bad] = {
    "no-name": Bad(
        lambda: grid().thickness.rename(None), error=MapStructureError, says=("no name",)
    ),
    "extra-dimension": Bad(
        lambda: with_dim().thickness,
        error=MapStructureError,
        says=("'wavelength'",),
        where=((None, "thickness"),),
    ),
    "x-nan": Bad(
        lambda: grid(x=np.array([0.0, 5.0, 10.0, np.nan])).thickness,
        error=MapStructureError,
        says=("'x'", "non-finite"),
    ),
    "every-cell-nan": Bad(
        lambda: grid(np.full((3, 4), np.nan)).thickness,
        error=MapStructureError,
        says=("'thickness'", "NaN"),
    ),
    "object-array": Bad(
        lambda: grid(np.array([[1.0, "2", 3.0, 4.0]] * 3, dtype=object)).thickness,
        error=MapStructureError,
        says=("'thickness'", "object"),
    ),
    "value-nan-and-inf": Bad(
        lambda: grid(cells(np.inf, (0, 0))).thickness,
        says=("property_value", "(0.0, 0.0)"),
        where=(((0.0, 0.0), "property_value"),),
    ),
    "dask-nan-coordinate": Bad(
        lambda: grid(y=np.array([0.0, np.nan, 10.0])).chunk({"y": 1}).thickness,
        error=MapStructureError,
        says=("'y'", "non-finite"),
    ),
}


# -- fixtures and checks ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def server() -> Iterator[LocalServer]:
    yield from module_server()


@pytest.fixture
def fresh(server) -> tuple[LocalServer, Client, str]:
    """The module's server with zero counters, a client of it, and a new sample."""
    sample_id = server.create_sample(f"bad-input-{uuid.uuid4()}")
    server.reset_counters()
    return server, Client(api_key=server.api_key, endpoint=server.endpoint), sample_id


def same(a: Any, b: Any) -> bool:
    """Equality that takes NaN for NaN (also inside tuples)."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same(p, q) for p, q in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def assert_names_the_problem(err: Exception, case: Bad) -> None:
    assert isinstance(err, AtomscaleError), f"{type(err).__name__} is not an AtomscaleError"
    assert isinstance(err, ValueError), f"{type(err).__name__} is not a ValueError"
    assert isinstance(err, case.error), f"expected {case.error.__name__}, got {type(err)!r}"
    message = str(err)
    for fragment in case.says:
        options = fragment if isinstance(fragment, tuple) else (fragment,)
        assert any(o in message for o in options), f"{fragment!r} missing from:\n{message}"
    # Capped: a huge input never makes a huge message.
    assert len(message) < 5000, f"message of {len(message)} characters"
    if case.where:
        table = err.failure_cases
        assert {"index", "column", "check", "failure_case"} <= set(table.columns)
        rows = list(zip(table["index"].tolist(), table["column"].astype(str), strict=True))
        for label, column in case.where:
            hit = any((label is ... or same(index, label)) and column in col for index, col in rows)
            assert hit, f"no failure at ({label!r}, {column!r}) in\n{table.to_string()}"


def assert_unchanged(obj: Any, reference: Any) -> None:
    if isinstance(obj, pd.DataFrame):
        pd.testing.assert_frame_equal(obj, reference)
    else:
        xr.testing.assert_identical(obj, reference)
        if isinstance(obj, xr.DataArray):  # a dask-backed array stays lazy
            assert type(obj.data) is type(reference.data)


def mapping_for(case: Bad, obj: Any) -> dict[str, Any]:
    base = dict(MAPPING) if isinstance(obj, pd.DataFrame) else {}
    base.update(case.options)
    return {k: v for k, v in base.items() if v is not None}


def run_case(case: Bad, fresh: tuple[LocalServer, Client, str]) -> None:
    server, client, sample_id = fresh
    obj, reference = case.build(), case.build()
    options = mapping_for(case, obj)

    with pytest.raises(case.error) as validated:
        obj.atomscale.validate(**options)
    assert_names_the_problem(validated.value, case)

    with pytest.raises(case.error) as uploaded:
        obj.atomscale.upload(sample_id, client=client, progress_bar=False, **options)
    assert_names_the_problem(uploaded.value, case)
    assert type(uploaded.value) is type(validated.value)

    assert server.request_count() == 0, f"requests were sent: {server.request_counts}"
    assert server.annotation_count(sample_id) == 0
    assert_unchanged(obj, reference)


@pytest.mark.parametrize("name", list(FRAME_CASES))
def test_dataframe(name, fresh):
    run_case(FRAME_CASES[name], fresh)


@pytest.mark.parametrize("name", list(MAP_CASES))
def test_dataset(name, fresh):
    run_case(MAP_CASES[name], fresh)


@pytest.mark.parametrize("name", list(ARRAY_CASES))
def test_dataarray(name, fresh):
    run_case(ARRAY_CASES[name], fresh)


# -- malformed sample ids ---------------------------------------------------------------------
BAD_IDS = {
    "parent-path": "../../physical_samples",
    "path-inside-uuid": f"{GOOD_UUID}/../{GOOD_UUID}",
    "query": f"{GOOD_UUID}?property_name=x",
    "fragment": f"{GOOD_UUID}#top",
    "encoded-dots": "%2e%2e%2f%2e%2e-4a53-9d55-4c1f3f0f7a10",
    "trailing-newline": GOOD_UUID + "\n",
    "surrounding-space": f" {GOOD_UUID} ",
    "not-hex": GOOD_UUID[:-1] + "g",
    "arabic-digits": "\u0661" * 8 + GOOD_UUID[8:],
    "empty": "",
    "none": None,
    "number": 12345,
    "bytes": GOOD_UUID.encode(),
}
ENTRY_POINTS: dict[str, Callable[[Any, Client], Any]] = {
    "dataframe-upload": lambda sid, c: frame().atomscale.upload(sid, client=c, **MAPPING),
    "dataset-upload": lambda sid, c: grid().atomscale.upload(sid, client=c),
    "dataarray-upload": lambda sid, c: grid().thickness.atomscale.upload(sid, client=c),
    "fetch": lambda sid, c: fetch(sid, client=c),
}


#: Given as a sample, these cannot name one: refused before any request.
NOT_TEXT = ("empty", "none", "number", "bytes")


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("bad", list(BAD_IDS))
def test_malformed_sample_id(bad, entry, fresh):
    server, client, _ = fresh
    value = BAD_IDS[bad]
    if bad in NOT_TEXT:
        # No sample at all is a missing argument.
        expected = TypeError if value is None else InvalidIdentifierError
        with pytest.raises(expected):
            ENTRY_POINTS[entry](value, client)
        assert server.request_count() == 0, f"requests were sent: {server.request_counts}"
        return
    # Other text is a name (or, stripped, a UUID): looked up, never put into a URL.
    samples_before = len(server.store.list_samples())
    with pytest.raises(SampleNotFoundError) as info:
        ENTRY_POINTS[entry](value, client)
    assert isinstance(info.value, LookupError)
    assert len(str(info.value)) < 1_000
    sent = {route for route, n in server.request_counts.items() if n}
    assert sent <= {"list_samples", "get_sample"}, f"requests were sent: {sent}"
    assert len(server.store.list_samples()) == samples_before


def test_the_accessors_come_from_the_package():
    # The battery goes through the public accessors registered on import.
    assert isinstance(frame().atomscale, atomscale_accessors.AtomscaleDataFrameAccessor)


# -- files given to the command line (written last: the subcommands are new) ------------------
def _cli_subcommands() -> set[str]:
    try:
        from atomscale_accessors import cli
    except ImportError:  # pragma: no cover
        return set()
    parser = cli.build_parser()
    found: set[str] = set()
    for action in parser._actions:
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict):
            found |= set(choices)
    return found


needs_cli = pytest.mark.skipif(
    not {"validate", "upload"} <= _cli_subcommands(),
    reason="the validate and upload subcommands of the command line do not exist yet",
)
CLI_MAPPING = [
    "--x", "x_mm", "--y", "y_mm", "--value", "thk",
    "--property-name", "thickness", "--property-unit", "nm", "--coord-units", "mm",
]  # fmt: skip
GOOD_CSV = b"x_mm,y_mm,thk\n0,0,101.5\n5,0,99.0\n10,0,98.25\n"


@dataclass(frozen=True)
class BadFile:
    name: str
    content: bytes | Callable[[Path], None]
    says: tuple[str | tuple[str, ...], ...]
    extra: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()  # must not be in the message (rows that are fine)
    table: bool = True  # False: a NetCDF map, so the table mapping options do not apply


def _parquet_with_bytes(path: Path) -> None:
    pd.DataFrame(
        {"x_mm": [0.0, 5.0], "y_mm": [0.0, 0.0], "thk": [1.0, 2.0], "unit": [b"nm", b"\xff"]}
    ).to_parquet(path, index=False)


def _netcdf(ds: xr.Dataset) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        from atomscale_accessors.cli.files import netcdf_engines

        engines = netcdf_engines()
        if not engines:
            pytest.skip("no netCDF engine for xarray (h5netcdf, netCDF4 or scipy)")
        ds.to_netcdf(path, engine=engines[0])

    return write


FILE_CASES = {
    "csv-invalid-utf8": BadFile(
        "points.csv", b"x_mm,y_mm,thk\n0,0,101.5\n5,0,caf\xe9\n", says=("utf-8", "0xe9")
    ),
    "csv-latin1-header": BadFile(
        "points.csv", b"x_mm,y_mm,\xe9paisseur\n0,0,101.5\n", says=("utf-8",)
    ),
    "csv-text-in-values": BadFile(
        "points.csv",
        b"x_mm,y_mm,thk\n0,0,101.5\n5,0,n/a?\n10,0,98.25\n",
        says=("thk", "row 3", "'n/a?'"),
        # Lines 2 and 4 hold numbers: the message must not blame them.
        absent=("row 2:", "row 4:"),
    ),
    "csv-text-empty-and-inf-values": BadFile(
        "points.csv",
        b"x_mm,y_mm,thk\n0,0,101.5\n5,0,abc\n10,0,\n15,0,inf\n20,0,1e400\n25,0,99\n",
        # One error for all four: the text, the missing value, the two infinite ones.
        says=("row 3: thk = 'abc'", "row 4:", "rows 5, 6:", "not_nullable", "finite"),
        absent=("row 2:", "row 7:"),
    ),
    "csv-inf-value": BadFile(
        "points.csv", b"x_mm,y_mm,thk\n0,0,101.5\n5,0,inf\n", says=("finite", "row 3")
    ),
    "csv-nan-value": BadFile(
        "points.csv", b"x_mm,y_mm,thk\n0,0,101.5\n5,0,\n", says=("property_value", "row 3")
    ),
    "csv-missing-column": BadFile("points.csv", b"x_mm,thk\n0,101.5\n", says=("y_mm", "no column")),
    "csv-unknown-column": BadFile(
        "points.csv", b"x_mm,y_mm,thk,operator\n0,0,101.5,ann\n", says=("operator",)
    ),
    "csv-duplicate-points": BadFile(
        "points.csv",
        b"x_mm,y_mm,thk\n0,0,101.5\n5,0,99\n0,0,98.25\n",
        says=("rows 2, 4:", "unique_position"),
    ),
    "csv-empty-file": BadFile("points.csv", b"", says=("points.csv",)),
    "csv-header-only": BadFile(
        "points.csv", b"x_mm,y_mm,thk\n", says=(("no records", "no rows", "empty"),)
    ),
    "csv-bad-metadata-json": BadFile(
        "points.csv",
        b'x_mm,y_mm,thk,metadata\n0,0,101.5,"{""a"": 1"\n',
        says=("metadata", "row 2"),
    ),
    "csv-bad-coord-ref-frame": BadFile(
        "points.csv",
        b"x_mm,y_mm,thk\n0,0,101.5\n",
        says=("coord_ref_frame", "wafer"),
        extra=("--coord-ref-frame", "wafer"),
    ),
    "csv-bad-data-id": BadFile(
        "points.csv",
        b"x_mm,y_mm,thk\n0,0,101.5\n",
        says=("data_id", "../x"),
        extra=("--data-id", "../x"),
    ),
    "no-such-file": BadFile("", b"", says=("no such file",)),
    "unknown-extension": BadFile("points.txt", GOOD_CSV, says=(".txt", "extension")),
    "parquet-bytes-not-utf8": BadFile(
        "points.parquet",
        _parquet_with_bytes,
        says=("unit", "text"),
        extra=("--property-unit", "unit"),
    ),
    "netcdf-every-cell-nan": BadFile(
        "map.nc", _netcdf(grid(np.full((3, 4), np.nan))), says=("'thickness'", "NaN"), table=False
    ),
    "netcdf-nan-coordinate": BadFile(
        "map.nc",
        _netcdf(grid(x=np.array([0.0, np.nan, 10.0, 15.0]))),
        says=("'x'", "non-finite"),
        table=False,
    ),
    "netcdf-no-units": BadFile(
        "map.nc", _netcdf(grid(units=None)), says=("'thickness'", "no units"), table=False
    ),
    "netcdf-extra-dimension": BadFile(
        "map.nc", _netcdf(with_dim()), says=("'wavelength'",), table=False
    ),
    "netcdf-inf-value": BadFile(
        "map.nc", _netcdf(grid(cells(np.inf))), says=("finite", "(5.0, 10.0)"), table=False
    ),
    "netcdf-not-netcdf": BadFile(
        "map.nc", b"x_mm,y_mm,thk\n0,0,1\n", says=("map.nc",), table=False
    ),
}


def _write(tmp_path: Path, case: BadFile) -> Path:
    if not case.name:
        return tmp_path / "missing.csv"
    path = tmp_path / case.name
    if callable(case.content):
        pytest.importorskip("pyarrow")
        case.content(path)
    else:
        path.write_bytes(case.content)
    return path


def _cli_args(case: BadFile) -> list[str]:
    if not case.table:
        return list(case.extra)
    args = list(CLI_MAPPING)
    if "--property-unit" in case.extra:
        at = args.index("--property-unit")
        del args[at : at + 2]
    return args + list(case.extra)


def file_cases() -> list[Any]:
    params = []
    for name in FILE_CASES:
        for command in ("validate", "upload"):
            params.append(pytest.param(name, command, id=f"{name}-{command}"))
    return params


@needs_cli
@pytest.mark.parametrize(("name", "command"), file_cases())
def test_file_on_the_command_line(name, command, fresh, tmp_path, capsys, monkeypatch):
    from atomscale_accessors.cli import main

    server, _, sample_id = fresh
    case = FILE_CASES[name]
    path = _write(tmp_path, case)
    before = path.read_bytes() if path.exists() else None
    monkeypatch.setenv("AS_API_KEY", server.api_key)
    monkeypatch.setenv("AS_API_ENDPOINT", server.endpoint)
    argv = [command, str(path), *_cli_args(case)]
    if command == "upload":
        argv += ["--sample", sample_id, "--no-progress"]
    status = main(argv)
    out, err = capsys.readouterr()
    assert status not in (0, None), f"exit status {status}; stdout:\n{out}"
    assert err.startswith("error:"), err
    for fragment in case.says:
        options = fragment if isinstance(fragment, tuple) else (fragment,)
        assert any(o in err for o in options), f"{fragment!r} missing from:\n{err}"
    for fragment in case.absent:
        assert fragment not in err, f"{fragment!r} wrongly in:\n{err}"
    assert "Traceback" not in err
    assert server.request_count() == 0, f"requests were sent: {server.request_counts}"
    assert server.annotation_count(sample_id) == 0
    if before is not None:
        assert path.read_bytes() == before


@needs_cli
@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        f"{GOOD_UUID}?a=1",
        pytest.param(f"{GOOD_UUID}\n", id="newline"),
        "%2e%2e",
    ],
)
def test_malformed_sample_id_on_the_command_line(bad, fresh, tmp_path, capsys, monkeypatch):
    from atomscale_accessors.cli import main

    server, _, _ = fresh
    path = tmp_path / "points.csv"
    path.write_bytes(GOOD_CSV)
    monkeypatch.setenv("AS_API_KEY", server.api_key)
    monkeypatch.setenv("AS_API_ENDPOINT", server.endpoint)
    try:
        status = main(["upload", str(path), "--sample", bad, "--no-progress", *CLI_MAPPING])
    except SystemExit as exc:  # argparse refuses it
        status = exc.code
    err = capsys.readouterr().err
    assert status == 1, err  # a name (or a stripped UUID) that matches no sample
    assert "no sample" in err and "Traceback" not in err
    sent = {route for route, n in server.request_counts.items() if n}
    assert sent <= {"list_samples", "get_sample"}, f"requests were sent: {sent}"

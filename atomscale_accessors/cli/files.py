"""The files of the command line: CSV/TSV and Parquet tables, NetCDF maps.

The format comes from the file name's extension. Parquet needs pyarrow (or fastparquet)
and NetCDF a netCDF engine for xarray, both in the ``io`` extra; without them the error
says what to install.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .exits import InputError, first_line

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

__all__ = [
    "check_output",
    "file_kind",
    "netcdf_engines",
    "parquet_available",
    "read_input",
    "write_frame",
]

_TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}
_NETCDF_SUFFIXES = {".nc", ".nc4", ".netcdf", ".cdf"}
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zip", ".zst"}
# Engines xarray can read and write NetCDF with, in order of preference.
_NetcdfEngine = Literal["netcdf4", "h5netcdf", "scipy"]
_NETCDF_ENGINES: tuple[_NetcdfEngine, ...] = ("netcdf4", "h5netcdf", "scipy")
# A decimal numeral as a CSV writes it; one beyond float64's range ("1e400") is infinite.
_NUMERAL = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
_IO_EXTRA = 'pip install "atomscale-accessors[io]"'
_NETCDF_HINT = f"{_IO_EXTRA} (or h5netcdf, or scipy for NetCDF3 files)"
_PARQUET_HINT = f"{_IO_EXTRA} (or fastparquet)"


def file_kind(path: Path) -> str:
    """``csv``, ``tsv``, ``parquet`` or ``netcdf``, from the file name's extension."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION_SUFFIXES:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last in _NETCDF_SUFFIXES:
        return "netcdf"
    if last in _TABLE_SUFFIXES:
        return _TABLE_SUFFIXES[last]
    raise InputError(
        f"cannot tell the format of {str(path)!r} from its extension: use .csv, .tsv, "
        ".parquet or .nc"
    )


def netcdf_engines() -> list[_NetcdfEngine]:
    """The NetCDF engines xarray finds installed, in order of preference."""
    import xarray as xr

    installed = xr.backends.list_engines()
    return [name for name in _NETCDF_ENGINES if name in installed]


def _netcdf_engine() -> _NetcdfEngine:
    engines = netcdf_engines()
    if not engines:
        raise InputError(
            f"reading and writing NetCDF needs a netCDF engine for xarray and none is "
            f"installed: {_NETCDF_HINT}"
        )
    return engines[0]


def parquet_available() -> bool:
    """Whether pandas can read and write Parquet (pyarrow or fastparquet imports)."""
    for name in ("pyarrow", "fastparquet"):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        return True
    return False


def _check_parquet() -> None:
    if not parquet_available():
        raise InputError(f"reading and writing Parquet needs pyarrow: {_PARQUET_HINT}")


def read_input(path_text: str) -> pd.DataFrame | xr.Dataset:
    """Read a CSV/TSV or Parquet table, or a NetCDF map, into memory.

    CSV rows are labelled by their line in the file (the header is line 1), so that
    validation failures point at lines a person can find. A ``metadata`` column of JSON
    text (as written by ``fetch -o``) is decoded into dicts.
    """
    import pandas as pd

    path = Path(path_text)
    kind = file_kind(path)
    if not path.is_file():
        raise InputError(f"no such file: {path_text!r}")
    try:
        if kind == "netcdf":
            import xarray as xr

            engine = _netcdf_engine()
            # Loaded whole and closed at once: the file may be rewritten right after.
            with xr.open_dataset(path, engine=engine) as ds:
                return ds.load()
        if kind == "parquet":
            _check_parquet()
            frame = pd.read_parquet(path)
        else:
            frame = _numbers_kept(pd.read_csv(path, sep="\t" if kind == "tsv" else ","))
            frame.index = pd.RangeIndex(2, len(frame) + 2, name="line")
    except InputError:
        raise
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read {path_text!r}: {first_line(exc)}") from exc
    if "metadata" in frame.columns:
        frame["metadata"] = _decode_metadata(frame["metadata"])
    return frame


def _numbers_kept(frame: pd.DataFrame) -> pd.DataFrame:
    """Numbers read as numbers in a text column that has a few stray cells.

    One cell that is not a number makes the CSV reader read the whole column as text;
    this keeps the numerals as numbers, so validation names only the stray cells (by
    their line in the file) instead of every row.
    """
    import pandas as pd

    for name in frame.columns:
        column = frame[name]
        if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
            continue
        numbers = _numerals(column)
        parsed = numbers.notna()
        if parsed.sum() > (column.notna() & ~parsed).sum():  # mostly numbers
            frame[name] = column.astype(object).where(~parsed, numbers.astype(object))
    return frame


def _numerals(column: pd.Series) -> pd.Series:
    """The column's numerals as float64, NaN elsewhere; numerals beyond float64's range
    are infinite with every pandas (pandas 2.2 alone would read them as NaN)."""
    import pandas as pd

    numbers = pd.to_numeric(column, errors="coerce")
    missed = numbers.isna() & column.notna()
    if missed.any():
        numbers[missed] = [
            float(text) if isinstance(text, str) and _NUMERAL.fullmatch(text) else float("nan")
            for text in column[missed]
        ]
    return numbers


def _decode_metadata(column: pd.Series) -> pd.Series:
    def decode(value: Any) -> Any:
        if isinstance(value, str) and value.lstrip().startswith("{"):
            try:
                return json.loads(value)
            except ValueError:
                return value  # left for validation to report
        return value

    return column.astype(object).map(decode)


def _encode_metadata(frame: pd.DataFrame) -> pd.DataFrame:
    """Metadata dicts as JSON text, which CSV and Parquet store without loss."""
    if "metadata" not in frame.columns:
        return frame
    text = frame["metadata"].map(
        lambda v: json.dumps(v) if isinstance(v, dict) else None, na_action="ignore"
    )
    return frame.assign(metadata=text.astype(object))


def check_output(path_text: str) -> str:
    """The kind of an output file; checked before anything is sent or fetched."""
    kind = file_kind(Path(path_text))
    if kind == "netcdf":
        _netcdf_engine()
    elif kind == "parquet":
        _check_parquet()
    return kind


def write_frame(frame: pd.DataFrame, path_text: str, *, keep_index: bool = False) -> None:
    """Write an annotation frame as CSV/TSV, Parquet, or a NetCDF map (via ``to_xarray``)."""
    import pandas as pd

    kind = check_output(path_text)
    try:
        if kind == "netcdf":
            from ..maps import frame_to_map  # what frame.atomscale.to_xarray() calls

            ds = frame_to_map(frame)
            ds.to_netcdf(path_text, engine=_netcdf_engine())
            return
        out = _encode_metadata(frame)
        default_index = out.index.names == [None] and out.index.equals(pd.RangeIndex(len(out)))
        if keep_index and not default_index:
            out = out.reset_index()
        if kind == "parquet":
            out.to_parquet(path_text, index=False)
        else:
            out.to_csv(path_text, index=False, sep="\t" if kind == "tsv" else ",")
    except OSError as exc:
        raise InputError(f"cannot write {path_text!r}: {first_line(exc)}") from exc

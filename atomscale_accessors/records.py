"""A user's DataFrame, in any column names, long or wide, to canonical records.

Canonical records have exactly the columns of :data:`~atomscale_accessors.schemas.RECORD_COLUMNS`
and keep the input's index labels, so every later error and every result can point back
at the user's own rows. Only lossless conversions happen (integers to floats, float32 to
float64; see :mod:`~atomscale_accessors.record_values`); anything else (text in a number
column, booleans, a missing unit) is an
:class:`~atomscale_accessors.errors.AnnotationValidationError` naming the rows and columns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import AnnotationValidationError
from .failures import FailureCollector, failure_table, quote, quote_list, repeat_failures
from .keys import repeated_positions
from .record_values import is_missing, plain, to_float
from .schemas import COORD_COLUMNS, FLOAT_COLUMNS, RECORD_COLUMNS
from .units import coordinate_unit
from .validation import check_records

__all__ = [
    "DEFAULT_COORD_REF_FRAME",
    "RecordMapping",
    "build_records",
    "to_records",
    "validated_records",
]

DEFAULT_COORD_REF_FRAME = "sample_relative"
_COORD_ALIASES = {
    "coord_x": ("coord_x", "x"),
    "coord_y": ("coord_y", "y"),
    "coord_z": ("coord_z", "z"),
}
_SERVER_COLUMNS = ("annotation_id", "last_updated", "physical_sample_id", "version")


@dataclass(frozen=True)
class RecordMapping:
    """How a user's columns map onto canonical records.

    Every text option is either the name of a column of the frame or a constant for all
    rows; a name that is a column wins.
    """

    x: Hashable | None = None
    y: Hashable | None = None
    z: Hashable | None = None
    value: Hashable | None = None
    values: Sequence[Hashable] | Mapping[Hashable, str] | None = None
    property_name: Hashable | None = None
    property_unit: Hashable | None = None
    units: Mapping[Hashable, str] | None = None
    coord_units: Hashable | None = None
    coord_ref_frame: Hashable | None = None
    char_source_type: Hashable | None = None
    data_id: Hashable | None = None
    metadata: Any = None


def to_records(
    df: pd.DataFrame, mapping: RecordMapping | None = None, **options: Any
) -> pd.DataFrame:
    """Bring a DataFrame of measurements into canonical annotation records.

    Parameters
    ----------
    df : pandas.DataFrame
        The measurements. It is never modified.
    mapping : RecordMapping, optional
        The options below as one object; keyword options override it.
    x, y, z : str, optional
        Columns holding the coordinates. Default: ``coord_x``/``x`` (and so on) when present.
    value : str, optional
        Long form: the column holding the values (default ``property_value``).
    values : list of str or dict, optional
        Wide form: several value columns, one property each (named after the column, or
        ``{column: property_name}``).
    property_name : str, optional
        Long form: the column holding property names, or one name for all rows (default:
        the ``property_name`` column, else the name of the value column).
    property_unit : str, optional
        Column or constant unit of the values; ``units={property: unit}`` per property in
        the wide form. Use ``"1"`` for a dimensionless quantity; a missing unit is an error.
    coord_units, coord_ref_frame, char_source_type, data_id : str, optional
        Column or constant. ``coord_ref_frame`` defaults to ``"sample_relative"``.
    metadata : str, dict or list of str, optional
        A column of dicts, one dict for every row, or columns to fold into each record's
        metadata.

    Returns
    -------
    pandas.DataFrame
        Canonical records: the columns of ``RECORD_COLUMNS``, the input's index labels
        (repeated once per property for wide input, property by property).

    Raises
    ------
    AnnotationValidationError
        For unknown columns, missing values or units, text where numbers belong.

    Examples
    --------
    >>> import pandas as pd
    >>> from atomscale_accessors.records import to_records
    >>> df = pd.DataFrame({"x_mm": [0.0, 5.0], "y_mm": [0.0, 0.0], "thk": [101.5, 99.0]})
    >>> rec = to_records(
    ...     df,
    ...     x="x_mm",
    ...     y="y_mm",
    ...     value="thk",
    ...     property_name="thickness",
    ...     property_unit="nm",
    ...     coord_units="mm",
    ... )
    >>> rec[["property_name", "property_value", "coord_x", "coord_units"]]
      property_name  property_value  coord_x coord_units
    0     thickness           101.5      0.0          mm
    1     thickness            99.0      5.0          mm
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    records, problems = build_records(df, mapping, **options)
    if problems is not None:
        raise problems
    assert records is not None  # build_records gives records whenever it finds no problem
    return records


def build_records(
    df: pd.DataFrame, mapping: RecordMapping | None = None, **options: Any
) -> tuple[pd.DataFrame | None, AnnotationValidationError | None]:
    """:func:`to_records` without raising: the records and the problems found.

    The records are ``None`` when the problems leave nothing to validate further (a missing
    value column, a column that is not text); unknown columns, missing units and cells
    that are not numbers still give records (less the rows of those cells), so validation
    can report every failure at once.
    """
    builder = _build(df, mapping, options)
    if not builder.failures:
        return builder.records, None
    error = builder.failures.error(len(df), reasons=builder.reasons)
    return (None if builder.hard else builder.records), error


def validated_records(
    df: pd.DataFrame,
    mapping: RecordMapping | None = None,
    *,
    dropna: bool = False,
    allow_duplicates: bool = False,
    groups: pd.Series | None = None,
    **options: Any,
) -> pd.DataFrame:
    """:func:`to_records`, then :func:`~atomscale_accessors.validation.validate_records`,
    with the problems of both steps in one error.

    ``groups`` (indexed like ``df``, whose index must then be unique) puts each row in a
    group, a sample: a position must then be unique within each group only.
    """
    builder = _build(df, mapping, options)
    failures = builder.failures
    if builder.hard:
        raise failures.error(len(df), reasons=builder.reasons)
    per_group = groups is not None and not allow_duplicates
    valid = check_records(
        builder.records, failures, dropna=dropna, allow_duplicates=allow_duplicates or per_group
    )
    if per_group and groups is not None:
        same_rows = valid.index.equals(groups.index)
        codes = pd.factorize((groups if same_rows else groups.loc[valid.index]).to_numpy())[0]
        failures.add(repeat_failures(valid.index[repeated_positions(valid, codes)]))
    if failures:
        raise failures.error(len(valid) + builder.n_left_out, reasons=builder.reasons)
    if len(valid) == 0:
        raise AnnotationValidationError(
            "nothing to annotate: the frame has no rows"
            + (" with a value (dropna=True dropped them all)" if len(builder.records) else ""),
            reasons=["the frame has no rows"],
        )
    return valid


def _build(df: pd.DataFrame, mapping: RecordMapping | None, options: dict[str, Any]) -> _Builder:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(df).__name__}")
    unknown_options = set(options) - set(RecordMapping.__dataclass_fields__)
    if unknown_options:
        raise TypeError(f"unexpected mapping options: {sorted(unknown_options)}")
    builder = _Builder(df, _merge(mapping, options))
    builder.build()
    return builder


def _merge(mapping: RecordMapping | None, options: dict[str, Any]) -> RecordMapping:
    base = mapping or RecordMapping()
    if not options:
        return base
    fields = {name: getattr(base, name) for name in RecordMapping.__dataclass_fields__}
    fields.update(options)
    return RecordMapping(**fields)


def one_spelling(texts: pd.Series) -> pd.Series:
    """Coordinate units in their one spelling (:func:`~.units.coordinate_unit`), each
    distinct text looked up once; anything that is not text is left for validation."""
    values = texts.to_numpy(dtype=object)
    # A column repeats a unit or two: hashing beats a loop. Unhashable cells (not text,
    # which validation reports) leave the loop to do it.
    with contextlib.suppress(TypeError):
        values = pd.unique(values)
    distinct = {v for v in values if isinstance(v, str)}
    spelled = {text: coordinate_unit(text) for text in distinct}
    if all(text == spelling for text, spelling in spelled.items()):
        return texts
    return texts.map(lambda v: spelled.get(v, v) if isinstance(v, str) else v)


class _Builder:
    """Collects columns, remembers which user columns were used, reports all problems at once.

    A problem is *hard* when the records it leaves are not worth validating; a cell that is
    not a number leaves its row out of the records (and so out of validation), so that the
    other rows are still checked and every failure is reported in one error.
    """

    def __init__(self, df: pd.DataFrame, mapping: RecordMapping) -> None:
        self.df = df
        self.mapping = mapping
        self.used: set[Hashable] = set()
        self.failures = FailureCollector()
        self.reasons: list[str] = []
        self.hard = False
        self.records = pd.DataFrame()
        # Rows whose cell of a number column could not be read, per column; rows with an
        # unreadable coordinate; how many records were left out for either.
        self.unread: dict[Hashable, np.ndarray] = {}
        self.unread_rows = np.zeros(len(df), dtype=bool)
        self.n_left_out = 0

    # -- helpers -------------------------------------------------------------------------
    def is_column(self, key: Any) -> bool:
        try:
            return isinstance(key, Hashable) and key in self.df.columns
        except TypeError:
            return False

    def column(self, key: Hashable) -> pd.Series:
        self.used.add(key)
        col = self.df[key]
        if isinstance(col, pd.DataFrame):
            self.problem(
                f"column {quote(key)} appears more than once", None, key, "unique_column_name", key
            )
            return col.iloc[:, 0]
        return col

    def problem(
        self,
        message: str,
        index: Any,
        column: Any,
        check: str,
        case: Any,
        *,
        many: pd.Index | None = None,
        cases: Any = None,
        soft: bool = False,
    ) -> None:
        self.reasons.append(message)
        self.hard = self.hard or not soft
        if many is not None:
            self.failures.add_cases(many, column, check, cases)
        else:
            self.failures.add_one(column, check, case, index)

    def constant(self, value: str) -> pd.Series:
        return pd.Series(value, index=self.df.index, dtype=object)

    def text(self, option: str, key: Any, n_index: pd.Index) -> pd.Series:
        """A text field from a column or a constant, as an object Series (None when unset)."""
        if key is None:
            return pd.Series(None, index=n_index, dtype=object)
        if self.is_column(key):
            col = self.column(key)
            # pandas accepts na_value=None, which pandas-stubs leave out of the scalars.
            values = col.to_numpy(dtype=object, na_value=None)  # type: ignore[call-overload]
            bad = pd.Series(
                [v is not None and not isinstance(v, str) for v in values], index=col.index
            )
            if bad.any():
                self.problem(
                    f"{option}: column {quote(key)} must hold text",
                    None,
                    key,
                    "text",
                    None,
                    many=col.index[bad],
                    cases=col[bad],
                )
            return pd.Series(values, index=col.index, dtype=object)
        if not isinstance(key, str):
            self.problem(
                f"{option}={quote(key)} is neither a column of the frame nor a text constant",
                None,
                option,
                "text",
                key,
            )
            return pd.Series(None, index=n_index, dtype=object)
        return self.constant(key)

    def number(self, option: str, key: Hashable) -> pd.Series | None:
        """A numeric column converted losslessly to float64 (NaN where missing)."""
        if not self.is_column(key):
            self.problem(
                f"{option}: no column {quote(key)} in the frame "
                f"(columns: {quote_list(self.df.columns)})",
                None,
                key,
                "column_in_frame",
                key,
            )
            return None
        col = self.column(key)
        return to_float(col, key, self)

    # -- the build -----------------------------------------------------------------------
    def build(self) -> pd.DataFrame:
        index = self.df.index
        if "annotation_id" in self.df.columns:
            # An annotation frame (from fetch or upload) re-sent: what the server set is
            # not part of an annotation body.
            self.used.update(c for c in _SERVER_COLUMNS if c in self.df.columns)
        shared = self.coordinates(index)
        blocks = self.values_blocks()
        shared.update(
            char_source_type=self.text("char_source_type", self.default("char_source_type"), index),
            coord_ref_frame=self.text(
                "coord_ref_frame", self.default("coord_ref_frame", DEFAULT_COORD_REF_FRAME), index
            ),
            coord_units=one_spelling(self.text("coord_units", self.default("coord_units"), index)),
            data_id=self.text("data_id", self.default("data_id"), index),
            metadata=self.metadata(index),
        )
        unit_key = self.default("property_unit")
        row_units = self.text("property_unit", unit_key, index) if unit_key is not None else None
        frames = []
        for names, values, source in blocks:
            frame = pd.DataFrame(
                {
                    "property_name": names,
                    "property_value": values,
                    "property_unit": self.units(names, source, row_units),
                    **shared,
                },
                index=index,
            )[list(RECORD_COLUMNS)]
            unread = self.unread_rows | self.unread.get(source, False)
            if unread.any():
                # Reported already; validating what stands in for them would repeat it.
                self.n_left_out += int(unread.sum())
                frame = frame[~unread]
            frames.append(frame)
        self.check_unknown()
        if not frames:
            self.records = pd.DataFrame(
                {
                    c: pd.Series(dtype="float64" if c in FLOAT_COLUMNS else object)
                    for c in RECORD_COLUMNS
                }
            )
        else:
            self.records = frames[0] if len(frames) == 1 else pd.concat(frames)
        return self.records

    def units(self, names: pd.Series, source: Hashable, row_units: pd.Series | None) -> pd.Series:
        """Units of one block: ``units={property: unit}`` first, then ``property_unit``."""
        units = self.mapping.units
        if units is not None and not isinstance(units, Mapping):
            self.problem("units= takes a {property: unit} dict", None, "units", "mapping", units)
            units = None
        found = pd.Series(None, index=names.index, dtype=object)
        if units:
            by_column = units.get(source) if isinstance(source, Hashable) else None
            found = names.map(lambda n: units.get(n, by_column), na_action="ignore").astype(object)
        if row_units is not None:
            found = found.where(found.notna(), row_units)
        missing = found.isna()
        if missing.any():
            props = pd.unique(names[missing].astype(object))
            shown = ", ".join(quote(p) for p in props[:5])
            self.problem(
                f"no unit for property {shown}: pass property_unit= or units={{property: unit}} "
                '(use "1" for a dimensionless quantity)',
                None,
                source,
                "unit_given",
                None,
                many=names.index[missing],
                cases=names[missing],
                soft=True,
            )
        return found.where(found.notna(), None)

    def default(self, option: str, fallback: Any = None) -> Any:
        given = getattr(self.mapping, option)
        if given is not None:
            return given
        if option in self.df.columns:
            return option
        return fallback

    def coordinates(self, index: pd.Index) -> dict[str, pd.Series]:
        out = {}
        for canonical, option in zip(COORD_COLUMNS, ("x", "y", "z"), strict=True):
            key = getattr(self.mapping, option)
            if key is None:
                present = [alias for alias in _COORD_ALIASES[canonical] if alias in self.df.columns]
                key = present[0] if present else None
            series = self.number(option, key) if key is not None else None
            if series is not None and key in self.unread:
                self.unread_rows |= self.unread[key]
            out[canonical] = series if series is not None else pd.Series(np.nan, index=index)
        return out

    def values_blocks(self) -> list[tuple[Any, pd.Series, Hashable]]:
        """The values, one block per property column: ``(names, values, source column)``."""
        if self.mapping.values is not None:
            return self.wide_blocks()
        return self.long_blocks()

    def wide_blocks(self) -> list[tuple[Any, pd.Series, Hashable]]:
        """``values=``: several value columns, one property each."""
        m = self.mapping
        if m.value is not None:
            self.problem(
                "give value= (long form) or values= (wide form), not both",
                None,
                "value",
                "mapping",
                m.value,
            )
        pairs: list[tuple[Hashable, Hashable]]
        if isinstance(m.values, Mapping):
            pairs = list(m.values.items())
        elif isinstance(m.values, str | bytes) or not isinstance(m.values, Sequence | pd.Index):
            self.problem(
                "values= takes a list of columns or a {column: property_name} dict",
                None,
                "values",
                "mapping",
                m.values,
            )
            return []
        else:
            pairs = [(col, col) for col in m.values]
        if not pairs:
            self.problem("values= names no column", None, "values", "mapping", m.values)
        if m.property_name is not None:
            self.problem(
                "property_name= cannot be used with values= (each value column is its own property)",
                None,
                "property_name",
                "mapping",
                m.property_name,
            )
        blocks = []
        for col, prop in pairs:
            series = self.number("values", col)
            if series is not None:
                blocks.append((self.constant(str(prop)), series, col))
        return blocks

    def long_blocks(self) -> list[tuple[Any, pd.Series, Hashable]]:
        """``value=``: one value column, its property names a column or a constant."""
        m = self.mapping
        value_key = m.value if m.value is not None else "property_value"
        series = self.number("value", value_key)
        if series is None:
            if m.value is None:
                self.reasons[-1] = (
                    "no value column: pass value='<column>' (long form) or values=[...] (wide form); "
                    f"columns: {quote_list(self.df.columns)}"
                )
            return []
        name_key = self.default("property_name")
        if name_key is None:
            if value_key == "property_value":
                # Canonical columns without a name: the value column's name is no property.
                self.problem(
                    "the frame has a property_value column but no property_name column: add "
                    "one, or pass property_name='<name>' for every row",
                    None,
                    "property_name",
                    "name_given",
                    None,
                    soft=True,
                )
            return [(self.constant(str(value_key)), series, value_key)]
        # A column of names wins over a constant, but never the value column itself or a
        # numeric column: property_name="thickness" next to value="thickness" is a name.
        if (
            self.is_column(name_key)
            and name_key != value_key
            and not pd.api.types.is_numeric_dtype(self.df[name_key].dtype)
        ):
            return [(self.text("property_name", name_key, self.df.index), series, value_key)]
        if not isinstance(name_key, str):
            self.problem(
                f"property_name={quote(name_key)} is neither a column nor a text constant",
                None,
                "property_name",
                "text",
                name_key,
            )
            return []
        return [(self.constant(name_key), series, value_key)]

    def metadata(self, index: pd.Index) -> pd.Series:
        meta = self.mapping.metadata
        if meta is None:
            meta = "metadata" if "metadata" in self.df.columns else None
        if meta is None:
            return pd.Series(None, index=index, dtype=object)
        if isinstance(meta, Mapping):
            # A copy per row: editing one record's metadata must not edit them all.
            return pd.Series([dict(meta) for _ in range(len(index))], index=index, dtype=object)
        if self.is_column(meta):
            col = self.column(meta)
            # Copies: the records (and the upload's result) must not share the input's dicts.
            return pd.Series(
                [dict(m) if isinstance(m, dict) else (None if is_missing(m) else m) for m in col],
                index=col.index,
                dtype=object,
            )
        if isinstance(meta, Sequence) and not isinstance(meta, str):
            return self.folded_metadata(meta, index)
        self.problem(
            "metadata= takes a column of dicts, a dict, or a list of columns",
            None,
            "metadata",
            "mapping",
            meta,
        )
        return pd.Series(None, index=index, dtype=object)

    def folded_metadata(self, columns: Sequence[Hashable], index: pd.Index) -> pd.Series:
        """``metadata=[columns]``: each row's cells of those columns as its metadata dict."""
        missing = [c for c in columns if not self.is_column(c)]
        if missing:
            self.problem(
                f"metadata=: no columns {quote_list(missing)} in the frame",
                None,
                "metadata",
                "column_in_frame",
                missing,
            )
            return pd.Series(None, index=index, dtype=object)
        for c in columns:
            self.used.add(c)
        sub = self.df[list(columns)].astype(object)
        sub = sub.where(sub.notna(), None)
        rows = sub.to_dict("records")
        return pd.Series(
            [{str(k): plain(v) for k, v in row.items()} for row in rows],
            index=index,
            dtype=object,
        )

    def check_unknown(self) -> None:
        unknown = [c for c in self.df.columns if c not in self.used]
        if unknown:
            # Not a problem of any row: one failure of the whole frame per column.
            self.reasons.append(
                f"unknown columns {quote_list(unknown)}: map them (x=, y=, value=, values=, ...) "
                "or fold them into metadata=[...], or drop them"
            )
            self.failures.add(failure_table((None, c, "unknown_columns", None) for c in unknown))

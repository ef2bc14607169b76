"""Run the records schema and turn its failures into one readable error.

pandera runs lazily, so every failing check is found in one pass. The failures go to one
:class:`~atomscale_accessors.failures.FailureCollector`: the error's message is capped (a
count per check and a handful of distinct examples), and the failure table on the
exception keeps the first ``MAX_FAILURE_CASES`` cases, with every failure counted.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pandera.errors

from .errors import AnnotationValidationError, AtomscaleWarning, user_stacklevel
from .failures import (
    FAILURE_COLUMNS,
    MAX_EXAMPLES,
    REPEAT_CASE,
    REPEAT_CHECK,
    REPEAT_COLUMN,
    FailureCollector,
    failure_message,
    failure_table,
    problem_message,
    quote,
    quote_list,
)
from .schemas import compact_records, metadata_problem, records_schema

__all__ = [
    "MAX_EXAMPLES",
    "ValidationReport",
    "check_records",
    "failure_message",
    "problem_message",
    "validate_records",
]


_FRAME_CHECK_COLUMNS = {
    "coord_units_given_with_coordinates": "coord_units",
    "x_and_y_together": "coord_x, coord_y",
    "one_unit_per_property": "property_unit",
    "one_coordinate_unit": "coord_units",
}


class ValidationReport:
    """What validation changed: rows dropped on request, with the reason."""

    def __init__(self, dropped: pd.DataFrame | None = None) -> None:
        self.dropped = dropped if dropped is not None else failure_table()

    @property
    def n_dropped(self) -> int:
        return len(self.dropped)


def validate_records(
    records: pd.DataFrame,
    *,
    dropna: bool = False,
    allow_duplicates: bool = False,
    report: ValidationReport | None = None,
    prior: AnnotationValidationError | None = None,
) -> pd.DataFrame:
    """Validate canonical records; return them, or raise one error listing every failure.

    Parameters
    ----------
    records : pandas.DataFrame
        Canonical records (see :func:`~atomscale_accessors.records.to_records`).
    dropna : bool, default False
        Drop records whose value is NaN instead of failing on them, with an
        :class:`~atomscale_accessors.errors.AtomscaleWarning` saying how many.
    allow_duplicates : bool, default False
        Accept several records of the same property at the same position.
    report : ValidationReport, optional
        Filled with the rows dropped by ``dropna``.
    prior : AnnotationValidationError, optional
        Problems found while building the records (unknown columns, missing units), to be
        reported together with the schema's failures in one error.

    Returns
    -------
    pandas.DataFrame
        The records, less the rows dropped by ``dropna``.

    Raises
    ------
    AnnotationValidationError
        Listing the failing checks with counts and at most ``MAX_EXAMPLES`` distinct
        example rows; ``.failure_cases`` holds the first ``MAX_FAILURE_CASES`` failures.
    """
    failures = FailureCollector()
    if prior is not None:
        failures.add(prior.failure_cases)
    valid = check_records(
        records, failures, dropna=dropna, allow_duplicates=allow_duplicates, report=report
    )
    if failures or prior is not None:
        reasons = prior.reasons if prior is not None else []
        n_rows = len(valid) + (_left_out(prior.failure_cases, valid) if prior is not None else 0)
        raise failures.error(n_rows, reasons=reasons) from None
    return valid


def check_records(
    records: pd.DataFrame,
    failures: FailureCollector,
    *,
    dropna: bool = False,
    allow_duplicates: bool = False,
    report: ValidationReport | None = None,
) -> pd.DataFrame:
    """:func:`validate_records` that adds the failures to ``failures`` instead of raising,
    so that a caller validating in parts (the blocks of a map) reports them all at once.

    Returns
    -------
    pandas.DataFrame
        The records, less the rows dropped by ``dropna``.
    """
    if dropna:
        missing = records["property_value"].isna().to_numpy()
        if missing.any():
            dropped = records.index[missing]
            n_dropped = int(missing.sum())
            warnings.warn(
                f"dropna=True left out {n_dropped:,} "
                f"{'record' if n_dropped == 1 else 'records'} without a value "
                f"(rows {quote_list(dropped, limit=5)})",
                AtomscaleWarning,
                stacklevel=user_stacklevel(),
            )
            if report is not None:
                report.dropped = pd.DataFrame(
                    {
                        "index": list(dropped),
                        "column": "property_value",
                        "check": "not_nullable",
                        "failure_case": np.nan,
                    }
                )
            records = records.loc[~missing]
    schema = records_schema(allow_duplicates=allow_duplicates)
    try:
        # Positional index while validating: pandera's unique check and failure table want
        # plain labels, and user indexes may repeat (wide input) or be a MultiIndex.
        # Text columns as categoricals: every check then runs on the few distinct values.
        positional = compact_records(records.reset_index(drop=True))
        schema.validate(positional, lazy=True, inplace=True)
    except pandera.errors.SchemaErrors as exc:
        table = _failure_table(exc.failure_cases, records)
        failures.add(_with_unreportable_rows(table, records, schema))
    return records


def _left_out(prior: pd.DataFrame, records: pd.DataFrame) -> int:
    """Input rows with a failure that are not among the records (a cell that could not be
    read leaves its row out of the schema checks): they count among the rows checked."""
    labels = pd.unique(prior["index"].dropna().to_numpy(dtype=object))
    if not len(labels):
        return 0
    try:
        present = records.index[records.index.isin(list(labels))]
        return len(labels) - len(set(present) & set(labels.tolist()))
    except TypeError:  # labels that cannot be compared or hashed
        return 0


def _failure_table(cases: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """pandera's failure cases with positions mapped back to the input's row labels."""
    positions = pd.to_numeric(cases["index"], errors="coerce")
    order = np.argsort(positions.fillna(-1).to_numpy(), kind="stable")
    cases, positions = cases.iloc[order], positions.iloc[order]
    labels = np.array(records.index, dtype=object)
    mapped = [
        labels[int(p)] if p == p and 0 <= p < len(labels) else None for p in positions.tolist()
    ]
    table = pd.DataFrame(
        {
            "index": pd.Series(mapped, dtype=object),
            "column": pd.Series(cases["column"].tolist(), dtype=object),
            "check": pd.Series(cases["check"].astype(str).map(_check_name).tolist(), dtype=object),
            "failure_case": pd.Series(cases["failure_case"].tolist(), dtype=object),
        }
    )
    # A frame-wide check is reported once per column by pandera; once per row, under the
    # column it is about, is enough.
    table["_pos"] = positions.to_numpy()
    for check, column in _FRAME_CHECK_COLUMNS.items():
        wide = table["check"] == check
        if wide.any():
            table.loc[wide, "column"] = column
            table.loc[wide, "failure_case"] = None
    # One check tests metadata; name the rule each row breaks.
    meta = (table["column"] == "metadata") & (table["check"] == "json_object")
    if meta.any():
        table.loc[meta, "check"] = [
            metadata_problem(case) or "json_object" for case in table.loc[meta, "failure_case"]
        ]
    table = table.drop_duplicates(subset=["index", "column", "check"], ignore_index=True)
    _explain_units(table, records)
    table = table.drop(columns="_pos")
    # A failed uniqueness check lists each member column of each duplicate row; one line
    # per duplicate row says the same more plainly.
    uniq = table["check"] == REPEAT_CHECK
    if uniq.any():
        dups = (
            table[uniq]
            .drop_duplicates(subset="index")
            .assign(column=REPEAT_COLUMN, failure_case=REPEAT_CASE)
        )
        table = pd.concat([table[~uniq], dups], ignore_index=True)
    return table


def _explain_units(table: pd.DataFrame, records: pd.DataFrame) -> None:
    """Say which unit clashes with which, on rows failing a one-unit rule."""
    for check, column, group in (
        ("one_unit_per_property", "property_unit", "property_name"),
        ("one_coordinate_unit", "coord_units", None),
    ):
        hit = (table["check"] == check).to_numpy(dtype=bool)
        rows = table.index[hit]
        if not len(rows):
            continue
        units = records[column].to_numpy(dtype=object)
        groups = records[group].to_numpy(dtype=object) if group else np.zeros(len(records))
        first: dict[Any, Any] = {}
        for g, u in zip(groups.tolist(), units.tolist(), strict=True):
            if u is not None and u == u:
                first.setdefault(g, u)
        for row, pos in zip(
            rows, table["_pos"].to_numpy(dtype=np.int64)[hit].tolist(), strict=True
        ):
            what = f" for {quote(groups[pos])}" if group else ""
            table.at[row, "failure_case"] = (
                f"{quote(units[pos])}{what}, where other rows have {quote(first.get(groups[pos]))}"
            )


def _with_unreportable_rows(
    table: pd.DataFrame, records: pd.DataFrame, schema: Any
) -> pd.DataFrame:
    """Replace pandera's reports of values it could not print (its error formatter fails on
    a lone surrogate, and on metadata nested past the recursion limit) with one row per
    offending cell."""
    cases = table["failure_case"]
    whole = table["index"].isna()

    def failed_with(error: str) -> pd.Series:
        return whole & cases.map(lambda case: isinstance(case, str) and case.startswith(error))

    unencodable, too_deep = failed_with("UnicodeEncodeError"), failed_with("RecursionError")
    if not (unencodable.any() or too_deep.any()):
        return table
    rows = []
    for column in table.loc[unencodable, "column"].unique():
        for label, value in zip(records.index, records[column].tolist(), strict=True):
            if isinstance(value, str) and not _encodes(value):
                rows.append((label, column, "text", ascii(value)))
    labels = np.array(records.index, dtype=object)
    for column, check in dict.fromkeys(
        zip(table.loc[too_deep, "column"], table.loc[too_deep, "check"], strict=True)
    ):
        test = next(c for c in schema.columns[column].checks if c.name == check)
        passed = test(records[column].reset_index(drop=True)).check_output
        for position in passed.index[~passed.to_numpy(dtype=bool)]:
            # Quoted: the object itself cannot be printed, not even by the failure table.
            value = records[column].iloc[position]
            if column == "metadata":
                check = metadata_problem(value) or check
            rows.append((labels[position], column, check, quote(value)))
    fixed = pd.DataFrame(rows, columns=list(FAILURE_COLUMNS))
    return pd.concat([table[~(unencodable | too_deep)], fixed], ignore_index=True)


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_name(check: str) -> str:
    if check.startswith("column_in_dataframe"):
        return "column_present"
    if check in {"field_uniqueness", "multiple_fields_uniqueness"}:
        return "unique_position"
    if check.startswith("column_in_schema"):
        return "unknown_column"
    return check

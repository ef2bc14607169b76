"""Run the records schema and turn its failures into one readable error.

pandera runs lazily, so every failing check is found in one pass. The error's message is
capped (a count per check and a handful of example rows); the complete failure table is
kept on the exception for code that wants every case.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import pandera.errors

from .errors import AnnotationValidationError
from .schemas import POSITION_KEY, compact_records, records_schema

__all__ = [
    "MAX_EXAMPLES",
    "ValidationReport",
    "failure_message",
    "problem_message",
    "validate_records",
]

log = logging.getLogger("atomscale_accessors")

#: Example rows shown in an error message; the rest are only in ``failure_cases``.
MAX_EXAMPLES = 10
_FAILURE_COLUMNS = ["index", "column", "check", "failure_case"]
_FRAME_CHECK_COLUMNS = {
    "coord_units_given_with_coordinates": "coord_units",
    "x_and_y_together": "coord_x, coord_y",
    "one_unit_per_property": "property_unit",
    "one_coordinate_unit": "coord_units",
}


class ValidationReport:
    """What validation changed: rows dropped on request, with the reason."""

    def __init__(self, dropped: pd.DataFrame | None = None) -> None:
        self.dropped = dropped if dropped is not None else pd.DataFrame(columns=_FAILURE_COLUMNS)

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
        Drop records whose value is NaN (and log how many) instead of failing on them.
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
        Listing the failing checks with counts and at most ``MAX_EXAMPLES`` example rows;
        ``.failure_cases`` holds every failure.
    """
    if dropna:
        missing = records["property_value"].isna().to_numpy()
        if missing.any():
            dropped = records.index[missing]
            shown = ", ".join(repr(label) for label in dropped[:5])
            log.warning(
                "dropping %d records whose value is NaN (rows %s%s)",
                missing.sum(),
                shown,
                ", ..." if len(dropped) > 5 else "",
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
    table = None
    try:
        # Positional index while validating: pandera's unique check and failure table want
        # plain labels, and user indexes may repeat (wide input) or be a MultiIndex.
        # Text columns as categoricals: every check then runs on the few distinct values.
        positional = compact_records(records.reset_index(drop=True))
        schema.validate(positional, lazy=True, inplace=True)
    except pandera.errors.SchemaErrors as exc:
        table = _with_unencodable_rows(_failure_table(exc.failure_cases, records), records)
    if prior is not None:
        both = prior.failure_cases if table is None else pd.concat([prior.failure_cases, table])
        both = both.reset_index(drop=True)
        raise AnnotationValidationError(
            problem_message(prior.reasons, both, len(records)), both, reasons=prior.reasons
        ) from None
    if table is not None:
        raise AnnotationValidationError(failure_message(table, len(records)), table) from None
    return records


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
    table = table.drop_duplicates(subset=["index", "column", "check"], ignore_index=True)
    _explain_units(table, records)
    table = table.drop(columns="_pos")
    # A failed uniqueness check lists each member column of each duplicate row; one line
    # per duplicate row says the same more plainly.
    uniq = table["check"] == "unique_position"
    if uniq.any():
        dups = (
            table[uniq]
            .drop_duplicates(subset="index")
            .assign(
                column=", ".join(POSITION_KEY), failure_case="same property at the same position"
            )
        )
        table = pd.concat([table[~uniq], dups], ignore_index=True)
    return table


def _explain_units(table: pd.DataFrame, records: pd.DataFrame) -> None:
    """Say which unit clashes with which, on rows failing a one-unit rule."""
    for check, column, group in (
        ("one_unit_per_property", "property_unit", "property_name"),
        ("one_coordinate_unit", "coord_units", None),
    ):
        rows = table.index[table["check"] == check]
        if not len(rows):
            continue
        units = records[column].to_numpy(dtype=object)
        groups = records[group].to_numpy(dtype=object) if group else np.zeros(len(records))
        first: dict[Any, Any] = {}
        for g, u in zip(groups.tolist(), units.tolist(), strict=True):
            if u is not None and u == u:
                first.setdefault(g, u)
        for row in rows:
            pos = int(table.at[row, "_pos"])
            what = f" for {groups[pos]!r}" if group else ""
            table.at[row, "failure_case"] = (
                f"{units[pos]!r}{what}, where other rows have {first.get(groups[pos])!r}"
            )


def _with_unencodable_rows(table: pd.DataFrame, records: pd.DataFrame) -> pd.DataFrame:
    """Replace pandera's report of text it could not print (a lone surrogate makes its
    error formatter fail) with one row per offending cell."""
    broken = table["index"].isna() & table["failure_case"].map(
        lambda case: isinstance(case, str) and case.startswith("UnicodeEncodeError")
    )
    if not broken.any():
        return table
    rows = []
    for column in table.loc[broken, "column"].unique():
        for label, value in zip(records.index, records[column].tolist(), strict=True):
            if isinstance(value, str) and not _encodes(value):
                rows.append((label, column, "text", ascii(value)))
    fixed = pd.DataFrame(rows, columns=_FAILURE_COLUMNS)
    return pd.concat([table[~broken], fixed], ignore_index=True)


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


def problem_message(reasons: list[str], table: pd.DataFrame, n_rows: int) -> str:
    """The reasons a frame could not become records, then the capped failure summary."""
    lines = ["the frame cannot be turned into annotations:"]
    lines += [f"  - {reason}" for reason in dict.fromkeys(reasons)]
    return "\n".join([*lines, failure_message(table, n_rows)])


def failure_message(table: pd.DataFrame, n_rows: int, *, subject: str = "records") -> str:
    """A capped summary of a failure table: counts per check, then a few examples."""
    if table.empty:
        return f"{subject} failed validation"
    counts = table.groupby(["column", "check"], sort=False, dropna=False).size()
    n_bad = table["index"].dropna().nunique()
    lines = [
        f"{n_bad} of {n_rows} {subject} failed validation ({len(table)} failures):"
        if n_bad
        else f"{subject} failed validation ({len(table)} failures):"
    ]
    for (column, check), count in counts.items():
        lines.append(f"  - {column}: {check} ({count} {'case' if count == 1 else 'cases'})")
    examples = table.head(MAX_EXAMPLES)
    lines.append(f"examples (first {len(examples)}; all in .failure_cases):")
    for row in examples.itertuples(index=False):
        lines.append(
            f"  row {_fmt(row.index)}: {row.column} = {_fmt(row.failure_case)} ({row.check})"
        )
    return "\n".join(lines)


def _fmt(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."

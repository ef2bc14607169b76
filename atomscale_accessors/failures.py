"""The failure table, the one collector of problems, and the one formatter of their messages.

Every validation error of the library carries a failure table (one row per failure, in the
columns of :data:`FAILURE_COLUMNS`) and a message summarising it. Both are bounded whatever
the input: the collector keeps at most :data:`MAX_FAILURE_CASES` cases (and counts the
rest exactly), and the formatter quotes at most :data:`MAX_QUOTED` characters of any value
or name, lists at most :data:`MAX_EXAMPLES` items of each kind and cuts the whole message
at :data:`MAX_MESSAGE` characters.
"""

from __future__ import annotations

import itertools
import reprlib
from collections.abc import Iterable, Sequence, Sized
from typing import Any

import pandas as pd

from .errors import AnnotationValidationError
from .fields import POSITION_KEY

__all__ = [
    "CHECK_HINTS",
    "FAILURE_COLUMNS",
    "MAX_EXAMPLES",
    "MAX_FAILURE_CASES",
    "MAX_MESSAGE",
    "MAX_QUOTED",
    "FailureCollector",
    "agree",
    "cap_message",
    "clip",
    "failure_message",
    "failure_table",
    "format_message",
    "plural",
    "problem_message",
    "quote",
    "quote_list",
]

#: Columns of a failure table: the input row label (``None`` for a failure of the whole
#: input), the column, the check that failed and the offending value.
FAILURE_COLUMNS: tuple[str, ...] = ("index", "column", "check", "failure_case")
#: Failure cases kept in ``failure_cases``; beyond it failures are only counted (about
#: 400 bytes a case: a map of 10**7 bad cells would otherwise hold gigabytes).
MAX_FAILURE_CASES = 100_000
#: Items of each kind (reasons, checks, example rows, names) listed in a message.
MAX_EXAMPLES = 10
#: Characters of one value or name quoted in a message.
MAX_QUOTED = 80
#: Characters of a whole message.
MAX_MESSAGE = 4_000
#: What to do about a check whose failures say it only by name: listed with the reasons
#: whenever the check failed.
CHECK_HINTS: dict[str, str] = {
    "coord_units_given_with_coordinates": (
        "positions without a unit: pass coord_units='mm' (or the unit they are in), or the "
        "column that holds their unit"
    ),
}
# A reason is a sentence around a few quoted values (or a list of MAX_EXAMPLES of them).
_MAX_LINE = 20 * MAX_QUOTED
# Rows looked at to find MAX_EXAMPLES distinct examples (failures often repeat).
_EXAMPLE_SCAN = 100 * MAX_EXAMPLES
# Row labels named in one example line; the others are counted.
_LABELS_SHOWN = 5

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = MAX_QUOTED
_repr.maxlist = _repr.maxtuple = _repr.maxset = _repr.maxfrozenset = MAX_EXAMPLES
_repr.maxdict = _repr.maxlevel = 3


# -- quoting ---------------------------------------------------------------------------------
def quote(value: Any, limit: int = MAX_QUOTED) -> str:
    """``repr(value)``, at most about ``limit`` characters, saying how long it was.

    Examples
    --------
    >>> from atomscale_accessors.failures import quote
    >>> quote("thk")
    "'thk'"
    >>> quote("x" * 1_000_000, limit=12)
    "'xxxxxxx...' (1,000,000 characters)"
    """
    if isinstance(value, str):
        # Slice first: repr of a megabyte string is a megabyte.
        text = repr(value[: limit + 1])
        if len(value) <= limit and len(text) <= limit + 2:
            return text
        return f"{text[: limit - 4]}...{text[0]} ({len(value):,} characters)"
    try:
        text = _repr.repr(value)
    except Exception:  # a broken __repr__ must not hide the failure it describes
        text = f"<{type(value).__name__}>"
    if len(text) <= limit:
        return text
    try:
        size = f" ({len(value):,} items)"
    except TypeError:
        size = ""
    return f"{text[: limit - 3]}...{size}"


def clip(text: Any, limit: int = MAX_QUOTED) -> str:
    """``str(text)`` without quotes, at most about ``limit`` characters (a name, a check)."""
    if not isinstance(text, str):
        return quote(text, limit)
    if len(text) <= limit:
        return text
    return f"{text[: limit - 3]}... ({len(text):,} characters)"


def quote_list(values: Iterable[Any], limit: int = MAX_EXAMPLES) -> str:
    """``[v1, v2, ...]`` with at most ``limit`` items, each quoted.

    Examples
    --------
    >>> from atomscale_accessors.failures import quote_list
    >>> quote_list(["a", "b", "c"], limit=2)
    "['a', 'b', ... (3 in all)]"
    """
    total = len(values) if isinstance(values, Sized) else None
    first = list(itertools.islice(values, limit + 1))
    total = len(first) if total is None else total
    shown = ", ".join(quote(v) for v in first[:limit])
    more = f", ... ({total:,} in all)" if total > limit else ""
    return f"[{shown}{more}]"


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``"1 record"``, ``"2 records"``, ``"1,000 failures"``; ``many`` is the plural when
    it is not the noun and an s (``"properties"``).

    Examples
    --------
    >>> from atomscale_accessors.failures import plural
    >>> plural(1, "case"), plural(2_000, "case"), plural(2, "property", "properties")
    ('1 case', '2,000 cases', '2 properties')
    """
    if count == 1:
        return f"{count:,} {noun}"
    return f"{count:,} {many if many is not None else noun + 's'}"


def agree(count: int, one: str, many: str) -> str:
    """The verb for ``count`` things: ``agree(1, "is", "are")`` is ``"is"``."""
    return one if count == 1 else many


def cap_message(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` cut at a line end so that it is at most ``limit`` characters."""
    if len(text) <= limit:
        return text
    note = f"\n  ... (message cut at {limit:,} characters; the failures are in .failure_cases)"
    cut = text[: limit - len(note)]
    if "\n" in cut:
        cut = cut[: cut.rindex("\n")]
    return cut + note


# -- the table and the collector -------------------------------------------------------------
#: How a record that repeats a property at a position is reported.
REPEAT_COLUMN = ", ".join(POSITION_KEY)
REPEAT_CHECK = "unique_position"
REPEAT_CASE = "same property at the same position"


def repeat_failures(
    labels: Iterable[Any], check: str = REPEAT_CHECK, case: str = REPEAT_CASE
) -> pd.DataFrame:
    """The failure table of records that repeat a property at a position (by their
    labels): one row each."""
    return failure_table((label, REPEAT_COLUMN, check, case) for label in labels)


def failure_table(rows: Iterable[Sequence[Any]] = ()) -> pd.DataFrame:
    """A failure table from ``(index, column, check, failure_case)`` rows (object columns)."""
    rows = list(rows)
    return pd.DataFrame(
        {
            name: pd.Series([row[i] for row in rows], dtype=object)
            for i, name in enumerate(FAILURE_COLUMNS)
        }
    )


class FailureCollector:
    """Failures gathered from several checks, capped in memory.

    Counts per ``(column, check)`` are always exact; the first ``limit`` cases are kept and
    the rest only counted. A caller reading its input in parts can stop once :attr:`full`
    (and then sets :attr:`stopped_early`, which makes every count a lower bound).

    Parameters
    ----------
    limit : int or None, default MAX_FAILURE_CASES
        Cases kept; ``None`` keeps every case.

    Examples
    --------
    >>> from atomscale_accessors.failures import FailureCollector
    >>> failures = FailureCollector(limit=2)
    >>> failures.add_cases([0, 1, 2], "property_value", "finite", [float("inf")] * 3)
    >>> len(failures.table()), failures.n_failures, failures.dropped, failures.full
    (2, 3, 1, True)
    """

    def __init__(self, limit: int | None = MAX_FAILURE_CASES) -> None:
        self.limit = limit
        self.counts: dict[tuple[Any, Any], int] = {}
        # Failures of single rows per (column, check): a row fails a check once, so the
        # largest is a lower bound of the rows that failed, when cases were dropped.
        self.row_counts: dict[tuple[Any, Any], int] = {}
        self.dropped = 0
        self.stopped_early = False
        self._kept: list[pd.DataFrame] = []
        self._n_kept = 0

    def __bool__(self) -> bool:
        return bool(self.counts)

    @property
    def n_failures(self) -> int:
        """Every failure seen, kept or not."""
        return sum(self.counts.values())

    @property
    def full(self) -> bool:
        """No room for another case."""
        return self.limit is not None and self._n_kept >= self.limit

    def _room(self, n: int) -> int:
        return n if self.limit is None else max(0, min(n, self.limit - self._n_kept))

    def add(self, table: pd.DataFrame | None) -> None:
        """Count every row of a failure table and keep as many as there is room for."""
        if table is None or not len(table):
            return
        table = table[list(FAILURE_COLUMNS)]
        whole = table["index"].isna()
        try:
            sizes = table.groupby(
                [table["column"], table["check"], whole], sort=False, dropna=False
            ).size()
            counted = [
                ((c, k), bool(w), int(n))
                for (c, k, w), n in zip(sizes.index, sizes.tolist(), strict=True)
            ]
        except TypeError:  # unhashable column labels: one by one
            counted = [
                ((c, k), bool(w), 1)
                for c, k, w in zip(table["column"], table["check"], whole, strict=True)
            ]
        for key, of_whole, n in counted:
            self._count(key, n, 0 if of_whole else n)
        self._keep(table)

    def add_cases(
        self, index: Iterable[Any], column: Any, check: str, cases: Iterable[Any]
    ) -> None:
        """Failures of one check in one column, one per row label; only the kept ones are
        built into a table."""
        index = list(index)
        if not index:
            return
        self._count((column, check), len(index), sum(not _missing(i) for i in index))
        room = self._room(len(index))
        if room:
            cases = list(cases)[:room]
            self._keep(
                failure_table((i, column, check, c) for i, c in zip(index, cases, strict=False))
            )
        self.dropped += len(index) - room

    def add_one(self, column: Any, check: str, case: Any = None, index: Any = None) -> None:
        """One failure (of the whole input when ``index`` is None)."""
        self.add_cases([index], column, check, [case])

    def _count(self, key: tuple[Any, Any], n: int, rows: int) -> None:
        try:
            hash(key)
        except TypeError:  # an unhashable column label: counted under its text
            key = (quote(key[0]), key[1])
        self.counts[key] = self.counts.get(key, 0) + n
        if rows:
            self.row_counts[key] = self.row_counts.get(key, 0) + rows

    def _keep(self, table: pd.DataFrame) -> None:
        room = self._room(len(table))
        if room:
            # A copy of a part: a slice would keep the whole table alive.
            self._kept.append(table if room == len(table) else table.iloc[:room].copy())
            self._n_kept += room
        self.dropped += len(table) - room

    def table(self) -> pd.DataFrame:
        """The kept cases, in the order they were added."""
        if not self._kept:
            return failure_table()
        table = pd.concat(self._kept, ignore_index=True) if len(self._kept) > 1 else self._kept[0]
        return table.reset_index(drop=True)

    def message(self, n_rows: int, *, reasons: Sequence[str] = (), noun: str = "record") -> str:
        """The capped message: the reasons, the counts, a few distinct examples."""
        return format_message(reasons=reasons, failures=self, n_rows=n_rows, noun=noun)

    def error(
        self,
        n_rows: int,
        *,
        reasons: Sequence[str] = (),
        cls: type[AnnotationValidationError] = AnnotationValidationError,
    ) -> AnnotationValidationError:
        """The error reporting every failure collected (and the reasons, if any, then the
        hints of the checks that failed)."""
        checks = {check for _, check in self.counts}
        hints = [hint for check, hint in CHECK_HINTS.items() if check in checks]
        reasons = list(dict.fromkeys([*reasons, *hints]))
        return cls(self.message(n_rows, reasons=reasons), self.table(), reasons=reasons)


# -- the formatter ---------------------------------------------------------------------------
def format_message(
    *,
    reasons: Sequence[str] = (),
    heading: str = "the frame cannot be turned into annotations",
    failures: FailureCollector | None = None,
    n_rows: int = 0,
    noun: str = "record",
) -> str:
    """The one way a problem message is written, capped whatever the input.

    Parameters
    ----------
    reasons : list of str
        Sentences saying what is wrong (listed once each, at most ``MAX_EXAMPLES``).
    heading : str
        The line above the reasons.
    failures : FailureCollector, optional
        Failures to summarise: counts per column and check, then a few distinct examples.
    n_rows : int
        How many records (or rows) were checked.
    noun : str
        What a row is called in the summary.
    """
    lines: list[str] = []
    unique = list(dict.fromkeys(reasons))
    if unique:
        lines.append(f"{heading}:")
        lines += [f"  - {_line(reason)}" for reason in unique[:MAX_EXAMPLES]]
        if len(unique) > MAX_EXAMPLES:
            lines.append(f"  ... and {len(unique) - MAX_EXAMPLES:,} more")
    if failures is not None and (failures or not unique):
        lines += _summary(failures, n_rows, noun)
    return cap_message("\n".join(lines))


def _summary(failures: FailureCollector, n_rows: int, noun: str) -> list[str]:
    table = failures.table()
    total = failures.n_failures
    if not total:
        return ["the input failed validation"]
    some = "at least " if failures.stopped_early else ""
    labels = table["index"].dropna()
    try:
        n_bad = labels.nunique()
    except TypeError:  # unhashable labels
        n_bad = len(labels)
    exact = not failures.dropped and not failures.stopped_early
    if failures.dropped:
        n_bad = max(n_bad, *failures.row_counts.values(), 0)
        exact = n_bad == n_rows and not failures.stopped_early
    bad = f"{'' if exact else 'at least '}{n_bad:,}"
    counted = f"{some}{plural(total, 'failure')}"
    if failures.stopped_early:
        lines = [
            f"{bad} {noun}s failed validation ({counted}); validation stopped early, after "
            f"the first {plural(n_rows, noun)}, on reaching {failures.limit:,} failures: the "
            "rest was not read, so the counts are lower bounds:"
        ]
    elif n_bad:
        lines = [f"{bad} of {plural(n_rows, noun)} failed validation ({counted}):"]
    else:
        lines = [f"the input failed validation ({counted}):"]
    pairs = list(failures.counts.items())
    for (column, check), count in pairs[:MAX_EXAMPLES]:
        lines.append(f"  - {clip(column)}: {clip(check)} ({some}{plural(count, 'case')})")
    if len(pairs) > MAX_EXAMPLES:
        lines.append(f"  ... and {len(pairs) - MAX_EXAMPLES:,} more columns and checks")
    examples = _examples(table)
    if examples:
        where = (
            f"the first {plural(len(table), 'failure')} in .failure_cases, "
            f"{failures.dropped:,} more only counted"
            if failures.dropped
            else "all in .failure_cases"
        )
        lines.append(f"{'example' if len(examples) == 1 else 'examples'} ({where}):")
        lines += examples
    return lines


def _examples(table: pd.DataFrame) -> list[str]:
    """At most MAX_EXAMPLES distinct example lines, in table order: the rows failing one
    check with one value share a line."""
    rows: dict[str, dict[str, None]] = {}  # "column = case (check)" -> row labels, quoted
    scanned = table.head(_EXAMPLE_SCAN)
    for row in scanned.itertuples(index=False):
        if _missing(row.index):
            line = _whole_input_example(row.column, row.check, row.failure_case)
            if line is not None:
                rows.setdefault(line, {})
            continue
        what = f"{clip(row.column)} = {quote(row.failure_case)} ({clip(row.check)})"
        if what in rows or len(rows) < MAX_EXAMPLES:
            # A label once, though its row failed alike for several properties.
            rows.setdefault(what, {})[quote(row.index)] = None
    more = len(table) > len(scanned)
    return [_example_line(what, list(labels), more) for what, labels in rows.items()]


def _example_line(what: str, labels: list[str], more: bool) -> str:
    if not labels:  # a failure of the whole input
        return f"  {what}"
    if len(labels) == 1:
        return f"  row {labels[0]}: {what}"
    shown = ", ".join(labels[:_LABELS_SHOWN])
    rest = len(labels) - _LABELS_SHOWN
    if rest > 0:  # counted among the rows looked at: a lower bound when there were more
        shown += " and more" if more else f" and {rest:,} more"
    return f"  rows {shown}: {what}"


def _whole_input_example(column: Any, check: Any, case: Any) -> str | None:
    # A failure of the whole input: its count line says it all, unless the case adds to it.
    if _missing(case) or _same_name(case, column):
        return None
    return f"{clip(column)} ({clip(check)}): {quote(case)}"


def _missing(value: Any) -> bool:
    """Whether a row label or case is unset (None, NaN, NA, NaT): never shown as a row."""
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and value != value


def _same_name(case: Any, column: Any) -> bool:
    try:
        return bool(case == column) or (isinstance(case, list | tuple) and list(case) == [column])
    except Exception:  # arrays compare element-wise
        return False


def _line(text: str) -> str:
    return text if len(text) <= _MAX_LINE else f"{text[: _MAX_LINE - 3]}..."


# -- for a finished table --------------------------------------------------------------------
def _collected(table: pd.DataFrame) -> FailureCollector:
    failures = FailureCollector(limit=None)
    failures.add(table)
    return failures


def failure_message(table: pd.DataFrame, n_rows: int, *, noun: str = "record") -> str:
    """The capped summary of a failure table: counts per check, then a few examples."""
    return _collected(table).message(n_rows, noun=noun)


def problem_message(reasons: Sequence[str], table: pd.DataFrame, n_rows: int) -> str:
    """The reasons the input could not become records, then the capped failure summary."""
    return _collected(table).message(n_rows, reasons=reasons)

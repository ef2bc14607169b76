"""One definition of the options of an upload and of a map, their types and defaults.

Every way of uploading (the pandas, xarray and dask accessors, :func:`upload_records`,
:func:`send_records`, :func:`upload_map` and the command line) takes the same options and
turns them into one :class:`UploadOptions`, checked once, before anything is read or sent.
Every way of reading a map (flatten, validate, upload) turns its options into one
:class:`MapOptions` the same way.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal, Self

import numpy as np

from .errors import user_stacklevel
from .failures import quote

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_CHUNK_BYTES",
    "DEFAULT_MAX_WORKERS",
    "IF_EXISTS",
    "MIN_CHUNK_BYTES",
    "ExtraDims",
    "IfExists",
    "MapOptions",
    "UploadOptions",
    "split_options",
]

IfExists = Literal["fail", "skip", "append", "update"]
ExtraDims = Literal["error", "metadata"]
IF_EXISTS: tuple[str, ...] = ("fail", "skip", "append", "update")
DEFAULT_CHUNK_SIZE = 5_000
DEFAULT_MAX_CHUNK_BYTES = 8 * 2**20
DEFAULT_MAX_WORKERS = 4
#: The smallest request body allowed: room for the largest record the validation lets
#: through (``schemas.MAX_RECORD_BYTES``), so every record fits a chunk of its own.
MIN_CHUNK_BYTES = 128 * 1024


class _Options:
    """Taking a frozen dataclass of options out of keyword arguments."""

    @classmethod
    def take(
        cls, given: Mapping[str, Any], options: Self | None = None
    ) -> tuple[Self, dict[str, Any]]:
        """Split keyword arguments into these options and the rest.

        ``options``, when given, provides the options not named in ``given``.
        """
        # The subclasses are dataclasses, which mypy cannot know of this base class.
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        given = _renamed(given, names)
        mine = {k: v for k, v in given.items() if k in names}
        rest = {k: v for k, v in given.items() if k not in names}
        if options is not None:
            mine = {**{name: getattr(options, name) for name in names}, **mine}
        return cls(**mine), rest

    @classmethod
    def of(cls, options: Self | None, given: Mapping[str, Any]) -> Self:
        """``options`` with the options named in ``given``; ``TypeError`` naming any other
        keyword."""
        mine, rest = cls.take(given, options)
        if rest:
            known = [f.name for f in fields(cls)]  # type: ignore[arg-type]  # as in take
            raise TypeError("unexpected keyword arguments: " + _unknown(rest, known))
        return mine


@dataclass(frozen=True)
class UploadOptions(_Options):
    """The options of an upload, checked when made (every problem in one ``ValueError``).

    Parameters
    ----------
    client : Client or SDK client, optional
        Default: a client configured from ``AS_API_KEY`` and ``AS_API_ENDPOINT``.
    if_exists : {"fail", "skip", "append", "update"}, default "fail"
        What to do with records whose property is stored at the same position already:
        raise :class:`~atomscale_accessors.errors.AnnotationExistsError` and send nothing;
        send only the new ones; send everything; or PATCH the stored ones with the new
        values and create the rest.
    chunksize : int, default 5000
        Records per request at most.
    max_chunk_bytes : int, default 8 MiB
        Request body size at most (at least 128 KiB).
    max_workers : int, default 4
        Requests in flight at once.
    progress_bar : bool or callable, optional
        ``None``: a progress bar on a terminal or in a notebook, none otherwise;
        ``False``: never; ``True``: always; a callable is called as
        ``progress_bar(done, total)``.
    dry_run : bool, default False
        Send nothing; return the records that would be sent, with a ``chunk`` column.
    verify : bool, default False
        After the upload, list what the sample holds where it wrote, and raise
        :class:`~atomscale_accessors.errors.UploadError` when an annotation reported
        created is not stored, or a position holds annotations the upload does not
        account for (another machine uploading the same data at the same time).
    create_sample : bool, default False
        Create a sample given by a name that matches none (after the input is validated,
        never in a dry run). By default an unknown name is an error, so that a typo does
        not create a sample.
    project : str, optional
        A project's name or id: names are looked up among its samples, and a created
        sample is added to it.

    ``None`` for ``chunksize``, ``max_chunk_bytes`` or ``max_workers`` means the default.

    Examples
    --------
    >>> from atomscale_accessors.options import UploadOptions
    >>> UploadOptions(if_exists="skip", chunksize=None).chunksize
    5000
    >>> UploadOptions(if_exists="merge", max_workers=0)
    Traceback (most recent call last):
    ...
    ValueError: bad upload options: if_exists must be one of 'fail', 'skip', 'append', 'update', got 'merge'; max_workers must be a positive integer, got 0
    """

    client: Any = None
    if_exists: IfExists = "fail"
    chunksize: int = DEFAULT_CHUNK_SIZE
    max_chunk_bytes: int = DEFAULT_MAX_CHUNK_BYTES
    max_workers: int = DEFAULT_MAX_WORKERS
    progress_bar: bool | Callable[[int, int | None], None] | None = None
    dry_run: bool = False
    verify: bool = False
    create_sample: bool = False
    project: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.if_exists not in IF_EXISTS:
            allowed = ", ".join(map(repr, IF_EXISTS))
            problems.append(f"if_exists must be one of {allowed}, got {quote(self.if_exists)}")
        problems += self._size_problems()
        if not (
            self.progress_bar is None
            or isinstance(self.progress_bar, bool)
            or callable(self.progress_bar)
        ):
            problems.append(
                f"progress_bar must be a bool or a callable, got {quote(self.progress_bar)}"
            )
        if self.project is not None and not (
            isinstance(self.project, str) and self.project.strip()
        ):
            problems.append(f"project must be a project's name or id, got {quote(self.project)}")
        for name in ("dry_run", "verify", "create_sample"):
            if not isinstance(getattr(self, name), bool | np.bool_):
                problems.append(f"{name} must be True or False, got {quote(getattr(self, name))}")
        if problems:
            raise ValueError("bad upload options: " + "; ".join(problems))

    def _size_problems(self) -> list[str]:
        """Check the sizes, putting in the default of each that is None."""
        problems = []
        defaults = {
            "chunksize": DEFAULT_CHUNK_SIZE,
            "max_chunk_bytes": DEFAULT_MAX_CHUNK_BYTES,
            "max_workers": DEFAULT_MAX_WORKERS,
        }
        for name, default in defaults.items():
            value = getattr(self, name)
            if value is None:
                object.__setattr__(self, name, default)
            elif isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                problems.append(f"{name} must be a positive integer, got {quote(value)}")
            else:
                object.__setattr__(self, name, int(value))
        if isinstance(self.max_chunk_bytes, int) and 0 < self.max_chunk_bytes < MIN_CHUNK_BYTES:
            problems.append(f"max_chunk_bytes must be at least {MIN_CHUNK_BYTES}")
        return problems


@dataclass(frozen=True)
class MapOptions(_Options):
    """How a map becomes records, checked when made (every problem in one ``ValueError``).

    Parameters
    ----------
    x, y, z : hashable, optional
        Names of the coordinates (or data variables) holding the positions. Default: the
        coordinate with the CF attribute ``axis="X"`` (``"Y"``, ``"Z"``), else one of
        :data:`~atomscale_accessors.maps.COORD_NAMES`. ``x`` and ``y`` are required, ``z``
        is optional.
    variables : hashable or list, optional
        The data variables to flatten. Default: every data variable that has all the
        spatial dimensions.
    property_name : str or dict, optional
        The property name: one string (one variable only) or ``{variable: name}``.
        Default: the variable's ``property_name`` attribute, else its name.
    property_unit : str or dict, optional
        The unit of the values: one string for every variable or ``{variable: unit}``.
        Default: the variable's ``units`` attribute. A missing unit is an error (use
        ``"1"`` for a dimensionless quantity).
    coord_units : str, optional
        The unit of the positions. Default: the ``units`` attribute of ``x``. Coordinates
        in other units are converted with pint when it is installed (and are an error
        otherwise); a coordinate without a ``units`` attribute is taken to be in
        ``coord_units``.
    coord_ref_frame, char_source_type, data_id : str, optional
        Default: the attribute of that name of the variable, else of the Dataset.
        ``coord_ref_frame`` defaults to ``"sample_relative"``.
    metadata : dict, optional
        Metadata for every record.
    extra_dims : {"error", "metadata"}, default "error"
        What to do with a variable that has a dimension besides the spatial ones (a
        wavelength, a time): raise, or flatten every slice and record the dimension's
        coordinate value in each record's metadata (``{"wavelength": 633.0}``).
    dropna : bool, default False
        Validation: drop records whose value is NaN (flattening already skips NaN cells).
    allow_duplicates : bool, optional
        Validation: accept several records of one property at one position. Default:
        only when ``extra_dims="metadata"`` flattens several slices.
    block_rows : int, optional
        Records per block at most, when a dask-backed map is read block by block.

    Examples
    --------
    >>> from atomscale_accessors.options import MapOptions
    >>> MapOptions(coord_units="mm").structure()["coord_units"]
    'mm'
    >>> MapOptions(extra_dims="drop", block_rows=0)
    Traceback (most recent call last):
    ...
    ValueError: bad map options: extra_dims must be 'error' or 'metadata', got 'drop'; block_rows must be a positive integer, got 0
    """

    x: Hashable | None = None
    y: Hashable | None = None
    z: Hashable | None = None
    variables: Hashable | Sequence[Hashable] | None = None
    property_name: str | Mapping[Hashable, str] | None = None
    property_unit: str | Mapping[Hashable, str] | None = None
    coord_units: str | None = None
    coord_ref_frame: str | None = None
    char_source_type: str | None = None
    data_id: str | None = None
    metadata: Mapping[str, Any] | None = None
    extra_dims: ExtraDims = "error"
    dropna: bool = False
    allow_duplicates: bool | None = None
    block_rows: int | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        if self.extra_dims not in ("error", "metadata"):
            problems.append(
                f"extra_dims must be 'error' or 'metadata', got {quote(self.extra_dims)}"
            )
        for name, (types, wanted) in _MAP_OPTION_TYPES.items():
            value = getattr(self, name)
            if not isinstance(value, types) and (value is not None or name == "dropna"):
                problems.append(f"{name} must be {wanted}, got {quote(value)}")
        rows = self.block_rows
        if rows is not None:
            if isinstance(rows, bool) or not isinstance(rows, int | np.integer) or rows < 1:
                problems.append(f"block_rows must be a positive integer, got {quote(rows)}")
            else:
                object.__setattr__(self, "block_rows", int(rows))
        if problems:
            raise ValueError("bad map options: " + "; ".join(problems))

    def structure(self) -> dict[str, Any]:
        """The options that say what the map is (all but the validation and block size)."""
        skip = {"dropna", "allow_duplicates", "block_rows"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


#: The map options of one type (each may also be None, but ``dropna``).
_MAP_OPTION_TYPES: dict[str, tuple[Any, str]] = {
    "property_name": (str | Mapping, "a string or a dict"),
    "property_unit": (str | Mapping, "a string or a dict"),
    "coord_units": (str, "a string"),
    "coord_ref_frame": (str, "a string"),
    "char_source_type": (str, "a string"),
    "data_id": (str, "a string"),
    "metadata": (Mapping, "a dict"),
    "dropna": (bool | np.bool_, "True or False"),
    "allow_duplicates": (bool | np.bool_, "True, False or None"),
}


def split_options(
    given: Mapping[str, Any],
    upload: UploadOptions | None = None,
    map_options: MapOptions | None = None,
) -> tuple[UploadOptions, MapOptions]:
    """The upload's and the map's options out of keyword arguments; ``TypeError`` naming
    any other keyword (with the option it is probably a misspelling of)."""
    upload_options, rest = UploadOptions.take(given, upload)
    map_opts, rest = MapOptions.take(rest, map_options)
    if rest:
        known = [f.name for f in (*fields(UploadOptions), *fields(MapOptions))]
        raise TypeError("unexpected keyword arguments: " + _unknown(rest, known))
    return upload_options, map_opts


def _unknown(given: Mapping[str, Any], known: Sequence[str]) -> str:
    shown = []
    for name in sorted(map(str, given))[:10]:
        close = difflib.get_close_matches(name, known, n=1)
        shown.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ", ".join(shown)


#: Options renamed to the names pandas' ``DataFrame.to_sql`` and pandas-gbq's ``to_gbq``
#: give the same idea; the old names still work, with a FutureWarning.
RENAMED = {"chunk_size": "chunksize", "progress": "progress_bar"}


def _renamed(given: Mapping[str, Any], names: set[str]) -> Mapping[str, Any]:
    old = [name for name in given if name in RENAMED and RENAMED[name] in names]
    if not old:
        return given
    for name in old:
        if RENAMED[name] in given:
            raise TypeError(f"{name} and {RENAMED[name]} are one option: give {RENAMED[name]}")
        warnings.warn(
            f"{name}= is now {RENAMED[name]}= (pandas' name for it); {name}= will go",
            FutureWarning,
            stacklevel=user_stacklevel(),
        )
    return {RENAMED.get(k, k) if k in old else k: v for k, v in given.items()}

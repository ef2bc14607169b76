"""The ``samples`` and ``projects`` subcommands: list them, create a sample by name.

``samples create`` prints the sample's id alone on stdout (so that
``SAMPLE=$(atomscale-accessors samples create W0421-07)`` works) and says on stderr whether
it was created or already there.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .commands import client_for
from .exits import EXIT_OK

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["cmd_projects_list", "cmd_samples_create", "cmd_samples_list"]


def _text(value: object) -> str:
    """A cell: missing values blank, times to the second."""
    import pandas as pd

    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, pd.Timestamp):
        return "" if pd.isna(value) else value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _print_table(frame: pd.DataFrame, columns: dict[str, str], right: set[int]) -> None:
    from ..demo import format_table

    rows = [[_text(v) for v in row] for row in frame[list(columns)].itertuples(index=False)]
    print(format_table(list(columns.values()), rows, right))


def cmd_samples_list(args: argparse.Namespace) -> int:
    """List the samples (of a project), one line per sample and project."""
    from ..samples import samples

    frame = samples(project=args.project, client=client_for(args))
    where = "" if args.project is None else f" in project {args.project!r}"
    if frame.empty:
        print(f"no samples{where}")
        return EXIT_OK
    columns = {
        "name": "name",
        "physical_sample_id": "id",
        "project_name": "project",
        "created": "created (UTC)",
    }
    _print_table(frame, columns, set())
    count = frame["physical_sample_id"].nunique()
    print(f"{count:,} sample{'' if count == 1 else 's'}{where}")
    return EXIT_OK


def cmd_samples_create(args: argparse.Namespace) -> int:
    """Create a sample by name (in a project); an existing one of that name is kept."""
    from ..errors import SampleNotFoundError
    from ..samples import SampleResolver

    resolver = SampleResolver(client_for(args), project=args.project)
    where = "" if args.project is None else f" in project {args.project!r}"
    name = args.name.strip()
    try:
        sample_id = resolver.resolve(name)
        note = f"sample {name!r} already exists{where}"
    except SampleNotFoundError:
        resolver.create = True  # the listing is kept: no second one
        sample_id = resolver.resolve(name)
        if sample_id in resolver.created:
            note = f"created sample {name!r}{where}"
        else:  # made elsewhere (outside the project, or by another caller meanwhile)
            note = f"sample {name!r} already exists" + (f"; added{where}" if where else "")
    print(note, file=sys.stderr)
    print(sample_id)
    return EXIT_OK


def cmd_projects_list(args: argparse.Namespace) -> int:
    """List the projects with their number of samples."""
    from ..samples import projects

    frame = projects(client=client_for(args))
    if frame.empty:
        print("no projects (projects are made on the platform)")
        return EXIT_OK
    columns = {
        "name": "name",
        "project_id": "id",
        "physical_sample_count": "samples",
        "last_updated": "last updated (UTC)",
    }
    _print_table(frame, columns, {2})
    return EXIT_OK

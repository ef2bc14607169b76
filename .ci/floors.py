"""The declared minimum versions, read from pyproject.toml, for installing exactly them.

    python .ci/floors.py constraints   # "numpy==1.26" ... : pip constraints, one a line
    python .ci/floors.py extras        # "server,plot,..." : every extra a user installs
    python .ci/floors.py tools         # the development tools of the dev extra, one a line

Every requirement with a lower bound (``name>=X``) in the dependencies and the extras
becomes ``name==X``, so the floors are written once, in pyproject.toml. Extras are
dropped from the names (pip takes none in a constraint); the package's own extras, which
only name other extras, are skipped. Needs nothing but the standard library.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# Extras that are not part of what a user installs: tools for working on the package.
NOT_FOR_USERS = {"dev", "docs"}
_REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[^;]*)(?:;.*)?$"
)
_FLOOR = re.compile(r">=\s*(?P<version>[^,\s]+)")


def _project() -> dict:
    with PYPROJECT.open("rb") as file:
        return tomllib.load(file)["project"]


def _parse(requirement: str) -> tuple[str, str]:
    match = _REQUIREMENT.match(requirement)
    if match is None:
        raise SystemExit(f"cannot read the requirement {requirement!r} in {PYPROJECT.name}")
    return match["name"], match["spec"]


def _is_own(name: str, project: dict) -> bool:
    def normal(text: str) -> str:
        return re.sub(r"[-_.]+", "-", text).lower()

    return normal(name) == normal(project["name"])


def constraints(project: dict) -> list[str]:
    groups = [project.get("dependencies", []), *project.get("optional-dependencies", {}).values()]
    pins: dict[str, str] = {}
    for requirement in (r for group in groups for r in group):
        name, spec = _parse(requirement)
        floor = _FLOOR.search(spec)
        if _is_own(name, project) or floor is None:
            continue
        key = name.lower()
        if pins.get(key, floor["version"]) != floor["version"]:
            raise SystemExit(f"{name} has two floors in {PYPROJECT.name}: declare it once")
        pins[key] = floor["version"]
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def extras(project: dict) -> list[str]:
    return [name for name in project.get("optional-dependencies", {}) if name not in NOT_FOR_USERS]


# Tools for the type check, which runs in the main environment only: pandas-stubs follows
# the newest pandas and cannot be installed beside the oldest one.
TYPE_CHECK_TOOLS = ("mypy", "pandas-stubs", "types-")


def tools(project: dict) -> list[str]:
    dev = project.get("optional-dependencies", {}).get("dev", [])
    return [
        r
        for r in dev
        if not _is_own(_parse(r)[0], project) and not _parse(r)[0].startswith(TYPE_CHECK_TOOLS)
    ]


def main(argv: list[str]) -> int:
    commands = {
        "constraints": lambda p: "\n".join(constraints(p)),
        "extras": lambda p: ",".join(extras(p)),
        "tools": lambda p: "\n".join(tools(p)),
    }
    if len(argv) != 1 or argv[0] not in commands:
        print(f"usage: python {sys.argv[0]} {{{','.join(commands)}}}", file=sys.stderr)
        return 2
    print(commands[argv[0]](_project()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

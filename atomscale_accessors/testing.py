"""The pytest fixtures of ``atomscale_accessors``, for code that imports them by name.

pytest finds the fixtures without any import: installing the package registers its
plugin, the module ``atomscale_accessors_pytest``, where they are defined and documented.
This module re-exports them, for a ``conftest.py`` that names its fixtures explicitly.
It imports without pytest too (the documentation build, a script), and then defines no
fixture.

Examples
--------
In a ``conftest.py``::

    from atomscale_accessors.testing import atomscale_server, atomscale_session_server
"""

from __future__ import annotations

__all__: list[str] = []

try:
    from atomscale_accessors_pytest import atomscale_server, atomscale_session_server
except ModuleNotFoundError as exc:  # no pytest here: no fixtures either
    if exc.name != "pytest":
        raise
else:
    __all__ += ["atomscale_server", "atomscale_session_server"]

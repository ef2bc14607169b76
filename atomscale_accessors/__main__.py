"""``python -m atomscale_accessors``: the command line (see :mod:`atomscale_accessors.cli`)."""

from atomscale_accessors.cli import main

raise SystemExit(main())

"""Progress of an upload: a ``tqdm`` bar on a terminal or in a notebook, or a callback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "Progress",
]


class Progress:
    """A progress bar when asked for, or by default when a person is watching."""

    def __init__(
        self, progress: bool | Callable[[int, int | None], None] | None, total: int | None
    ) -> None:
        self.total = total
        self.done = 0
        self.callback: Callable[[int, int | None], None] | None = None
        self.bar: Any = None
        if callable(progress) and not isinstance(progress, bool):
            self.callback = progress
            return
        show = progress if progress is not None else _interactive()
        if show:
            # Imported only when a bar is drawn: most uploads in scripts and tests have none.
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="annotation", desc="upload", leave=False)

    def advance(self, n: int) -> None:
        if n <= 0:
            return
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.callback is not None:
            self.callback(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _interactive() -> bool:
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())

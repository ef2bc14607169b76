"""Progress of an upload: a bar on a terminal or in a notebook, or a callback."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "Progress",
]

log = logging.getLogger("atomscale_accessors")


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
        if not show:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.callback = _TextBar(total)
            return
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
        elif isinstance(self.callback, _TextBar):
            self.callback.close()


class _TextBar:
    def __init__(self, total: int | None) -> None:
        self.total = total
        self.shown = False

    def __call__(self, done: int, total: int | None) -> None:
        if total:
            width = 30
            filled = math.floor(width * done / total)
            text = f"\rupload [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        else:
            text = f"\rupload {done} annotations"
        sys.stderr.write(text)
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def _interactive() -> bool:
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())

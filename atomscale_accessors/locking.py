"""One upload at a time to a sample, within a process and across processes on one machine.

Bulk create is not idempotent and the API has no idempotency key, so two uploads of the
same records to one sample that run at once would each list the sample, see nothing, and
both send. Uploads to the same (endpoint, sample) therefore take a lock: a thread lock in
this process, and a lock file in the user's cache directory for other processes on this
machine (a dask ``LocalCluster``'s workers, two notebooks). Uploads on other machines are
not seen; ``verify=True`` on an upload detects what they doubled afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock
import platformdirs

__all__ = ["LOCK_DIRECTORY_VARIABLE", "lock_directory", "sample_lock"]

log = logging.getLogger(__name__)

LOCK_DIRECTORY_VARIABLE = "ATOMSCALE_ACCESSORS_LOCK_DIR"
"""Environment variable naming the folder of the lock files (default: the user's cache)."""

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
_folders_made: set[Path] = set()


def lock_directory() -> Path:
    """The folder that holds one lock file per (endpoint, sample) being uploaded to."""
    configured = os.environ.get(LOCK_DIRECTORY_VARIABLE)
    if configured:
        return Path(configured)
    return Path(platformdirs.user_cache_dir("atomscale-accessors")) / "locks"


@contextmanager
def sample_lock(endpoint: str, sample_id: str) -> Iterator[None]:
    """Hold the upload lock of a sample at an endpoint, waiting for any other holder.

    Every upload holds it while it lists, sends and accounts, so two uploads to one sample
    from the threads or processes of one machine run one after the other. Waiting can be
    interrupted with Ctrl+C. When the lock folder cannot be written, only uploads within
    this process are serialised, and a warning says so.

    Parameters
    ----------
    endpoint : str
        The API's base URL, as the client has it.
    sample_id : str
        The sample's id.

    Examples
    --------
    >>> from atomscale_accessors.locking import sample_lock
    >>> with sample_lock("http://127.0.0.1:8000/", "0b6e3f8a-5c2d-4e8f-9a1b-2c3d4e5f6a7b"):
    ...     pass  # no other upload to this sample on this machine runs meanwhile
    """
    name = hashlib.sha256(f"{endpoint}\0{sample_id}".encode()).hexdigest()[:32]
    with _locks_guard:
        thread_lock = _locks.setdefault(name, threading.Lock())
    if not thread_lock.acquire(blocking=False):
        log.info("waiting for another upload to sample %s in this process to finish", sample_id)
        thread_lock.acquire()
    try:
        with _file_lock(name, sample_id):
            yield
    finally:
        thread_lock.release()


@contextmanager
def _file_lock(name: str, sample_id: str) -> Iterator[None]:
    folder = lock_directory()
    try:
        try:
            lock = _acquire(folder, name, sample_id)
        except FileNotFoundError:  # the folder was removed since it was made: once more
            _folders_made.discard(folder)
            lock = _acquire(folder, name, sample_id)
    except OSError as exc:
        warnings.warn(
            f"cannot use the lock folder {str(folder)[:200]!r} ({type(exc).__name__}): "
            "uploads from other processes to the same sample are not serialised",
            stacklevel=4,
        )
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _acquire(folder: Path, name: str, sample_id: str) -> filelock.BaseFileLock:
    if folder not in _folders_made:  # made once per process, not once per upload
        folder.mkdir(parents=True, exist_ok=True)
        _folders_made.add(folder)
    # Not writable by others: filelock then skips probing the folder on every lock.
    # Another user sharing the folder still locks it through a read-only descriptor.
    lock = filelock.FileLock(folder / f"{name}.lock", mode=0o644, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        log.info("waiting for an upload to sample %s by another process to finish", sample_id)
        lock.acquire(poll_interval=0.05)
    return lock

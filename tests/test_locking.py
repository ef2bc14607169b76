"""The upload lock of a sample: its lock file, across a folder removed under it."""

from __future__ import annotations

import shutil
import uuid
import warnings

from atomscale_accessors.locking import LOCK_DIRECTORY_VARIABLE, lock_directory, sample_lock


def test_a_lock_folder_removed_between_uploads_is_made_again(tmp_path, monkeypatch):
    # The folder is made once per process; a cache cleaned meanwhile must not leave the
    # next upload without its lock across processes (that would only warn).
    folder = tmp_path / "locks"
    monkeypatch.setenv(LOCK_DIRECTORY_VARIABLE, str(folder))
    assert lock_directory() == folder
    sample = str(uuid.uuid4())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with sample_lock("http://127.0.0.1:1/", sample):
            assert len(list(folder.glob("*.lock"))) == 1
        shutil.rmtree(folder)
        with sample_lock("http://127.0.0.1:1/", sample):
            assert len(list(folder.glob("*.lock"))) == 1


def test_an_unusable_lock_folder_warns_and_the_upload_goes_on(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(LOCK_DIRECTORY_VARIABLE, str(blocker / "locks"))
    entered = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with sample_lock("http://127.0.0.1:1/", str(uuid.uuid4())):
            entered = True
    assert entered
    assert any("cannot use the lock folder" in str(w.message) for w in caught)

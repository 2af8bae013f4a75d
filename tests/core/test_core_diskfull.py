"""A full disk is found however a library or Ray wraps it, and said in one message."""

from __future__ import annotations

import errno
import os
import pickle

import pytest

from pipeline.core.diskfull import DiskFullError, disk_full, find_disk_full, is_enospc


def test_enospc_is_found_in_wrapped_and_quoted_errors():
    bare = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/a.bin")
    assert is_enospc(bare) and is_enospc(OSError(errno.EDQUOT, "quota"))
    # safetensors and pyarrow quote the OS text in their own error types
    assert is_enospc(RuntimeError("Error while serializing: I/O error: No space left on device "
                                  "(os error 28)"))
    assert not is_enospc(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 "
                                      "vs 598"))
    assert not is_enospc(OSError(errno.EACCES, "Permission denied"))
    try:
        try:
            raise bare
        except OSError as inner:
            raise RuntimeError("upload failed") from inner
    except RuntimeError as outer:
        found = find_disk_full(outer, "/data/out/ckpt", 5000)
    assert isinstance(found, DiskFullError) and found.path == "/data/out/ckpt" and found.needed == 5000
    assert str(found).startswith("no space left on the device writing /data/out/ckpt: it needs more than "
                                 "5000 bytes")
    assert find_disk_full(ValueError("bad value")) is None


def test_a_workers_disk_full_error_reaches_the_driver_with_its_path():
    """Ray Train hands the driver a WorkerGroupError holding the worker's exception (pickled on the way)."""
    pytest.importorskip("ray.train.v2")
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2.api.exceptions import WorkerGroupError

    err = disk_full("/data/out/run/checkpoint_1/state.pt", 123456)
    assert pickle.loads(pickle.dumps(err)).needed == 123456  # the fields survive the trip
    group = pickle.loads(pickle.dumps(WorkerGroupError("training failed",
                                                       {0: UserExceptionWithTraceback(err, "tb")})))
    found = find_disk_full(group, "/data/out/run")
    assert isinstance(found, DiskFullError) and found.path == "/data/out/run/checkpoint_1/state.pt"
    assert found.needed == 123456 and str(found) == str(err)


def test_the_message_says_what_to_free_when_the_size_is_known_and_when_it_is_not(tmp_path, monkeypatch):
    import pipeline.core.diskfull as df

    class Vfs:  # 10 blocks of 4096 bytes free
        f_bavail, f_frsize = 10, 4096

    monkeypatch.setattr(df.os, "statvfs", lambda _p: Vfs)
    known = disk_full(tmp_path / "x.pt", 50000)
    assert str(known) == (f"no space left on the device writing {tmp_path / 'x.pt'}: it needs 50000 bytes, "
                          f"40960 are free in {tmp_path}; free at least 9040 bytes (more for the files still "
                          f"to come) or choose another output.dir, then re-run: finished files are kept")
    assert (known.needed, known.free) == (50000, 40960)
    unknown = str(disk_full(tmp_path / "new" / "model", 10, at_least=True))  # the folder does not exist yet
    assert (f"it needs more than 10 bytes, 40960 are free in {tmp_path}; free more space (its whole size"
            in unknown)

"""Ray Train checkpoints written whole or not at all, and a full disk said clearly.

Ray's own upload copies the checkpoint's files one by one into ``<storage>/<run>/checkpoint_*``;
a full disk (or a kill) in the middle leaves a partial folder there and the worker fails with a
bare ``OSError`` that reaches the driver wrapped in ``TrainingFailedError``. On a local storage
path ``report_checkpoint`` builds the folder beside its final name and renames it in
(``pipeline.core.write.atomic_folder``), so a failed copy leaves nothing and raises
``DiskFullError`` naming the checkpoint, the bytes it needs and those free. Remote storage
(``s3://``) keeps Ray's upload. ``fit_or_disk_full`` turns a training run that failed on a full
disk into that same ``DiskFullError`` on the driver.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from pipeline.core.diskfull import disk_full, find_disk_full, is_enospc
from pipeline.core.write import atomic_folder


def atomic_upload(checkpoint: Any, dir_name: str) -> Any:
    """Ray Train's ``checkpoint_upload_fn``: copy ``checkpoint`` into the run's folder atomically (local
    storage)."""
    # heavy: pyarrow, ray (not loaded when this module is imported)
    import pyarrow.fs
    import ray.train

    storage = ray.train.get_context().get_storage()
    if not isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
        return storage.persist_current_checkpoint(checkpoint, dir_name)
    dest = Path(storage.build_checkpoint_path_from_name(dir_name))
    with checkpoint.as_directory() as src, atomic_folder(dest) as tmp:
        copy_files(Path(src), tmp)
    return ray.train.Checkpoint(path=str(dest), filesystem=storage.storage_filesystem)


def copy_files(src: Path, dst: Path) -> None:
    """Copy the tree ``src`` into ``dst`` file by file, so an ``ENOSPC`` names the file it hit
    (``shutil.copytree`` would gather it into one ``shutil.Error`` without a path)."""
    files = sorted(src.rglob("*"))
    total = sum(f.stat().st_size for f in files if f.is_file())
    for f in files:
        target = dst / f.relative_to(src)
        try:
            if f.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, target)
        except OSError as err:
            if is_enospc(err):
                raise disk_full(target, total) from None  # the whole checkpoint's size
            raise


def report_checkpoint(metrics: dict[str, Any], folder: str | os.PathLike) -> None:
    """``ray.train.report`` with the checkpoint in ``folder``, uploaded by ``atomic_upload``."""
    # heavy: ray (not loaded when this module is imported)
    import ray.train

    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)),
                     checkpoint_upload_fn=atomic_upload)


def fit_or_disk_full(trainer: Any, storage: str | os.PathLike) -> Any:
    """``trainer.fit()``; a run that failed on a full disk raises the worker's ``DiskFullError`` (or one
    naming ``storage``) instead of Ray's ``TrainingFailedError``."""
    try:
        result = trainer.fit()
    except Exception as err:
        full = find_disk_full(err, storage)
        if full is not None:
            raise full from None
        raise
    full = find_disk_full(result.error, storage) if result.error is not None else None
    if full is not None:
        raise full
    return result

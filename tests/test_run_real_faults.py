"""A full disk mid-stage, and a driver killed mid-stage.

DIVER on the zoo DiT (6 tiny images, few steps) through the real runner: after the fault the
run is re-run and its images must be byte-identical to an uninterrupted run's, with nothing lost.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from pipeline.checks.verify import verify_set
from pipeline.config import config_from_dict
from pipeline.core.write import read_manifest
from tests.run_configs import diver_config, edits_config


def images(out: Path) -> dict[str, bytes]:
    man = read_manifest(out)
    return {e["key"]: (out / e["file"]).read_bytes() for e in man["images"]}


def pages(root: Path) -> int:
    return sum(-(-f.stat().st_size // 4096) for f in root.rglob("*") if f.is_file())


@pytest.fixture()
def small_fs(tmp_path):
    """A tmpfs mount point (mounted by the test itself with the size it needs); unmounted at the end."""
    mnt = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    mounted = []

    def mount(size: int, remount: bool = False) -> Path:
        opts = f"{'remount,' if remount else ''}size={size}"
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)],
                             check=False, capture_output=True, text=True)
        if res.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or res.returncode}")
        mounted.append(mnt)
        return mnt

    yield mount
    if mounted:
        subprocess.run(["umount", str(mnt)], check=False)


@pytest.mark.slow
def test_full_disk_mid_stage_leaves_no_partial_file_and_resumes_identically(stage1_pt, zoo_dir, tmp_path,
                                                                             ray_local, small_fs):
    from pipeline.diver.run import run_diver
    from pipeline.errors import DataError

    ref = tmp_path / "ref"
    run_diver(config_from_dict(diver_config(stage1_pt, zoo_dir, ref)))
    want = images(ref / "diver")
    assert len(want) == 6
    mnt = small_fs(4096 * (pages(ref) // 2))  # room for about half the run's files
    out = mnt / "run"
    cfg = config_from_dict(diver_config(stage1_pt, zoo_dir, out))
    with pytest.raises(DataError,
                       match=rf"no space left on the device writing {mnt}/\S+: it needs \d+ bytes, "
                                        rf"\d+ are free in {mnt}"):
        run_diver(cfg)
    left = [p for p in mnt.rglob("*") if p.is_file()]
    assert not [p for p in left if p.name.endswith(".tmp")], left  # no partial file
    kept = {}
    if (out / "diver" / "manifest.json").exists():  # whatever the manifest lists is whole
        kept = images(out / "diver")
        assert all(kept[k] == want[k] for k in kept)
    small_fs(4 << 20, remount=True)  # space freed
    run_diver(cfg)
    assert images(out / "diver") == want  # byte-identical, none lost or duplicated
    rep = verify_set(out / "diver")
    assert rep["ok"], rep["problems"]
    assert len(read_manifest(out / "diver")["images"]) == 6
    print(json.dumps({"faults_injected": 1, "runs_resumed": 1, "files_compared": len(want),
                      "kept_before_resume": len(kept), "files_lost": 0}))


def test_full_disk_in_the_writer_names_path_and_space_and_resumes(tmp_path, small_fs):
    """The fast variant: a distilled-set writer fills a 64 KiB tmpfs, then finishes after space is freed."""
    import numpy as np

    from pipeline.core.diskfull import DiskFullError
    from pipeline.core.write import DistilledSetWriter

    rng = np.random.default_rng(0)
    # ~7 KiB PNGs, incompressible
    imgs = [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(12)]

    def write(out: Path) -> None:
        w = DistilledSetWriter(out, "test")
        for i, im in enumerate(imgs):
            w.add(f"k{i:02d}", str(i % 3), i % 3, im)
        w.finish()

    write(tmp_path / "ref")
    mnt = small_fs(64 << 10)
    with pytest.raises(DiskFullError) as err:
        write(mnt / "set")
    msg = str(err.value)
    assert msg.startswith(f"no space left on the device writing {mnt}/set/") and " are free in " in msg
    needed = int(msg.split("it needs ")[1].split(" bytes")[0])
    assert needed > 0 and "choose another output.dir" in msg
    assert not [p for p in mnt.rglob("*") if p.name.endswith(".tmp")]  # the partial file was removed
    partial = images(mnt / "set")
    assert 0 < len(partial) < len(imgs)
    small_fs(1 << 20, remount=True)
    write(mnt / "set")
    assert images(mnt / "set") == images(tmp_path / "ref")
    assert verify_set(mnt / "set")["ok"]


def test_full_disk_in_torch_save_names_path_and_leaves_no_partial_file(tmp_path, small_fs):
    """torch.save reports a full disk as a RuntimeError about stream positions and leaves its file half
    written; the ``.pt`` writers (DIVER's ``save_pt``, the prototype latents, Ray Train's state.pt) go
    through ``atomic_torch_save``: DiskFullError with the path and the size, no partial file, and the
    same bytes once there is room."""
    import torch

    from pipeline.core.diskfull import DiskFullError
    from pipeline.diver.inputs import read_pt, save_pt

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 32, 32, generator=g), torch.arange(8) % 2  # 96 KiB of float32 pixels
    save_pt(tmp_path / "ref.pt", x, y, ["a", "b"])
    mnt = small_fs(64 << 10)
    with pytest.raises(DiskFullError) as err:
        save_pt(mnt / "set.pt", x, y, ["a", "b"])
    msg = str(err.value)
    assert msg.startswith(f"no space left on the device writing {mnt}/set.pt: it needs more than ")
    assert int(msg.split("more than ")[1].split(" bytes")[0]) >= x.numel() * 4  # the tensors' size, at least
    assert f" are free in {mnt}" in msg and "choose another output.dir" in msg
    assert err.value.path == str(mnt / "set.pt") and err.value.needed >= x.numel() * 4
    assert [p.name for p in mnt.iterdir()] == []  # neither the .pt nor a temp file is left
    small_fs(1 << 20, remount=True)
    save_pt(mnt / "set.pt", x, y, ["a", "b"])
    got, want = read_pt(mnt / "set.pt"), read_pt(tmp_path / "ref.pt")
    assert torch.equal(got.images, want.images) and got.labels.tolist() == want.labels.tolist()


@pytest.mark.slow
def test_full_disk_in_a_ray_train_checkpoint_names_it_leaves_no_partial_one_and_resumes(zoo_dir, demo_root,
                                                                                        tmp_path,
                                                                                      ray_local, small_fs):
    """EDITS's fine-tune with its Ray Train storage (``edits.finetune.storage_path``) on a small tmpfs: the
    checkpoint does not fit. The run stops with DiskFullError naming the checkpoint (not Ray's
    TrainingFailedError), no partial checkpoint folder is left, and once there is room the re-run
    finishes with the images of a run that never ran out of space."""
    from pipeline.core.diskfull import DiskFullError
    from pipeline.run import run_config

    def cfg_of(out: Path, storage: Path | None = None):
        cfg = edits_config(demo_root, zoo_dir, out)
        cfg["edits"]["finetune"].update(checkpoint_every_steps=500, max_steps=2)  # the final checkpoint only
        if storage is not None:
            cfg["edits"]["finetune"]["storage_path"] = str(storage)
        cfg["ray"]["max_restarts"] = 0
        return config_from_dict(cfg)

    run_config(cfg_of(tmp_path / "ref"))
    want = images(tmp_path / "ref" / "distilled")
    mnt = small_fs(256 << 10)  # Ray's run files fit, a checkpoint of the zoo UNet (MBs) does not
    out = tmp_path / "run"
    with pytest.raises(DiskFullError) as err:
        run_config(cfg_of(out, mnt))
    msg = str(err.value)
    assert re.match(rf"no space left on the device writing {mnt}/finetune-\w+/checkpoint_\S+: it needs more "
                    rf"than \d+ bytes, \d+ are free in {mnt}", msg), msg
    assert err.value.needed > 256 << 10  # the checkpoint's size, more than the whole file system
    assert not list(mnt.glob("finetune-*/checkpoint_*")) and not list(mnt.glob("finetune-*/.checkpoint_*"))
    assert not (out / "finetuned_sd").exists() and not (out / "distilled").exists()
    small_fs(64 << 20, remount=True)  # space freed
    run_config(cfg_of(out, mnt))
    assert images(out / "distilled") == want  # byte-identical to the run that had room
    assert verify_set(out / "distilled")["ok"]
    print(json.dumps({"faults_injected": 1, "runs_resumed": 1, "files_compared": len(want), "files_lost": 0}))

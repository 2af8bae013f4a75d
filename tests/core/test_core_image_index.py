"""Reliability under real conditions (aliased folders, output lock, full disk, untrusted inputs)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.checks.data_check import check_dataset, format_report
from pipeline.core.image_index import scan_image_folder
from tests.image_files import write_image

# ---- item 1: a folder link back into the dataset ------------------------------------------------


@pytest.fixture()
def linked(tmp_path):
    """a: 2 images + ``all -> ..`` (the root) + ``b_link -> ../b``; b: 3 images; c: 1 image + a file link into
    b."""
    root = tmp_path / "data"
    for i in range(2):
        write_image(root / "a" / f"a{i}.png")
    for i in range(3):
        write_image(root / "b" / f"b{i}.png", "blue")
    write_image(root / "c" / "c0.png", "green")
    os.symlink("..", root / "a" / "all")
    os.symlink("../b", root / "a" / "b_link")
    os.symlink("../b/b0.png", root / "c" / "stolen.png")
    ext = write_image(tmp_path / "store" / "x.png", "white")  # a link that leads outside the dataset is data
    os.symlink(ext, root / "c" / "outside.png")
    os.symlink(ext, root / "b" / "outside_again.png")  # ... but counted once
    return root


def test_scan_counts_each_file_once_in_the_class_it_sits_under(linked):
    idx = scan_image_folder(linked)
    got = {c: sorted(os.path.relpath(r.path,
                                     linked) for r in idx.records if r.class_id == c) for c in idx.classes}
    assert got == {"a": ["a/a0.png", "a/a1.png"],
                   "b": ["b/b0.png", "b/b1.png", "b/b2.png", "b/outside_again.png"],
                   "c": ["c/c0.png"]}
    reals = [os.path.realpath(r.path) for r in idx.records]
    assert len(reals) == len(set(reals))  # no file twice
    for r in idx.records:  # every file inside the dataset sits under its own class by real path
        real = os.path.realpath(r.path)
        if real.startswith(os.path.realpath(linked) + os.sep):
            assert real.startswith(os.path.realpath(linked / r.class_id) + os.sep)
    reasons = {os.path.relpath(s["path"], linked): s["reason"] for s in idx.skipped}
    assert reasons == {
        "a/all": f"aliased folder: link back into the dataset outside class 'a' (real path "
                 f"{os.path.realpath(linked)})",
        "a/b_link": f"aliased folder: link into class 'b' (real path {os.path.realpath(linked / 'b')})",
        "c/outside.png": f"aliased file: same file as {linked / 'b' / 'outside_again.png'}",
        "c/stolen.png": f"aliased file: link into class 'b' (real path "
                        f"{os.path.realpath(linked / 'b' / 'b0.png')})",
    }


def test_data_check_reports_one_line_per_aliased_folder(linked):
    rep = check_dataset(linked, ipc=1)
    assert rep["counts"] == {"a": 2, "b": 4, "c": 1} and rep["usable"] == 7
    text = format_report(rep)
    assert text.count("a/all:") == 1 and text.count("a/b_link:") == 1
    assert "is a link to the same file" not in text  # no per-image warning
    assert rep["warnings"] == ["4 aliased folder(s)/file(s) skipped (links to files used elsewhere)"]


def test_two_class_folders_linked_to_one_real_folder(tmp_path):
    store = tmp_path / "store"
    for i in range(2):
        write_image(store / f"{i}.png")
    root = tmp_path / "data"
    root.mkdir()
    os.symlink(store, root / "x")
    os.symlink(store, root / "y")
    idx = scan_image_folder(root, allow_empty_classes=True)
    assert idx.classes == ["x"] and len(idx.records) == 2
    assert [(os.path.relpath(s["path"], root), s["reason"].split(":")[0]) for s in idx.skipped] == (
        [("y", "aliased folder"), ("y", "empty class folder")])


# ---- item 2: two runs into one output folder ------------------------------------------------------

HOLD = ("import sys, time\nfrom pipeline.core.lock import output_lock\n"
        "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)\n")


@pytest.fixture()
def holder(tmp_path):
    """Another process holding the lock on ``tmp_path / 'run'``; yields (Popen, out_dir)."""
    import subprocess
    import sys

    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "held"
    yield proc, out
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_second_run_stops_naming_the_holder_and_a_dead_holder_is_taken_over(holder):
    import signal
    import socket

    from pipeline.core.lock import LOCK_NAME, OutputLockedError, output_lock

    proc, out = holder
    want = (rf"is in use by another run: host {socket.gethostname()} pid {proc.pid} \(started .+\), "
            rf"lock .*{LOCK_NAME}")
    with pytest.raises(OutputLockedError, match=want), output_lock(out):
        pass
    os.kill(proc.pid, signal.SIGKILL)  # the holder dies without releasing: its file stays
    proc.wait()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == proc.pid
    notes: list[str] = []
    with output_lock(out, log=notes.append) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with output_lock(out, log=notes.append):  # re-entrant in one process (semdistill run -> runner)
            pass
        assert path.exists()
    started = notes[0].split("(started ")[1].split(")")[0]
    assert notes == [(f"taking over the stale lock {out / LOCK_NAME} of host {socket.gethostname()} pid "
                      f"{proc.pid} (started {started}): that process is dead")]
    assert not (out / LOCK_NAME).exists()  # released and removed


def test_semdistill_run_refuses_a_locked_output_folder(holder, capsys):
    from pipeline.cli import main

    proc, out = holder
    cfg = Path(__file__).resolve().parents[2] / "configs" / "demo_diver.yaml"
    rc = main(["run", str(cfg), f"output.dir={out}"])
    err = capsys.readouterr().err
    assert rc == 2 and f"pid {proc.pid}" in err and "is in use by another run" in err
    assert not (out / "config.yaml").exists()  # stopped before writing anything


def test_runners_take_the_lock(holder):
    from pipeline.config import config_from_dict
    from pipeline.core.lock import OutputLockedError
    from pipeline.diver.run import run_diver
    from pipeline.edits.run import run_edits

    _, out = holder
    for method, runner in (("diver", run_diver), ("edits", run_edits)):
        cfg = config_from_dict({"method": method, "output": {"dir": str(out)}})
        with pytest.raises(OutputLockedError, match="is in use by another run"):
            runner(cfg)


# ---- item 6: untrusted inputs stay data ---------------------------------------------------------


class _Evil:
    """Unpickling this runs ``touch <marker>``: what a crafted ``.pt`` would do without weights_only."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_pt_with_pickled_callable_is_refused(tmp_path):
    import torch

    from pipeline.diver.inputs import load_stage1
    from pipeline.errors import DataError

    marker = tmp_path / "pwned"
    bad = tmp_path / "set.pt"
    torch.save({"images": torch.rand(2, 3, 8, 8), "labels": torch.tensor([0, 1]), "hook": _Evil(marker)}, bad)
    with pytest.raises(DataError, match=rf"refused to load {bad}: it holds pickled objects or code.*"
                                        r"unsupported GLOBAL posix.system.*re-save it with plain tensors"):
        load_stage1(bad)
    assert not marker.exists()  # nothing ran
    torch.save({"images": torch.rand(2, 3, 8, 8), "labels": torch.tensor([0, 1])}, tmp_path / "ok.pt")
    assert load_stage1(tmp_path / "ok.pt").images.shape == (2, 3, 8, 8)  # plain tensors still load


HOSTILE = ["../../etc", "con", "nul\x00byte", "new\nline", "x" * 300, "/abs", "..", "ok id"]


def test_hostile_class_ids_stay_inside_the_output_folder_and_are_reported(tmp_path):
    import numpy as np
    import torch

    from pipeline.checks.verify import verify_set
    from pipeline.core.write import DistilledSetWriter, read_manifest
    from pipeline.diver.inputs import load_stage1

    src = tmp_path / "set.pt"  # the ids arrive as data in a stage-1 set
    torch.save({"images": torch.rand(len(HOSTILE), 3, 4, 4), "labels": torch.arange(len(HOSTILE)),
                "classes": HOSTILE}, src)
    s = load_stage1(src)
    assert s.classes == HOSTILE
    out = tmp_path / "nest" / "out"
    w = DistilledSetWriter(out, "test")
    paths = [w.add(f"c{i}_i000", cid, i, np.zeros((4, 4, 3), np.uint8)) for i, cid in enumerate(s.classes)]
    w.finish()
    for p in paths:
        assert p.parent.parent == out and p.resolve().is_relative_to(out.resolve())
        assert (len(p.parent.name.encode()) <= 200 and "\n" not in p.parent.name
                and "\x00" not in p.parent.name)
    assert len({p.parent for p in paths}) == len(HOSTILE)
    assert sorted(os.listdir(tmp_path)) == ["nest",
                                            "set.pt"] and sorted(os.listdir(tmp_path / "nest")) == ["out"]
    renamed = read_manifest(out)["renamed_classes"]
    # con is a plain name on Linux
    assert sorted(renamed) == sorted(c for c in HOSTILE if c not in ("con", "ok id"))
    assert all((out / folder).is_dir() for folder in renamed.values())
    assert (out / "con").is_dir() and (out / "ok id").is_dir()
    rep = verify_set(out)
    assert rep["ok"], rep["problems"]

"""The manifest's append-only journal: a flush costs its batch, and a killed run's journal is folded on
resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.checks.verify import verify_set
from pipeline.core.write import JOURNAL, MANIFEST, DistilledSetWriter, read_manifest
from pipeline.errors import DataError

REPO = Path(__file__).resolve().parents[2]
IMG = np.full((4, 4, 3), 7, np.uint8)


def _key(i: int) -> str:
    return f"c{i % 10}_i{i // 10:03d}"


def _add(w: DistilledSetWriter, i: int) -> None:
    w.add(_key(i), str(i % 10), i % 10, IMG + i % 50, {"index": i // 10, "seed": i}, flush=False)


KILLED_RUN = """
import os, signal, sys
import numpy as np
from pipeline.core.write import DistilledSetWriter
out, batch, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
w = DistilledSetWriter(out, "m", {"ipc": 10})
w.set_expected({str(c): 10 for c in range(10)})
for i in range(100):
    w.add(f"c{i % 10}_i{i // 10:03d}", str(i % 10), i % 10, np.full((4, 4, 3), 7, np.uint8) + i % 50,
          {"index": i // 10, "seed": i}, flush=False)
    if (i + 1) % batch == 0:
        w.flush()
        if (i + 1) // batch == batches:  # the next batch's images are written, never recorded
            for j in range(i + 1, i + 4):
                w.add(f"c{j % 10}_i{j // 10:03d}", str(j % 10), j % 10, np.zeros((4, 4, 3), np.uint8),
                      flush=False)
            os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_run_journal_is_folded_on_resume_without_loss_or_duplicates(tmp_path):
    out = tmp_path / "set"
    proc = subprocess.run([sys.executable, "-c", KILLED_RUN, str(out), "8", "5"], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == -signal.SIGKILL
    man_file = json.loads((out / MANIFEST).read_text())
    journal = (out / JOURNAL).read_text().splitlines()
    assert len(man_file["images"]) == 8 and len(journal) == 32  # first batch rewritten whole, then appended
    with open(out / JOURNAL, "a") as f:  # a kill in the middle of an append: a torn last line
        f.write('{"key": "c0_i009", "file": "0/c0_i0')
    assert [e["key"] for e in read_manifest(out)["images"]] == sorted(
        (_key(i) for i in range(40)), key=lambda k: (int(k[1]), k))  # readers see all 40 confirmed entries

    w = DistilledSetWriter(out, "m", {"ipc": 10})  # resume: folds the journal into manifest.json
    assert not (out / JOURNAL).exists()
    folded = json.loads((out / MANIFEST).read_text())
    assert sorted(e["key"] for e in folded["images"]) == sorted(_key(i) for i in range(40))
    assert folded["expected_counts"] == {str(c): 10 for c in range(10)}
    assert all(w.done(_key(i)) for i in range(40)) and not any(w.done(_key(i)) for i in range(40, 44))
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    for i in range(100):
        _add(w, i)
        if (i + 1) % 8 == 0:
            w.flush()
    w.finish()
    keys = [e["key"] for e in read_manifest(out)["images"]]
    assert len(keys) == 100 and len(set(keys)) == 100
    assert not (out / JOURNAL).exists()
    kept = [p for p, t in before.items() if p.stat().st_mtime_ns == t]
    assert len(kept) == 40  # the 40 recorded images were not rewritten; the 3 unrecorded orphans were
    rep = verify_set(out)
    assert rep["ok"], rep["problems"]
    for e in read_manifest(out)["images"]:  # the orphans' zero images were replaced by the real ones
        assert int(np.asarray(Image.open(out / e["file"]))[0, 0, 0]) == 7 + e["seed"] % 50


def test_a_fold_cut_short_before_the_journal_is_removed_duplicates_nothing(tmp_path):
    w = DistilledSetWriter(tmp_path, "m")
    for i in range(6):
        _add(w, i)
        w.flush()
    journal = (tmp_path / JOURNAL).read_bytes()
    w.finish()  # folded; now put the journal back, as a kill between the rewrite and the unlink leaves it
    (tmp_path / JOURNAL).write_bytes(journal)
    keys = [e["key"] for e in read_manifest(tmp_path)["images"]]
    assert sorted(keys) == sorted(_key(i) for i in range(6)) and len(keys) == 6
    DistilledSetWriter(tmp_path, "m")
    assert (len(json.loads((tmp_path / MANIFEST).read_text())["images"]) == 6
            and not (tmp_path / JOURNAL).exists())


def test_a_corrupt_confirmed_journal_line_is_refused_naming_the_file(tmp_path):
    w = DistilledSetWriter(tmp_path, "m")
    _add(w, 0)
    w.flush()
    (tmp_path / JOURNAL).write_text("not json\n")
    with pytest.raises(DataError, match=r"manifest.journal.jsonl line 1 is not valid JSON.*new folder"):
        read_manifest(tmp_path)


def _written() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").is_file(), reason="counts written bytes through /proc/self/io")
def test_bytes_written_per_flush_are_bounded_by_the_batch_not_the_set(tmp_path):
    w = DistilledSetWriter(tmp_path, "m", {"ipc": 40})
    w.set_expected({str(c): 40 for c in range(10)})
    batch, per_flush, batch_json = 4, [], []
    for b in range(100):
        for i in range(b * batch, (b + 1) * batch):
            _add(w, i)  # the images are written here, outside the measured flush
        batch_json.append(len(json.dumps(w.manifest["images"][-batch:])))  # this batch's entries
        t0 = _written()
        w.flush()
        per_flush.append(_written() - t0)
    assert per_flush[0] > 0
    bound = 2 * max(batch_json) + 256
    assert max(per_flush[1:]) <= bound, (max(per_flush[1:]), bound)  # 400 entries in the set, 4 per flush
    assert sum(per_flush) <= 100 * bound
    w.finish()
    assert len(read_manifest(tmp_path)["images"]) == 400 and not (tmp_path / JOURNAL).exists()

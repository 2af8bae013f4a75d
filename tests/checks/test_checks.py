"""`semdistill data check`, skip-and-report, `semdistill verify`."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from pipeline.checks.data_check import check_dataset
from pipeline.checks.verify import verify_set
from pipeline.cli import main
from pipeline.core.skips import (
    SkipLog,
    check_skipped_fraction,
    collect_skips,
    drop_bad_rows,
    missing_keys,
    reason_kind,
)
from pipeline.core.write import DistilledSetWriter, read_manifest
from pipeline.errors import DataError
from tests.image_files import write_image


@pytest.fixture()
def messy(tmp_path):
    """3 classes: 'good' (3 ok), 'short' (1 ok + 1 corrupt + 1 txt), 'bad' (only a zero-byte file)."""
    root = tmp_path / "data"
    for i in range(3):
        write_image(root / "good" / f"{i}.png")
    write_image(root / "short" / "ok.PNG")
    (root / "short" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (root / "short" / "notes.txt").write_text("x")
    (root / "bad").mkdir()
    (root / "bad" / "zero.png").write_bytes(b"")
    (root / "empty").mkdir()
    return root


def test_data_check_lists_every_skip_and_counts(messy):
    rep = check_dataset(messy, ipc=2)
    assert rep["counts"] == {"bad": 0, "empty": 0, "good": 3, "short": 1}
    got = {os.path.relpath(s["path"], messy): reason_kind(s["reason"]) for s in rep["skipped"]}
    assert got == {"bad/zero.png": "zero-byte file", "empty": "empty class folder",
                   "short/broken.jpg": "cannot decode", "short/notes.txt": "not an image file extension"}
    assert rep["problems"] == ["class 'bad': no usable images (empty)",
                               "class 'empty': no usable images (empty)",
                               "class 'short': 1 usable images, below ipc 2"]
    assert rep["usable"] == 4 and rep["ok"] is False
    fast = check_dataset(messy, ipc=1, decode=False)  # listing only: the bad files look usable
    assert fast["counts"] == {"bad": 1, "empty": 0, "good": 3, "short": 2}


def test_data_check_cli_exit_codes_and_json(messy, tmp_path, capsys):
    assert main(["data", "check", str(messy), "--ipc", "2"]) == 1
    out = capsys.readouterr().out
    assert "short/broken.jpg: cannot decode" in out and "FAILED: 3 problem(s)" in out
    assert re.search(r"^  bad +0  EMPTY$", out, re.MULTILINE)
    assert re.search(r"^  short +1  BELOW IPC$", out, re.MULTILINE)
    assert main(["data", "check", str(messy), "--ipc", "1", "--json"]) == 1
    rep = json.loads(capsys.readouterr().out)
    assert rep["counts"]["good"] == 3 and len(rep["skipped"]) == 4
    clean = tmp_path / "clean"
    for c in ("a", "b"):
        write_image(clean / c / "1.png")
        write_image(clean / c / "2.png")
    assert main(["data", "check", str(clean), "--ipc", "2"]) == 0
    assert capsys.readouterr().out.strip().endswith("OK")
    assert main(["data", "check", str(clean), "--ipc", "3"]) == 1
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "missing")]) == 2  # a configuration fault
    assert "dataset root not found" in capsys.readouterr().err


def test_data_check_warnings(tmp_path):
    root = tmp_path / "d"
    write_image(root / "Cat" / "1.png")
    write_image(root / "cat" / "1.png")
    os.symlink(root / "cat" / "1.png", root / "cat" / "2.png")
    (tmp_path / "names.json").write_text(json.dumps({"Cat": "crane", "cat": "Crane"}))
    rep = check_dataset(root, ipc=1, class_names=tmp_path / "names.json")
    text = "\n".join(rep["warnings"])
    assert "differ only in case" in text and "'crane' is shared by ['Cat', 'cat']" in text
    assert "1 aliased folder(s)/file(s) skipped" in text  # the link is skipped, not used twice
    assert rep["counts"]["cat"] == 1 and [s["path"] for s in rep["skipped"]] == [str(root / "cat" / "2.png")]
    assert rep["ok"]  # warnings do not fail the check


def test_data_check_parallel_matches_serial(demo_root):
    serial = check_dataset(demo_root / "val", ipc=30)
    parallel = check_dataset(demo_root / "val", ipc=30, workers=2)
    assert serial == parallel and serial["usable"] == 359 and serial["skipped"] == []


def test_skip_log_writes_sorted_jsonl_and_resumes(tmp_path):
    log = SkipLog(tmp_path / "skipped.jsonl")
    log.add("z.jpg", "cannot decode: OSError: x", "decode")
    log.add("m.jpg", "zero-byte file", "decode")
    log.add("z.jpg", "cannot decode: OSError: x", "decode")  # the same file again (a retried batch)
    log.extend([{"path": "r/notes.txt", "reason": "not an image file extension"}], stage="scan")
    log.write()
    lines = [json.loads(x) for x in (tmp_path / "skipped.jsonl").read_text().splitlines()]
    assert [(e["stage"], e["path"]) for e in lines] == [("decode", "m.jpg"), ("decode", "z.jpg"),
                                                        ("scan", "r/notes.txt")]
    assert log.summary() == {"skipped": 3, "by_reason": {"cannot decode": 1, "not an image file extension": 1,
                                                         "zero-byte file": 1},
                             "by_stage": {"decode": 2, "scan": 1}, "file": str(tmp_path / "skipped.jsonl")}
    again = SkipLog(tmp_path / "skipped.jsonl")
    assert again.entries == log.entries
    with open(tmp_path / "skipped.jsonl", "a") as f:
        f.write('{"path": "torn')  # a crash mid-line in an old file
    assert len(SkipLog(tmp_path / "skipped.jsonl")) == 3


def test_skip_thresholds():
    check_skipped_fraction(5, 100, 0.05)  # exactly at the threshold: fine
    with pytest.raises(DataError,
                       match=r"6 of 100 images \(6.0%\) were skipped, above data.max_skipped_fraction=0.05"):
        check_skipped_fraction(6, 100, 0.05, report="run/skipped.jsonl")
    with pytest.raises(DataError, match="all 3 images were skipped"):
        check_skipped_fraction(3, 0, 1.0)
    with pytest.raises(DataError, match="above data.max_skipped_fraction=0.0"):
        check_skipped_fraction(1, 10_000, 0.0)
    log = SkipLog()
    log.add("a", "zero-byte file", "decode")
    log.check(total=20, max_fraction=0.05)
    with pytest.raises(DataError):
        log.check(total=19, max_fraction=0.05)
    assert missing_keys(["a", "b", "c"], ["c", "a"]) == ["b"]


def _distilled(tmp_path, ipc=2, classes=("n01", "n02")):
    out = tmp_path / "set"
    w = DistilledSetWriter(out, "edits", {"ipc": ipc, "image_size": 8})
    rng = np.random.default_rng(0)
    for label, cls in enumerate(classes):
        for i in range(ipc):
            w.add(f"{cls}_{i}", cls, label, rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    w.set_expected({c: ipc for c in classes})
    w.finish({"skipped": 0})
    return out


def test_verify_accepts_a_good_set(tmp_path, capsys):
    out = _distilled(tmp_path)
    rep = verify_set(out)
    assert rep["ok"], rep["problems"]
    assert rep["counts"] == {"n01": 2, "n02": 2} and rep["images"] == 4
    assert main(["verify", str(out)]) == 0
    assert "OK: the set matches its manifest" in capsys.readouterr().out


def test_verify_finds_each_kind_of_mismatch(tmp_path, capsys):
    out = _distilled(tmp_path)
    man = read_manifest(out)
    files = [e["file"] for e in man["images"]]
    (out / files[0]).unlink()  # missing
    (out / files[1]).write_bytes(b"\x89PNG\r\n\x1a\n broken")  # corrupt, wrong checksum
    data = bytearray((out / files[2]).read_bytes())  # bit flip that still decodes? checksum catches it
    data[-20] ^= 0xFF
    (out / files[2]).write_bytes(bytes(data))
    write_image(out / "n02" / "stray.png")  # extra
    (out / "n02" / ".x.png.123.tmp").write_bytes(b"")  # leftover temp: a warning only
    rep = verify_set(out)
    probs = "\n".join(rep["problems"])
    assert rep["missing"] == [files[0]]
    assert (f"corrupt file: {files[1]}: sha256 differs" in probs
            and f"corrupt file: {files[2]}: sha256" in probs)
    assert "extra file not in the manifest: n02/stray.png" in probs
    assert any("leftover temp file" in w for w in rep["warnings"])
    assert not rep["ok"]
    assert main(["verify", str(out), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["extra"] == ["n02/stray.png"]


def test_verify_counts_labels_settings_and_escapes(tmp_path):
    out = _distilled(tmp_path, ipc=3)
    man = read_manifest(out)
    man["images"] = man["images"][:-1]  # a class one short of expected_counts
    man["images"][0]["label"] = 1  # class n01 now has two labels, label 1 two classes
    man["images"].append({"key": "evil", "file": "../outside.png", "class_id": "n01", "label": 0})
    man["complete"] = False
    (out / "manifest.json").write_text(json.dumps(man))
    os.unlink(out / "n02" / "n02_2.png")  # the dropped entry's file would otherwise be extra
    rep = verify_set(out, ipc=3)
    probs = "\n".join(rep["problems"])
    assert "class 'n02': 2 images, manifest expects 3" in probs
    assert "class 'n01' has several labels [0, 1]" in probs
    assert "label 1 is used by several classes ['n01', 'n02']" in probs
    assert "entry 'evil': file '../outside.png' points outside" in probs
    assert "the run did not complete" in probs
    # settings: an image of the wrong size
    out2 = _distilled(tmp_path / "b", ipc=1)
    f = read_manifest(out2)["images"][0]["file"]
    Image.new("RGB", (16, 16)).save(out2 / f)
    man2 = read_manifest(out2)
    man2["images"][0].pop("sha256")
    (out2 / "manifest.json").write_text(json.dumps(man2))
    probs2 = "\n".join(verify_set(out2)["problems"])
    assert "images have different sizes" in probs2 and "differs from settings.image_size=8" in probs2


def test_verify_without_manifest_is_an_error(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    assert main(["verify", str(tmp_path / "x")]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_streaming_skip_and_report_through_ray(messy, tmp_path, ray_local):
    """Decode in Ray, drop bad rows on the way (side files), merge into skipped.jsonl, apply the threshold."""
    from pipeline.core.image_index import scan_image_folder
    from pipeline.core.read import image_dataset

    idx = scan_image_folder(messy, allow_empty_classes=True)
    side = tmp_path / "skips"
    ds = image_dataset(idx, size=8, batch_size=2).map_batches(
        drop_bad_rows, fn_kwargs={"skip_dir": str(side)}, batch_size=2)
    good = sorted(os.path.relpath(r["path"], messy) for r in ds.take_all())
    assert good == ["good/0.png", "good/1.png", "good/2.png", "short/ok.PNG"]
    log = SkipLog(tmp_path / "run" / "skipped.jsonl")
    log.extend(idx.skipped, stage="scan")
    assert collect_skips(side, log) == 2
    log.write()
    got = {(e["stage"], os.path.relpath(e["path"], messy)) for e in log.entries}
    assert got == {("decode", "bad/zero.png"), ("decode", "short/broken.jpg"), ("scan", "empty"),
                   ("scan", "short/notes.txt")}
    with pytest.raises(DataError, match="2 of 6 images"):
        log.check(total=len(idx.records), max_fraction=0.3, stage="decode")
    log.check(total=len(idx.records), max_fraction=0.34, stage="decode")

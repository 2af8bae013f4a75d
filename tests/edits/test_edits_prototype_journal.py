"""Text prototypes are appended per batch to a journal; a killed run's journal is read back and folded."""

from __future__ import annotations

import json
from types import SimpleNamespace

from pipeline.core.journal import append_records
from pipeline.edits.prototype import _save_texts, load_texts


def _run(tmp_path):
    d = tmp_path / "prototypes"
    d.mkdir()
    return SimpleNamespace(paths=SimpleNamespace(texts=d / "texts.json",
                                                 texts_journal=d / "texts.journal.jsonl"))


def test_killed_run_texts_journal_is_read_and_folded(tmp_path):
    run = _run(tmp_path)
    run.paths.texts.write_text(json.dumps({"a_000": {"text": "a"}}))
    append_records(run.paths.texts_journal, [{"key": "b_000", "value": {"text": "b"}}])
    append_records(run.paths.texts_journal, [{"key": "c_000", "value": {"text": "c"}}])
    with open(run.paths.texts_journal, "a") as f:
        f.write('{"key": "d_000", "val')  # killed mid-append: never confirmed
    texts = load_texts(run)
    assert texts == {"a_000": {"text": "a"}, "b_000": {"text": "b"}, "c_000": {"text": "c"}}
    _save_texts(run, texts)
    assert not run.paths.texts_journal.exists()
    assert json.loads(run.paths.texts.read_text()) == texts and load_texts(run) == texts


def test_skip_log_rewrites_only_after_new_entries(tmp_path):
    from pipeline.core.skips import SkipLog

    log = SkipLog(tmp_path / "skipped.jsonl")
    log.add("a.jpg", "cannot decode: x", "caption")
    log.write()
    first = (tmp_path / "skipped.jsonl").stat().st_mtime_ns, (tmp_path / "skipped.jsonl").stat().st_ino
    log.write()  # a batch with no new skips: the file is not replaced
    assert ((tmp_path / "skipped.jsonl").stat().st_mtime_ns,
            (tmp_path / "skipped.jsonl").stat().st_ino) == first
    log.add("b.jpg", "zero-byte file", "caption")
    log.write()
    assert (tmp_path / "skipped.jsonl").stat().st_ino != first[1]
    assert ([json.loads(x)["path"] for x in (tmp_path / "skipped.jsonl").read_text().splitlines()]
            == ["a.jpg", "b.jpg"])

"""The stage runner both methods use: order, --from-stage forcing, reuse, skip, inputs checked, outputs
cleared."""

from __future__ import annotations

import pytest

from pipeline.core.stages import Stage, StageRunner
from pipeline.errors import ConfigError, DataError


def test_from_stage_forces_that_stage_and_every_later_one_and_overwrite_forces_all():
    runner = StageRunner(("a", "b", "c"), "b")
    assert [runner.forced(n) for n in "abc"] == [False, True, True]
    assert not any(StageRunner(("a", "b")).forced(n) for n in "ab")
    assert all(StageRunner(("a", "b"), redo_all=True).forced(n) for n in "ab")
    assert [StageRunner(("a", "b"), "b", redo_all=True).forced(n) for n in "ab"] == [False, True]
    with pytest.raises(ConfigError, match=r"--from-stage must be one of a, b; got 'x'"):
        StageRunner(("a", "b"), "x")


def test_a_stage_up_to_date_is_reused_unless_forced_and_a_run_is_recorded():
    lines, recorded, runs = [], [], []
    runner = StageRunner(("a", "b"), "b", say=lines.append)

    def stage(name: str) -> Stage:
        return Stage(name, lambda force: runs.append((name, force)) or {"n": len(runs)},
                     reuse=lambda: {"earlier": name}, record=recorded.append)

    assert runner(stage("a")) == {"earlier": "a"} and runs == [] and runner.seconds["a"] == 0.0
    assert runner(stage("b")) == {"n": 1} and runs == [("b", True)] and recorded == [{"n": 1}]
    assert runner.results == {"a": {"earlier": "a"}, "b": {"n": 1}}
    assert lines[0] == "a: up to date, reusing artefacts" and lines[1] == "b: running"
    assert lines[2].startswith("b: done in ") and lines[2].endswith(" s")


def test_a_stage_with_nothing_to_reuse_runs_and_a_skipped_stage_says_why():
    runner = StageRunner(("a", "b"))
    assert runner(Stage("a", lambda force: force, reuse=lambda: None)) is False
    assert runner(Stage("b", lambda force: 1 / 0, skip="b is off")) == {"skipped": "b is off"}
    assert "b" not in runner.seconds


def test_a_missing_input_is_an_error_naming_its_setting(tmp_path):
    runner = StageRunner(("a",))
    with pytest.raises(DataError, match=r"diver.input not found: .*nope"):
        runner(Stage("a", lambda force: None, inputs={"diver.input": tmp_path / "nope"}))


def test_a_forced_run_clears_the_outputs_first_and_an_unforced_one_keeps_them(tmp_path):
    folder, file = tmp_path / "out", tmp_path / "out.json"
    folder.mkdir()
    (folder / "x.png").write_bytes(b"x")
    file.write_text("{}")
    seen = []
    StageRunner(("a",))(Stage("a", lambda force: seen.append(folder.exists()), outputs=[folder, file]))
    StageRunner(("a",), "a")(Stage("a", lambda force: seen.append(folder.exists() or file.exists()),
                                   outputs=[folder, file, tmp_path / "never-made"]))
    assert seen == [True, False]

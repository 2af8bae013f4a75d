"""pipeline/core/console.py: a method's lines split between the terminal and the log by their tag."""

from __future__ import annotations

from pipeline.core.console import tagged_lines


def test_tagged_lines_show_the_tagged_and_print_the_rest(capsys):
    shown: list[str] = []
    log = tagged_lines("[edits]", shown.append)
    log("[edits] caption: done in 1.0 s")
    log("edits: 3 images cached")
    log("  [edits] indented: not a stage line")
    assert shown == ["[edits] caption: done in 1.0 s"]
    assert capsys.readouterr().out == "edits: 3 images cached\n  [edits] indented: not a stage line\n"

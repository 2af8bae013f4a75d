"""A set evaluated with and without augmentation (DD-Ranking's ARS) keeps both numbers in every table."""

from __future__ import annotations

from pipeline.report import write_report
from tuning.evaluate import headline_rows, results_markdown, table_groups


def _row(method: str, student: str, augment: str, top1: float, in_mean: bool = True) -> dict:
    return {"dataset": "digits", "method": method, "ipc": 10, "student": student, "student_kwargs": {},
            "protocol": "hard", "augment": augment, "in_mean": in_mean, "top1_mean": top1, "top1_std": 0.5,
            "best_mean": top1, "repeats": 2, "reported": "final"}


ROWS = [_row("dm", "convnet", "dsa", 90.0, in_mean=False), _row("dm", "resnet18", "dsa", 80.0),
        _row("dm", "mobilenetv2", "dsa", 70.0),
        _row("dm", "convnet", "none", 60.0, in_mean=False), _row("dm", "resnet18", "none", 50.0),
        _row("dm", "mobilenetv2", "none", 40.0)]


def test_groups_put_the_augmented_runs_first_and_keep_one_group_when_all_share_them():
    groups = table_groups(ROWS[3:] + ROWS[:3])
    assert [t for t, _ in groups] == ["protocol hard, augment dsa", "protocol hard, augment none (DD-Ranking ARS)"]
    assert [r["top1_mean"] for r in groups[0][1]] == [90.0, 80.0, 70.0]
    assert [r["top1_mean"] for r in headline_rows(ROWS[3:] + ROWS[:3])] == [90.0, 80.0, 70.0]
    assert table_groups(ROWS[:3]) == [("", ROWS[:3])]


def test_markdown_pivot_has_a_row_per_augmentation_with_its_own_unseen_mean():
    md = results_markdown(ROWS)
    assert "| digits | 10 | dm | 90.00 ± 0.50 | 70.00 ± 0.50 | 80.00 ± 0.50 | 75.00 |" in md  # (80 + 70) / 2
    assert "| digits | 10 | dm | 60.00 ± 0.50 | 40.00 ± 0.50 | 50.00 ± 0.50 | 45.00 |" in md  # (50 + 40) / 2
    assert md.index("augment dsa.") < md.index("augment none (DD-Ranking ARS).")
    assert "| digits | dm | 10 | resnet18 | hard | none | 50.00 ± 0.50 |" in md


def test_report_shows_both_tables_and_charts_the_augmented_runs(tmp_path):
    write_report(tmp_path, ROWS)
    page = (tmp_path / "report.html").read_text()
    assert "<h3>protocol hard, augment dsa</h3>" in page and "augment none (DD-Ranking ARS)</h3>" in page
    assert "<td><b>75.00</b></td>" in page and "<td><b>45.00</b></td>" in page
    svg = (tmp_path / "report_files" / "accuracy.svg").read_text()
    assert "dm / resnet18: 80.00%" in svg and "dm / mobilenetv2: 70.00%" in svg  # the augmented runs
    assert "50.00%" not in svg and "40.00%" not in svg

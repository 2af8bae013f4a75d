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
    assert [t for t, _ in groups] == ["protocol hard, augment dsa",
                                      "protocol hard, augment none (DD-Ranking ARS)"]
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


# ----------------------------------------------------------------------------- presets, protocol, headline
# std
def _seeded(method: str, student: str, finals: list[float], preset: str = "demo", reported: str = "final",
            ipc: int = 10, in_mean: bool = True, recipe: dict | None = None) -> dict:
    """A row as ``aggregate`` writes it, with its runs (population std over the seeds)."""
    import numpy as np

    return {"dataset": "digits", "method": method, "ipc": ipc, "student": student, "student_kwargs": {},
            "protocol": "hard", "augment": "dsa", "in_mean": in_mean, "preset": preset, "reported": reported,
            "top1_mean": float(np.mean(finals)), "top1_std": float(np.std(finals)), "best_mean": max(finals),
            "repeats": len(finals), "epochs": 20 if ipc == 10 else 300,
            **({"recipe": recipe} if recipe else {}),
            "runs": [{"seed": i, "final": f, "best": f, "reported": f,
                      "lr": 0.01 if student != "convnet" else 0.001,
                      "batch_size": 16} for i, f in enumerate(finals)]}


def test_two_presets_in_one_folder_keep_their_own_rows_and_tables(tmp_path):
    from tuning.evaluate import write_results

    demo = [_seeded("dm", "resnet18", [80.0, 82.0]), _seeded("dm", "mobilenetv2", [70.0, 74.0])]
    diver = [_seeded("dm", "resnet18", [60.0, 60.0], preset="diver"),
             _seeded("dm", "mobilenetv2", [50.0, 50.0], preset="diver")]
    best = [_seeded("dm", "resnet18", [90.0, 90.0], preset="diver",
                    reported="best (selected on the test split)")]
    write_results(demo, tmp_path)
    write_results(diver, tmp_path)
    rows = write_results(best, tmp_path)
    assert len(rows) == 5  # nothing replaced: another preset or another reported accuracy is another row
    groups = table_groups(rows)
    assert [t for t, _ in groups] == [
        "preset demo, protocol hard, augment dsa, top-1 final",
        "preset diver, protocol hard, augment dsa, top-1 best (selected on the test split)",
        "preset diver, protocol hard, augment dsa, top-1 final"]
    md = results_markdown(rows)
    # each preset's own headline (never averaged across presets): (81 + 72) / 2 and (60 + 50) / 2; the
    # per-seed
    # demo headlines are (80 + 70) / 2 = 75 and (82 + 74) / 2 = 78, population std 1.50
    assert "| digits | 10 | dm | 72.00 ± 2.00 | 81.00 ± 1.00 | 76.50 ± 1.50 |" in md
    assert "| digits | 10 | dm | 50.00 ± 0.00 | 60.00 ± 0.00 | 55.00 ± 0.00 |" in md
    assert ("| digits | dm | 10 | resnet18 | hard | dsa | 90.00 ± 0.00 | 90.00 | 2 | best (selected on the "
            "test split) | diver |") in md


def test_results_md_opens_with_the_resolved_protocol_and_names_the_ipcs(tmp_path):
    from pipeline.config import EvalConfig
    from tuning.evaluate import write_results
    from tuning.protocols import resolve_preset
    from tuning.report_protocol import protocol_record

    cfg = resolve_preset(EvalConfig(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4,
                                    schedule="cosine",
                                    augment="dsa", repeats=2, seed=0, report="best", eval_every=10))
    recipe = protocol_record(cfg, 32, 797, None, "each set's own statistics")
    rows = [_seeded("dm", "convnet", [99.0, 99.0], in_mean=False, recipe=recipe, preset=None),
            _seeded("dm", "resnet18", [80.0, 82.0], recipe=recipe, preset=None, ipc=1),
            _seeded("dm", "resnet18", [80.0, 82.0], recipe=recipe, preset=None)]
    write_results(rows, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# Results: IPC 1 and 10\n\n**Evaluation protocol, preset none.**")
    for line in ["| preset | none (the eval section's own values) |",
                 "| optimizer | sgd, momentum 0.9, weight decay 0.0005 |",
                 "| lr per student | convnet: 0.001; resnet18: 0.01 |",
                 "| batch per IPC | IPC 1: 16; IPC 10: 16 |", "| epochs per IPC | IPC 1: 300; IPC 10: 20 |",
                 "| schedule | cosine to 0, stepped per step |",
                 "| augmentation | dsa (DSA color_crop_cutout_flip_scale_rotate) |",
                 "| teacher | none (hard labels) |",
                 ("| top-1 | best (selected on the test split); tested after the last epoch, every 10 "
                  "epochs |"),
                 "| seeds | 0, 1 |",
                 "| val | 797 real images at 32 px: bicubic resize of the short side to 32, center crop 32 |",
                 "| normalisation | each set's own statistics |"]:
        assert line in md, line
    assert md.index("| std | population std") < md.index("| dataset | method |")  # the protocol comes first


def test_report_html_says_final_or_best_per_table_and_charts_error_bars(tmp_path):
    rows = [_seeded("dm", "resnet18", [80.0, 82.0], preset="edits",
                    reported="best (selected on the test split)"),
            _seeded("dm", "mobilenetv2", [70.0, 74.0], preset="edits",
                    reported="best (selected on the test split)")]
    write_report(tmp_path, rows, title="t")
    page = (tmp_path / "report.html").read_text()
    assert "Final accuracy" not in page and "Top-1 = best (selected on the test split)." in page
    assert "<h1>t, IPC 10</h1>" in page and "<h2>Evaluation protocol, preset edits</h2>" in page
    assert "<td><b>76.50 ± 1.50</b></td>" in page  # the headline with its std over seeds
    assert "<td>best (selected on the test split)</td>" in page  # the every-row table says it per row
    svg = (tmp_path / "report_files" / "accuracy.svg").read_text()
    assert svg.count("class='err'") == 2  # one whisker per bar
    # resnet18: 81 ± 1 -> whisker from 80 to 82 % of the 240 px plot below y = 20: y 68.0 .. 63.2
    assert "class='err' d='M" in svg and "V63.2" in svg and ",68.0V" in svg
    assert (tmp_path / "results.md").read_text().startswith("# t, IPC 10\n")


def test_bar_chart_keeps_each_ipc_apart():
    from pipeline.report import bar_chart_svg

    rows = [_seeded("dm", "resnet18", [80.0, 82.0], ipc=1), _seeded("dm", "resnet18", [90.0, 92.0])]
    svg = bar_chart_svg(rows)
    assert "dm IPC 1 / resnet18: 81.00% ± 1.00" in svg and "dm IPC 10 / resnet18: 91.00% ± 1.00" in svg
    assert svg.index("dm IPC 1 /") < svg.index("dm IPC 10 /")
    assert "dm / resnet18: 81.00%" in bar_chart_svg(rows[:1])  # one IPC: the method alone

"""Report: results.md and a self-contained report.html with the table, image grids and the sweep plot."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.write import DistilledSetWriter
from pipeline.report import set_grid, write_report


def _set(path, classes=3, ipc=4, colour=0):
    w = DistilledSetWriter(path, "toy")
    for c in range(classes):
        for i in range(ipc):
            w.add(f"c{c}_{i}", str(c), c, np.full((8, 8, 3), (c * 60 + i * 10 + colour) % 256, np.uint8),
                  flush=False)
    w.flush()
    return path


def test_grid_has_a_row_per_class(tmp_path):
    grid = set_grid(_set(tmp_path / "s"), per_class=10, cell=16)
    pad = 2
    assert grid.size == (4 * (16 + pad) + pad, 3 * (16 + pad) + pad)
    px = np.asarray(grid)
    # row of class 1, column 2 holds that image's value (1*60 + 2*10)
    assert tuple(px[pad + 1 * 18 + 8, pad + 2 * 18 + 8]) == (80, 80, 80)


def test_report_html_and_markdown(tmp_path):
    rows = [{"dataset": "digits", "method": m, "ipc": 10, "student": s, "protocol": "hard", "top1_mean": v,
             "top1_std": 0.5, "repeats": 2, "best_mean": v + 1, "student_kwargs": kw}
            for m, s, v, kw in [("random_real", "convnet", 80.0, {}), ("random_real", "resnet18", 70.0,
                                                                       {"width": 16}),
                                ("diver", "convnet", 60.0, {})]]
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    Image.new("RGB", (40, 30), (0, 0, 255)).save(sweep / "sweep.png")
    (sweep / "best.json").write_text(json.dumps({"params": {"diver.gamma": 0.1}, "mean_top1": 61.5}))
    (sweep / "sweep.md").write_text("# Sweep\n\n| trial | diver.gamma |\n")
    paths = write_report(tmp_path, rows, sets={"random_real": _set(tmp_path / "a"),
                                               "diver": _set(tmp_path / "b")},
                         sweep_dir=sweep, notes=["a note"])
    html = Path(paths["report_html"]).read_text()
    assert html.count("data:image/png;base64,") == 3  # two grids + the sweep plot
    assert "80.00 ± 0.50" in html and "resnet18 (width=16)" in html and "diver.gamma" in html
    # random_real: mean over its two students (rows without in_mean count)
    assert "<td><b>75.00</b></td>" in html
    md = Path(paths["results_md"]).read_text()
    assert ("- a note" in md and "| digits | 10 | diver | 60.00 ± 0.50 | - | 60.00 |" in md
            and "## Sweep" in md)
    assert (tmp_path / "report_files" / "grid_diver.png").is_file()
    overview = Image.open(tmp_path / "report_files" / "overview.png")
    grid_a, grid_b = (Image.open(tmp_path / "report_files" / f"grid_{n}.png")
                      for n in ("random_real", "diver"))
    assert overview.width == grid_a.width + grid_b.width + 3 * 12  # side by side with gaps
    assert overview.height == max(grid_a.height, grid_b.height) + 32 + 2 * 12  # a two-line title
    assert "report_files/overview.png" in md


def test_overview_titles_carry_the_mean_over_students():
    from PIL import ImageChops

    from pipeline.report import overview_image

    grids = {"a": Image.new("RGB", (20, 20), (0, 0, 0))}
    rows = [{"method": "a", "top1_mean": 70.0}, {"method": "a", "top1_mean": 80.0}]
    with_acc, without = overview_image(grids, rows), overview_image(grids, [])
    assert with_acc.size == without.size == (59, 76)  # the column holds the widest title line, '100.0%'
    assert ImageChops.difference(with_acc, without).getbbox() is not None  # "a: 75.0%" vs "a"
    # the grid sits under the title, centred
    assert np.asarray(with_acc)[6 + 32 + 5, 19 + 5].tolist() == [0, 0, 0]

"""paint_grid: canvas size, tile positions, blanks, the column gap, labels and unreadable files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.core.grids import paint_grid


def _solid(rgb, size=(3, 3)) -> np.ndarray:
    return np.full((size[1], size[0], 3), rgb, dtype=np.uint8)


def test_size_and_positions_with_margin_pad_and_blanks():
    red, blue = _solid((255, 0, 0)), _solid((0, 0, 255))
    g = np.asarray(paint_grid([[red, None, blue], [blue]], 4, pad=2, margin=1))
    # width = 1 + 3 * (4 + 2) = 19, height = 1 + 2 * (4 + 2) = 13
    assert g.shape == (13, 19, 3)
    assert g[1, 1].tolist() == [255, 0, 0] and g[4, 4].tolist() == [255, 0, 0]  # tile (0,0) at x,y 1..4
    assert g[5, 5].tolist() == [255, 255, 255]  # the pad after it
    assert g[1, 7].tolist() == [255, 255, 255]  # column 1 of row 0 is blank
    assert g[1, 13].tolist() == [0, 0, 255]  # column 2 starts at 1 + 2 * 6 = 13
    assert g[7, 1].tolist() == [0, 0, 255]  # row 1 starts at y = 1 + 6 = 7
    assert g[0, 0].tolist() == [255, 255, 255]


def test_split_gap_and_rectangular_cells():
    green = _solid((0, 255, 0))
    g = np.asarray(paint_grid([[green, green]], (5, 3), cols=2, pad=0, split=1, gap=4))
    assert g.shape == (3, 14, 3)  # 2 * 5 + 4
    assert g[0, 4].tolist() == [0, 255, 0] and g[0, 5].tolist() == [255, 255, 255]
    assert g[0, 8].tolist() == [255, 255, 255] and g[0, 9].tolist() == [0, 255, 0]


def test_labels_files_and_unreadable_tiles(tmp_path):
    good = tmp_path / "g.png"
    Image.fromarray(_solid((9, 9, 9))).save(good)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not a png")
    g = np.asarray(paint_grid([[good, bad]], 4, pad=0, label_width=10, labels=["x"], bad_tile=(255, 0, 0)))
    assert g.shape == (4, 18, 3)
    assert g[0, 10].tolist() == [9, 9, 9] and g[0, 14].tolist() == [255, 0, 0]
    assert (g[:, :10] != 255).any()  # the label was drawn in the left strip
    with pytest.raises(OSError):
        paint_grid([[bad]], 4)

"""The one image-grid painter: rows of tiles (one row per class), optional row labels and a column gap.

Used by the EDITS contact sheet, the report's set grids and DIVER's input | recovered sheet.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

Tile = Image.Image | np.ndarray | str | os.PathLike | None


def _tile(t: Tile, size: tuple[int, int], resample: int,
          bad_tile: tuple[int, int, int] | None) -> Image.Image | None:
    if t is None:
        return None
    if isinstance(t, np.ndarray):
        return Image.fromarray(t).convert("RGB").resize(size, resample)
    if isinstance(t, Image.Image):
        return t.convert("RGB").resize(size, resample)
    try:
        with Image.open(t) as im:
            return im.convert("RGB").resize(size, resample)
    except OSError:
        if bad_tile is None:
            raise
        return Image.new("RGB", size, bad_tile)


def paint_grid(rows: Sequence[Sequence[Tile]], cell: int | tuple[int, int], *, cols: int | None = None,
               pad: int = 2, margin: int = 0, label_width: int = 0, labels: Sequence[str] | None = None,
               split: int | None = None, gap: int = 0, resample: int = Image.NEAREST,
               bad_tile: tuple[int, int, int] | None = None) -> Image.Image:
    """A white RGB canvas with ``rows[r][c]`` resized to ``cell`` (w, h) at column ``c`` of row ``r``.

    Tiles are PIL images, uint8 HWC arrays, image file paths or ``None`` (left blank). Every
    tile is followed by ``pad`` pixels; ``margin`` pixels precede the first row and column;
    ``label_width`` pixels on the left hold ``labels[r]``; columns from ``split`` on are moved
    ``gap`` pixels right. An unreadable file raises, or becomes a ``bad_tile`` coloured tile.
    """
    cw, ch = (cell, cell) if isinstance(cell, int) else cell
    ncols = cols if cols is not None else max((len(r) for r in rows), default=1)
    width = margin + label_width + ncols * (cw + pad) + (gap if split is not None else 0)
    height = margin + max(1, len(rows)) * (ch + pad)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas) if labels is not None else None
    for r, row in enumerate(rows):
        y = margin + r * (ch + pad)
        if draw is not None:
            draw.text((4, y + ch // 2 - 6), labels[r], fill="black")
        for c, t in enumerate(row):
            tile = _tile(t, (cw, ch), resample, bad_tile)
            if tile is not None:
                x = margin + label_width + c * (cw + pad) + (gap if split is not None and c >= split else 0)
                canvas.paste(tile, (x, y))
    return canvas

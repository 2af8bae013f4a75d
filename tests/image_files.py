"""Writes small solid-colour image files for the reader and data-check tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def write_image(path: Path, color: str = "red", size: tuple[int, int] = (8, 8), mode: str = "RGB") -> Path:
    """A ``size`` image of one ``color`` at ``path`` (parent folders made), in the format its suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path

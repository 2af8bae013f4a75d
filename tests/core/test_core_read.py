"""load_image_arrays: the one ImageFolder -> arrays reader (sizes, labels, bad files)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.core.read import load_image_arrays
from pipeline.errors import DataError


def _folder(root, sizes: dict[str, list[tuple[int, int]]]):
    for cls, dims in sizes.items():
        (root / cls).mkdir(parents=True)
        for i, (w, h) in enumerate(dims):
            Image.new("RGB", (w, h), (10 * i, 100, 200)).save(root / cls / f"{i}.png")
    return root


def test_labels_follow_sorted_classes_and_size_is_kept_or_forced(tmp_path):
    root = _folder(tmp_path / "d", {"b": [(8, 8)], "a": [(8, 8), (8, 8)]})
    arr = load_image_arrays(root)
    assert arr.images.shape == (3, 8, 8, 3) and arr.images.dtype == np.uint8
    assert arr.labels.tolist() == [0, 0, 1] and arr.classes == ["a", "b"]
    assert [p.split("/")[-2:] for p in arr.paths] == [["a", "0.png"], ["a", "1.png"], ["b", "0.png"]]
    assert arr.images[1, 0, 0].tolist() == [10, 100, 200]
    assert load_image_arrays(root, 4).images.shape == (3, 4, 4, 3)
    x, y, classes, _ = load_image_arrays(root, classes=["b"], max_per_class=1)
    assert x.shape[0] == 1 and y.tolist() == [0] and classes == ["b"]


def test_mixed_sizes_use_the_smallest_side(tmp_path):
    root = _folder(tmp_path / "d", {"a": [(8, 8), (12, 6)]})
    assert load_image_arrays(root).images.shape == (2, 6, 6, 3)


def test_bad_files_raise_naming_the_file_or_are_skipped(tmp_path):
    root = _folder(tmp_path / "d", {"a": [(8, 8)], "b": [(8, 8)]})
    (root / "a" / "z_broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="z_broken.png"):
        load_image_arrays(root)
    arr = load_image_arrays(root, skip_bad=True)
    assert arr.labels.tolist() == [0, 1] and len(arr.paths) == 2
    only_bad = tmp_path / "e" / "a"
    only_bad.mkdir(parents=True)
    (only_bad / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match="no readable images"):
        load_image_arrays(tmp_path / "e", skip_bad=True)

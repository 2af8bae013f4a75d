"""DIVER's input: bad ``.pt`` distilled sets fail fast with the file named."""

from __future__ import annotations

import pytest
import torch

from pipeline.diver.inputs import load_stage1
from pipeline.errors import DataError


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_pt_with_mismatched_images_and_labels(tmp_path):
    p = _save(tmp_path / "s.pt", {"images": torch.rand(10, 3, 8, 8), "labels": torch.arange(9)})
    with pytest.raises(DataError, match=r"s.pt: 10 images but 9 labels"):
        load_stage1(p)
    p = _save(tmp_path / "t.pt", (torch.rand(4, 3, 8, 8), torch.zeros(5, dtype=torch.long)))
    with pytest.raises(DataError, match="4 images but 5 labels"):
        load_stage1(p)
    (tmp_path / "mtt").mkdir()
    torch.save(torch.rand(6, 3, 8, 8), tmp_path / "mtt" / "images_best.pt")
    torch.save(torch.zeros(3, dtype=torch.long), tmp_path / "mtt" / "labels_best.pt")
    with pytest.raises(DataError, match="6 images but 3 labels"):
        load_stage1(tmp_path / "mtt")


def test_pt_with_bad_labels(tmp_path):
    x = torch.rand(3, 3, 8, 8)
    with pytest.raises(DataError, match="label 5 but only 2 class ids"):
        load_stage1(_save(tmp_path / "a.pt", {"images": x, "labels": torch.tensor([0, 1, 5]),
                                              "classes": ["a", "b"]}))
    with pytest.raises(DataError, match="negative label"):
        load_stage1(_save(tmp_path / "b.pt", {"images": x, "labels": torch.tensor([0, -1, 1]),
                                              "classes": ["a", "b"]}))
    with pytest.raises(DataError, match="negative label"):
        load_stage1(_save(tmp_path / "c.pt", {"images": x, "labels": torch.tensor([0, -1, 1])}))
    col = load_stage1(_save(tmp_path / "d.pt", {"images": x, "labels": torch.tensor([[2], [0], [1]])}))
    assert col.labels.tolist() == [2, 0, 1]  # an [N, 1] column is labels, not 1-class soft labels
    soft = load_stage1(_save(tmp_path / "e.pt", {"images": x,
                                                 "labels": torch.tensor([[0.1, 0.9], [0.8, 0.2], [0, 1.0]])}))
    assert soft.labels.tolist() == [1, 0, 1]
    with pytest.raises(DataError, match="class ids more than once"):
        load_stage1(_save(tmp_path / "f.pt", {"images": x, "labels": torch.tensor([0, 1, 1]),
                                              "classes": ["a", "a"]}))


def test_pt_with_bad_pixels_or_bad_file(tmp_path):
    x = torch.rand(2, 3, 8, 8)
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(DataError, match=r"not finite \(NaN/inf\) in image \[1\]"):
        load_stage1(_save(tmp_path / "nan.pt", {"images": x, "labels": torch.tensor([0, 1])}))
    with pytest.raises(DataError, match="looks normalised but no mean/std"):
        load_stage1(_save(tmp_path / "norm.pt", {"images": torch.randn(2, 3, 8, 8) * 2,
                                                 "labels": torch.tensor([0, 1])}))
    with pytest.raises(DataError, match=r"must be \[N, C, H, W\]"):
        load_stage1(_save(tmp_path / "3d.pt", {"images": torch.rand(3, 8, 8),
                                               "labels": torch.tensor([0, 1, 2])}))
    with pytest.raises(DataError, match="expected keys images/labels"):
        load_stage1(_save(tmp_path / "keys.pt", {"pics": x, "labels": torch.tensor([0, 1])}))
    good = _save(tmp_path / "good.pt", {"images": torch.rand(2, 3, 8, 8), "labels": torch.tensor([0, 1])})
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read .*trunc.pt"):
        load_stage1(tmp_path / "trunc.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_pt_with_pickled_code_is_refused(tmp_path, capsys):
    torch.save({"images": torch.rand(1, 3, 8, 8), "labels": torch.tensor([0]), "x": _Evil()},
               tmp_path / "evil.pt")
    capsys.readouterr()
    with pytest.raises(DataError, match="refused to load .*evil.pt"):
        load_stage1(tmp_path / "evil.pt")
    assert "code ran" not in capsys.readouterr().out  # weights_only loading: nothing executed

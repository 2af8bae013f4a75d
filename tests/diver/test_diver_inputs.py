"""Stage-1 input formats round-trip, and de-normalisation happens before the VAE."""

from __future__ import annotations

import pytest
import torch

from pipeline.core.write import DistilledSetWriter
from pipeline.diver.inputs import (
    PRESETS,
    detect_format,
    load_stage1,
    normalize,
    save_pt,
)
from pipeline.diver.recovery import load_class_map
from pipeline.errors import DataError
from tests.dit_classes import dit_classes

MEAN, STD = PRESETS["imagenet"]


def _images(n: int = 6, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_pt_round_trip_with_its_own_normalisation(tmp_path):
    x, y = _images(), torch.tensor([0, 0, 1, 1, 2, 2])
    save_pt(tmp_path / "set.pt", x, y, ["n01", "n02", "n03"], MEAN, STD)
    raw = torch.load(tmp_path / "set.pt")
    assert raw["images"].min() < -0.5  # stored normalised, like DM/MTT tensors
    s = load_stage1(tmp_path / "set.pt")
    assert s.fmt == "pt" and s.classes == ["n01", "n02", "n03"]
    torch.testing.assert_close(s.images, x, rtol=0, atol=1e-6)
    assert s.labels.tolist() == y.tolist() and s.index_in_class() == [0, 1, 0, 1, 0, 1]
    assert s.sources[3].endswith("set.pt#3")
    assert s.normalization == {"mean": pytest.approx(MEAN), "std": pytest.approx(STD)}


def test_pt_folder_auto_and_config_mean_std_win(tmp_path):
    x, y = _images(4), torch.tensor([1, 0, 1, 0])
    # a tuple file without stats: the config's mean/std undo the normalisation
    torch.save((normalize(x, MEAN, STD), y), tmp_path / "tuple.pt")
    with pytest.raises(DataError, match="input_mean"):
        load_stage1(tmp_path / "tuple.pt")
    s = load_stage1(tmp_path / "tuple.pt", mean=MEAN, std=STD)
    torch.testing.assert_close(s.images, x, rtol=0, atol=1e-6)
    assert s.classes == ["0", "1"] and s.labels.tolist() == [1, 0, 1, 0]
    # a folder holding images.pt (what `semdistill distill dm` writes) is read as pt
    save_pt(tmp_path / "dm" / "images.pt", x, y, ["a", "b"], [0.5] * 3, [0.25] * 3)
    assert detect_format(tmp_path / "dm") == "pt"
    torch.testing.assert_close(load_stage1(tmp_path / "dm").images, x, rtol=0, atol=1e-6)


def test_mtt_images_best_round_trip_soft_labels_and_grey(tmp_path):
    x = _images(4)
    torch.save(normalize(x, MEAN, STD), tmp_path / "images_best.pt")
    torch.save(torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), tmp_path / "labels_best.pt")
    assert detect_format(tmp_path) == "mtt"
    s = load_stage1(tmp_path, mean=MEAN, std=STD)
    assert s.fmt == "mtt" and s.labels.tolist() == [1, 0, 1, 0]
    torch.testing.assert_close(s.images, x, rtol=0, atol=1e-6)
    # MNIST-style grey tensors become 3 identical channels; uint8 is read as pixels
    grey = tmp_path / "grey"
    grey.mkdir()
    torch.save((x[:, :1] * 255).round().to(torch.uint8), grey / "images_best.pt")
    torch.save(torch.tensor([0, 1, 0, 1]), grey / "labels_best.pt")
    g = load_stage1(grey)
    assert g.images.shape == (4, 3, 8, 8)
    assert torch.equal(g.images[:, 0], g.images[:, 2])
    (grey / "labels_best.pt").unlink()
    with pytest.raises(DataError, match="labels_best.pt"):
        load_stage1(grey, fmt="mtt")


def test_imagefolder_round_trip_is_exact(tmp_path):
    x = (_images(4) * 255).round().to(torch.uint8)
    w = DistilledSetWriter(tmp_path / "folder", "dm")
    for i, cid in enumerate(["cat", "cat", "dog", "dog"]):
        w.add(f"{cid}_{i}", cid, i // 2, x[i].permute(1, 2, 0).numpy())
    s = load_stage1(tmp_path / "folder")
    assert s.fmt == "imagefolder" and s.classes == ["cat", "dog"]
    assert torch.equal((s.images * 255).round().to(torch.uint8), x)


def test_dit_class_mapping(tmp_path):
    x = _images(4)
    save_pt(tmp_path / "a.pt", x, torch.tensor([0, 1, 1, 0]), ["n07753275", "n07753592"])
    s = load_stage1(tmp_path / "a.pt")
    assert dit_classes(s, {"n07753275": 953, "n07753592": 954}) == [953, 954, 954, 953]
    # wnids of a subset map by the ImageNet-1K order (pineapple 953, banana 954), not to 0..K-1
    assert dit_classes(s, None, num_dit_classes=1000) == [953, 954, 954, 953]
    with pytest.raises(DataError, match="class_map"):
        dit_classes(s, None, num_dit_classes=10)  # wnids on a DiT that is not an ImageNet-1K DiT
    with pytest.raises(DataError, match="no entry"):
        dit_classes(s, {"n07753275": 953})
    numeric = load_stage1(tmp_path / "a.pt", classes=["7", "953"])
    assert dit_classes(numeric, None) == [7, 953, 953, 7]
    (tmp_path / "map.json").write_text('{"n07753275": 1, "n07753592": 2}')
    assert load_class_map(str(tmp_path / "map.json")) == {"n07753275": 1, "n07753592": 2}
    assert load_class_map({"0": "953"}) == {"0": 953}


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_stage1(tmp_path / "missing")
    torch.save({"pixels": torch.zeros(1)}, tmp_path / "odd.pt")
    with pytest.raises(DataError, match="odd.pt"):
        load_stage1(tmp_path / "odd.pt")
    torch.save({"images": torch.zeros(3, 3, 4, 4), "labels": torch.zeros(2)}, tmp_path / "short.pt")
    with pytest.raises(DataError, match="3 images but 2 labels"):
        load_stage1(tmp_path / "short.pt")
    torch.save({"images": torch.zeros(2, 4, 4, 4), "labels": torch.zeros(2)}, tmp_path / "rgba.pt")
    with pytest.raises(DataError, match="1 or 3 channels"):
        load_stage1(tmp_path / "rgba.pt")

"""DIVER reads the stage-1 files the classical distillers write, each built here with
the nested structure their reference code saves (torch.save of the same objects)."""

from __future__ import annotations

import copy
import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.diver.inputs import (
    LAYOUTS,
    PRESETS,
    REF_NORMS,
    detect_format,
    load_stage1,
    normalize,
)
from pipeline.errors import DataError
from tests.dit_classes import dit_classes

CIFAR_MEAN, CIFAR_STD = PRESETS["cifar10"]


def _pixels(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _dc_reference_file(path, exps: int = 3, classes: int = 3, ipc: int = 2, size: int = 8):
    """What DC/DSA/DM's main script saves: one [image_syn, label_syn] per experiment, normalised with the
    dataset's mean/std, and accuracies as numpy floats (``np.mean`` of per-model results)."""
    data_save, pixels = [], []
    label_syn = torch.tensor(np.array([np.ones(ipc) * i for i in range(classes)]), dtype=torch.long,
                             requires_grad=False).view(-1)
    for exp in range(exps):
        x = _pixels(classes * ipc, size, seed=exp)
        image_syn = normalize(x, CIFAR_MEAN, CIFAR_STD).requires_grad_(True)
        data_save.append([copy.deepcopy(image_syn.detach().cpu()), copy.deepcopy(label_syn.detach().cpu())])
        pixels.append(x)
    accs_all_exps = {"ConvNet": [np.float64(0.4 + 0.01 * e) for e in range(exps)]}
    torch.save({"data": data_save, "accs_all_exps": accs_all_exps}, path)
    return pixels, label_syn


def test_dc_reference_file_last_experiment_and_dataset_normalisation(tmp_path):
    p = tmp_path / "res_DM_CIFAR10_ConvNet_2ipc.pt"
    pixels, labels = _dc_reference_file(p)
    assert detect_format(p) == "pt"
    s = load_stage1(p)  # the default: the last experiment, de-normalised with CIFAR-10's statistics
    assert s.layout == "dc_reference" and s.fmt == "pt"
    torch.testing.assert_close(s.images, pixels[-1], rtol=0, atol=1e-6)
    assert s.labels.tolist() == labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert s.normalization == {"mean": pytest.approx(CIFAR_MEAN), "std": pytest.approx(CIFAR_STD)}
    first = load_stage1(p, experiment=0)
    torch.testing.assert_close(first.images, pixels[0], rtol=0, atol=1e-6)
    with pytest.raises(DataError, match=r"diver.input_experiment=3 but the file holds 3 experiments"):
        load_stage1(p, experiment=3)
    # the config's mean/std win over the file name's dataset
    other = load_stage1(p, mean=[0.0] * 3, std=[1.0] * 3, experiment=1)
    torch.testing.assert_close(other.images, normalize(pixels[1], CIFAR_MEAN, CIFAR_STD).clamp(0, 1),
                               rtol=0, atol=1e-6)


def test_dc_reference_normalisations_are_the_reference_codes():
    assert REF_NORMS["MNIST"] == ([0.1307], [0.3081]) and REF_NORMS["FashionMNIST"] == ([0.2861], [0.3530])
    assert REF_NORMS["SVHN"] == ([0.4377, 0.4438, 0.4728], [0.1980, 0.2010, 0.1970])
    assert REF_NORMS["CIFAR100"] == ([0.5071, 0.4866, 0.4409], [0.2673, 0.2564, 0.2762])


def test_dc_reference_file_written_under_numpy_1_still_loads(tmp_path):
    """numpy 1.x pickles its scalars as numpy.core.multiarray.scalar (numpy 2: numpy._core...)."""
    p = tmp_path / "res_DC_CIFAR10_ConvNet_2ipc.pt"
    pixels, _ = _dc_reference_file(p, exps=1)
    src, out = zipfile.ZipFile(p), io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            z.writestr(info, data)
    p.write_bytes(out.getvalue())
    torch.testing.assert_close(load_stage1(p).images, pixels[0], rtol=0, atol=1e-6)


def test_dc_reference_file_of_an_unknown_dataset_asks_for_mean_std(tmp_path):
    p = tmp_path / "res_DM_ImageFruit_ConvNetD5_2ipc.pt"
    pixels, _ = _dc_reference_file(p, exps=2)
    with pytest.raises(DataError, match="input_mean"):
        load_stage1(p)
    s = load_stage1(p, mean=CIFAR_MEAN, std=CIFAR_STD)
    torch.testing.assert_close(s.images, pixels[-1], rtol=0, atol=1e-6)


def test_single_experiment_data_with_res(tmp_path):
    x, y = _pixels(4, 16, seed=5), torch.tensor([1, 0, 1, 0])
    torch.save({"data": [[x, y]], "res": 16}, tmp_path / "ncfm_like.pt")
    s = load_stage1(tmp_path / "ncfm_like.pt")
    assert s.layout == "data_pairs"
    torch.testing.assert_close(s.images, x, rtol=0, atol=0)
    assert s.labels.tolist() == [1, 0, 1, 0] and s.classes == ["0", "1"]
    torch.save({"data": [x, y], "res": 16}, tmp_path / "flat.pt")  # the pair without the per-experiment list
    torch.testing.assert_close(load_stage1(tmp_path / "flat.pt").images, x, rtol=0, atol=0)


def test_edf_ncfm_lists(tmp_path):
    x, y = _pixels(4, 8, seed=6), torch.tensor([0, 1, 2, 3])
    torch.save([normalize(x, CIFAR_MEAN, CIFAR_STD), y], tmp_path / "pair.pt")
    s = load_stage1(tmp_path / "pair.pt", mean=CIFAR_MEAN, std=CIFAR_STD)
    assert s.layout == "list"
    torch.testing.assert_close(s.images, x, rtol=0, atol=1e-6)
    x2 = _pixels(4, 8, seed=7)
    torch.save([[x, y], [x2, y]], tmp_path / "pairs.pt")
    torch.testing.assert_close(load_stage1(tmp_path / "pairs.pt").images, x2, rtol=0, atol=0)
    torch.testing.assert_close(load_stage1(tmp_path / "pairs.pt", experiment=0).images, x, rtol=0, atol=0)


def test_mtt_images_best_labels_best(tmp_path):
    x = _pixels(6, 8, seed=8)
    torch.save(normalize(x, CIFAR_MEAN, CIFAR_STD).cpu(), tmp_path / "images_best.pt")
    torch.save(torch.tensor([0, 0, 1, 1, 2, 2]).cpu(), tmp_path / "labels_best.pt")
    s = load_stage1(tmp_path, mean=CIFAR_MEAN, std=CIFAR_STD)
    assert s.fmt == "mtt" and s.labels.tolist() == [0, 0, 1, 1, 2, 2]
    torch.testing.assert_close(s.images, x, rtol=0, atol=1e-6)


def test_sre2l_imagefolder_at_224px(tmp_path):
    """SRe2L writes <out>/new<k:03d>/class<k:03d>_id<i:03d>.jpg at 224 px; new<k> is ImageNet class k."""
    rng = np.random.default_rng(0)
    for k in (1, 7):
        (tmp_path / f"new{k:03d}").mkdir()
        for i in range(2):
            arr = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / f"new{k:03d}" / f"class{k:03d}_id{i:03d}.jpg", quality=95)
    assert detect_format(tmp_path) == "imagefolder"
    s = load_stage1(tmp_path)
    assert s.images.shape == (4, 3, 224, 224) and s.classes == ["new001", "new007"]
    assert dit_classes(s, None, 1000) == [1, 1, 7, 7]


def test_unknown_layout_lists_the_known_ones(tmp_path):
    torch.save({"data": torch.rand(2, 3, 8, 8)}, tmp_path / "odd.pt")
    with pytest.raises(DataError, match="odd.pt: expected keys images/labels") as err:
        load_stage1(tmp_path / "odd.pt")
    for layout in LAYOUTS:
        assert layout in str(err.value)
    assert ("res_<method>_<dataset>_<model>_<ipc>ipc.pt" in str(err.value)
            and "images_best.pt" in str(err.value))
    torch.save([torch.rand(2, 3, 8, 8)], tmp_path / "one.pt")
    with pytest.raises(DataError, match="Known layouts"):
        load_stage1(tmp_path / "one.pt")

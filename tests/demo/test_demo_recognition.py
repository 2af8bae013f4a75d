"""pipeline/demo/recognition.py: the real-digit judge's reading of a set, per class, and its cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from pipeline.core.pixels import u8_hwc_to_signed_chw
from pipeline.core.read import load_image_arrays
from pipeline.demo import recognition
from pipeline.demo.recognition import Judge, cached_judge, recognise, recognition_line, train_judge


def _copy(src: Path, dst: Path, count: int) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.png"))[:count]:
        shutil.copy(f, dst / f.name)


@pytest.fixture(scope="module")
def judge(demo_root: Path) -> Judge:
    return train_judge(demo_root, seed=0, epochs=2)


def test_the_judge_reads_real_digits_and_a_folder_of_the_wrong_digit_as_misread(judge, demo_root, tmp_path):
    s = tmp_path / "set"
    _copy(demo_root / "val" / "0", s / "0", 4)
    _copy(demo_root / "val" / "7", s / "1", 4)  # sevens filed as ones
    rec = recognise(judge, s)
    x, y, classes, _ = load_image_arrays(s, 32)
    with torch.no_grad():
        pred = judge.net(u8_hwc_to_signed_chw(x)).argmax(1)
    truth = torch.tensor([judge.classes.index(classes[label]) for label in y])
    hits = (pred == truth).float()
    assert rec.images == 8
    assert rec.recognised == pytest.approx(round(100 * hits.mean().item(), 1))
    assert rec.per_class == {"0": round(100 * hits[:4].mean().item(), 1),
                             "1": round(100 * hits[4:].mean().item(), 1)}
    assert rec.per_class["1"] < 50.0 < rec.per_class["0"]
    assert "1" in rec.misread_classes() and 0.0 <= rec.confidence <= 100.0
    assert 60.0 < judge.val_accuracy <= 100.0
    line = recognition_line(judge, {"odd": rec})
    assert f"odd {rec.recognised:.1f}%" in line and "misread in class" in line and "1" in line


def test_a_class_the_judge_never_saw_is_an_error_naming_the_set(judge, demo_root, tmp_path):
    _copy(demo_root / "val" / "0", tmp_path / "set" / "letter_a", 2)
    with pytest.raises(ValueError, match=r"set: classes \['letter_a'\] are not among"):
        recognise(judge, tmp_path / "set")


def test_the_cached_judge_is_reused_with_the_same_weights_and_retrained_for_other_settings(demo_root,
                                                                                           tmp_path,
                                                                                        monkeypatch):
    first = cached_judge(demo_root, tmp_path / "judge", seed=0, epochs=1)
    assert (tmp_path / "judge" / "judge.pt").is_file() and (tmp_path / "judge" / "judge.json").is_file()

    def no_training(*args, **kwargs):
        raise AssertionError("the cached judge was retrained")

    monkeypatch.setattr(recognition, "train_judge", no_training)
    again = cached_judge(demo_root, tmp_path / "judge", seed=0, epochs=1)
    assert again.val_accuracy == first.val_accuracy and again.classes == first.classes
    for a, b in zip(first.net.state_dict().values(), again.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(AssertionError, match="retrained"):
        cached_judge(demo_root, tmp_path / "judge", seed=1, epochs=1)

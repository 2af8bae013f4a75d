"""tuning/protocols.py's test pass: top-1 and per-class top-1 of a student on the val set."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tuning.protocols import TrainSpec, per_class_top1, predictions, top1, train_student


def test_per_class_top1_by_hand():
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = torch.tensor([0, 1, 0, 1, 1, 2, 0, 0, 2])
    assert top1(pred, y) == pytest.approx(100 * 6 / 9)
    assert per_class_top1(pred, y, 4) == [pytest.approx(200 / 3), 100.0, 50.0, None]  # class 3: no val image


def test_predictions_are_the_argmax_in_eval_mode_and_leave_training_mode_as_it_was():
    model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.9))
    x = torch.randn(10, 3)
    with torch.no_grad():
        expected = model[0](x).argmax(1)
    model.train()
    assert torch.equal(predictions(model, x, batch_size=4), expected) and model.training


def test_a_trained_student_reports_per_class_top1_that_averages_to_its_final_top1():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, 16, 16, generator=gen), torch.arange(40) % 4
    val_x, val_y = torch.randn(22, 3, 16, 16, generator=gen), torch.tensor([0] * 10 + [1] * 4 + [2] * 8)
    spec = TrainSpec(student="convnet", seed=0, epochs=2, batch_size=20, lr=0.01, augment="none",
                     eval_every=1)
    res = train_student(spec, x, y, val_x, val_y, 4)
    per = res["final_per_class"]
    assert len(per) == 4 and per[3] is None
    weighted = (per[0] * 10 + per[1] * 4 + per[2] * 8) / 22
    assert weighted == pytest.approx(res["final"])

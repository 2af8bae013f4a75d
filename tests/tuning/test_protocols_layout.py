"""eval.channels_last: the students it names train and test channels-last, with the same math."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from pipeline.config import EvalConfig
from pipeline.errors import ConfigError
from tests.bench.bench_output import printed_ratio
from tuning.evaluate import check_eval
from tuning.protocols import TrainSpec, memory_format, train_student

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import channels_last as bench_channels_last


def _spec(student: str, channels_last: list[str], epochs: int = 1) -> TrainSpec:
    cfg = EvalConfig(students=[student], preset="demo", epochs=epochs, batch_size=8, eval_every=0,
                     student_kwargs={"resnet18": {"width": 8}}, channels_last=channels_last, augment="none")
    return TrainSpec.from_config(cfg, student, seed=3, ipc=1, num_classes=4)


def _train(spec: TrainSpec) -> tuple[dict, torch.nn.Module]:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16, generator=gen), torch.arange(8) % 4
    seen: dict[str, torch.nn.Module] = {}

    def keep(model: torch.nn.Module) -> torch.nn.Module:
        seen["model"] = model
        return model

    return train_student(spec, x, y, x, y, num_classes=4, wrap_model=keep), seen["model"]


def test_named_student_trains_channels_last_and_others_do_not():
    spec = _spec("resnet18", ["resnet18"])
    assert memory_format(spec) is torch.channels_last
    assert memory_format(_spec("convnet", ["resnet18"])) is torch.contiguous_format
    _, model = _train(spec)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()  # a 3x3 kernel over 3+ channels: the two layouts differ
    _, plain = _train(_spec("resnet18", []))
    assert next(m for m in plain.modules() if isinstance(m, torch.nn.Conv2d)).weight.is_contiguous()


def test_channels_last_is_the_same_math():
    """One epoch of one batch: the loss is the untrained net's on the same batch, layout aside; the accuracy
    after the step agrees too."""
    a, _ = _train(_spec("resnet18", []))
    b, _ = _train(_spec("resnet18", ["resnet18"]))
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
    assert b["final"] == a["final"]


def test_unknown_student_in_channels_last_names_the_key():
    cfg = EvalConfig(students=["convnet"], channels_last=["resnet19"])
    with pytest.raises(ConfigError, match=r"eval\.channels_last: unknown student\(s\) \['resnet19'\]"):
        check_eval(cfg)


def test_bench_prints_both_layouts_and_a_ratio(capsys):
    bench_channels_last.main(["--epochs", "2", "--rounds", "1", "--width", "8"])
    out = capsys.readouterr().out
    assert "channels-first" in out and "channels-last" in out
    assert printed_ratio(out) > 0

#!/usr/bin/env python
"""One evaluation run's training steps, channels-first (PyTorch's default) vs channels-last memory format.

``eval.channels_last`` lists the students trained channels-last: the same layers and the same math,
other oneDNN kernels. The demo turns it on for ResNet-18 (width 16); this bench trains that student (and,
for comparison, the ConvNet) with ``tuning.protocols.train_student`` exactly as one demo evaluation run does
(preset demo: DSA, SGD, cosine; one torch thread), alternating the two layouts in rounds so machine load
hits both alike, and prints the median seconds per SGD step of each and their ratio.

    python bench/channels_last.py                      # ResNet-18 w16, batch 10 (IPC 1), 3 rounds
    python bench/channels_last.py --student convnet --batch 16

Ends with ``ratio: <channels-first s/step / channels-last s/step>`` (above 1: channels-last is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.config import EvalConfig
from tuning.protocols import TrainSpec, train_student


def seconds_per_step(student: str, channels_last: bool, batch: int, epochs: int, width: int | None,
                     seed: int = 0) -> float:
    """Wall seconds per SGD step of one run on ``batch`` random 32 px images (one batch an epoch)."""
    kwargs = {student: {"width": width}} if width else {}
    cfg = EvalConfig(students=[student], preset="demo", epochs=epochs, batch_size=batch, eval_every=0,
                     student_kwargs=kwargs, channels_last=[student] if channels_last else [], cpus_per_job=1)
    spec = TrainSpec.from_config(cfg, student, seed=seed, ipc=1, num_classes=10)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(batch, 3, 32, 32, generator=gen), torch.arange(batch) % 10
    info = train_student(spec, x, y, x[:2], y[:2], num_classes=10)
    return info["seconds"] / epochs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--width", type=int, default=16, help="student_kwargs width (0: the student's default)")
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=30, help="SGD steps per timed run (one batch an epoch)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    width = args.width if args.student.startswith("resnet") and args.width else None
    first, last = [], []
    for r in range(args.rounds):
        first.append(seconds_per_step(args.student, False, args.batch, args.epochs, width, seed=r))
        last.append(seconds_per_step(args.student, True, args.batch, args.epochs, width, seed=r))
        print(f"round {r}: channels-first {first[-1] * 1000:.1f} ms/step, "
              f"channels-last {last[-1] * 1000:.1f}")
    a, b = statistics.median(first), statistics.median(last)
    print(f"{args.student} batch {args.batch}, one thread, median of {args.rounds} rounds: "
          f"channels-first {a * 1000:.1f} ms/step, channels-last {b * 1000:.1f} ms/step")
    print(f"ratio: {a / b:.3f}")


if __name__ == "__main__":
    main()

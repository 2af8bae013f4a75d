"""bench/pipeline_throughput.py at a tiny size: both methods' stages run and a ratio is printed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.bench.bench_output import printed_ratio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))


@pytest.mark.slow
def test_pipeline_throughput_bench_small(capsys):
    import pipeline_throughput

    assert pipeline_throughput.main(["--images", "20", "--recover-images", "4", "--batch", "8"]) == 0
    out = capsys.readouterr().out
    assert "EDITS caption + embed" in out and "DIVER recovery" in out
    assert printed_ratio(out) > 0

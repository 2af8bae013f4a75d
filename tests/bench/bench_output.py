"""Reads the benchmarks' printed output: each ends with a ``ratio: X`` line."""

from __future__ import annotations


def printed_ratio(out: str) -> float:
    """The number on the last line of a benchmark's output, which must read ``ratio: X``."""
    last = out.strip().splitlines()[-1]
    assert last.startswith("ratio: "), last
    return float(last.split()[1])

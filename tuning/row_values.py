"""A result row's per-seed numbers, as the row reports them (shared by the tables, DD-Ranking and the
claims)."""

from __future__ import annotations

from typing import Any


def run_value(run: dict[str, Any], row: dict[str, Any]) -> float:
    """One run's number as its row reports it: the run's ``reported`` when stored, else its final or best
    top-1 as the row's ``reported`` label says (``best ... (selected on the test split)`` is a best)."""
    if run.get("reported") is not None:
        return float(run["reported"])
    return float(run["best" if str(row.get("reported", "final")).startswith("best") else "final"])


def seed_values(row: dict[str, Any]) -> dict[int, float]:
    """``{seed: reported top-1}`` of a row's runs (empty for rows that kept no runs)."""
    return {int(run["seed"]): run_value(run, row) for run in row.get("runs") or []}

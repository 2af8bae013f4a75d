"""The papers' claims in the demo's miniature, checked against its table and said in its report.

Issue targets, both on the headline (the mean over unseen architectures, ``eval.exclude_from_mean``
left out) of the augmented runs:

- DIVER beats its stage-1 input by more than the seeds' standard deviation of that mean;
- full EDITS is at or above random real.

The per-seed headline is the mean over the unseen students of each seed's final top-1, so its
standard deviation (population, as the table's) is the spread a seed alone causes.
"""

from __future__ import annotations

import numpy as np

from tuning.evaluate import in_mean


def headline_by_seed(rows: list[dict], method: str) -> list[float]:
    """Per seed, the mean over ``method``'s unseen-architecture rows of that seed's reported top-1."""
    mine = [r for r in rows if r["method"] == method and r.get("augment") != "none" and in_mean(r)]
    by_seed: dict[int, list[float]] = {}
    for r in mine:
        for run in r.get("runs", []):
            by_seed.setdefault(int(run["seed"]), []).append(float(run[r.get("reported", "final")]))
    full = [v for v in by_seed.values() if len(v) == len(mine)]  # seeds every student ran
    return [float(np.mean(v)) for v in full]


def claim_lines(rows: list[dict]) -> list[str]:
    """One sentence per claim whose sets are in ``rows``: met or missed, with the numbers."""
    lines = []
    diver, dm = headline_by_seed(rows, "diver"), headline_by_seed(rows, "dm")
    if diver and dm:
        gain = float(np.mean(diver) - np.mean(dm))
        spread = max(float(np.std(diver)), float(np.std(dm)))
        verdict = "met" if gain > spread else "missed"
        lines.append(f"target {verdict}: DIVER beats its stage-1 DM input on the unseen-architecture mean by more than "
                     f"the seeds' standard deviation (gain {gain:+.2f} points, std {spread:.2f}).")
    edits, real = headline_by_seed(rows, "edits"), headline_by_seed(rows, "random_real")
    if edits and real:
        gap = float(np.mean(edits) - np.mean(real))
        verdict = "met" if gap >= 0 else "missed"
        lines.append(f"target {verdict}: full EDITS at or above random real on the unseen-architecture mean "
                     f"({np.mean(edits):.2f} against {np.mean(real):.2f}, {gap:+.2f} points).")
    return lines

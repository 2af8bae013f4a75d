"""The papers' claims in the demo's miniature, tested on its table and said in its report.

Each claim is "set A above set B" at one IPC, on the headline (the mean over the unseen students,
``eval.exclude_from_mean`` left out) of the augmented runs. Per evaluation seed, each set's headline
(``tuning.evaluate.headline_by_seed``, keyed by distillation and evaluation seed); the paired differences
``d_s = A_s - B_s`` over the seed pairs both ran;
the claim is met when ``mean(d) > 2 SE`` with ``SE = std(d, ddof=1) / sqrt(n)``, and not tested with fewer
than ``MIN_SEEDS`` seeds in make demo, ``FULL_MIN_SEEDS`` in demo --full (two seeds give a standard error
too rough to decide on).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tuning.evaluate import headline_by_seed as set_headlines
from tuning.evaluate import headline_rows

# (set A, set B, what the claim says): A's headline above B's, at every IPC where both ran
CLAIMS: tuple[tuple[str, str, str], ...] = (
    ("edits", "random_real", "EDITS above random real"),
    ("diver", "dm", "DIVER above its stage-1 input (DM)"),
    ("diver_gm", "gm", "DIVER above its stage-1 input (gradient matching)"),
)
MIN_SEEDS = 3  # make demo
FULL_MIN_SEEDS = 5  # demo --full (2 distillation seeds x 3 evaluation seeds = 6 pairs)


def headline_by_seed(rows: list[dict], method: str, ipc: int | None = None) -> list[float]:
    """Per seed (in seed order), ``method``'s headline at ``ipc`` (any IPC when None) on the augmented
    runs."""
    mine = [r for r in rows if r["method"] == method and r.get("augment") != "none"
            and (ipc is None or r["ipc"] == ipc)]
    return list(set_headlines(mine).values()) if mine else []


def paired_test(a: dict[int, float], b: dict[int, float], min_seeds: int = MIN_SEEDS) -> dict[str, Any]:
    """The paired test of ``a`` above ``b`` (per-seed headlines): n, mean difference, SE and the verdict
    (``met`` / ``missed`` / ``not tested`` below ``min_seeds`` seeds)."""
    seeds = sorted(set(a) & set(b))
    d = np.asarray([a[s] - b[s] for s in seeds], dtype=np.float64)
    out: dict[str, Any] = {"n": len(seeds), "seeds": seeds,
                           "mean_diff": float(d.mean()) if len(d) else math.nan,
                           "differences": [round(float(x), 4) for x in d], "min_seeds": min_seeds}
    if len(seeds) < min_seeds:
        out.update({"se": math.nan, "verdict": "not tested"})
        return out
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    out.update({"se": se, "verdict": "met" if out["mean_diff"] > 2 * se else "missed"})
    return out


def claim_results(rows: list[dict], claims: tuple[tuple[str, str, str], ...] = CLAIMS,
                  min_seeds: int = MIN_SEEDS) -> list[dict[str, Any]]:
    """Every claim at every IPC where both of its sets have augmented rows: the paired test's numbers.

    Per IPC the rows are the report's first table group (one preset and reported accuracy, with
    augmentation), so the two sets are compared under one protocol."""
    out = []
    for ipc in sorted({int(r["ipc"]) for r in rows}):
        group = headline_rows([r for r in rows if int(r["ipc"]) == ipc and r.get("augment") != "none"])
        for a, b, what in claims:
            rows_a = [r for r in group if r["method"] == a]
            rows_b = [r for r in group if r["method"] == b]
            if rows_a and rows_b:
                out.append({"ipc": ipc, "a": a, "b": b, "claim": what,
                            **paired_test(set_headlines(rows_a), set_headlines(rows_b), min_seeds)})
    return out


def claim_line(result: dict[str, Any]) -> str:
    """One sentence: the claim, met / missed / not tested, and its numbers."""
    head = f"IPC {result['ipc']}: {result['claim']}"
    n, diff = result["n"], result["mean_diff"]
    if result["verdict"] == "not tested":
        shown = f" (mean paired difference {diff:+.2f} points)" if n else ""
        return f"{head}: not tested: {n} seeds < {result.get('min_seeds', MIN_SEEDS)}{shown}."
    return (f"{head}: {result['verdict']} (mean paired difference {diff:+.2f} points over n = {n} seeds, "
            f"SE {result['se']:.2f}; met when above 2 SE = {2 * result['se']:.2f}).")


def claim_lines(rows: list[dict], claims: tuple[tuple[str, str, str], ...] = CLAIMS,
                min_seeds: int = MIN_SEEDS) -> list[str]:
    """One sentence per claim and IPC whose sets are in ``rows``, each followed by where it gains or loses
    per class."""
    lines = []
    for result in claim_results(rows, claims, min_seeds):
        lines.append(claim_line(result))
        diff = per_class_difference(rows, result["a"], result["b"], result["ipc"])
        if diff:
            lines.append(per_class_line(result, diff))
    return lines


def per_class_accuracy(rows: list[dict], method: str, ipc: int) -> list[float] | None:
    """Per class index, ``method``'s final top-1 at ``ipc`` averaged over its unseen students' augmented runs
    (every distillation and evaluation seed); None when no run recorded it."""
    runs = [run["final_per_class"] for r in rows
            if r["method"] == method and int(r["ipc"]) == ipc
            and r.get("augment") != "none" and r.get("in_mean", True)
            for run in r.get("runs", []) if run.get("final_per_class")]
    if not runs or len({len(x) for x in runs}) != 1:
        return None
    table = np.asarray([[np.nan if a is None else a for a in x] for x in runs], dtype=np.float64)
    return [float(v) for v in np.nanmean(table, axis=0)]


def per_class_difference(rows: list[dict], a: str, b: str, ipc: int) -> list[float] | None:
    """Per class index, ``a``'s per-class accuracy minus ``b``'s (``per_class_accuracy``)."""
    pa, pb = per_class_accuracy(rows, a, ipc), per_class_accuracy(rows, b, ipc)
    if pa is None or pb is None or len(pa) != len(pb):
        return None
    return [x - y for x, y in zip(pa, pb, strict=True)]


def per_class_line(result: dict[str, Any], diff: list[float]) -> str:
    """The claim's per-class differences (unseen students, final top-1) and the classes that move most."""
    order = sorted(range(len(diff)), key=lambda c: diff[c])
    cells = ", ".join(f"{c} {d:+.1f}" for c, d in enumerate(diff))
    return (f"IPC {result['ipc']}: {result['a']} - {result['b']} per class index (unseen students, final "
            f"top-1, mean over seeds): {cells}; most lost in class {order[0]} ({diff[order[0]]:+.1f}), most "
            f"gained in class {order[-1]} ({diff[order[-1]]:+.1f}).")

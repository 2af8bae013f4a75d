"""DD-Ranking scores from rows already in the results table.

Source: Li et al., "DD-Ranking: Rethinking the Evaluation of Dataset Distillation" (2025),
Sec. 3 (definitions; the ``ddranking`` package implements them in
``metrics/hard_label.py`` and ``metrics/aug_robust.py``). With accuracies as fractions in [0, 1]:

- Hard label recovery  ``HLR = Acc_full - Acc_syn,hard``  (the distilled set trained with its hard
  labels vs the whole real train split, same student);
- Improvement over random  ``IOR = Acc_syn - Acc_rdm``  (the distilled set vs as many random real
  images, same student and protocol: hard labels, or the soft-label teacher);
- Label-Robust Score  ``LRS = (exp(alpha) - exp(-1)) / (exp(1) - exp(-1))``,
  ``alpha = lam * IOR - (1 - lam) * HLR``, ``lam = 0.5`` by default;
- Augmentation-Robust Score  ``ARS = (exp(beta) - exp(-1)) / (exp(1) - exp(-1))``,
  ``beta = lam * (Acc_syn,aug - Acc_rdm,aug) + (1 - lam) * (Acc_syn,no-aug - Acc_rdm,no-aug)``.

alpha and beta lie in [-1, 1], so both scores lie in [0, 1]; we report them x 100 like the paper's
tables. (The package's v0.2.0 code passes accuracies in percent into ``exp``; we follow the paper's
fractions, which is what keeps the scores in [0, 1].) Rows are matched on dataset, student (with
its constructor arguments), protocol and augmentation; ``random_real`` at the same IPC is the random
baseline and ``full_real`` (any IPC) the full-data row. A "no augmentation" row is one with
``augment: none``; ARS pairs it with every row of the same set that used an augmentation.
"""

from __future__ import annotations

import math
from typing import Any

E_SPAN = math.e - math.exp(-1.0)
REFERENCE_METHODS = ("random_real", "full_real")


def _squash(x: float) -> float:
    """``(exp(x) - exp(-1)) / (exp(1) - exp(-1))``: maps [-1, 1] onto [0, 1]."""
    return (math.exp(x) - math.exp(-1.0)) / E_SPAN


def label_robust_score(acc_full: float, acc_syn_hard: float, acc_syn: float, acc_random: float,
                       lam: float = 0.5) -> dict[str, float]:
    """HLR, IOR and LRS (all x 100) from top-1 accuracies in percent."""
    hlr = (acc_full - acc_syn_hard) / 100.0
    ior = (acc_syn - acc_random) / 100.0
    return {"hlr": 100 * hlr, "ior": 100 * ior, "lrs": 100 * _squash(lam * ior - (1 - lam) * hlr)}


def aug_robust_score(syn_aug: float, random_aug: float, syn_plain: float, random_plain: float,
                     lam: float = 0.5) -> dict[str, float]:
    """With-/without-augmentation gains over random and ARS (all x 100) from top-1 accuracies in percent."""
    with_aug = (syn_aug - random_aug) / 100.0
    without = (syn_plain - random_plain) / 100.0
    return {"aug_gain": 100 * with_aug, "plain_gain": 100 * without,
            "ars": 100 * _squash(lam * with_aug + (1 - lam) * without)}


def _student(row: dict[str, Any]) -> tuple:
    return row["student"], tuple(sorted((row.get("student_kwargs") or {}).items()))


def scores(rows: list[dict[str, Any]], lam: float = 0.5) -> list[dict[str, Any]]:
    """One entry per distilled row that has the reference rows it needs (LRS and/or ARS, else skipped)."""
    idx: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        idx[(r["dataset"], r["method"], r["ipc"], _student(r), r.get("protocol"), r.get("augment"))] = r
    full = {(r["dataset"], _student(r), r.get("augment")): r for r in rows
            if r["method"] == "full_real" and r.get("protocol", "hard") == "hard"}
    out = []
    for r in rows:
        if r["method"] in REFERENCE_METHODS or r.get("augment") == "none":
            continue
        ds, st, proto, aug = r["dataset"], _student(r), r.get("protocol"), r.get("augment")
        entry: dict[str, Any] = {"dataset": ds, "method": r["method"], "ipc": r["ipc"], "student": r["student"],
                                 "student_kwargs": r.get("student_kwargs") or {}, "protocol": proto, "augment": aug}
        rnd = idx.get((ds, "random_real", r["ipc"], st, proto, aug))
        hard = r if proto == "hard" else idx.get((ds, r["method"], r["ipc"], st, "hard", aug))
        f = full.get((ds, st, aug))
        if rnd and hard and f:
            entry.update(label_robust_score(f["top1_mean"], hard["top1_mean"], r["top1_mean"], rnd["top1_mean"], lam))
        plain = idx.get((ds, r["method"], r["ipc"], st, proto, "none"))
        rnd_plain = idx.get((ds, "random_real", r["ipc"], st, proto, "none"))
        if rnd and plain and rnd_plain:
            entry.update(aug_robust_score(r["top1_mean"], rnd["top1_mean"], plain["top1_mean"],
                                          rnd_plain["top1_mean"], lam))
        if "lrs" in entry or "ars" in entry:
            out.append(entry)
    return out


def scores_markdown(entries: list[dict[str, Any]]) -> list[str]:
    """Markdown lines for the DD-Ranking table (empty when no row had its reference rows)."""
    if not entries:
        return []

    def cell(e: dict[str, Any], k: str) -> str:
        return f"{e[k]:.2f}" if k in e else "-"

    note = ("DD-Ranking (Li et al. 2025), x 100: HLR = full - distilled (hard labels), IOR = distilled - "
            "random real, LRS = label-robust score; ARS = augmentation-robust score (vs `augment: none` runs).")
    lines = ["", note, "",
             "| dataset | IPC | method | student | protocol | augment | HLR | IOR | LRS | ARS |",
             "|---|---:|---|---|---|---|---:|---:|---:|---:|"]
    for e in sorted(entries, key=lambda e: (e["dataset"], e["ipc"], e["method"], e["student"])):
        kw = e["student_kwargs"]
        st = e["student"] + (" (" + ", ".join(f"{k}={v}" for k, v in sorted(kw.items())) + ")" if kw else "")
        lines.append(f"| {e['dataset']} | {e['ipc']} | {e['method']} | {st} | {e['protocol']} | {e['augment']} | "
                     f"{cell(e, 'hlr')} | {cell(e, 'ior')} | {cell(e, 'lrs')} | {cell(e, 'ars')} |")
    return lines

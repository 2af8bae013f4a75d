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

import numpy as np

from tuning.row_values import seed_values

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


def _recipe(row: dict[str, Any]) -> tuple:
    """Rows are compared only under one recipe: the same preset and the same reported accuracy."""
    return row.get("preset"), str(row.get("reported") or "final")


def _per_seed(fn, rows: list[dict[str, Any]], lam: float) -> dict[str, Any]:
    """``fn`` (a score of the rows' top-1s, in order) per seed that every row ran, then mean and population
    std
    over those seeds (the package's ``np.mean`` / ``np.std`` over its ``num_eval`` rounds); rows that kept no
    runs give the score of their means, with ``n`` 0."""
    per_row = [seed_values(r) for r in rows]
    seeds = sorted(set.intersection(*(set(v) for v in per_row))) if all(per_row) else []
    if not seeds:
        return {**fn(*[r["top1_mean"] for r in rows], lam), "n": 0}
    each = [fn(*[v[s] for v in per_row], lam) for s in seeds]
    out: dict[str, Any] = {"n": len(seeds)}
    for k in each[0]:
        vals = np.asarray([e[k] for e in each], dtype=np.float64)
        out[k], out[f"{k}_std"] = float(vals.mean()), float(vals.std())
    return out


def _draws(rnd: dict[str, Any]) -> str:
    """How the random-real reference was drawn: ``per seed`` (a fresh draw per evaluation seed, as the
    package's ``_get_random_data_helper(eval_iter=i)``) or ``one`` (one draw for every seed)."""
    return "per seed" if rnd.get("draws") else "one"


def scores(rows: list[dict[str, Any]], lam: float = 0.5) -> list[dict[str, Any]]:
    """One entry per distilled row that has the reference rows it needs (LRS and/or ARS, else skipped):
    per-seed scores over the seeds every row involved ran, their mean and std (``*_std``) and ``n``."""
    idx: dict[tuple, dict[str, Any]] = {}
    for r in rows:
        idx[(r["dataset"], r["method"], r["ipc"], _student(r), r.get("protocol"), r.get("augment"),
             _recipe(r))] = r
    full = {(r["dataset"], _student(r), r.get("augment"), _recipe(r)): r for r in rows
            if r["method"] == "full_real" and r.get("protocol", "hard") == "hard"}
    out = []
    for r in rows:
        if r["method"] in REFERENCE_METHODS or r.get("augment") == "none":
            continue
        ds, st, proto, aug, rec = r["dataset"], _student(r), r.get("protocol"), r.get("augment"), _recipe(r)
        entry: dict[str, Any] = {"dataset": ds, "method": r["method"], "ipc": r["ipc"],
                                 "student": r["student"],
                                 "student_kwargs": r.get("student_kwargs") or {}, "protocol": proto,
                                 "augment": aug, "preset": rec[0], "reported": rec[1]}
        rnd = idx.get((ds, "random_real", r["ipc"], st, proto, aug, rec))
        hard = r if proto == "hard" else idx.get((ds, r["method"], r["ipc"], st, "hard", aug, rec))
        f = full.get((ds, st, aug, rec))
        if rnd and hard and f:
            got = _per_seed(label_robust_score, [f, hard, r, rnd], lam)
            entry.update({**got, "n_lrs": got.pop("n"), "random_draws": _draws(rnd)})
        plain = idx.get((ds, r["method"], r["ipc"], st, proto, "none", rec))
        rnd_plain = idx.get((ds, "random_real", r["ipc"], st, proto, "none", rec))
        if rnd and plain and rnd_plain:
            got = _per_seed(aug_robust_score, [r, rnd, plain, rnd_plain], lam)
            entry.update({**got, "n_ars": got.pop("n"), "random_draws": _draws(rnd)})
        if "lrs" in entry or "ars" in entry:
            out.append(entry)
    return out


PACKAGE = "NUS-HPC-AI-Lab/DD-Ranking ddranking/metrics/hard_label.py and aug_robust.py, commit 10228f3"


def differences(entries: list[dict[str, Any]]) -> str:
    """Where this table's inputs differ from the package's (``PACKAGE``), said from the entries themselves."""
    shown = sorted({e["reported"] for e in entries})
    draws = sorted({e.get("random_draws", "one") for e in entries})
    seeds = sorted({e.get(k) for e in entries for k in ("n_lrs", "n_ars") if e.get(k) is not None})
    random = {("per seed",): "random real: a fresh draw per seed, as the package",
              ("one",): "random real: one draw for every seed (the package draws afresh per round)"}.get(
        tuple(draws),
        "random real: a fresh draw per seed in some rows, one draw in others (column 'random real'; "
                      "the package draws afresh per round)")
    return ("Inputs differ from the DD-Ranking package (" + PACKAGE + f"): each score uses the rows' top-1 = "
            f"{', '.join(shown)} (the package: the best test top-1 of the last 20 % of the epochs, tested "
            f"every 10 (LRS) / 20 (ARS) epochs, i.e. selected on the test split); no lr search (the package "
            f"searches lr in {{0.001, 0.005, 0.01, 0.05, 0.1}} for random real and, without a given lr, for "
            f"the distilled set; here every set trains at the preset's lr); the full-data accuracy is our "
            f"full_real row under the same preset (the package: its own real-data recipe or a cached value); "
            f"{random}. Scores are per seed over n = {', '.join(map(str, seeds)) or '-'} seeds, mean ± "
            f"population std (as the package's np.std over its num_eval rounds); n 0: rows without per-seed "
            f"runs, scored on their means.")


def scores_markdown(entries: list[dict[str, Any]]) -> list[str]:
    """Markdown lines for the DD-Ranking table (empty when no row had its reference rows)."""
    if not entries:
        return []

    def cell(e: dict[str, Any], k: str) -> str:
        if k not in e:
            return "-"
        return f"{e[k]:.2f}" + (f" ± {e[k + '_std']:.2f}" if f"{k}_std" in e else "")

    note = ("DD-Ranking (Li et al. 2025), x 100: HLR = full - distilled (hard labels), IOR = distilled - "
            "random real, LRS = label-robust score; ARS = augmentation-robust score (vs `augment: none` "
            "runs).")
    lines = ["", note, "", differences(entries), "",
             ("| dataset | IPC | method | student | protocol | augment | seeds (LRS / ARS) | random real | "
              "HLR | IOR | LRS | ARS |"),
             "|---|---:|---|---|---|---|---|---|---:|---:|---:|---:|"]
    for e in sorted(entries, key=lambda e: (e["dataset"], e["ipc"], e["method"], e["student"])):
        kw = e["student_kwargs"]
        st = e["student"] + (" (" + ", ".join(f"{k}={v}" for k, v in sorted(kw.items())) + ")" if kw else "")
        n = f"{e.get('n_lrs', '-')} / {e.get('n_ars', '-')}"
        lines.append(f"| {e['dataset']} | {e['ipc']} | {e['method']} | {st} | {e['protocol']} | "
                     f"{e['augment']} | {n} | {e.get('random_draws', '-')} | {cell(e, 'hlr')} | "
                     f"{cell(e, 'ior')} | {cell(e, 'lrs')} | {cell(e, 'ars')} |")
    return lines

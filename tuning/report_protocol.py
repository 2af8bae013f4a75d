"""The evaluation protocol each results table was made with, as the reports open with it.

``protocol_record`` turns the resolved ``EvalConfig`` (``tuning.protocols.resolve_preset``) of one evaluation
into plain settings that every row of that evaluation carries (``row["recipe"]``); ``protocol_tables`` reads
them back from the rows, one table per preset, adding what varies per run (lr per student, batch and epochs
per IPC) from the runs themselves, so a report written from ``results.json`` alone still says how its numbers
were made. Rows written before rows carried a recipe say so instead of guessing.
"""

from __future__ import annotations

from typing import Any

from pipeline.config import EvalConfig

STD_CONVENTION = ("population std over the seeds (numpy ddof 0, as DC/MTT report); headline std over "
                  "per-seed headlines")


def _schedule(cfg: EvalConfig) -> str:
    text = {"cosine": "cosine to 0", "step": "x0.1 at 1/2 of the epochs",
            "multistep": "x0.2 at 2/3 and 5/6 of the epochs", "half_cosine": "half cosine (ends at 0.5x)",
            "warmup_cosine": f"linear warm-up over {cfg.warmup_fraction:g} of the epochs, then cosine to 0"}
    return f"{text.get(cfg.schedule, cfg.schedule)}, stepped per {cfg.lr_step_unit}"


def _augment(cfg: EvalConfig) -> str:
    ops = [p for p in cfg.augment.split("+") if p and p != "none"]
    if not ops:
        return "none"
    details = []
    if "dsa" in ops:
        details.append(f"DSA {cfg.dsa_strategy}")
    if "rrc" in ops:
        details.append(f"RandomResizedCrop scale {tuple(cfg.rrc_scale)}")
    if "shuffle_patches" in ops:
        details.append(f"ShufflePatches factor {cfg.shuffle_factor}")
    if "jitter" in ops:
        details.append(f"jitter {cfg.jitter:g}")
    if "lighting" in ops:
        details.append(f"lighting {cfg.lighting:g}")
    if "cutmix" in ops or "mixup" in ops:
        details.append(f"Beta({cfg.mix_alpha:g}, {cfg.mix_alpha:g}) mixing")
    return cfg.augment + (f" ({'; '.join(details)})" if details else "")


def _teacher(cfg: EvalConfig) -> str:
    if cfg.protocol != "soft":
        return "none (hard labels)"
    source = (f"loaded from {cfg.teacher_checkpoint}" if cfg.teacher_checkpoint else
              f"trained {cfg.teacher_epochs} epochs on the real train split")
    return f"{cfg.teacher}, {source}; KL at temperature {cfg.temperature:g}"


def _selection(cfg: EvalConfig) -> str:
    tests = ["after the last epoch"]
    if cfg.eval_every:
        tests.append(f"every {cfg.eval_every} epochs")
    if cfg.eval_count:
        tests.append(f"every epochs/{cfg.eval_count}")
    if cfg.best_from:
        tests.append(f"every epoch past {cfg.best_from:g} of training")
    what = "final" if cfg.report == "final" else "best (selected on the test split)"
    return f"{what}; tested {', '.join(tests)}"


def protocol_record(cfg: EvalConfig, image_size: int, val_images: int, val_resize: int | None,
                    normalisation: str) -> dict[str, Any]:
    """The settings of one evaluation, from its resolved config (``cfg`` after ``resolve_preset``), the real
    val set it tested on and how its inputs were normalised."""
    short = val_resize or image_size
    return {
        "preset": cfg.preset or "none (the eval section's own values)",
        "protocol": cfg.protocol,
        "optimizer": (f"{cfg.optimizer}, momentum {cfg.momentum:g}, weight decay {cfg.weight_decay:g}"
                      if cfg.optimizer == "sgd" else f"{cfg.optimizer}, weight decay {cfg.weight_decay:g}"),
        "schedule": _schedule(cfg),
        "augmentation": _augment(cfg),
        "ema": (f"decay {cfg.ema_decay:g} per {cfg.ema_every}" + (" with warm-up" if cfg.ema_warmup else "")
                if cfg.ema_decay else "none"),
        "teacher": _teacher(cfg),
        "top-1": _selection(cfg),
        "seeds": ", ".join(str(cfg.seed + r) for r in range(cfg.repeats)),
        "std": STD_CONVENTION,
        "val": (f"{val_images} real images at {image_size} px: bicubic resize of the short side to {short}, "
                f"center crop {image_size}"),
        "normalisation": normalisation,
    }


def _runs_by(rows: list[dict[str, Any]], key: str, of: str) -> str:
    """``of`` (``lr`` / ``batch_size``) per ``key`` (student / IPC), from the rows' runs."""
    seen: dict[str, set] = {}
    for r in rows:
        group = str(r.get(key))
        for run in r.get("runs", []):
            if run.get(of) is not None:
                seen.setdefault(group, set()).add(run[of])
    order = sorted(seen, key=lambda k: (int(k), k) if key == "ipc" and k.isdigit() else (0, k))
    label = "IPC " if key == "ipc" else ""
    return "; ".join(f"{label}{k}: {', '.join(f'{v:g}' for v in sorted(seen[k]))}" for k in order) or "-"


def _epochs_by_ipc(rows: list[dict[str, Any]]) -> str:
    seen: dict[int, set] = {}
    for r in rows:
        if r.get("epochs") is not None:
            seen.setdefault(int(r["ipc"]), set()).add(int(r["epochs"]))
    return "; ".join(f"IPC {k}: {', '.join(map(str, sorted(v)))}" for k, v in sorted(seen.items())) or "-"


ORDER = ("preset", "protocol", "optimizer", "lr per student", "batch per IPC", "epochs per IPC", "schedule",
         "augmentation", "ema", "teacher", "top-1", "seeds", "std", "val", "normalisation")


def protocol_tables(rows: list[dict[str, Any]]) -> list[tuple[str, list[tuple[str, str]]]]:
    """One (title, [(setting, value)]) per preset in ``rows``, settings in ``ORDER``."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get("preset") or "none"), []).append(r)
    out = []
    for preset, mine in sorted(groups.items()):
        recipes = [r["recipe"] for r in mine if r.get("recipe")]
        merged: dict[str, str] = {}
        for rec in recipes:
            for k, v in rec.items():
                vals = merged.setdefault(k, [])
                if str(v) not in vals:
                    vals.append(str(v))
        values = {k: " | ".join(v) for k, v in merged.items()}
        values.update({"lr per student": _runs_by(mine, "student", "lr"),
                       "batch per IPC": _runs_by(mine, "ipc", "batch_size"),
                       "epochs per IPC": _epochs_by_ipc(mine)})
        if len(recipes) < len(mine):
            values["note"] = (f"{len(mine) - len(recipes)} of its {len(mine)} rows were written before rows "
                              "recorded their protocol: their settings are not known here")
        out.append((f"preset {preset}", [(k, values[k]) for k in ORDER + ("note",) if k in values]))
    return out


def protocol_markdown(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: a setting | value table per preset."""
    lines: list[str] = []
    for title, settings in protocol_tables(rows):
        lines += [f"**Evaluation protocol, {title}.**", "", "| setting | value |", "|---|---|"]
        lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in settings]
        lines.append("")
    return lines

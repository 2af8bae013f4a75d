"""``semdistill sweep CONFIG``: a Ray Tune search over method settings.

Each trial applies its values to dotted config keys (``diver.gamma``, ``diver.start_step``,
``diver.fusion_window``, ``edits.guidance_scale``, ``edits.strength``, ``edits.tau`` ...),
generates a distilled set (optionally on a class subset) with the config's method, trains
each student on it (``sweep.repeats`` seeds) and reports ``mean_top1``: the headline mean, the
mean top-1 over the students not in ``eval.exclude_from_mean`` (the cross-architecture metric DIVER
reports; tuning/evaluate.py:mean_top1), with ``mean_top1_std``, the std over seeds of each seed's
headline mean. With ``method: none`` the trial's set is ``baseline_ipc`` random real images per class
(a cheap smoke sweep of the machinery).

Search: ``grid`` (every list is a grid axis) or ``random`` (lists are choices; ranges as
``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{randint: [lo, hi]}``). ASHA, when
asked, may stop a trial after its first student(s) (``time_attr = students_done``); a trial trains
the headline students first and the excluded ones (the stage-1 proxy) last, so every rung is
judged on the headline mean, never on the proxy alone. Soft-label evaluation trains its teacher
on the trials' train split (``data.root``, the part left after the holdout), never on the holdout.

Outputs in ``<output.dir>/sweep/``: ``sweep_results.json`` (every trial), ``sweep.md``,
``best.json``, ``best_config.yaml`` (the base config with the best values) and
``sweep.png`` (metric vs ``plot_param``, seed std as error bars). On the terminal: one line per
trial and one progress bar (``pipeline.core.console``).
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune import Callback

from pipeline.config import Config, EvalConfig, SweepConfig, config_from_dict, dump_config, set_dotted
from pipeline.core.console import note, progress
from pipeline.core.write import atomic_write_bytes, atomic_write_json, find_disk_full
from pipeline.errors import ConfigError
from tuning.holdout import carve_holdout

RANGE_KINDS = ("uniform", "loguniform", "randint", "choice")


def apply_params(cfg: Config, params: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with each dotted key set (validated like any config)."""
    raw = cfg.model_dump(mode="json", exclude_unset=False)
    for key, value in params.items():
        set_dotted(raw, key, value, what=f"sweep param {key!r}")
    return config_from_dict(raw, source="<sweep trial>")


def search_space(sweep: SweepConfig) -> tuple[list[str], dict[str, Any]]:
    """Tune's param space as ``{"p0": ..., "p1": ...}`` plus the dotted names in that order."""
    from ray import tune

    if not sweep.params:
        raise ConfigError("sweep.params is empty: give at least one setting, e.g. diver.gamma: [0.0, 0.1, "
                          "0.3]")
    names = list(sweep.params)
    space: dict[str, Any] = {}
    for i, name in enumerate(names):
        spec = sweep.params[name]
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"sweep.params.{name} is an empty list")
            space[f"p{i}"] = tune.grid_search(spec) if sweep.search == "grid" else tune.choice(spec)
        elif isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in RANGE_KINDS:
            kind, args = next(iter(spec.items()))
            if sweep.search == "grid":
                raise ConfigError(f"sweep.params.{name}: a {kind} range needs search: random or optuna "
                                  "(grid takes lists)")
            space[f"p{i}"] = tune.choice(args) if kind == "choice" else getattr(tune, kind)(*args)
        else:
            raise ConfigError(f"sweep.params.{name}: use a list of values or one of "
                              f"{{{', '.join(RANGE_KINDS)}: ...}}")
    return names, space


def _students(cfg: Config) -> list[str]:
    ev = cfg.eval or EvalConfig()
    return list(cfg.sweep.students or ev.students) if cfg.sweep else list(ev.students)


def headline_first(students: list[str], excluded: list[str]) -> list[str]:
    """The order a trial trains its students: those in the headline mean first, those in
    ``eval.exclude_from_mean`` (the stage-1 proxy) last, so an ASHA rung never sees the proxy alone."""
    return [s for s in students if s not in excluded] + [s for s in students if s in excluded]


def seed_headlines(rows: list[dict[str, Any]]) -> dict[int, float]:
    """Per student seed, the headline mean of that seed's runs (each row's reported top-1: final or best)
    over the rows in the mean (all rows when every student is excluded, as ``mean_top1``)."""
    # heavy: torch (not loaded when this module is imported)
    from tuning.evaluate import in_mean

    used = [r for r in rows if in_mean(r)] or rows
    by_seed: dict[int, list[float]] = {}
    for r in used:
        which = "best" if r.get("reported") == "best" else "final"
        for run in r["runs"]:
            by_seed.setdefault(int(run["seed"]), []).append(float(run[which]))
    return {seed: float(np.mean(v)) for seed, v in sorted(by_seed.items())}


def trial_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """What a trial reports after the students in ``rows``: the headline mean, its std over seeds
    (population std, the table's convention), the students done and each student's mean top-1."""
    # heavy: torch (not loaded when this module is imported)
    from tuning.evaluate import mean_top1

    per_seed = seed_headlines(rows)
    return {"mean_top1": mean_top1(rows), "mean_top1_std": round(float(np.std(list(per_seed.values()))), 2),
            "seeds": len(per_seed), "students_done": len(rows),
            **{f"top1/{r['student']}": r["top1_mean"] for r in rows},
            **{f"std/{r['student']}": r["top1_std"] for r in rows}}


def trial_eval(cfg: Config) -> EvalConfig:
    """The evaluation a trial runs: the config's eval section (only the keys it sets) with the sweep's
    repeats, on this process (``backend: local``), at ``data.image_size``."""
    ev = cfg.eval or EvalConfig()
    fields = {**ev.model_dump(include=ev.model_fields_set), "backend": "local", "repeats": cfg.sweep.repeats,
              "image_size": cfg.data.image_size, "cpus_per_job": max(1.0, float(cfg.sweep.trial_cpus))}
    return EvalConfig.model_validate(fields)


def check_teacher_data(cfg: Config) -> None:
    """A soft-label evaluation without ``eval.teacher_checkpoint`` trains its teacher on ``data.root``
    (the trials' train split); stop before any trial when there is none."""
    # heavy: torch (not loaded when this module is imported)
    from tuning.protocols import resolve_preset

    ev = resolve_preset(trial_eval(cfg))
    if ev.protocol == "soft" and not ev.teacher_checkpoint and not cfg.data.root:
        via = f" (from eval.preset {ev.preset})" if ev.preset else ""
        raise ConfigError(f"eval.protocol soft{via} trains its teacher on data.root, which is not set: set "
                          f"data.root (the sweep carves its holdout from it) or give a pretrained teacher in "
                          f"eval.teacher_checkpoint")


RunMethod = Callable[[Config], str]


def generate(cfg: Config, trial_dir: Path, run_method: RunMethod) -> str:
    """The trial's distilled set: the path ``run_method(cfg)`` returns (the config's method), or random real
    images
    for ``method: none``."""
    if cfg.method == "none":
        from tuning.baselines import random_real

        if not cfg.data.root:
            raise ConfigError("sweep with method none needs data.root (random real baseline)")
        return random_real(cfg.data.root, trial_dir / "set", cfg.sweep.baseline_ipc, seed=cfg.sweep.seed,
                           size=cfg.data.image_size, classes=cfg.data.classes)["output"]
    return run_method(cfg)


def run_trial(config: dict[str, Any], base: dict[str, Any], names: list[str], trials_dir: str,
              run_method: RunMethod) -> None:
    """Tune function trainable: generate, then evaluate the students, reporting the headline as it goes.

    With ASHA the students train one at a time, headline students first, and each report is a rung;
    without it they train in one evaluation (a soft-label teacher is fitted once). Soft labels come from a
    teacher trained on ``data.root``, the trial's train split (the holdout scores the trial).
    """
    # heavy: torch (not loaded when this module is imported)
    from ray import tune

    # imported when called: tests replace it on its module
    from tuning.evaluate import evaluate_sets

    params = {name: config[f"p{i}"] for i, name in enumerate(names)}
    trial_dir = Path(trials_dir) / tune.get_context().get_trial_id()
    base = config_from_dict(base, source="<sweep base>")
    cfg = apply_params(base, {**params, "output.dir": str(trial_dir)})
    output = generate(cfg, trial_dir, run_method)
    ev = trial_eval(cfg)
    students = headline_first(_students(cfg), ev.exclude_from_mean)
    groups = [[s] for s in students] if cfg.sweep.scheduler == "asha" else [students]
    done: list[dict[str, Any]] = []
    for group in groups:
        one = EvalConfig.model_validate({**ev.model_dump(include=ev.model_fields_set), "students": group})
        done += evaluate_sets({"trial": output}, cfg.data.val_root, one, trial_dir, train_root=cfg.data.root,
                              write=False, classes=cfg.data.classes, log=lambda _m: None)
        tune.report(trial_metrics(done))


def _plot(trials: list[dict[str, Any]], x_param: str, out: Path) -> Path | None:
    """Headline mean top-1 vs ``x_param`` with the seed std as error bars, one line per value of the other
    params."""
    # heavy: matplotlib (not loaded when this module is imported)
    import matplotlib

    matplotlib.use("Agg")
    # heavy: matplotlib (not loaded when this module is imported)
    import matplotlib.pyplot as plt

    pts = [t for t in trials if t.get("mean_top1") is not None and x_param in t["params"]]
    if not pts:
        return None
    groups: dict[str, list[tuple[Any, float, float]]] = {}
    for t in pts:
        rest = ", ".join(f"{k}={v}" for k, v in sorted(t["params"].items()) if k != x_param)
        groups.setdefault(rest, []).append((t["params"][x_param], t["mean_top1"],
                                            t.get("mean_top1_std") or 0.0))
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for label, xy in sorted(groups.items()):
        try:
            xy = sorted(xy, key=lambda p: float(p[0]) if not isinstance(p[0], (list, tuple)) else p[0][0])
        except (TypeError, ValueError):
            pass
        xs = [str(p[0]) if isinstance(p[0], (list, tuple)) else p[0] for p in xy]
        ax.errorbar(xs, [p[1] for p in xy], yerr=[p[2] for p in xy], marker="o", capsize=3,
                    label=label or None)
    ax.set_xlabel(x_param)
    ax.set_ylabel("headline mean top-1 (%), std over seeds")
    ax.set_title("sweep: accuracy vs " + x_param.split(".")[-1])
    ax.grid(alpha=0.3)
    if any(groups):
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "sweep.png"
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _md(trials: list[dict[str, Any]], names: list[str], best_id: str | None, students: list[str]) -> str:
    """The trials, best first: each setting, the headline mean +- its std over seeds, each student's mean."""
    lines = ["# Sweep", "", "| trial | " + " | ".join(names) + " | mean top-1 (%) | std over seeds | seeds | "
             + " | ".join(students) + " | students done |",
             "|---|" + "---|" * len(names) + "---:|---:|---:|" + "---:|" * len(students) + "---:|"]
    for t in sorted(trials, key=lambda t: -(t.get("mean_top1") or -1)):
        values = " | ".join(str(t["params"].get(n)) for n in names)
        m = t.get("mean_top1")
        if m is None:
            lines.append(f"| {t['trial_id']} | {values} | failed | - | - | "
                         + " | ".join("-" for _ in students)
                         + " | - |")
            continue
        mark = " **best**" if t["trial_id"] == best_id else ""
        per = " | ".join(f"{t['per_student'][s]:.2f}" if s in t["per_student"] else "-" for s in students)
        lines.append(f"| {t['trial_id']}{mark} | {values} | {m:.2f} | {t.get('mean_top1_std', 0.0):.2f} | "
                     f"{t.get('seeds', '-')} | {per} | {t.get('students_done')} |")
    return "\n".join(lines) + "\n"


def trial_count(sweep: SweepConfig) -> int:
    """How many trials the sweep runs: the grid's size times ``num_samples``, else ``num_samples``."""
    if sweep.search != "grid":
        return sweep.num_samples
    return math.prod(len(v) for v in sweep.params.values()) * sweep.num_samples


def _fmt_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def trial_line(n: int, total: int, params: dict[str, Any], result: dict[str, Any] | None, students: list[str],
               excluded: list[str], seconds: float, error: str | None = None) -> str:
    """The one terminal line of a finished trial: its values, headline mean +- std, each student, time."""
    head = f"  trial {n}/{total} {_fmt_params(params)}:"
    if error is not None or not result or result.get("mean_top1") is None:
        return f"{head} failed after {seconds:.0f} s: {error or 'no result'}"
    per = [f"{s} {result[f'top1/{s}']:.1f}" + (" (proxy)" if s in excluded else "")
           for s in students if f"top1/{s}" in result]
    stopped = (f"; stopped by ASHA after {result['students_done']} of {len(students)} students"
               if result.get("students_done", len(students)) < len(students) else "")
    return (f"{head} mean top-1 {result['mean_top1']:.2f} +- {result.get('mean_top1_std', 0.0):.2f} "
            f"over {result.get('seeds', '?')} seed(s) ({', '.join(per)}){stopped}, {seconds:.0f} s")


class TrialLines(Callback):
    """Tune callback on the driver: one line per finished trial (``log``) and one progress bar."""

    def __init__(self, names: list[str], total: int, students: list[str], excluded: list[str],
                 log: Callable[[str], None]) -> None:
        self.names, self.total, self.students, self.excluded, self.log = names, total, students, excluded, log
        self.done = 0
        self.started: dict[str, float] = {}

    def _params(self, trial: Any) -> dict[str, Any]:
        return {n: trial.config.get(f"p{i}") for i, n in enumerate(self.names)}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started.setdefault(trial.trial_id, time.time())
        progress("sweep trials", self.done, self.total)

    def _finish(self, trial: Any, error: str | None) -> None:
        self.done += 1
        seconds = time.time() - self.started.get(trial.trial_id, time.time())
        self.log(trial_line(self.done, self.total, self._params(trial), trial.last_result, self.students,
                            self.excluded, seconds, error))
        progress("sweep trials", self.done, self.total)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        err = trial.get_error()
        last = str(err).strip().splitlines()[-1] if err is not None and str(err).strip() else "error"
        self._finish(trial, f"{last[:200]} (traceback: {trial.path})")


def tuning_split(cfg: Config, out: Path) -> tuple[Config, str]:
    """The config the trials run with, and a sentence naming the split that scores them.

    With ``sweep.holdout_fraction`` > 0 the trials distil from the rest of ``data.root`` and are scored on
    the carved holdout (``tuning/holdout.py``); otherwise they are scored on ``data.val_root``.
    """
    fraction = cfg.sweep.holdout_fraction
    if fraction <= 0:
        return cfg, f"the validation split {cfg.data.val_root} (the split the report uses)"
    if not cfg.data.root:
        raise ConfigError("sweep.holdout_fraction needs data.root (the holdout is carved from the train "
                          "set); set data.root, or sweep.holdout_fraction=0 to score trials on data.val_root")

    train, holdout = carve_holdout(cfg.data.root, out, fraction, seed=cfg.sweep.seed,
                                   classes=cfg.data.classes)
    trial_cfg = apply_params(cfg, {"data.root": str(train), "data.val_root": str(holdout)})
    return trial_cfg, (f"a holdout of {fraction:.0%} of each class of {cfg.data.root} (seed "
                       f"{cfg.sweep.seed}), never the validation split the report uses")


def method_cpus(cfg: Config) -> float:
    """Ray CPUs a trial's method holds at once besides the trial itself: EDITS's fine-tune (its Train workers
    and one data task), else one method actor (``ray.actor_num_cpus``)."""
    # heavy: torch (not loaded when this module is imported)
    from tuning.finetune_sd import DATA_CPUS

    actor = float(cfg.ray.actor_num_cpus) if cfg.method != "none" else 0.0
    ft = cfg.edits.finetune if cfg.method == "edits" else None
    if ft is not None and ft.enabled:
        return max(actor, ft.num_workers * ft.num_cpus_per_worker + DATA_CPUS)
    return actor


def check_trial_fits(cfg: Config, cluster_cpus: float) -> None:
    """A trial holds ``sweep.trial_cpus`` while its method runs; if the method's own Ray work cannot get its
    CPUs beside it, the trial would wait forever. Fail before any trial starts, naming the keys to change."""
    need = float(cfg.sweep.trial_cpus) + method_cpus(cfg)
    if need > cluster_cpus + 1e-9:
        raise ConfigError(
            f"a sweep trial needs {need:g} CPUs at once (sweep.trial_cpus {cfg.sweep.trial_cpus:g} + "
            f"{method_cpus(cfg):g} for the {cfg.method} method's Ray work"
            + (", its fine-tune's Train workers and data task" if cfg.method == "edits" else "")
            + f") but Ray has {cluster_cpus:g}: lower sweep.trial_cpus (e.g. 0.5), "
            "edits.finetune.num_cpus_per_worker / ray.actor_num_cpus, or give Ray more CPUs (ray.num_cpus)")


def run_sweep(cfg: Config, run_method: RunMethod, log: Callable[[str], None] = note) -> dict[str, Any]:
    """Run the Tune sweep described by ``cfg.sweep``; write results; return the best trial.

    ``log`` gets a header line, one line per finished trial and the best trial's line (a progress bar
    shows while a ``pipeline.core.console.quiet_terminal`` block is open).

    ``run_method(cfg)`` distils one trial's set and returns its path (``pipeline.run.distil_one_set``; passed
    in so that this layer does not import the methods above it).
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # imported when called: tests replace it on its module
    from pipeline.core.ray_setup import ray_session

    if cfg.sweep is None:
        raise ConfigError("the config has no sweep section (see configs/demo_sweep.yaml)")
    if not cfg.data.val_root and cfg.sweep.holdout_fraction <= 0:
        raise ConfigError("a sweep with holdout_fraction 0 scores trials on data.val_root: set it")
    # heavy: torch (not loaded when this module is imported)
    from tuning.students import check_students

    excluded = (cfg.eval or EvalConfig()).exclude_from_mean
    students = headline_first(_students(cfg), excluded)
    check_students(students)
    sweep = cfg.sweep
    names, space = search_space(sweep)
    base = cfg
    if sweep.classes is not None:
        base = apply_params(cfg, {"data.classes": sweep.classes})
    # fail on a misspelt key or an invalid value before any trial starts
    apply_params(base, {n: (v[0] if isinstance(v, list) else next(iter(v.values()))[0]) for n,
                        v in sweep.params.items()})
    out = Path(cfg.output.dir).resolve() / "sweep"
    out.mkdir(parents=True, exist_ok=True)
    base, selected_on = tuning_split(base, out)
    check_teacher_data(base)
    total = trial_count(sweep)
    log(f"sweep {cfg.name}: {total} trial(s) of {cfg.method} over {', '.join(names)}, "
        f"{len(students)} student(s) x {sweep.repeats} seed(s) each, scored on {selected_on}")
    resources = {"cpu": sweep.trial_cpus, **({"gpu": sweep.trial_gpus} if sweep.trial_gpus else {})}
    with ray_session(cfg.ray):
        import ray

        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        check_trial_fits(base, cpus)
        limit = sweep.max_concurrent_trials
        if limit is None and cfg.method != "none":  # leave CPUs for the method's own Ray work
            limit = max(1, int((cpus - method_cpus(base)) // sweep.trial_cpus))
        search_alg = None
        if sweep.search == "optuna":  # Bayesian search (TPE) through Ray Tune's Optuna integration
            from ray.tune.search.optuna import OptunaSearch

            search_alg = OptunaSearch(metric=sweep.metric, mode="max", seed=sweep.seed)
        elif sweep.search == "random":  # seeded draws: the same sweep config proposes the same trials
            from ray.tune.search.basic_variant import BasicVariantGenerator

            search_alg = BasicVariantGenerator(random_state=sweep.seed)
        scheduler = None
        if sweep.scheduler == "asha":
            scheduler = ASHAScheduler(time_attr="students_done", max_t=len(students), grace_period=1,
                                      reduction_factor=2)
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(run_trial, base=base.model_dump(mode="json"),
                                                     names=names, trials_dir=str(out / "trials"),
                                                     run_method=run_method), resources),
            param_space=space,
            tune_config=tune.TuneConfig(metric=sweep.metric, mode="max", num_samples=sweep.num_samples,
                                        scheduler=scheduler, search_alg=search_alg,
                                        max_concurrent_trials=limit),
            run_config=tune.RunConfig(storage_path=str(out / "tune"), name=cfg.name, verbose=1,
                                      callbacks=[TrialLines(names, total, students, excluded, log)]),
        )
        grid = tuner.fit()
    trials = []
    for res in grid:
        params = {n: res.config.get(f"p{i}") for i, n in enumerate(names)}
        m = res.metrics or {}
        trials.append({"trial_id": m.get("trial_id") or Path(res.path).name, "params": params,
                       "mean_top1": m.get("mean_top1") if res.error is None or m.get("mean_top1") is not None
                       else None, "mean_top1_std": m.get("mean_top1_std"), "seeds": m.get("seeds"),
                       "students_done": m.get("students_done"),
                       "per_student": {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("top1/")},
                       "per_student_std": {k.split("/", 1)[1]: v for k,
                                           v in m.items() if k.startswith("std/")},
                       "error": str(res.error) if res.error else None})
    done = [t for t in trials if t["mean_top1"] is not None and not math.isnan(t["mean_top1"])]
    if not done:
        full = next((f for f in (find_disk_full(r.error) for r in grid if r.error is not None) if f), None)
        # the trials ran out of space: say so, not "every trial failed: <Ray's traceback>"
        if full is not None:
            raise full
        errors = "; ".join(t["error"] or "no metric" for t in trials)
        raise ConfigError(f"every sweep trial failed: {errors[:2000]}")
    # a trial ASHA stopped early has fewer students: rank complete trials first
    best = max(done, key=lambda t: (t["students_done"] == len(students), t["mean_top1"]))
    best_cfg = apply_params(cfg, best["params"]).model_copy(update={"sweep": None})
    best = {**best, "selected_on": selected_on}
    atomic_write_json(out / "sweep_results.json", {"metric": sweep.metric, "students": students,
                                                   "params": names,
                                                   "trials": trials, "best": best,
                                                   "selected_on": selected_on})
    atomic_write_json(out / "best.json", best)
    atomic_write_bytes(out / "best_config.yaml", dump_config(best_cfg).encode())
    table = _md(trials, names, best["trial_id"], students) + (
        f"\nTrials were scored on {selected_on}. Mean top-1 is the headline mean over "
        f"{', '.join(s for s in students if s not in excluded) or ', '.join(students)}"
        f" (eval.exclude_from_mean leaves out {', '.join(s for s in students if s in excluded) or 'none'}); "
        "its std is over the per-seed headline means (population std).\n")
    atomic_write_bytes(out / "sweep.md", table.encode())
    x_param = sweep.plot_param or names[0]
    plot = _plot(trials, x_param, out)
    log(f"best: {_fmt_params(best['params'])}, mean top-1 {best['mean_top1']:.2f} +- "
        f"{best.get('mean_top1_std') or 0.0:.2f}; results: {out / 'sweep.md'}")
    return {"output": str(out), "best": best, "trials": trials, "plot": str(plot) if plot else None}

"""``semdistill sweep CONFIG``: a Ray Tune search over method settings.

Each trial applies its values to dotted config keys (``diver.gamma``, ``diver.start_step``,
``diver.fusion_window``, ``edits.guidance_scale``, ``edits.strength``, ``edits.tau`` ...),
generates a distilled set (optionally on a class subset) with the config's method, trains
each student on it and reports ``mean_top1``: the mean final top-1 over the students not in
``eval.exclude_from_mean`` (the cross-architecture metric DIVER reports; tuning/evaluate.py:mean_top1). With ``method: none`` the trial's set is
``baseline_ipc`` random real images per class (a cheap smoke sweep of the machinery).

Search: ``grid`` (every list is a grid axis) or ``random`` (lists are choices; ranges as
``{uniform: [lo, hi]}``, ``{loguniform: [lo, hi]}``, ``{randint: [lo, hi]}``). ASHA,
when asked, may stop a trial after its first student(s) (``time_attr = students_done``).

Outputs in ``<output.dir>/sweep/``: ``sweep_results.json`` (every trial), ``sweep.md``,
``best.json``, ``best_config.yaml`` (the base config with the best values) and
``sweep.png`` (metric vs ``plot_param``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import Config, EvalConfig, SweepConfig, config_from_dict, dump_config, set_dotted
from pipeline.core.write import atomic_write_bytes, atomic_write_json, find_disk_full
from pipeline.errors import ConfigError

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
        raise ConfigError("sweep.params is empty: give at least one setting, e.g. diver.gamma: [0.0, 0.1, 0.3]")
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
            raise ConfigError(f"sweep.params.{name}: use a list of values or one of {{{', '.join(RANGE_KINDS)}: ...}}")
    return names, space


def _students(cfg: Config) -> list[str]:
    ev = cfg.eval or EvalConfig()
    return list(cfg.sweep.students or ev.students) if cfg.sweep else list(ev.students)


RunMethod = Callable[[Config], str]


def generate(cfg: Config, trial_dir: Path, run_method: RunMethod) -> str:
    """The trial's distilled set: the path ``run_method(cfg)`` returns (the config's method), or random real images
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
    """Tune function trainable: generate, then evaluate the students one by one, reporting as it goes."""
    from ray import tune

    from tuning.evaluate import evaluate_sets, mean_top1

    params = {name: config[f"p{i}"] for i, name in enumerate(names)}
    trial_dir = Path(trials_dir) / tune.get_context().get_trial_id()
    base = config_from_dict(base, source="<sweep base>")
    cfg = apply_params(base, {**params, "output.dir": str(trial_dir)})
    output = generate(cfg, trial_dir, run_method)
    ev = (cfg.eval or EvalConfig()).model_copy()
    ev_fields = {**ev.model_dump(include=ev.model_fields_set), "backend": "local",
                 "repeats": cfg.sweep.repeats, "image_size": cfg.data.image_size,
                 "cpus_per_job": max(1.0, float(cfg.sweep.trial_cpus))}
    per_student: dict[str, float] = {}
    done: list[dict[str, Any]] = []
    for i, student in enumerate(_students(cfg)):
        one = EvalConfig.model_validate({**ev_fields, "students": [student]})
        rows = evaluate_sets({"trial": output}, cfg.data.val_root, one, trial_dir, write=False,
                             classes=cfg.data.classes, log=lambda _m: None)
        per_student[student] = rows[0]["top1_mean"]
        done.append(rows[0])
        mean = mean_top1(done)  # the table's headline mean (eval.exclude_from_mean)
        tune.report({"mean_top1": mean, "students_done": i + 1,
                     **{f"top1/{k}": v for k, v in per_student.items()}})


def _plot(trials: list[dict[str, Any]], x_param: str, out: Path) -> Path | None:
    """Mean top-1 vs ``x_param``, one line per value of the other params."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [t for t in trials if t.get("mean_top1") is not None and x_param in t["params"]]
    if not pts:
        return None
    groups: dict[str, list[tuple[Any, float]]] = {}
    for t in pts:
        rest = ", ".join(f"{k}={v}" for k, v in sorted(t["params"].items()) if k != x_param)
        groups.setdefault(rest, []).append((t["params"][x_param], t["mean_top1"]))
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    for label, xy in sorted(groups.items()):
        try:
            xy = sorted(xy, key=lambda p: float(p[0]) if not isinstance(p[0], (list, tuple)) else p[0][0])
        except (TypeError, ValueError):
            pass
        xs = [str(p[0]) if isinstance(p[0], (list, tuple)) else p[0] for p in xy]
        ax.plot(xs, [p[1] for p in xy], marker="o", label=label or None)
    ax.set_xlabel(x_param)
    ax.set_ylabel("mean top-1 over students (%)")
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


def _md(trials: list[dict[str, Any]], names: list[str], best_id: str | None) -> str:
    lines = ["# Sweep", "", "| trial | " + " | ".join(names) + " | mean top-1 (%) | students done |",
             "|---|" + "---|" * len(names) + "---:|---:|"]
    for t in sorted(trials, key=lambda t: -(t.get("mean_top1") or -1)):
        mark = " **best**" if t["trial_id"] == best_id else ""
        m = t.get("mean_top1")
        lines.append(f"| {t['trial_id']}{mark} | " + " | ".join(str(t["params"].get(n)) for n in names)
                     + f" | {m:.2f} | {t.get('students_done')} |" if m is not None else
                     f"| {t['trial_id']} | " + " | ".join(str(t["params"].get(n)) for n in names) + " | failed | - |")
    return "\n".join(lines) + "\n"


def tuning_split(cfg: Config, out: Path) -> tuple[Config, str]:
    """The config the trials run with, and a sentence naming the split that scores them.

    With ``sweep.holdout_fraction`` > 0 the trials distil from the rest of ``data.root`` and are scored on
    the carved holdout (``tuning/holdout.py``); otherwise they are scored on ``data.val_root``.
    """
    fraction = cfg.sweep.holdout_fraction
    if fraction <= 0:
        return cfg, f"the validation split {cfg.data.val_root} (the split the report uses)"
    if not cfg.data.root:
        raise ConfigError("sweep.holdout_fraction needs data.root (the holdout is carved from the train set); "
                          "set data.root, or sweep.holdout_fraction=0 to score trials on data.val_root")
    from tuning.holdout import carve_holdout

    train, holdout = carve_holdout(cfg.data.root, out, fraction, seed=cfg.sweep.seed, classes=cfg.data.classes)
    trial_cfg = apply_params(cfg, {"data.root": str(train), "data.val_root": str(holdout)})
    return trial_cfg, (f"a holdout of {fraction:.0%} of each class of {cfg.data.root} (seed {cfg.sweep.seed}), "
                       "never the validation split the report uses")


def method_cpus(cfg: Config) -> float:
    """Ray CPUs a trial's method holds at once besides the trial itself: EDITS's fine-tune (its Train workers
    and one data task), else one method actor (``ray.actor_num_cpus``)."""
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


def run_sweep(cfg: Config, run_method: RunMethod, log=print) -> dict[str, Any]:
    """Run the Tune sweep described by ``cfg.sweep``; write results; return the best trial.

    ``run_method(cfg)`` distils one trial's set and returns its path (``pipeline.run.distil_one_set``; passed in so that
    this layer does not import the methods above it).
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from pipeline.core.ray_setup import ray_session

    if cfg.sweep is None:
        raise ConfigError("the config has no sweep section (see configs/demo_sweep.yaml)")
    if not cfg.data.val_root and cfg.sweep.holdout_fraction <= 0:
        raise ConfigError("a sweep with holdout_fraction 0 scores trials on data.val_root: set it")
    from tuning.students import check_students

    students = _students(cfg)
    check_students(students)
    sweep = cfg.sweep
    names, space = search_space(sweep)
    base = cfg
    if sweep.classes is not None:
        base = apply_params(cfg, {"data.classes": sweep.classes})
    # fail on a misspelt key or an invalid value before any trial starts
    apply_params(base, {n: (v[0] if isinstance(v, list) else next(iter(v.values()))[0]) for n, v in sweep.params.items()})
    out = Path(cfg.output.dir).resolve() / "sweep"
    out.mkdir(parents=True, exist_ok=True)
    base, selected_on = tuning_split(base, out)
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
            tune.with_resources(tune.with_parameters(run_trial, base=base.model_dump(mode="json"), names=names,
                                                     trials_dir=str(out / "trials"),
                                                     run_method=run_method), resources),
            param_space=space,
            tune_config=tune.TuneConfig(metric=sweep.metric, mode="max", num_samples=sweep.num_samples,
                                        scheduler=scheduler, search_alg=search_alg,
                                        max_concurrent_trials=limit),
            run_config=tune.RunConfig(storage_path=str(out / "tune"), name=cfg.name, verbose=1),
        )
        grid = tuner.fit()
    trials = []
    for res in grid:
        params = {n: res.config.get(f"p{i}") for i, n in enumerate(names)}
        m = res.metrics or {}
        trials.append({"trial_id": m.get("trial_id") or Path(res.path).name, "params": params,
                       "mean_top1": m.get("mean_top1") if res.error is None or m.get("mean_top1") is not None
                       else None, "students_done": m.get("students_done"),
                       "per_student": {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("top1/")},
                       "error": str(res.error) if res.error else None})
    done = [t for t in trials if t["mean_top1"] is not None and not math.isnan(t["mean_top1"])]
    if not done:
        full = next((f for f in (find_disk_full(r.error) for r in grid if r.error is not None) if f), None)
        if full is not None:  # the trials ran out of space: say so, not "every trial failed: <Ray's traceback>"
            raise full
        errors = "; ".join(t["error"] or "no metric" for t in trials)
        raise ConfigError(f"every sweep trial failed: {errors[:2000]}")
    # a trial ASHA stopped early has fewer students: rank complete trials first
    best = max(done, key=lambda t: (t["students_done"] == len(students), t["mean_top1"]))
    best_cfg = apply_params(cfg, best["params"]).model_copy(update={"sweep": None})
    best = {**best, "selected_on": selected_on}
    atomic_write_json(out / "sweep_results.json", {"metric": sweep.metric, "students": students, "params": names,
                                                   "trials": trials, "best": best, "selected_on": selected_on})
    atomic_write_json(out / "best.json", best)
    atomic_write_bytes(out / "best_config.yaml", dump_config(best_cfg).encode())
    table = _md(trials, names, best["trial_id"]) + f"\nTrials were scored on {selected_on}.\n"
    atomic_write_bytes(out / "sweep.md", table.encode())
    x_param = sweep.plot_param or names[0]
    plot = _plot(trials, x_param, out)
    log(table)
    log(f"best: {best['params']} -> mean top-1 {best['mean_top1']:.2f}% ; wrote {out}")
    return {"output": str(out), "best": best, "trials": trials, "plot": str(plot) if plot else None}

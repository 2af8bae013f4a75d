"""``semdistill demo``: the whole system offline on a laptop, step by step.

1. the demo digits (``out/data``) and the local model zoo;
2. baselines: ``random_real`` (IPC real images per class) and DM (built-in stage-1 distiller);
3. DIVER on the DM set (IPC 10) and EDITS (IPC 10), each from its demo config
   (``configs/demo_diver.yaml`` / ``configs/demo_edits.yaml`` when present, else ``configs/demo.yaml``);
4. cross-architecture evaluation (ConvNet and ResNet-18 at least) on Ray Train;
5. ``out/results.json``, ``out/results.md`` and ``out/report.html`` (tables, image grids, and
   the sweep plot when ``semdistill sweep ... output.dir=<out>`` ran before).

A method whose module is missing (or that fails) is skipped with a message, and the rest
still runs. A re-run reuses every finished stage and every evaluation whose set is unchanged.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from actors import zoo
from pipeline.config import Config, EvalConfig, config_from_dict
from pipeline.core.write import atomic_write_json

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"
IPC = 10
# The demo's evaluation: the "demo" preset (DSA, SGD, cosine) with a narrower ResNet-18 so
# 4 sets x 2 students x 2 seeds fit the 20-minute budget on 2 cores.
DEMO_EVAL = {"students": ["convnet", "resnet18"], "preset": "demo", "dataset": "digits", "epochs": 20, "repeats": 2,
             "eval_every": 10, "student_kwargs": {"resnet18": {"width": 16}}, "cpus_per_job": 0.5}
QUICK_EVAL = {**DEMO_EVAL, "epochs": 4, "repeats": 1, "eval_every": 0}
# What the whole-system demo trims from the per-method demo configs (IPC 10 is 5x their IPC 2
# clusters) to stay under 20 minutes on 2 cores; `semdistill run configs/demo_<method>.yaml`
# keeps the full settings.
DEMO_TRIM = {
    "edits": {"num_inference_steps": 25, "max_tokens": 40, "finetune": {"max_steps": 160, "vae_steps": 0},
              "llm_pad_tokens": 384},  # the demo's prompts are about 320 SmolLM2 tokens
    "ray": {"batch_sizes": {"llm": 20}, "micro_batch_sizes": {"llm": 20}},
    "diver": {"stage1": {"iterations": 150}},
}
FALLBACK = {"name": "demo", "data": {"image_size": 32},
            "models": {"vlm": "zoo:demo_vlm", "clip": "zoo:demo_clip", "vae": "zoo:vae", "dit": "zoo:dit",
                       "sd": "zoo:demo_sd",
                       "llm": "zoo:llm"},
            "ray": {"num_cpus": 2, "actor_num_cpus": 0.5}}


def prepare_demo(out: Path) -> dict[str, Any]:
    """Demo digits under ``out/data`` and the local zoo; both are skipped when present."""
    from pipeline.core.digits import write_demo_dataset

    data_dir = out / "data"
    if not (data_dir / "dataset.json").exists():
        write_demo_dataset(data_dir)
    print(f"demo data: {data_dir}")
    print(f"local model zoo: {zoo.default_zoo_dir()}")
    zoo.build_zoo()
    return {"data": str(data_dir), "zoo": str(zoo.default_zoo_dir())}


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    """Deep-merge ``extra`` into ``into`` (nested dicts merged, other values replaced)."""
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def method_config(method: str, out: Path, data: Path, quick: bool) -> Config:
    """The method's demo config with this demo's data, output folder and IPC."""
    path = REPO_CONFIGS / f"demo_{method}.yaml"
    if not path.is_file():
        path = REPO_CONFIGS / "demo.yaml"
    raw = yaml.safe_load(path.read_text()) if path.is_file() else json.loads(json.dumps(FALLBACK))
    raw.pop("eval", None)
    raw.pop("sweep", None)
    raw["method"] = method
    raw.setdefault("data", {}).update({"root": str(data / "train"), "val_root": str(data / "val"),
                                       "class_names": str(data / "class_names.json"), "classes": None})
    raw.setdefault("output", {})["dir"] = str(out / method)
    if method == "edits":
        raw.setdefault("edits", {})["ipc"] = IPC
        if not quick:
            _merge(raw, {"edits": DEMO_TRIM["edits"], "ray": DEMO_TRIM["ray"]})
        if quick:
            raw["edits"]["num_inference_steps"] = min(int(raw["edits"].get("num_inference_steps", 50)), 10)
            ft = raw["edits"].setdefault("finetune", {})
            ft["max_steps"] = min(int(ft.get("max_steps") or 50), 50)
            raw.setdefault("models", {})["llm"] = "zoo:llm"  # the tiny LLM: a smoke run, not a text prototype
    if method == "diver":
        d = raw.setdefault("diver", {})
        d.pop("input", None)
        stage1 = d.get("stage1") or {}
        stage1.update({"ipc": IPC})
        stage1.pop("ipcs", None)
        if not quick:
            stage1.update(DEMO_TRIM["diver"]["stage1"])
        if quick:
            stage1["iterations"] = min(int(stage1.get("iterations", 1000)), 20)
        d["stage1"] = stage1
    return config_from_dict(raw, source=str(path))


def _set_fingerprint(set_dir: Path, ev: EvalConfig) -> str:
    man = set_dir / "manifest.json"
    h = hashlib.sha256(man.read_bytes() if man.is_file() else str(set_dir).encode())
    h.update(json.dumps(ev.model_dump(mode="json"), sort_keys=True).encode())
    return h.hexdigest()[:16]


def evaluate_demo(sets: dict[str, Path], data: Path, out: Path, ev: EvalConfig, ray_cfg: Any) -> list[dict]:
    """Evaluate the sets whose manifest or eval settings changed since the last demo run."""
    from tuning.evaluate import evaluate_sets, write_results

    done_path = out / "eval_done.json"
    done = json.loads(done_path.read_text()) if done_path.is_file() else {}
    todo = {n: d for n, d in sets.items() if done.get(n) != _set_fingerprint(d, ev)}
    for n in sets:
        if n not in todo:
            print(f"eval {n}: unchanged since the last run, reusing its results")
    rows: list[dict] = []
    if todo:
        rows = evaluate_sets(todo, data / "val", ev, out, ray_cfg=ray_cfg, methods={n: n for n in todo},
                             write=False)
        done.update({n: _set_fingerprint(d, ev) for n, d in todo.items()})
    all_rows = write_results(rows, out)
    atomic_write_json(done_path, done)
    keep = {n for n in sets}
    return [r for r in all_rows if r["method"] in keep]


def run_demo(out: Path, quick: bool = False) -> dict[str, Any]:
    """Data -> baselines, DIVER, EDITS -> evaluation -> report; returns a summary dict."""
    from pipeline.core.ray_setup import ray_session
    from tuning.baselines import random_real

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    timings: dict[str, float] = {}
    summary: dict[str, Any] = prepare_demo(out)
    timings["prepare_s"] = round(time.time() - t_all, 1)
    data = Path(summary["data"])
    sets: dict[str, Path] = {}
    notes: list[str] = []
    skipped: dict[str, str] = {}

    t0 = time.time()
    rr = random_real(data / "train", out / "random_real", ipc=IPC, seed=0)
    sets["random_real"] = Path(rr["output"])
    timings["random_real_s"] = round(time.time() - t0, 1)

    base = method_config("diver", out, data, quick)  # its ray section runs the whole demo
    with ray_session(base.ray):
        for method, runner in (("diver", "pipeline.diver.run:run_diver"), ("edits", "pipeline.edits.run:run_edits")):
            module, func = runner.split(":")
            t0 = time.time()
            try:
                cfg = method_config(method, out, data, quick)
                print(f"demo: running {method} (IPC {IPC}) -> {cfg.output.dir}")
                result = getattr(importlib.import_module(module), func)(cfg)
            except Exception as err:  # noqa: BLE001 - one failing method must not sink the demo
                msg = f"{method} failed: {type(err).__name__}: {err}"
                print(f"demo: {msg}\n{traceback.format_exc()}")
                skipped[method] = msg
                dm_set = out / "diver" / f"ipc{IPC}" / "stage1"
                if method == "diver" and (dm_set / "manifest.json").is_file():
                    sets["dm"] = dm_set  # the DM baseline finished before DIVER failed
                continue
            timings[f"{method}_s"] = round(time.time() - t0, 1)
            if method == "diver":
                entry = result["sets"].get(f"ipc{IPC}") or next(iter(result["sets"].values()))
                sets["dm"] = Path(entry["stage1"])
                sets["diver"] = Path(entry["recovered"])
            else:
                sets["edits"] = Path(result["output"])

        t0 = time.time()
        ev = EvalConfig.model_validate(QUICK_EVAL if quick else DEMO_EVAL)
        rows = evaluate_demo(sets, data, out, ev, base.ray)
        timings["eval_s"] = round(time.time() - t0, 1)

    from pipeline.report import write_report

    timings["total_s"] = round(time.time() - t_all, 1)
    notes.append(f"dataset: sklearn digits as 32x32 RGB ({data}); IPC {IPC}; "
                 f"students trained {ev.epochs} epochs ({ev.preset} preset: DSA, SGD, cosine), "
                 f"{ev.repeats} seed(s) each; ResNet-18 at width {ev.student_kwargs['resnet18']['width']}.")
    notes.append("stage times (s): " + ", ".join(f"{k[:-2]} {v}" for k, v in timings.items()))
    notes += list(skipped.values())
    sweep_dir = out / "sweep"
    paths = write_report(out, rows, sets={n: d for n, d in sets.items()},
                         sweep_dir=sweep_dir if sweep_dir.is_dir() else None,
                         title="semdistill demo: digits, IPC 10", notes=notes)
    summary.update({"sets": {n: str(d) for n, d in sets.items()}, "skipped": skipped, "timings": timings,
                    "results": str(out / "results.json"), **paths})
    atomic_write_json(out / "demo_summary.json", summary)
    return summary

"""``semdistill plan CONFIG --gpus N``: expected wall time and GPU hours per stage.

Counts come from the config (IPC, steps, strength, backends) and the dataset size (counted
under ``data.root`` when it is readable here, else ``--images/--classes``, else ImageNet-1K);
per-item costs come from ``cluster.costs`` (measured rows replace estimates when
``bench/results/*.json`` has them). Scaling is assumed ideal across GPUs: the plan is a lower
bound on wall time and an honest count of GPU hours.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cluster.costs import LOAD_SECONDS, Cost, load_measured
from pipeline.config import Config, load_config
from pipeline.errors import ConfigError

IMAGENET_1K = (1_281_167, 1000)
CPUS_PER_GPU = 8  # CPU stages (clustering) run on the GPU nodes' cores
EXTERNAL_CONCURRENCY = 16  # requests in flight to an OpenAI-compatible endpoint


@dataclass
class StagePlan:
    stage: str
    items: int
    unit: str
    seconds_per_unit: float
    device: str
    source: str
    resource: str
    workers: int
    gpu_hours: float
    wall_seconds: float
    note: str = ""


@dataclass
class Plan:
    config: str
    method: str
    gpus: int
    images: int
    classes: int
    data_source: str
    stages: list[StagePlan]
    cost_files: list[str]

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.stages)

    @property
    def wall_seconds(self) -> float:
        return sum(s.wall_seconds for s in self.stages)  # stages run one after another

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total_gpu_hours"] = self.gpu_hours
        d["total_wall_seconds"] = self.wall_seconds
        return d


def dataset_size(cfg: Config, images: int | None, classes: int | None) -> tuple[int, int, str]:
    """(images, classes, where the numbers come from)."""
    if images is not None and classes is not None:
        return images, classes, "given on the command line"
    root = Path(cfg.data.root) if cfg.data.root else None
    if root is not None and root.is_dir():
        from pipeline.core.image_index import scan_image_folder

        index = scan_image_folder(root, tuple(cfg.data.extensions), cfg.data.classes, cfg.data.max_per_class,
                                  cfg.data.follow_symlinks, allow_empty_classes=True)
        return (images if images is not None else len(index.records),
                classes if classes is not None else len(index.classes), f"counted under {root}")
    n_cls = (classes if classes is not None
             else (len(cfg.data.classes) if cfg.data.classes else IMAGENET_1K[1]))
    if images is not None:
        n_img = images
    elif cfg.data.max_per_class:
        n_img = n_cls * cfg.data.max_per_class
    else:
        n_img = round(IMAGENET_1K[0] * n_cls / IMAGENET_1K[1])
    return n_img, n_cls, "ImageNet-1K sizes (data.root is not readable here; use --images/--classes)"


def distilled_size(cfg: Config, images: int | None, classes: int) -> tuple[int, str]:
    """Images DIVER recovers: ``--images``, else the input folder's count, else classes x IPC."""
    if images is not None:
        return images, "given on the command line"
    inp = Path(cfg.diver.input) if cfg.diver.input else None
    if inp is not None and inp.is_dir() and any(p.is_dir() for p in inp.iterdir()):
        from pipeline.core.image_index import scan_image_folder

        index = scan_image_folder(inp, allow_empty_classes=True)
        return len(index.records), f"counted under {inp}"
    ipc = cfg.diver.stage1.ipc if cfg.diver.stage1 else 10
    return classes * ipc, f"{classes} classes x IPC {ipc}"


def _stage(name: str, key: str, items: int, table: dict[str, Cost], gpus: int, load_key: str) -> StagePlan:
    cost = table[key]
    if cost.resource == "gpu":
        workers = gpus
    elif cost.resource == "cpu":
        workers = gpus * CPUS_PER_GPU
    else:
        workers = EXTERNAL_CONCURRENCY
    work = items * cost.seconds
    load = LOAD_SECONDS.get(load_key, 0.0)
    gpu_hours = (work + load * workers) / 3600 if cost.resource == "gpu" else 0.0
    wall = (load if items else 0.0) + work / max(1, workers)
    return StagePlan(name, int(items), cost.unit, cost.seconds, cost.device, cost.source, cost.resource,
                     workers, gpu_hours, wall, cost.note)


def make_plan(cfg: Config, gpus: int, images: int | None = None, classes: int | None = None,
              cost_files: list[str] | None = None, config_name: str = "<config>") -> Plan:
    if gpus < 1:
        raise ConfigError(f"--gpus must be at least 1, got {gpus}")
    table, used = load_measured(cost_files)
    stages: list[StagePlan] = []
    if cfg.method == "edits":
        n_img, n_cls, src = dataset_size(cfg, images, classes)
        e = cfg.edits
        prototypes = n_cls * e.ipc
        if e.finetune.enabled:
            stages.append(_stage("finetune", "finetune", n_img * e.finetune.epochs, table, gpus, "finetune"))
        stages.append(_stage("caption", f"caption.{cfg.models.vlm_backend}", n_img, table, gpus, "caption"))
        stages.append(_stage("embed", "embed", n_img, table, gpus, "embed"))
        stages.append(_stage("cluster", "cluster", n_cls, table, gpus, "cluster"))
        stages.append(_stage("vae", "vae", prototypes * e.k_image, table, gpus, "vae"))
        stages.append(_stage("llm", f"llm.{cfg.models.llm_backend}", prototypes, table, gpus, "llm"))
        steps = max(1, int(e.num_inference_steps * e.strength))
        stages.append(_stage("generate", "generate.step", prototypes * steps, table, gpus, "generate"))
    elif cfg.method == "diver":
        _, n_cls, _ = dataset_size(cfg, None, classes)
        n_img, src = distilled_size(cfg, images, n_cls)
        d = cfg.diver
        if d.stage1 is not None:
            stages.append(_stage("stage1_dm", "stage1_dm", d.stage1.iterations * n_cls, table, gpus,
                                 "stage1_dm"))
        steps = d.num_inference_steps - d.start_step
        if d.inheritance == "ddim_inversion":
            steps *= 2
        stages.append(_stage("recover", "recover.step", n_img * steps, table, gpus, "recover"))
    else:
        raise ConfigError(f"method must be edits or diver to plan, got {cfg.method!r}")
    return Plan(config_name, cfg.method, gpus, n_img, n_cls, src, stages, used)


def hms(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_plan(plan: Plan) -> str:
    what = "distilled images" if plan.method == "diver" else "real images"
    lines = [
        f"plan: {plan.config} (method {plan.method}) on {plan.gpus} GPU{'s' if plan.gpus > 1 else ''}",
        f"data: {plan.images:,} {what}, {plan.classes:,} classes ({plan.data_source})",
        "",
        (f"{'stage':<10} {'items':>13} {'unit':<18} {'s/unit':>8} {'device':<16} {'source':<9} "
         f"{'GPU h':>9} {'wall':>10}"),
    ]
    for s in plan.stages:
        gpu = f"{s.gpu_hours:9.2f}" if s.resource == "gpu" else f"{'(' + s.resource + ')':>9}"
        lines.append(f"{s.stage:<10} {s.items:>13,} {s.unit:<18} {s.seconds_per_unit:>8.4f} "
                     f"{s.device[:16]:<16} {s.source:<9} {gpu} {hms(s.wall_seconds):>10}")
    lines.append(f"{'total':<10} {'':>13} {'':<18} {'':>8} {'':<16} {'':<9} {plan.gpu_hours:9.2f} "
                 f"{hms(plan.wall_seconds):>10}")
    lines += [
        "",
        ("assumptions: ideal scaling over GPUs (one actor per GPU per stage), stages one after another, each "
         f"actor loads its model once; CPU stages use {CPUS_PER_GPU} cores per GPU; an endpoint takes "
         f"{EXTERNAL_CONCURRENCY} requests at once; a reference device's cost is used as is for your GPU."),
        ("sources: " + ("measured rows from " + ", ".join(plan.cost_files) if plan.cost_files
                        else "no measurements in bench/results/ yet (run bench/gpu_check.sh on a GPU node)")
         + "; 'estimate' rows are guesses, 'paper' rows are the authors' figures (cluster/costs.py)."),
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, getattr(args, "overrides", None) or [])
    plan = make_plan(cfg, args.gpus, getattr(args, "images", None), getattr(args, "classes", None),
                     [args.costs] if getattr(args, "costs", None) else None, config_name=str(args.config))
    if getattr(args, "as_json", False):
        print(json.dumps(plan.as_dict(), indent=2))
    else:
        print(format_plan(plan))
    return 0
